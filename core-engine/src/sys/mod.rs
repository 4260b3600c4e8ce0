//! The operating-system edge: io_uring buffer rings, listeners, accepted peers' addresses,
//! eventfds. Every `unsafe` block of the engine lives here, each with its `// SAFETY:`
//! reason (but for the shard's one submission-queue push).

mod buf_ring;
mod eventfd;
mod listener;
mod peer_addr;

pub use buf_ring::{BufRing, BufRingError};
pub use eventfd::EventFd;
pub use listener::reuseport_listener;
pub use peer_addr::PeerAddr;
