//! What other threads ask of a shard, and the lock-free queue (crossbeam) plus eventfd
//! wake-up that carries it.

use crate::ids::{AppId, MessageId, RegId};
use crate::proto::Connect;
use crate::push::{Envelope, GroupFilter};
use crate::store::StoreError;
use crate::sys::EventFd;
use crossbeam_channel::{Receiver, Sender};
use futures_channel::oneshot;
use std::cell::RefCell;
use std::sync::Arc;

/// Most messages a deferring thread queues before it wakes their shards anyway: a busy
/// HTTP runtime may go on polling tasks for a while before it sleeps, and a shard must
/// not wait for that.
const DEFERRED_SENDS_MAX: usize = 8;

/// The wake-ups a deferring thread owes: the shards it queued work for, and how many
/// messages it queued since its last flush.
#[derive(Default)]
struct OwedWakes {
    shards: Vec<Arc<EventFd>>,
    sends: usize,
}

thread_local! {
    /// What this thread owes, on a thread that defers its wake-ups
    /// ([`defer_wakes_on_this_thread`]); `None` on any other thread.
    static DEFERRED_WAKES: RefCell<Option<OwedWakes>> = const { RefCell::new(None) };
}

/// From now on, a [`ShardInbox::send`] from this thread wakes its shard at the next
/// [`flush_deferred_wakes`] (or after [`DEFERRED_SENDS_MAX`] messages), once per shard
/// however many messages it queued meanwhile. An HTTP thread does this and flushes
/// whenever its runtime is about to sleep (tokio's `on_thread_park`): while it has requests
/// to read it sends to the shards without a syscall each. Only for a thread that flushes
/// before every wait.
pub fn defer_wakes_on_this_thread() {
    DEFERRED_WAKES.with(|d| *d.borrow_mut() = Some(OwedWakes::default()));
}

/// Wakes every shard this thread queued work for since its last flush.
pub fn flush_deferred_wakes() {
    let owed = DEFERRED_WAKES.with(|d| d.borrow_mut().as_mut().map(std::mem::take));
    for wake in owed.into_iter().flat_map(|o| o.shards) {
        wake.wake();
    }
}

/// A shard's part of a push: how many targets it stored the message for, which of its
/// RegIDs were invalid, and (alias sends) which aliases it found.
#[derive(Debug, Default)]
pub struct PushPart {
    pub targets: u64,
    pub invalid: Vec<RegId>,
    pub found_aliases: Vec<String>,
}

/// A shard's part of a server-side topic change.
#[derive(Debug, Default)]
pub struct TopicPart {
    pub changed: u64,
    pub invalid: Vec<RegId>,
}

/// Why a device-level request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such device in this app.
    #[error("unknown RegID")]
    UnknownDevice,
    /// A per-device or per-app limit; the text says which.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work for a shard.
pub enum ShardMsg {
    /// Store `envelope` for each of `regids` (all homed here) and deliver it; answer once durable.
    Push { envelope: Arc<Envelope>, regids: Vec<RegId>, reply: Reply<PushPart> },
    /// Store and deliver to this shard's devices carrying any of `aliases`.
    PushAliases { envelope: Arc<Envelope>, aliases: Arc<[String]>, reply: Reply<PushPart> },
    /// Store once and deliver to this shard's devices that `filter` selects.
    PushGroup { envelope: Arc<Envelope>, filter: Arc<GroupFilter>, reply: Reply<PushPart> },
    /// Register a device of `app_id` in one of this shard's partitions.
    Register { app_id: AppId, reply: Reply<(RegId, String)> },
    /// (targets, delivered) of a message in this shard's partitions.
    MessageStatus { app_id: AppId, id: MessageId, reply: Reply<Option<crate::store::MessageStats>> },
    /// Set or remove an alias of a device homed here.
    DeviceAlias {
        app_id: AppId,
        regid: RegId,
        alias: String,
        set: bool,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Add devices homed here to a topic, or remove them.
    TopicMembers { app_id: AppId, topic: String, regids: Vec<RegId>, join: bool, reply: Reply<TopicPart> },
    /// Give a device homed here a new token; the old one stops working.
    RotateToken { app_id: AppId, regid: RegId, reply: oneshot::Sender<Result<String, ControlError>> },
    /// Set or clear the quiet hours of a device homed here.
    SetQuiet {
        app_id: AppId,
        regid: RegId,
        hours: Option<crate::push::QuietHours>,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// This shard's devices carrying an alias.
    LookupAlias { app_id: AppId, alias: String, reply: oneshot::Sender<Vec<RegId>> },
    /// A connection another shard accepted, whose device lives here; its descriptor
    /// arrives by MSG_RING with the same `handoff_id`.
    Handoff { handoff_id: u64, connect: Box<Connect>, unprocessed: Vec<u8>, tls: Option<Box<rustls::ServerConnection>> },
    /// A store job of this shard finished.
    Stored { result: Result<(), StoreError>, then: AfterStore },
    /// Devices' acknowledgements of their own messages (device, seq) are committed.
    AcksCommitted(Vec<(RegId, u64)>),
    /// What the store writer decided that statistics count.
    StoreEvents(Vec<crate::store::StoreEvent>),
    /// This shard's daily counts of an app, days `from..=to`.
    DayStats { app_id: AppId, from: u32, to: u32, reply: Reply<Vec<(u32, crate::stats::DayStats)>> },
    /// Stop: close connections and exit the loop.
    Shutdown,
}

/// What the shard does when a store job it submitted is durable.
pub enum AfterStore {
    /// A device registered over MQTT: answer its CONNECT.
    Registered { conn: u32, gen: u32, regid: RegId, token: String, record: Box<super::Device> },
    /// A device registered over HTTP.
    RegisteredHttp { regid: RegId, token: String, reply: Reply<(RegId, String)> },
    /// A push is stored: deliver to online targets and answer the app server.
    Pushed { envelope: Arc<Envelope>, seq: u64, regids: Vec<RegId>, part: PushPart, reply: Reply<PushPart> },
    /// A group message is stored: deliver to online targets and answer.
    GroupStored { envelope: Arc<Envelope>, seq: u64, filter: Arc<GroupFilter>, targets: u64, reply: Reply<PushPart> },
}

/// The sending side of a shard's queue, shared by every thread.
#[derive(Clone)]
pub struct ShardInbox {
    tx: Sender<ShardMsg>,
    wake: Arc<EventFd>,
}

impl ShardInbox {
    pub fn new() -> std::io::Result<(Self, Receiver<ShardMsg>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok((ShardInbox { tx, wake: Arc::new(EventFd::new()?) }, rx))
    }

    /// Queues `msg` and wakes the shard. False if the shard has stopped.
    pub fn send(&self, msg: ShardMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        let deferred = DEFERRED_WAKES.with(|d| match d.borrow_mut().as_mut() {
            Some(owed) => {
                if !owed.shards.iter().any(|w| Arc::ptr_eq(w, &self.wake)) {
                    owed.shards.push(self.wake.clone());
                }
                owed.sends += 1;
                Some(owed.sends >= DEFERRED_SENDS_MAX)
            }
            None => None,
        });
        match deferred {
            None => self.wake.wake(),
            Some(true) => flush_deferred_wakes(),
            Some(false) => {}
        }
        sent
    }

    /// Queues `msg` without a wake-up: the sender wakes the shard once after a batch (a
    /// following MSG_RING, or [`ShardInbox::wake`] after a commit's completions).
    pub fn send_quiet(&self, msg: ShardMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Wakes the shard to read what was queued quietly.
    pub fn wake(&self) {
        self.wake.wake();
    }

    pub(crate) fn eventfd(&self) -> &EventFd {
        &self.wake
    }
}
