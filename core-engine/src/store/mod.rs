//! The embedded store: redb databases holding the shards' partitions (registrations,
//! pending messages, message bodies and delivery counts; `layout.rs` says which file holds
//! which), and one writer thread per database that groups commits so no shard's event loop
//! waits on fsync, with its write-ahead log.

pub mod layout;
mod partition;
mod store_db;
pub mod wal;
mod writer;

pub use partition::{
    DeviceRecord, GroupMessage, MessageStats, PartitionStore, PendingMessage, StoreError, StoreEvent, StoreLimits,
    WriteOp, DEFAULT_STATS_KEPT_SECS,
};
pub use store_db::StoreDb;
pub use writer::{Completion, Durability, EventSink, Notify, StoreJob, StoreWriter, WalSetup};
