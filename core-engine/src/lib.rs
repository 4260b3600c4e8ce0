//! Pushnode's engine: pinned shards on io_uring that own device sessions, the sans-IO
//! MQTT codec and session state machine, the embedded store and the push domain.

pub mod proto;
