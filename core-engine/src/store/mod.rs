//! The embedded store: one redb database per shard holding the shard's partitions
//! (registrations, pending messages, message bodies and delivery counts; `layout.rs` says
//! which file holds which), and the per-shard writer thread that groups commits so the
//! shard's event loop never waits on fsync, with its write-ahead log.

pub mod layout;
mod partition;
mod shard_db;
pub mod wal;
mod writer;

pub use partition::{
    DeviceRecord, GroupMessage, MessageStats, PartitionStore, PendingMessage, StoreError, StoreEvent, StoreLimits,
    WriteOp,
};
pub use shard_db::ShardDb;
pub use writer::{Completion, Durability, EventSink, Notify, StoreJob, StoreWriter, WalSetup};
