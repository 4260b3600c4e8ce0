//! What the shard does for devices: authenticating a CONNECT (or moving the connection
//! to the device's home shard), registering devices, storing pushes and delivering them
//! in order, and counting acknowledgements.

use super::inbox::{AfterStore, PushPart, ShardMsg};
use super::{token, Device, Shard};
use crate::ids::{hash_eq, random_secret, secret_hash, AppId, RegId};
use crate::proto::{Connect, Properties, Version};
use crate::session::{reason, CloseReason, PushRef, Session};
use crate::store::{DeviceRecord, StoreJob, WriteOp};
use io_uring::{opcode, types};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most pending messages read from the store at once for one device.
const PENDING_BATCH: usize = 64;

impl Shard {
    fn refuse(&mut self, key: u32, code_v5: u8, code_v311: u8) {
        self.conns[key as usize].session.refuse(code_v5, code_v311);
        self.close_conn(key, CloseReason::Refused);
    }

    /// Authenticates a CONNECT, or hands the connection to the device's home shard.
    pub(super) fn on_connect(&mut self, key: u32, connect: Box<Connect>) {
        let app_id: Option<AppId> = connect.username.as_deref().and_then(|u| u.parse().ok());
        if connect.client_id.is_empty() {
            self.register_over_mqtt(key, &connect, app_id);
            return;
        }
        let Some(regid) = RegId::parse(&connect.client_id) else {
            return self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS);
        };
        if regid.partition() >= self.shared.partitions {
            return self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS);
        }
        let home = self.shared.home_shard(regid);
        if home != self.index {
            self.start_handoff(key, connect, home);
            return;
        }
        self.connect_device(key, regid, &connect, app_id);
    }

    fn connect_device(&mut self, key: u32, regid: RegId, connect: &Connect, app_id: Option<AppId>) {
        let token_ok = |device: &Device| {
            let token = connect
                .password
                .as_deref()
                .and_then(|p| std::str::from_utf8(p).ok())
                .unwrap_or("");
            Some(device.record.app_id) == app_id
                && hash_eq(&device.record.token_hash, &secret_hash(token))
        };
        let Some(device) = self.devices.get(&regid) else {
            return self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS);
        };
        if !token_ok(device) {
            return self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS);
        }
        if let Some(old) = device.conn.filter(|&old| old != key) {
            self.conns[old as usize]
                .session
                .close(reason::SESSION_TAKEN_OVER);
            self.close_conn(old, CloseReason::Server);
            self.flush(old);
        }
        self.attach(key, regid, !connect.clean_start, Properties::default());
    }

    /// Binds a connection to its device, answers CONNACK and starts delivery.
    fn attach(&mut self, key: u32, regid: RegId, session_present: bool, properties: Properties) {
        let Some(device) = self.devices.get_mut(&regid) else {
            return;
        };
        device.conn = Some(key);
        let conn = &mut self.conns[key as usize];
        conn.device = Some(regid);
        conn.cursor = 0;
        conn.backlog = true;
        conn.session.accept(
            self.now_s,
            session_present,
            properties,
            self.limits,
            &mut self.events,
        );
        self.pump(key);
        self.process_events(key);
    }

    fn register_over_mqtt(&mut self, key: u32, connect: &Connect, app_id: Option<AppId>) {
        if connect.version == Version::V311 {
            return self.refuse(key, reason::CLIENT_ID_INVALID, reason::V311_ID_REJECTED);
        }
        let key_ok = app_id.is_some_and(|app| {
            self.shared
                .apps
                .check_device_key(app, connect.password.as_deref().unwrap_or(&[]))
        });
        let (Some(app_id), true) = (app_id, key_ok) else {
            return self.refuse(key, reason::NOT_AUTHORIZED, reason::V311_NOT_AUTHORIZED);
        };
        let gen = self.conns[key as usize].gen;
        let (regid, token, record) = self.new_device(app_id);
        let inbox = self.shared.inboxes[self.index].clone();
        self.writer.submit(StoreJob {
            ops: vec![WriteOp::RegisterDevice { regid, record }],
            done: Some(Box::new(move |result| {
                inbox.send(ShardMsg::Stored {
                    result,
                    then: AfterStore::Registered {
                        conn: key,
                        gen,
                        regid,
                        token,
                        record,
                    },
                });
            })),
        });
    }

    fn new_device(&mut self, app_id: AppId) -> (RegId, String, DeviceRecord) {
        assert!(
            !self.owned_partitions.is_empty(),
            "every shard owns a partition (partitions >= shards)"
        );
        let partition = self.owned_partitions[self.next_partition % self.owned_partitions.len()];
        self.next_partition = self.next_partition.wrapping_add(1);
        let regid = RegId::generate(partition);
        let token = random_secret::<16>();
        let record = DeviceRecord {
            app_id,
            token_hash: secret_hash(&token),
            created_at: Self::now_unix_s(),
        };
        (regid, token, record)
    }

    fn start_handoff(&mut self, key: u32, connect: Box<Connect>, home: usize) {
        let conn = &mut self.conns[key as usize];
        conn.handoff = Some(Box::new((*connect, home)));
        if conn.recv_armed {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(token::conn(
                token::RECV,
                key,
                conn.gen,
            )))
            .build()
            .user_data(token::plain(token::CANCEL, 0));
            self.push_sqe(cancel);
        } else {
            self.finish_handoff(key);
        }
    }

    /// The receive is stopped: send the descriptor and the bytes read so far to the home shard.
    pub(super) fn finish_handoff(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        let Some(handoff) = conn.handoff.take() else {
            return;
        };
        let (connect, home) = *handoff;
        let unprocessed = conn.session.take_unprocessed();
        let handoff_id = self.shared.next_handoff_id();
        let Some(&ring_fd) = self.shared.ring_fds.get().and_then(|fds| fds.get(home)) else {
            return self.close_conn(key, CloseReason::Server);
        };
        if !self.shared.inboxes[home].send_quiet(ShardMsg::Handoff {
            handoff_id,
            connect: Box::new(connect),
            unprocessed,
        }) {
            return self.close_conn(key, CloseReason::Server);
        }
        // The connection stays here, marked closing, until the MSG_RING completes.
        conn.closing = true;
        let entry = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(conn.slot),
            types::DestinationSlot::auto_target(),
            token::plain(token::HANDOFF_IN, handoff_id),
        )
        .build()
        .user_data(token::conn(token::HANDOFF_OUT, key, conn.gen));
        self.push_sqe(entry);
    }

    pub(super) fn on_handoff_sent(&mut self, user_data: u64, result: i32) {
        let Some(key) = self.conn_for(user_data) else {
            return;
        };
        if result < 0 {
            tracing::warn!(
                shard = self.index,
                errno = -result,
                "handing a connection over failed"
            );
        }
        // Either way this shard is done with it; on success the home shard owns a copy.
        self.release_conn(key);
    }

    pub(super) fn on_handoff_arrived(&mut self, handoff_id: u64, result: i32) {
        self.drain_inbox();
        let Some((connect, unprocessed)) = self.handoffs.remove(&handoff_id) else {
            tracing::error!(
                shard = self.index,
                handoff_id,
                "a handed-over connection arrived without its record"
            );
            if result >= 0 {
                self.push_sqe(
                    opcode::Close::new(types::Fixed(result as u32))
                        .build()
                        .user_data(token::plain(token::CLOSE, 0)),
                );
            }
            return;
        };
        if result < 0 {
            tracing::warn!(
                shard = self.index,
                errno = -result,
                "receiving a handed-over connection failed"
            );
            return;
        }
        let mut session = Session::new(self.now_s);
        session.adopt_connect(&connect, unprocessed);
        let key = self.insert_conn(result as u32, session);
        self.arm_recv(key);
        let app_id = connect.username.as_deref().and_then(|u| u.parse().ok());
        match RegId::parse(&connect.client_id) {
            Some(regid) if self.shared.home_shard(regid) == self.index => {
                self.connect_device(key, regid, &connect, app_id)
            }
            _ => self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS),
        }
        self.flush(key);
    }

    pub(super) fn on_acked(&mut self, key: u32, push: PushRef) {
        let conn = &self.conns[key as usize];
        let Some(regid) = conn.device else { return };
        let backlog = conn.backlog;
        self.writer.submit(StoreJob {
            ops: vec![WriteOp::Acked {
                regid,
                seq: push.seq,
                id: push.id,
            }],
            done: None,
        });
        if backlog {
            self.pump(key);
        }
    }

    /// Fills the session's window from the store, in queue order.
    fn pump(&mut self, key: u32) {
        let now = Self::now_unix_s();
        loop {
            let conn = &self.conns[key as usize];
            let Some(regid) = conn.device else { return };
            if !conn.backlog || !conn.session.can_push() {
                return;
            }
            let Some(store) = self.stores.get(&regid.partition()) else {
                return;
            };
            let pending = match store.pending_for(&regid, conn.cursor, now, PENDING_BATCH) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(shard = self.index, error = %e, "reading pending messages failed");
                    return;
                }
            };
            let device = self
                .devices
                .get_mut(&regid)
                .expect("an attached connection's device is indexed");
            let conn = &mut self.conns[key as usize];
            let full = pending.len() == PENDING_BATCH;
            for message in pending {
                if !conn.session.can_push() {
                    return; // backlog stays set: the rest waits for acknowledgements
                }
                let dup = message.seq <= device.last_sent;
                let expiry =
                    u32::try_from(message.expires_at.saturating_sub(now)).unwrap_or(u32::MAX);
                conn.session.push(
                    PushRef {
                        seq: message.seq,
                        id: message.id,
                    },
                    dup,
                    Some(expiry),
                    &message.json,
                );
                conn.cursor = message.seq;
                device.last_sent = device.last_sent.max(message.seq);
            }
            if !full {
                conn.backlog = false;
                return;
            }
        }
    }

    pub(super) fn on_message(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Push {
                envelope,
                regids,
                reply,
            } => self.store_push(envelope, regids, reply),
            ShardMsg::Register { app_id, reply } => {
                let (regid, token, record) = self.new_device(app_id);
                let inbox = self.shared.inboxes[self.index].clone();
                self.writer.submit(StoreJob {
                    ops: vec![WriteOp::RegisterDevice { regid, record }],
                    done: Some(Box::new(move |result| {
                        inbox.send(ShardMsg::Stored {
                            result,
                            then: AfterStore::RegisteredHttp {
                                regid,
                                token,
                                reply,
                            },
                        });
                    })),
                });
                // Indexed now: the record is in the job, and a failed commit answers an error.
                self.devices.insert(
                    regid,
                    Device {
                        record,
                        conn: None,
                        last_sent: 0,
                    },
                );
            }
            ShardMsg::MessageStatus { app_id, id, reply } => {
                let mut total: Option<(u64, u64)> = None;
                for store in self.stores.values() {
                    match store.message_stats(app_id, id) {
                        Ok(Some((t, d))) => {
                            let sum = total.get_or_insert((0, 0));
                            sum.0 += t;
                            sum.1 += d;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = reply.send(Ok(total));
            }
            ShardMsg::Handoff {
                handoff_id,
                connect,
                unprocessed,
            } => {
                self.handoffs.insert(handoff_id, (connect, unprocessed));
            }
            ShardMsg::Stored { result, then } => self.on_stored(result, then),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn store_push(
        &mut self,
        envelope: Arc<crate::push::Envelope>,
        regids: Vec<RegId>,
        reply: futures_channel::oneshot::Sender<Result<PushPart, crate::store::StoreError>>,
    ) {
        let (valid, invalid): (Vec<RegId>, Vec<RegId>) = regids.into_iter().partition(|r| {
            self.devices
                .get(r)
                .is_some_and(|d| d.record.app_id == envelope.app_id)
        });
        if valid.is_empty() {
            let _ = reply.send(Ok(PushPart {
                targets: 0,
                invalid,
            }));
            return;
        }
        let seq = self.seq.next(Self::now_unix_ms());
        let mut by_partition: BTreeMap<u16, Vec<RegId>> = BTreeMap::new();
        for regid in &valid {
            by_partition
                .entry(regid.partition())
                .or_default()
                .push(*regid);
        }
        let ops = by_partition
            .into_values()
            .map(|regids| WriteOp::StorePush {
                envelope: envelope.clone(),
                seq,
                regids,
            })
            .collect();
        let inbox = self.shared.inboxes[self.index].clone();
        self.writer.submit(StoreJob {
            ops,
            done: Some(Box::new(move |result| {
                inbox.send(ShardMsg::Stored {
                    result,
                    then: AfterStore::Pushed {
                        envelope,
                        seq,
                        regids: valid,
                        invalid,
                        reply,
                    },
                });
            })),
        });
    }

    fn on_stored(&mut self, result: Result<(), crate::store::StoreError>, then: AfterStore) {
        match then {
            AfterStore::Registered {
                conn: key,
                gen,
                regid,
                token,
                record,
            } => {
                if result.is_ok() {
                    self.devices.insert(
                        regid,
                        Device {
                            record,
                            conn: None,
                            last_sent: 0,
                        },
                    );
                }
                let alive = self
                    .conns
                    .get(key as usize)
                    .is_some_and(|c| c.gen == gen && !c.closing);
                match (result, alive) {
                    (Ok(()), true) => {
                        let properties = Properties {
                            assigned_client_identifier: Some(regid.to_string()),
                            user_properties: vec![("token".to_owned(), token)],
                            ..Properties::default()
                        };
                        self.attach(key, regid, false, properties);
                    }
                    (Err(e), true) => {
                        tracing::error!(shard = self.index, error = %e, "registering a device failed");
                        self.refuse(
                            key,
                            reason::SERVER_UNAVAILABLE,
                            reason::V311_SERVER_UNAVAILABLE,
                        );
                        self.flush(key);
                    }
                    _ => {}
                }
            }
            AfterStore::RegisteredHttp {
                regid,
                token,
                reply,
            } => {
                if result.is_err() {
                    self.devices.remove(&regid);
                }
                let _ = reply.send(result.map(|()| (regid, token)));
            }
            AfterStore::Pushed {
                envelope,
                seq,
                regids,
                invalid,
                reply,
            } => {
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                    return;
                }
                let targets = regids.len() as u64;
                self.deliver_live(&envelope, seq, &regids);
                let _ = reply.send(Ok(PushPart { targets, invalid }));
            }
        }
    }

    /// Sends a just-stored push to the targets that are online and caught up.
    fn deliver_live(&mut self, envelope: &crate::push::Envelope, seq: u64, regids: &[RegId]) {
        let now = Self::now_unix_s();
        let expiry = u32::try_from(envelope.expires_at.saturating_sub(now)).unwrap_or(u32::MAX);
        for regid in regids {
            let Some(device) = self.devices.get_mut(regid) else {
                continue;
            };
            let Some(key) = device.conn else { continue };
            let conn = &mut self.conns[key as usize];
            if conn.closing || !conn.session.is_connected() || seq <= conn.cursor {
                continue; // already read from the store
            }
            if conn.backlog || !conn.session.can_push() {
                conn.backlog = true;
                continue;
            }
            conn.session.push(
                PushRef {
                    seq,
                    id: envelope.id,
                },
                seq <= device.last_sent,
                Some(expiry),
                &envelope.json,
            );
            conn.cursor = seq;
            device.last_sent = device.last_sent.max(seq);
            self.flush(key);
        }
    }
}
