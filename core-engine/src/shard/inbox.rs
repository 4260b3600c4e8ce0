//! What other threads ask of a shard, and the lock-free queue (crossbeam) plus eventfd
//! wake-up that carries it.

use crate::ids::{AppId, MessageId, RegId};
use crate::proto::Connect;
use crate::push::Envelope;
use crate::store::StoreError;
use crate::sys::EventFd;
use crossbeam_channel::{Receiver, Sender};
use futures_channel::oneshot;
use std::sync::Arc;

/// A shard's part of a push: how many of its RegIDs were valid, and which were not.
#[derive(Debug, Default)]
pub struct PushPart {
    pub targets: u64,
    pub invalid: Vec<RegId>,
}

/// Work for a shard.
pub enum ShardMsg {
    /// Store `envelope` for each of `regids` (all homed here) and deliver it; answer once durable.
    Push {
        envelope: Arc<Envelope>,
        regids: Vec<RegId>,
        reply: oneshot::Sender<Result<PushPart, StoreError>>,
    },
    /// Register a device of `app_id` in one of this shard's partitions.
    Register {
        app_id: AppId,
        reply: oneshot::Sender<Result<(RegId, String), StoreError>>,
    },
    /// (targets, delivered) of a message in this shard's partitions.
    MessageStatus {
        app_id: AppId,
        id: MessageId,
        reply: oneshot::Sender<Result<Option<(u64, u64)>, StoreError>>,
    },
    /// A connection another shard accepted, whose device lives here; its descriptor
    /// arrives by MSG_RING with the same `handoff_id`.
    Handoff {
        handoff_id: u64,
        connect: Box<Connect>,
        unprocessed: Vec<u8>,
    },
    /// A store job of this shard finished.
    Stored {
        result: Result<(), StoreError>,
        then: AfterStore,
    },
    /// Stop: close connections and exit the loop.
    Shutdown,
}

/// What the shard does when a store job it submitted is durable.
pub enum AfterStore {
    /// A device registered over MQTT: answer its CONNECT.
    Registered {
        conn: u32,
        gen: u32,
        regid: RegId,
        token: String,
        record: crate::store::DeviceRecord,
    },
    /// A push is stored: deliver to online targets and answer the app server.
    Pushed {
        envelope: Arc<Envelope>,
        seq: u64,
        regids: Vec<RegId>,
        invalid: Vec<RegId>,
        reply: oneshot::Sender<Result<PushPart, StoreError>>,
    },
    /// A device registered over HTTP.
    RegisteredHttp {
        regid: RegId,
        token: String,
        reply: oneshot::Sender<Result<(RegId, String), StoreError>>,
    },
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
        Ok((
            ShardInbox {
                tx,
                wake: Arc::new(EventFd::new()?),
            },
            rx,
        ))
    }

    /// Queues `msg` and wakes the shard. False if the shard has stopped.
    pub fn send(&self, msg: ShardMsg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        self.wake.wake();
        sent
    }

    /// Queues `msg` without a wake-up (the MSG_RING that follows wakes the shard).
    pub fn send_quiet(&self, msg: ShardMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    pub(crate) fn eventfd(&self) -> &EventFd {
        &self.wake
    }
}
