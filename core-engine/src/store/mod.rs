//! The embedded store: one redb database per partition (registrations, pending
//! messages, message bodies and delivery counts), and the per-shard writer thread that
//! groups commits so the shard's event loop never waits on fsync, with its write-ahead log.

mod partition;
pub mod wal;
mod writer;

pub use partition::{
    DeviceRecord, GroupMessage, MessageStats, PartitionStore, PendingMessage, StoreError, StoreEvent, StoreLimits,
    WriteOp,
};
pub use writer::{Completion, Durability, EventSink, Notify, StoreJob, StoreWriter, WalSetup};
