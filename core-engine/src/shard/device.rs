//! How a connection becomes a device's: authenticating a CONNECT, registering new
//! devices, and moving a connection to its device's home shard.

use super::inbox::{AfterStore, ShardMsg};
use super::{token, Device, Shard, Takeover};
use crate::ids::{hash_eq, random_secret, secret_hash, AppId, RegId};
use crate::proto::{Connect, Properties, Version};
use crate::session::{reason, CloseReason, Session};
use crate::store::{DeviceRecord, StoreJob, WriteOp};
use io_uring::{opcode, types};

impl Shard {
    fn refuse(&mut self, key: u32, code_v5: u8, code_v311: u8) {
        self.conns[key as usize].session.refuse(code_v5, code_v311);
        self.close_conn(key, CloseReason::Refused);
    }

    /// Authenticates a CONNECT, or hands the connection to the device's home shard; refuses
    /// it without further work when the connection came over its address's connect rate.
    pub(super) fn on_connect(&mut self, key: u32, connect: Box<Connect>) {
        if self.conns[key as usize].over_rate {
            // Counted and logged at accept; no credentials are looked at.
            return self.refuse(key, reason::CONNECTION_RATE_EXCEEDED, reason::V311_SERVER_UNAVAILABLE);
        }
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
            let token = connect.password.as_deref().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("");
            Some(device.record.app_id) == app_id && hash_eq(&device.record.token_hash, &secret_hash(token))
        };
        let Some(device) = self.devices.get(&regid) else {
            return self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS);
        };
        if !token_ok(device) {
            return self.refuse(key, reason::BAD_CREDENTIALS, reason::V311_BAD_CREDENTIALS);
        }
        let takeover =
            Takeover { key, gen: self.conns[key as usize].gen, regid, session_present: !connect.clean_start };
        if device.conn.is_some_and(|old| old != key) {
            // The device's old connection may have sent more than this shard has read: a
            // client that acknowledges a push, disconnects and connects again wrote the
            // PUBACK before this CONNECT, but its receive completion can still wait as task
            // work while this CONNECT (or its handoff, posted straight into the ring) is
            // here. The takeover waits one pass through the kernel, which runs that work
            // first, so a push the device acknowledged is not sent to it again.
            self.takeovers.push(takeover);
            return;
        }
        self.take_over(takeover);
    }

    /// Closes the device's old connection if it still has one, and attaches the new one.
    pub(super) fn take_over(&mut self, t: Takeover) {
        let alive = self.conns.get(t.key as usize).is_some_and(|c| c.gen == t.gen && !c.closing);
        if !alive {
            return;
        }
        if let Some(old) = self.devices.get(&t.regid).and_then(|d| d.conn).filter(|&old| old != t.key) {
            self.conns[old as usize].session.close(reason::SESSION_TAKEN_OVER);
            self.close_conn(old, CloseReason::Server);
            self.flush(old);
        }
        self.attach(t.key, t.regid, t.session_present, Properties::default());
        self.flush(t.key);
    }

    /// Binds a connection to its device, answers CONNACK and starts delivery.
    fn attach(&mut self, key: u32, regid: RegId, session_present: bool, properties: Properties) {
        let Some(device) = self.devices.get_mut(&regid) else {
            return;
        };
        device.conn = Some(key);
        if let Some(unstored) = self.unstored.get_mut(&regid) {
            // The store does not hold these yet, so this connection's reads miss them.
            unstored.unsent = unstored.pushes;
        }
        self.count_attach(regid);
        let conn = &mut self.conns[key as usize];
        conn.device = Some(regid);
        conn.cursor = 0;
        conn.backlog = true;
        conn.session.accept(self.now_s, session_present, properties, self.limits, &mut self.events);
        self.pump(key);
        self.process_events(key);
    }

    fn register_over_mqtt(&mut self, key: u32, connect: &Connect, app_id: Option<AppId>) {
        if connect.version == Version::V311 {
            return self.refuse(key, reason::CLIENT_ID_INVALID, reason::V311_ID_REJECTED);
        }
        let key_ok = app_id
            .is_some_and(|app| self.shared.apps.check_device_key(app, connect.password.as_deref().unwrap_or(&[])));
        let (Some(app_id), true) = (app_id, key_ok) else {
            return self.refuse(key, reason::NOT_AUTHORIZED, reason::V311_NOT_AUTHORIZED);
        };
        let gen = self.conns[key as usize].gen;
        let (regid, token, record, ops) = self.new_device(app_id);
        let inbox = self.shared.inboxes[self.index].clone();
        self.writer.submit(StoreJob {
            ops,
            done: Some(Box::new(move |result| {
                let then = AfterStore::Registered { conn: key, gen, regid, token, record: Box::new(record) };
                inbox.send_quiet(ShardMsg::Stored { result, then });
            })),
            // A device waits too, but registrations come in storms: their commits stay large.
            awaited: false,
        });
    }

    /// A new device of `app_id` in one of this shard's partitions, and the writes that
    /// register it. It joins the broadcast stream from now on (its group cursor).
    pub(super) fn new_device(&mut self, app_id: AppId) -> (RegId, String, Device, Vec<WriteOp>) {
        assert!(!self.owned_partitions.is_empty(), "every shard owns a partition (partitions >= shards)");
        let partition = self.owned_partitions[self.next_partition % self.owned_partitions.len()];
        self.next_partition = self.next_partition.wrapping_add(1);
        let regid = RegId::generate(partition);
        let token = random_secret::<16>();
        let record = DeviceRecord { app_id, token_hash: secret_hash(&token), created_at: self.now_unix_s() };
        let group_cursor = self.seq.next(self.now_unix_ms());
        let ops = vec![WriteOp::RegisterDevice { regid, record }, WriteOp::GroupCursor { regid, seq: group_cursor }];
        (regid, token, Device::new(record, group_cursor), ops)
    }

    fn start_handoff(&mut self, key: u32, connect: Box<Connect>, home: usize) {
        let conn = &mut self.conns[key as usize];
        conn.handoff = Some(Box::new((*connect, home)));
        if conn.recv_armed {
            let cancel =
                opcode::AsyncCancel2::new(types::CancelBuilder::user_data(token::conn(token::RECV, key, conn.gen)))
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
        let tls = conn.tls.take();
        let handoff_id = self.shared.next_handoff_id();
        let Some(&ring_fd) = self.shared.ring_fds.get().and_then(|fds| fds.get(home)) else {
            return self.close_conn(key, CloseReason::Server);
        };
        if !self.shared.inboxes[home].send_quiet(ShardMsg::Handoff {
            handoff_id,
            connect: Box::new(connect),
            unprocessed,
            tls,
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
            tracing::warn!(shard = self.index, errno = -result, "handing a connection over failed");
        }
        // Either way this shard is done with it; on success the home shard owns a copy.
        self.release_conn(key);
    }

    pub(super) fn on_handoff_arrived(&mut self, handoff_id: u64, result: i32) {
        self.drain_inbox();
        let Some((connect, unprocessed, tls)) = self.handoffs.remove(&handoff_id) else {
            tracing::error!(shard = self.index, handoff_id, "a handed-over connection arrived without its record");
            if result >= 0 {
                self.push_sqe(
                    opcode::Close::new(types::Fixed(result as u32)).build().user_data(token::plain(token::CLOSE, 0)),
                );
            }
            return;
        };
        if result < 0 {
            tracing::warn!(shard = self.index, errno = -result, "receiving a handed-over connection failed");
            return;
        }
        let mut session = Session::new(self.now_s);
        session.adopt_connect(&connect, unprocessed);
        let key = self.insert_conn(result as u32, session, tls);
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
}

impl Shard {
    /// A registration over MQTT committed (or failed): answer the CONNECT.
    pub(super) fn registered_over_mqtt(
        &mut self,
        key: u32,
        gen: u32,
        regid: RegId,
        token: String,
        result: Result<(), crate::store::StoreError>,
    ) {
        let alive = self.conns.get(key as usize).is_some_and(|c| c.gen == gen && !c.closing);
        if result.is_ok() {
            if let Some(app_id) = self.devices.get(&regid).map(|d| d.record.app_id) {
                self.count(app_id, |s| s.new += 1);
            }
        }
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
                self.refuse(key, reason::SERVER_UNAVAILABLE, reason::V311_SERVER_UNAVAILABLE);
                self.flush(key);
            }
            _ => {}
        }
    }
}
