//! The operating-system edge: io_uring buffer rings, listeners, eventfds. Every `unsafe`
//! block of the engine lives here, each with its `// SAFETY:` reason.

mod buf_ring;
mod eventfd;
mod listener;

pub use buf_ring::{BufRing, BufRingError};
pub use eventfd::EventFd;
pub use listener::reuseport_listener;
