//! A shard: one pinned thread that owns one io_uring instance, the connections it holds
//! (direct descriptors in the ring's fixed-file table), their sessions in a slab, the
//! devices homed on it, its store partitions and its counters.
//!
//! The loop moves bytes and time between the ring and the sans-IO sessions; what a
//! session's events mean for devices and messages is in `device.rs`.

mod chunked_submit;
mod control;
mod counting;
mod delivery;
mod device;
mod groups;
mod inbox;
mod pass_acks;
mod recent_groups;
mod send_budget;
mod tls_io;
mod token;
mod wake_relay;

pub use inbox::{
    defer_wakes_on_this_thread, flush_deferred_wakes, AfterStore, ControlError, PushPart, ShardInbox, ShardMsg,
    TopicPart,
};
pub use wake_relay::{relay_wakes_on_this_thread, Relayed};

use crate::ids::{MessageIdSource, RegId};
use crate::node::NodeShared;
use crate::session::{CloseReason, Event, Session, SessionLimits};
use crate::stats::{REFUSED_MAX_CONNECTIONS, REFUSED_RATE};
use crate::store::{DeviceRecord, PartitionStore, StoreWriter};
use crate::sys::BufRing;
use crossbeam_channel::Receiver;
use foldhash::{HashMap, HashMapExt};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Index of the MQTT-over-TLS listener in `Shard::listeners`.
const TLS_LISTENER: usize = 1;
/// Buffer group id of the shard's receive buffers.
const RECV_BGID: u16 = 0;
/// Seconds between timer ticks (keep-alive checks, re-arming a stopped accept).
const TICK: Duration = Duration::from_secs(1);
/// Seconds a send may make no progress before the device counts as not reading.
const SLOW_READER_S: u32 = 30;
/// How long shutdown waits for farewell bytes to leave.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Single-shot accepts kept in flight per listener while the connect rate limit is on (a
/// multishot accept gives no peer address).
const ACCEPTS_PER_LISTENER: usize = 16;

// The idle-connection budget (DESIGN.md: <= 512 bytes of user space per idle connection),
// checked by the compiler: a connection's slab entry plus its device's index entry.
const _: () = assert!(std::mem::size_of::<Conn>() <= 200);
const _: () = assert!(std::mem::size_of::<(RegId, Device)>() <= 88);

/// A device homed on this shard.
#[derive(Debug)]
pub struct Device {
    record: DeviceRecord,
    /// Slab key of its live connection, if any.
    conn: Option<u32>,
    /// Highest seq ever sent to it: a resend at or below it carries DUP.
    last_sent: u64,
    /// Group messages at or below this seq are done for this device (acknowledged, or
    /// sent before it registered).
    group_cursor: u64,
    /// The last day (since the epoch) it connected: daily active counts it once.
    active_day: u32,
    /// Aliases and topics; most devices have few or none, so they live behind one pointer.
    extras: Option<Box<DeviceExtras>>,
}

/// A device's aliases and topic memberships (topic id on this shard, seq it joined at).
/// The lists are boxed slices of their exact length: devices are many, their lists short
/// and seldom changed, and a `Vec` keeps room for four on its first push (one topic took
/// 64 bytes, now 16; the record itself 56, now 40).
#[derive(Debug, Default)]
struct DeviceExtras {
    aliases: Box<[Box<str>]>,
    topics: Box<[(u32, u64)]>,
    quiet: Option<crate::push::QuietHours>,
}

// A device with one topic costs this record plus 16 bytes; see `DeviceExtras`.
const _: () = assert!(std::mem::size_of::<DeviceExtras>() <= 40);

/// Appends `item` to an exact-length list.
fn append<T>(list: &mut Box<[T]>, item: T) {
    let mut items = std::mem::take(list).into_vec();
    items.reserve_exact(1);
    items.push(item);
    *list = items.into_boxed_slice();
    debug_assert!(!list.is_empty());
}

/// Removes the items of an exact-length list that `unwanted` picks; answers whether any were.
fn remove_where<T>(list: &mut Box<[T]>, unwanted: impl Fn(&T) -> bool) -> bool {
    if !list.iter().any(&unwanted) {
        return false;
    }
    let mut items = std::mem::take(list).into_vec();
    items.retain(|item| !unwanted(item));
    *list = items.into_boxed_slice();
    true
}

impl Device {
    fn new(record: DeviceRecord, group_cursor: u64) -> Self {
        Device { record, conn: None, last_sent: 0, group_cursor, active_day: 0, extras: None }
    }

    fn extras_mut(&mut self) -> &mut DeviceExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    fn aliases(&self) -> &[Box<str>] {
        self.extras.as_ref().map_or(&[], |e| &e.aliases)
    }

    fn topics(&self) -> &[(u32, u64)] {
        self.extras.as_ref().map_or(&[], |e| &e.topics)
    }

    /// Whether the device is in its quiet hours now: pushes wait on the node.
    fn is_quiet(&self, now_s: u64) -> bool {
        self.extras.as_ref().and_then(|e| e.quiet).is_some_and(|q| q.is_quiet(now_s))
    }

    /// Whether the device was in topic `id` before `seq`.
    fn joined_before(&self, id: u32, seq: u64) -> bool {
        self.topics().iter().any(|&(t, joined)| t == id && joined < seq)
    }
}

/// One connection. Idle, it holds no buffer: the session's vectors are empty.
struct Conn {
    slot: u32,
    gen: u32,
    session: Session,
    device: Option<RegId>,
    /// Highest seq queued into this session.
    cursor: u64,
    /// More pending messages may wait in the store than the session had room for.
    backlog: bool,
    /// Bytes being sent; owned here until the send completes.
    sending: Vec<u8>,
    sent: usize,
    /// When the current send last made progress (shard seconds): a reader that stalls it
    /// for [`SLOW_READER_S`] is cut off.
    send_progress_s: u32,
    send_inflight: bool,
    /// Bytes this connection holds for sending, as counted in the shard's send budget.
    charged: u32,
    /// Listed as waiting for room in the send budget.
    starved: bool,
    recv_armed: bool,
    closing: bool,
    /// Accepted over its source address's connect rate: its CONNECT gets 0x9F (3.1.1: 3).
    over_rate: bool,
    /// Set while the connection moves to its home shard.
    handoff: Option<Box<(crate::proto::Connect, usize)>>,
    /// The TLS layer of a connection accepted on the TLS listener.
    tls: Option<Box<rustls::ServerConnection>>,
}

/// A connection whose CONNECT authenticated for a device that has a live connection.
#[derive(Clone, Copy, Debug)]
struct Takeover {
    key: u32,
    gen: u32,
    regid: RegId,
    session_present: bool,
}

/// An accept the shard keeps armed on a listener.
struct AcceptOp {
    listener: usize,
    armed: bool,
    /// `None`: a multishot accept (no peer address). `Some`: a single-shot accept and where
    /// the kernel writes its peer's address, boxed so it stays put until the completion.
    peer: Option<Box<crate::sys::PeerAddr>>,
}

/// The shard's state; built and run on its own thread.
pub struct Shard {
    // Field order matters: the ring must drop before the buffers it reads into.
    ring: IoUring,
    bufs: BufRing,
    index: usize,
    shared: Arc<NodeShared>,
    /// The plain MQTT listener and, if configured, the MQTT-over-TLS one.
    listeners: Vec<TcpListener>,
    inbox_rx: Receiver<ShardMsg>,
    conns: Slab<Conn>,
    devices: HashMap<RegId, Device>,
    topics: groups::TopicIndex,
    aliases: groups::AliasIndex,
    stores: HashMap<u16, Arc<PartitionStore>>,
    /// The partition this shard keeps its group messages in.
    group_partition: u16,
    owned_partitions: Vec<u16>,
    next_partition: usize,
    writer: StoreWriter,
    seq: MessageIdSource,
    wake_buf: Box<[u8; 8]>,
    tick_ts: Box<types::Timespec>,
    started: Instant,
    now_s: u32,
    /// The node's wall clock (unix ms), read once per pass of the event loop: a fan-out's
    /// acknowledgements each read it (latency, day stats) and the reads were ~5% of the
    /// shard's time. A pass lasts milliseconds; every use has seconds' or ms' grain.
    pass_ms: u64,
    handoffs: HashMap<u64, HandoffRecord>,
    /// Connections waiting to take their device over from a live connection until the ring
    /// has been entered once more (`device.rs`, `connect_device`).
    takeovers: Vec<Takeover>,
    next_gen: u32,
    /// The accepts on the listeners: one multishot each, or, with the connect rate limit
    /// on, [`ACCEPTS_PER_LISTENER`] single-shot ones each. Indexed by the token's value.
    accepts: Vec<AcceptOp>,
    /// Plaintext out of TLS records, before the session reads it.
    tls_scratch: Box<[u8]>,
    stopping: Option<Instant>,
    events: Vec<Event>,
    limits: SessionLimits,
    metrics: Arc<crate::stats::ShardMetrics>,
    day_stats: crate::stats::ShardDayStats,
    live: HashMap<crate::ids::AppId, Arc<crate::stats::AppLive>>,
    last_stats_flush_s: u32,
    /// Acknowledged messages whose removal from the pending queue is not committed yet.
    unsynced_acks: HashMap<RegId, Vec<u64>>,
    /// Devices with pushes sent to the writer and not committed yet.
    unstored: HashMap<RegId, Unstored>,
    /// Group messages sent to the writer and not committed yet: no push goes out before
    /// its commit while one is, so it cannot overtake a group message a device is due.
    unstored_groups: u32,
    /// Connections given pushes while the inbox drains, flushed once it is empty: several
    /// messages for one device (a burst of topic messages committed together) go out in
    /// one send, not one each.
    flush_after_drain: Vec<u32>,
    /// Acknowledgements of this pass of the event loop, written at its end.
    pass_acks: pass_acks::PassAcks,
    /// The inbox is draining (what `flush_after_drain` relies on).
    draining: bool,
    /// Bytes the connections may hold for sending before deliveries wait in the store.
    send_budget: send_budget::SendBudget,
    /// The group messages committed last, read back from memory rather than the store.
    recent_groups: recent_groups::RecentGroups,
}

/// A device's pushes on their way into the store. A push goes out to an online device at
/// once, before its commit (the HTTP answer still waits for it); commits complete in seq
/// order, so the pushes a connection has not sent are always the newest ones.
#[derive(Debug, Default)]
struct Unstored {
    /// Pushes not committed yet.
    pushes: u32,
    /// How many of them the device's current connection has not sent: its reads of the
    /// store miss them, so each goes out when its commit completes, and no newer push
    /// overtakes them before that.
    unsent: u32,
}

/// What arrives over the queue for a connection handed over from another shard.
type HandoffRecord = (Box<crate::proto::Connect>, Vec<u8>, Option<Box<rustls::ServerConnection>>);

/// Everything a shard needs to start, prepared by the node.
pub struct ShardSetup {
    pub index: usize,
    pub shared: Arc<NodeShared>,
    pub listeners: Vec<TcpListener>,
    pub inbox_rx: Receiver<ShardMsg>,
    /// The database holding the shard's partitions (and, when several shards share a
    /// writer, theirs too).
    pub db: Arc<crate::store::StoreDb>,
    /// The shard's handle to that database's writer.
    pub writer: StoreWriter,
}

impl Shard {
    /// Builds the ring, registers the fixed-file table and buffer ring, loads the devices.
    pub fn new(setup: ShardSetup) -> Result<Self, crate::node::EngineError> {
        use crate::node::EngineError;
        let cfg = &setup.shared.config;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(cfg.completion_queue_entries)
            .build(cfg.submission_queue_entries)
            .map_err(|source| EngineError::Ring { what: "creating the io_uring instance", source })?;
        ring.submitter().register_files_sparse(cfg.max_connections_per_shard).map_err(|source| EngineError::Ring {
            what: "registering the fixed-file table (lower max_connections_per_shard or raise `ulimit -n`)",
            source,
        })?;
        let bufs = BufRing::new(&ring.submitter(), cfg.recv_buffers, cfg.recv_buffer_bytes, RECV_BGID)?;
        let send_budget = send_budget::SendBudget::new(cfg.send_buffer_bytes / cfg.shards);
        let mut devices = HashMap::new();
        let mut topics = groups::TopicIndex::default();
        let mut aliases = groups::AliasIndex::default();
        let ours = crate::store::layout::partitions_of(setup.index, cfg.shards, setup.shared.partitions);
        let stores: Vec<Arc<PartitionStore>> =
            setup.db.partitions().iter().filter(|s| ours.contains(&s.partition)).cloned().collect();
        assert_eq!(stores.len(), ours.len(), "the shard's database holds every partition the shard owns");
        for store in &stores {
            for (regid, record) in store.load_devices()? {
                devices.insert(regid, Device::new(record, 0));
            }
            for (regid, cursor) in store.load_group_cursors()? {
                if let Some(device) = devices.get_mut(&regid) {
                    device.group_cursor = cursor;
                }
            }
            for (regid, alias) in store.load_aliases()? {
                let Some(device) = devices.get_mut(&regid) else { continue };
                aliases.add(device.record.app_id, &alias, regid);
                append(&mut device.extras_mut().aliases, alias.into());
            }
            for (regid, hours) in store.load_quiet()? {
                if let Some(device) = devices.get_mut(&regid) {
                    device.extras_mut().quiet = Some(hours);
                }
            }
            for (regid, topic, joined) in store.load_subscriptions()? {
                let Some(device) = devices.get_mut(&regid) else { continue };
                let (id, created) = topics.join(device.record.app_id, &topic, regid);
                if created {
                    setup.shared.app_topics.appeared(device.record.app_id, &topic, usize::MAX);
                }
                append(&mut device.extras_mut().topics, (id, joined));
            }
        }
        let owned_partitions: Vec<u16> = stores.iter().map(|s| s.partition).collect();
        let group_partition = owned_partitions.first().copied().unwrap_or(0);
        let stored_up_to = match stores.iter().find(|s| s.partition == group_partition) {
            Some(store) => store.last_group_seq()?,
            None => u64::MAX, // no partition here: nothing to read back either way
        };
        let metrics = setup.shared.metrics[setup.index].clone();
        let today = crate::clock::day_of(crate::clock::now_unix_s());
        let mut day_stats = crate::stats::ShardDayStats { day: today, ..Default::default() };
        let mut pending_rows = 0;
        for store in &stores {
            pending_rows += store.pending_rows();
            for (regid, day) in store.load_active_days()? {
                if let Some(device) = devices.get_mut(&regid) {
                    device.active_day = day;
                }
            }
            if store.partition == group_partition {
                for (app_id, stats) in store.load_day(today)? {
                    if setup.index == 0 && stats.peak_online > 0 {
                        setup.shared.live.get(app_id).seed_peak(today, stats.peak_online, stats.peak_at);
                    }
                    day_stats.apps.insert(app_id, stats);
                }
            }
        }
        metrics.pending.store(pending_rows as i64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            shard = setup.index,
            devices = devices.len(),
            pending = pending_rows,
            partitions = owned_partitions.len(),
            "shard loaded"
        );
        let limits = SessionLimits { max_packet_bytes: cfg.max_packet_bytes };
        let single_shot = setup.shared.connect_limit.is_some();
        let per_listener = if single_shot { ACCEPTS_PER_LISTENER } else { 1 };
        let accepts = (0..setup.listeners.len())
            .flat_map(|listener| (0..per_listener).map(move |_| listener))
            .map(|listener| AcceptOp { listener, armed: false, peer: single_shot.then(Box::default) })
            .collect();
        Ok(Shard {
            ring,
            bufs,
            index: setup.index,
            shared: setup.shared,
            listeners: setup.listeners,
            inbox_rx: setup.inbox_rx,
            conns: Slab::new(),
            devices,
            topics,
            aliases,
            group_partition,
            metrics,
            day_stats,
            live: HashMap::new(),
            last_stats_flush_s: 0,
            unsynced_acks: HashMap::new(),
            unstored: HashMap::new(),
            unstored_groups: 0,
            flush_after_drain: Vec::new(),
            pass_acks: pass_acks::PassAcks::default(),
            send_budget,
            recent_groups: recent_groups::RecentGroups::new(stored_up_to),
            draining: false,
            stores: stores.into_iter().map(|s| (s.partition, s)).collect(),
            owned_partitions,
            next_partition: 0,
            writer: setup.writer,
            seq: MessageIdSource::default(),
            wake_buf: Box::new([0; 8]),
            tick_ts: Box::new(types::Timespec::from(TICK)),
            started: Instant::now(),
            pass_ms: crate::clock::now_unix_ms(),
            now_s: 0,
            handoffs: HashMap::new(),
            takeovers: Vec::new(),
            next_gen: 0,
            accepts,
            tls_scratch: vec![0; 16 * 1024].into_boxed_slice(),
            stopping: None,
            events: Vec::new(),
            limits,
        })
    }

    /// The ring's descriptor, the address other shards send connections to.
    pub fn ring_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }

    /// Runs until shutdown.
    pub fn run(mut self) {
        self.arm_accept();
        self.arm_wake();
        self.arm_tick();
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            // Takeovers deferred by the last pass complete after this one's completions:
            // entering the ring runs pending task work (the task-run flag makes the crate ask
            // for it even when not waiting), so what the old connections had received is read
            // first. No waiting while a takeover is due, nor while submissions are left over
            // (`chunked_submit`).
            let takeovers = std::mem::take(&mut self.takeovers);
            if let Err(e) = chunked_submit::enter(&mut self.ring, takeovers.is_empty()) {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!(shard = self.index, error = %e, "io_uring_enter failed");
                    break;
                }
            }
            self.pass_ms = crate::clock::now_unix_ms();
            completions.clear();
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for &(user_data, result, flags) in &completions {
                self.complete(user_data, result, flags);
            }
            for takeover in takeovers {
                self.take_over(takeover);
            }
            self.write_pass_acks(false);
            self.feed_starved();
            if let Some(since) = self.stopping {
                if self.conns.is_empty() || since.elapsed() > SHUTDOWN_GRACE {
                    tracing::info!(shard = self.index, left = self.conns.len(), "shard stopped");
                    break;
                }
            }
        }
        // Let the writer finish what it has: the last counts, the group cursors held in memory
        // and buffered commits reach the disk.
        self.pass_ms = crate::clock::now_unix_ms();
        self.write_pass_acks(true);
        self.flush_day_stats();
        let _ = self.ring.submit();
        self.writer.stop();
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) {
        match token::kind(user_data) {
            token::ACCEPT => self.on_accept(token::value(user_data) as usize, result, flags),
            token::RECV => self.on_recv(user_data, result, flags),
            token::SEND => self.on_send(user_data, result),
            token::WAKE => {
                self.shared.inboxes[self.index].eventfd().rearm();
                self.drain_inbox();
                self.arm_wake();
            }
            token::TICK => self.on_tick(),
            token::HANDOFF_OUT => self.on_handoff_sent(user_data, result),
            token::HANDOFF_IN => self.on_handoff_arrived(token::value(user_data), result),
            token::CLOSE | token::CANCEL => {}
            other => debug_assert!(false, "unknown completion kind {other}"),
        }
    }

    /// Queues a submission, submitting a chunk of the queue first when it is full.
    fn push_sqe(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this module points only at memory that outlives the
            // operation: receive buffers belong to the buffer ring, send buffers stay in their
            // `Conn` (or the conn stays in the slab) until the send completes, and `wake_buf`/
            // `tick_ts` and the accepts' `PeerAddr`s are boxed fields of the shard, which
            // outlives its ring's operations; a `PeerAddr` is rewritten (re-armed) only after
            // its accept completed (`AcceptOp::armed`).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = chunked_submit::enter(&mut self.ring, false) {
                tracing::error!(shard = self.index, error = %e, "submit failed");
            }
        }
    }

    /// The node's wall clock as read when this pass of the event loop began, in seconds.
    fn now_unix_s(&self) -> u64 {
        self.pass_ms / 1000
    }

    /// The node's wall clock as read when this pass of the event loop began, in ms.
    fn now_unix_ms(&self) -> u64 {
        self.pass_ms
    }

    /// Arms every accept that is not armed (at start and on the tick, after failures).
    fn arm_accept(&mut self) {
        for index in 0..self.accepts.len() {
            self.arm_accept_op(index);
        }
    }

    /// Arms one accept unless it is armed. Multishot or single-shot, an accepted connection
    /// goes straight into the fixed-file table.
    fn arm_accept_op(&mut self, index: usize) {
        let op = &mut self.accepts[index];
        if op.armed || self.stopping.is_some() {
            return;
        }
        op.armed = true;
        let fd = types::Fd(self.listeners[op.listener].as_raw_fd());
        let entry = match op.peer.as_deref_mut() {
            None => opcode::AcceptMulti::new(fd).allocate_file_index(true).build(),
            Some(peer) => {
                let (addr, addr_len) = peer.prepare();
                opcode::Accept::new(fd, addr, addr_len).file_index(Some(types::DestinationSlot::auto_target())).build()
            }
        };
        self.push_sqe(entry.user_data(token::plain(token::ACCEPT, index as u64)));
    }

    fn arm_wake(&mut self) {
        let fd = types::Fd(self.shared.inboxes[self.index].eventfd().raw_fd());
        let entry =
            opcode::Read::new(fd, self.wake_buf.as_mut_ptr(), 8).build().user_data(token::plain(token::WAKE, 0));
        self.push_sqe(entry);
    }

    fn arm_tick(&mut self) {
        let ts: *const types::Timespec = &*self.tick_ts;
        self.push_sqe(opcode::Timeout::new(ts).build().user_data(token::plain(token::TICK, 0)));
    }

    fn arm_recv(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        debug_assert!(!conn.recv_armed);
        conn.recv_armed = true;
        let entry = opcode::RecvMulti::new(types::Fixed(conn.slot), RECV_BGID).build().user_data(token::conn(
            token::RECV,
            key,
            conn.gen,
        ));
        self.push_sqe(entry);
    }

    fn on_accept(&mut self, index: usize, result: i32, flags: u32) {
        let Some(op) = self.accepts.get_mut(index) else {
            debug_assert!(false, "accept token {index} names no accept");
            return;
        };
        if !cqueue::more(flags) {
            op.armed = false;
        }
        if result < 0 {
            // -ENFILE: the fixed-file table is full; the tick re-arms accept.
            tracing::warn!(shard = self.index, errno = -result, "accept failed");
            return;
        }
        let (listener, peer) = (op.listener, op.peer.as_ref().and_then(|p| p.ip()));
        self.accepted(listener, result as u32, peer);
        self.arm_accept_op(index);
    }

    /// A connection arrived in fixed-file slot `slot`; `peer` is its address when the
    /// connect rate limit is on.
    fn accepted(&mut self, listener: usize, slot: u32, peer: Option<std::net::IpAddr>) {
        let close = opcode::Close::new(types::Fixed(slot)).build().user_data(token::plain(token::CLOSE, 0));
        if self.stopping.is_some() {
            self.push_sqe(close);
            return;
        }
        let max = self.shared.config.max_connections;
        if max > 0 {
            let held: i64 = self.shared.metrics.iter().map(|m| m.connections.load(Ordering::Relaxed)).sum();
            if held >= max as i64 {
                self.metrics.disconnects[3].fetch_add(1, Ordering::Relaxed);
                self.metrics.connects_refused[REFUSED_MAX_CONNECTIONS].fetch_add(1, Ordering::Relaxed);
                self.push_sqe(close);
                return;
            }
        }
        let over_rate = match (&self.shared.connect_limit, peer) {
            (Some(limit), Some(ip)) if !limit.admit(ip, self.shared.uptime_ms()) => {
                self.metrics.connects_refused[REFUSED_RATE].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(shard = self.index, %ip, "over its connect rate: the CONNECT will be refused");
                true
            }
            _ => false,
        };
        let tls = if listener == TLS_LISTENER {
            let Some(config) = self.shared.tls.clone() else {
                self.push_sqe(close);
                return;
            };
            match rustls::ServerConnection::new(config) {
                Ok(tls) => Some(Box::new(tls)),
                Err(e) => {
                    tracing::warn!(shard = self.index, error = %e, "starting TLS failed");
                    self.push_sqe(close);
                    return;
                }
            }
        } else {
            None
        };
        let key = self.insert_conn(slot, Session::new(self.now_s), tls);
        self.conns[key as usize].over_rate = over_rate;
        self.arm_recv(key);
    }

    fn insert_conn(&mut self, slot: u32, session: Session, tls: Option<Box<rustls::ServerConnection>>) -> u32 {
        self.metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.next_gen = token::next_gen(self.next_gen);
        let key = self.conns.insert(Conn {
            slot,
            gen: self.next_gen,
            session,
            device: None,
            cursor: 0,
            backlog: false,
            sending: Vec::new(),
            sent: 0,
            send_progress_s: 0,
            send_inflight: false,
            charged: 0,
            starved: false,
            recv_armed: false,
            closing: false,
            over_rate: false,
            handoff: None,
            tls,
        });
        u32::try_from(key).expect("slab keys stay below the fixed-file table size")
    }

    /// The live connection behind a completion, if it is still the same connection.
    fn conn_for(&self, user_data: u64) -> Option<u32> {
        let key = token::key(user_data);
        let conn = self.conns.get(key as usize)?;
        (conn.gen == token::gen(user_data)).then_some(key)
    }

    fn on_recv(&mut self, user_data: u64, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(key) = self.conn_for(user_data) else {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.bufs.release(bid, result.max(0) as usize, cqueue::buffer_more(flags));
            }
            return;
        };
        if !more {
            self.conns[key as usize].recv_armed = false;
        }
        if result > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                debug_assert!(false, "a recv with data carries its buffer");
                return;
            };
            let conn = &mut self.conns[key as usize];
            let mut tls_failed = false;
            if !conn.closing {
                let data = self.bufs.get(bid, result as usize);
                match conn.tls.as_mut() {
                    None => conn.session.handle_bytes(self.now_s, data, self.limits, &mut self.events),
                    Some(tls) => {
                        let session = &mut conn.session;
                        tls_failed = tls_io::receive(tls, data, &mut self.tls_scratch, |plain| {
                            session.handle_bytes(self.now_s, plain, self.limits, &mut self.events)
                        })
                        .is_err();
                    }
                }
            }
            self.bufs.release(bid, result as usize, cqueue::buffer_more(flags));
            if tls_failed {
                self.close_conn(key, CloseReason::Malformed(crate::session::reason::MALFORMED_PACKET));
            } else {
                self.process_events(key);
            }
        } else if result == -libc::ECANCELED && self.conns[key as usize].handoff.is_some() {
            // Our own cancel before the connection moves to its home shard.
        } else if result != -libc::ENOBUFS {
            // End of stream (0) or a socket error; ENOBUFS only means re-arm.
            self.close_conn(key, CloseReason::ClientDisconnect);
        }
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        if conn.recv_armed || conn.closing {
            return;
        }
        if conn.handoff.is_some() {
            self.finish_handoff(key);
        } else if !conn.session.is_closed() {
            self.arm_recv(key);
        }
    }

    /// Handles the events the session produced and sends what it queued.
    fn process_events(&mut self, key: u32) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                Event::Connect(connect) => self.on_connect(key, connect),
                Event::Acked(push) => self.on_acked(key, push),
                Event::Subscribe(subscribe) => self.on_subscribe(key, subscribe),
                Event::Unsubscribe(unsubscribe) => self.on_unsubscribe(key, unsubscribe),
                Event::Control { topic, payload, packet_id } => self.on_control(key, topic, &payload, packet_id),
                Event::Close(reason) => self.close_conn(key, reason),
            }
        }
        self.events = events;
        self.flush(key);
    }

    /// Starts sending what the session queued, unless a send is in flight.
    fn flush(&mut self, key: u32) {
        self.start_send(key);
        self.recharge(key);
    }

    fn start_send(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.send_inflight || conn.handoff.is_some() {
            return;
        }
        if conn.sending.is_empty() {
            match conn.tls.as_mut() {
                None if conn.session.has_output() => conn.sending = conn.session.take_output(),
                None => {}
                Some(tls) => tls_io::seal(tls, &mut conn.session, &mut conn.sending),
            }
            if conn.sending.is_empty() {
                conn.sending = Vec::new(); // idle connections hold no send buffer
                if conn.closing {
                    self.release_conn(key);
                }
                return;
            }
            conn.sent = 0;
        }
        self.submit_send(key);
    }

    fn submit_send(&mut self, key: u32) {
        let conn = &mut self.conns[key as usize];
        debug_assert!(conn.sent < conn.sending.len());
        conn.send_inflight = true;
        conn.send_progress_s = self.now_s;
        let rest = &conn.sending[conn.sent..];
        let entry = opcode::Send::new(types::Fixed(conn.slot), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token::conn(token::SEND, key, conn.gen));
        self.push_sqe(entry);
    }

    fn on_send(&mut self, user_data: u64, result: i32) {
        let Some(key) = self.conn_for(user_data) else {
            debug_assert!(false, "a connection stays in the slab while it sends");
            return;
        };
        let conn = &mut self.conns[key as usize];
        conn.send_inflight = false;
        if result <= 0 {
            conn.sending = Vec::new();
            conn.closing = true;
            conn.session.abandon();
            let _ = conn.session.take_output();
            self.release_conn(key);
            return;
        }
        conn.sent += result as usize;
        if conn.sent < conn.sending.len() {
            self.submit_send(key);
            self.recharge(key);
            return;
        }
        conn.sending.clear();
        conn.sent = 0;
        self.flush(key);
    }

    /// Ends a connection: its farewell bytes go out first, then the descriptor closes.
    fn close_conn(&mut self, key: u32, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing {
            return;
        }
        tracing::debug!(shard = self.index, ?reason, "closing connection");
        conn.closing = true;
        let device = conn.device.take();
        // A connection that ends before its handoff went out is closed here instead.
        conn.handoff = None;
        conn.session.abandon();
        if let Some(tls) = conn.tls.as_mut() {
            tls_io::close(tls, &mut conn.session);
        }
        self.count_close(reason);
        if let Some(regid) = device {
            self.detach(key, regid);
        }
        self.flush(key);
    }

    /// Ends a connection whose send cannot finish (the peer stopped reading): cancels every
    /// operation on it; the cancelled send's completion then releases it.
    fn abort_conn(&mut self, key: u32, reason: CloseReason) {
        tracing::info!(shard = self.index, ?reason, "cutting off a device that stopped reading");
        self.close_conn(key, reason);
        let Some(conn) = self.conns.get(key as usize) else { return };
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(conn.slot)).all())
            .build()
            .user_data(token::plain(token::CANCEL, 0));
        self.push_sqe(cancel);
    }

    /// Cancels the connection's receive, closes its slot and frees its slab entry.
    fn release_conn(&mut self, key: u32) {
        let conn = &self.conns[key as usize];
        debug_assert!(!conn.send_inflight, "a sending connection keeps its buffer");
        let slot = conn.slot;
        if conn.recv_armed {
            // By user data, not by descriptor: the kernel finds a request by its user data
            // in a hash table, while a match on the descriptor scans every armed request of
            // the ring (at 100k connections that scan was a third of the node's CPU).
            let recv = token::conn(token::RECV, key, conn.gen);
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(recv))
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(token::plain(token::CANCEL, 0));
            self.push_sqe(cancel);
        }
        let close = opcode::Close::new(types::Fixed(slot)).build().user_data(token::plain(token::CLOSE, 0));
        self.push_sqe(close);
        let conn = self.conns.remove(key as usize);
        self.send_budget.recharge(conn.charged, 0);
        self.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(regid) = conn.device {
            self.detach(key, regid);
        }
    }

    fn on_tick(&mut self) {
        self.now_s = self.started.elapsed().as_secs() as u32;
        self.arm_tick();
        self.arm_accept();
        let now = self.now_s;
        let expired: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && c.handoff.is_none() && c.session.is_timed_out(now))
            .map(|(k, _)| k as u32)
            .collect();
        for key in expired {
            self.conns[key as usize].session.time_out();
            self.close_conn(key, CloseReason::Timeout);
        }
        let stalled: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.send_inflight && now.saturating_sub(c.send_progress_s) > SLOW_READER_S)
            .map(|(k, _)| k as u32)
            .collect();
        for key in stalled {
            self.abort_conn(key, CloseReason::SlowReader);
        }
        self.uncharge_stalled();
        // Devices whose quiet hours ended get what waited for them.
        let wall = self.now_unix_s();
        let waiting: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.backlog && !c.closing && c.session.is_connected())
            .filter(|(_, c)| {
                c.device
                    .and_then(|r| self.devices.get(&r))
                    .is_some_and(|d| d.extras.as_ref().is_some_and(|e| e.quiet.is_some()) && !d.is_quiet(wall))
            })
            .map(|(k, _)| k as u32)
            .collect();
        for key in waiting {
            self.pump(key);
            self.flush(key);
        }
        if now >= self.last_stats_flush_s + counting::STATS_FLUSH_S {
            self.last_stats_flush_s = now;
            self.flush_day_stats();
        }
    }

    fn drain_inbox(&mut self) {
        debug_assert!(!self.draining, "the inbox drains from the event loop only, never from within a drain");
        self.draining = true;
        while let Ok(msg) = self.inbox_rx.try_recv() {
            self.on_message(msg);
        }
        self.draining = false;
        while let Some(key) = self.flush_after_drain.pop() {
            self.flush(key); // a repeat finds the send in flight and returns
        }
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.conns[key as usize].session.close(crate::session::reason::SERVER_SHUTTING_DOWN);
            self.close_conn(key, CloseReason::Server);
        }
    }
}
