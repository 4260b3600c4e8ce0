//! Pushnode's engine: pinned shards on io_uring that own device sessions, the sans-IO
//! MQTT codec and session state machine, the embedded store and the push domain.

pub mod api;
pub mod apps;
pub mod clock;
pub mod connect_limit;
pub mod ids;
pub mod node;
pub mod proto;
pub mod push;
pub mod session;
pub mod shard;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tls;

pub use node::{ApiError, EngineConfig, EngineError, Node, NodeHandle, PushOutcome};
