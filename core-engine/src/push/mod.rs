//! The push domain: what an app server asks to send (target and message), validated,
//! and the envelope a device receives.

mod message;
mod quiet;
mod target;

pub use message::{Envelope, MessageKind, PushError, PushRequest, MAX_REGIDS, MAX_TTL_SECS};
pub use quiet::QuietHours;
pub use target::{
    valid_name, GroupFilter, SendRequest, Target, TopicOp, MAX_ALIASES, MAX_EXPRESSION_TOPICS, MAX_NAME_BYTES,
};
