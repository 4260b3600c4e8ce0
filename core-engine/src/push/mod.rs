//! The push domain: what an app server asks to send, validated, and the envelope a
//! device receives.

mod message;

pub use message::{Envelope, MessageKind, PushError, PushRequest, MAX_REGIDS, MAX_TTL_SECS};
