//! A node: starts the shards (one pinned thread each), their store partitions and the
//! store's writers, the app registry, and gives the HTTP frontend a handle that routes
//! requests to shards.

use crate::apps::AppRegistry;
use crate::ids::message_id_text;
use crate::ids::{AppId, MessageId, MessageIdSource, RegId};
use crate::push::{GroupFilter, PushError, SendRequest, Target};
use crate::shard::{ControlError, Relayed, Shard, ShardInbox, ShardMsg, ShardSetup};
use crate::store::{Durability, MessageStats, Notify, PartitionStore, StoreDb, StoreError, StoreWriter};
use crate::sys::BufRingError;
use futures_channel::oneshot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// The engine's settings (the binary maps its TOML config onto this).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub mqtt_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Shard threads; pinned round-robin to the cores.
    pub shards: usize,
    /// Partitions of a new data folder (fixed once created; at least `shards`).
    pub partitions: u16,
    /// Store databases, each with its writer thread; divides `shards`. Shard `i` keeps its
    /// partitions in database `i % store_writers`, whose writer commits several shards'
    /// jobs together when shards outnumber writers ([`store_writers_for`]).
    pub store_writers: usize,
    /// Size of each shard's fixed-file table: the connections one shard can hold.
    pub max_connections_per_shard: u32,
    pub recv_buffers: u16,
    pub recv_buffer_bytes: u32,
    pub max_packet_bytes: usize,
    pub durability: Durability,
    /// redb page cache of all partitions together; each gets `store_cache_bytes / partitions`.
    pub store_cache_bytes: usize,
    /// Bytes all shards may hold for sending to devices; each gets `send_buffer_bytes / shards`.
    pub send_buffer_bytes: usize,
    pub submission_queue_entries: u32,
    pub completion_queue_entries: u32,
    pub listen_backlog: i32,
    pub max_aliases_per_device: usize,
    pub max_topics_per_device: usize,
    pub max_topics_per_app: usize,
    pub max_pending_per_device: u32,
    /// Seconds a message's counts answer status queries (see [`crate::store::StoreLimits`]).
    pub message_stats_secs: u64,
    /// Connections the node holds at most (0: only the per-shard tables limit it).
    pub max_connections: u64,
    /// New connections a second one source address (IPv4, or IPv6 /64) may open; beyond it
    /// CONNECT is refused (0x9F / 3.1.1 code 3). 0 turns the limit off.
    pub connect_rate_per_ip: u32,
    /// New connections one source address may open at once before the rate applies.
    pub connect_burst_per_ip: u32,
    /// Address for MQTT over TLS (needs `tls_cert` and `tls_key`).
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain and private key for the TLS listeners.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("{what}: {source}")]
    Ring { what: &'static str, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    BufRing(#[from] BufRingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the data folder has {partitions} partitions, fewer than the {shards} shards asked for; use at most {partitions} shards")]
    TooManyShards { shards: usize, partitions: u16 },
    #[error("store_writers must be at least 1 and divide the shard count: {writers} writers for {shards} shards")]
    StoreWriters { writers: usize, shards: usize },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("mqtt_tls_listen needs tls_cert and tls_key")]
    TlsFilesMissing,
    #[error("shard {index} failed to start: {reason}")]
    ShardStart { index: usize, reason: String },
}

/// App topics across shards: how many shards hold each topic, so the per-app topic limit
/// holds node-wide. Consulted only when a topic appears on or vanishes from a shard.
#[derive(Default)]
pub struct AppTopics {
    counts: std::sync::Mutex<std::collections::HashMap<AppId, std::collections::HashMap<Box<str>, u32>>>,
}

impl AppTopics {
    /// A shard holds `topic` now; false (and nothing changes) if it is new to the app and
    /// the app already has `limit` topics.
    pub fn appeared(&self, app_id: AppId, topic: &str, limit: usize) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let app = counts.entry(app_id).or_default();
        if let Some(n) = app.get_mut(topic) {
            *n += 1;
            return true;
        }
        if app.len() >= limit {
            return false;
        }
        app.insert(topic.into(), 1);
        true
    }

    /// A shard no longer holds `topic`.
    pub fn vanished(&self, app_id: AppId, topic: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(app) = counts.get_mut(&app_id) {
            if let Some(n) = app.get_mut(topic) {
                *n -= 1;
                if *n == 0 {
                    app.remove(topic);
                }
            }
        }
    }
}

/// What every shard and the frontend share; read-only after start.
pub struct NodeShared {
    /// Deliveries and clicks for the callback dispatcher ([`NodeHandle::receipts`]).
    pub receipts:
        (crossbeam_channel::Sender<crate::stats::Receipt>, crossbeam_channel::Receiver<crate::stats::Receipt>),
    /// The TLS configuration of the MQTT-over-TLS listener, if there is one.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub app_topics: AppTopics,
    /// The per-source-address connect rate limit, if on; shared because SO_REUSEPORT
    /// spreads one address's connections over all shards.
    pub connect_limit: Option<crate::connect_limit::ConnectRateLimit>,
    /// The clock the connect limit runs on (monotonic, common to all shards).
    pub started: std::time::Instant,
    pub live: crate::stats::LiveApps,
    pub metrics: Vec<Arc<crate::stats::ShardMetrics>>,
    pub config: EngineConfig,
    pub apps: Arc<AppRegistry>,
    pub inboxes: Vec<ShardInbox>,
    pub ring_fds: OnceLock<Vec<i32>>,
    pub partitions: u16,
    handoff_ids: AtomicU64,
    /// Round robin over shards for registrations over HTTP.
    next_register_shard: std::sync::atomic::AtomicUsize,
}

impl NodeShared {
    /// The shard a device lives on.
    pub fn home_shard(&self, regid: RegId) -> usize {
        usize::from(regid.partition()) % self.inboxes.len()
    }

    /// Milliseconds since the node started, the same on every shard.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn next_handoff_id(&self) -> u64 {
        self.handoff_ids.fetch_add(1, Ordering::Relaxed) & ((1 << 56) - 1)
    }
}

/// A running node.
pub struct Node {
    shared: Arc<NodeShared>,
    threads: Vec<JoinHandle<()>>,
    message_ids: Arc<MessageIdSource>,
}

/// The store writers for `shards` shards on `cores` cores: one per shard while shards do
/// not outnumber the cores, else the most that divides the shard count and does not
/// outnumber the cores. Each writer commits every ~1 ms while pushes flow, whatever its
/// load: at 100k connections (8 shards on 2 cores) eight writers took a third of the
/// node's CPU in small commits and context switches, two take half as much (BENCHMARKS.md,
/// sixteenth session).
pub fn store_writers_for(shards: usize, cores: usize) -> usize {
    assert!(shards >= 1, "at least one shard");
    (1..=shards.min(cores.max(1))).rev().find(|&w| shards.is_multiple_of(w)).expect("1 divides every count")
}

/// Starts one writer per database; gives each shard its handle (index = shard index).
/// Database `w` serves shards `w`, `w + writers`, ...; its events go to shard `w`.
fn start_writers(
    config: &EngineConfig,
    shared: &Arc<NodeShared>,
    dbs: &[Arc<StoreDb>],
    wal_paths: &[[PathBuf; 2]],
    next_lsn: u64,
) -> Result<Vec<Option<StoreWriter>>, EngineError> {
    let mut handles: Vec<Option<StoreWriter>> = (0..config.shards).map(|_| None).collect();
    for (w, db) in dbs.iter().enumerate() {
        let served: Vec<usize> = (w..config.shards).step_by(dbs.len()).collect();
        let lead = shared.inboxes[w].clone();
        let on_events: crate::store::EventSink = Box::new(move |events| {
            lead.send_quiet(ShardMsg::StoreEvents(events));
        });
        let wakes = served
            .iter()
            .map(|&shard| {
                let inbox = shared.inboxes[shard].clone();
                Arc::new(move || inbox.wake()) as Arc<dyn Fn() + Send + Sync>
            })
            .collect();
        let wal = crate::store::WalSetup { paths: wal_paths[w].clone(), next_lsn };
        let started = StoreWriter::start(
            format!("store-{w}"),
            db.clone(),
            config.durability,
            &wal,
            Notify { on_events, wakes },
            shared.metrics[w].clone(),
        )
        .map_err(|e| EngineError::Store(StoreError(e.to_string())))?;
        for (shard, handle) in served.into_iter().zip(started) {
            handles[shard] = Some(handle);
        }
    }
    Ok(handles)
}

/// `data/node.json`: what the data folder was made with.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeMeta {
    partitions: u16,
    /// The count of store files (one per writer) the store is laid out for
    /// (`store/layout.rs`); absent in a folder from before shard databases (one file per
    /// partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store_shards: Option<usize>,
}

fn read_or_create_meta(config: &EngineConfig) -> Result<NodeMeta, EngineError> {
    let path = config.data_dir.join("node.json");
    let io = |what, source| EngineError::Io { what, source };
    match std::fs::read(&path) {
        Ok(raw) => {
            serde_json::from_slice::<NodeMeta>(&raw).map_err(|e| io("reading data/node.json", std::io::Error::other(e)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let partitions = config.partitions.max(config.shards as u16).max(1);
            let meta = NodeMeta { partitions, store_shards: Some(config.store_writers) };
            write_meta(&config.data_dir, &meta).map_err(|e| io("writing data/node.json", e))?;
            Ok(meta)
        }
        Err(e) => Err(io("reading data/node.json", e)),
    }
}

/// Replaces `node.json` durably: a crash leaves the old or the new one, whole.
fn write_meta(dir: &std::path::Path, meta: &NodeMeta) -> std::io::Result<()> {
    use std::io::Write;
    let (path, tmp) = (dir.join("node.json"), dir.join("node.json.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(meta).expect("plain struct"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Node {
    /// Opens the data folder, starts every shard and waits until all listen.
    pub fn start(config: EngineConfig) -> Result<Node, EngineError> {
        assert!(config.shards >= 1, "at least one shard");
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| EngineError::Io { what: "creating the data folder", source })?;
        let meta = read_or_create_meta(&config)?;
        let partitions = meta.partitions;
        if config.shards > usize::from(partitions) {
            return Err(EngineError::TooManyShards { shards: config.shards, partitions });
        }
        let writers = config.store_writers;
        if writers == 0 || !config.shards.is_multiple_of(writers) {
            return Err(EngineError::StoreWriters { writers, shards: config.shards });
        }
        let apps = Arc::new(AppRegistry::open(&config.data_dir)?);
        let tls = match (&config.mqtt_tls_listen, &config.tls_cert, &config.tls_key) {
            (None, _, _) => None,
            (Some(_), Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            (Some(_), _, _) => return Err(EngineError::TlsFilesMissing),
        };
        let mut inboxes = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.shards {
            let (inbox, rx) =
                ShardInbox::new().map_err(|source| EngineError::Io { what: "creating an eventfd", source })?;
            inboxes.push(inbox);
            receivers.push(rx);
        }
        // One node-wide cache budget, shared by the databases.
        let cache_bytes = config.store_cache_bytes / writers;
        let limits = crate::store::StoreLimits {
            max_pending_per_device: config.max_pending_per_device,
            stats_kept_secs: config.message_stats_secs,
        };
        let dbs = crate::store::layout::open(
            &config.data_dir,
            partitions,
            writers,
            meta.store_shards,
            cache_bytes,
            limits,
            |files| {
                write_meta(&config.data_dir, &NodeMeta { partitions, store_shards: Some(files) })
                    .map_err(|e| StoreError(format!("writing data/node.json: {e}")))
            },
        )?;
        let dbs: Vec<Arc<StoreDb>> = dbs.into_iter().map(Arc::new).collect();
        let wal_paths: Vec<_> = (0..writers).map(|i| crate::store::wal::paths_of(&config.data_dir, i)).collect();
        let in_use: Vec<_> = wal_paths.iter().flatten().cloned().collect();
        let keep: &[_] = if config.durability == crate::store::Durability::Fsync { &in_use } else { &[] };
        let all: std::collections::BTreeMap<u16, Arc<PartitionStore>> =
            dbs.iter().flat_map(|db| db.partitions()).map(|s| (s.partition, s.clone())).collect();
        let recovered = crate::store::wal::recover(&config.data_dir, &all, keep)?;
        if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                writes = recovered.writes,
                "replayed the write-ahead logs after a crash"
            );
        }
        let shared = Arc::new(NodeShared {
            config: config.clone(),
            apps,
            inboxes,
            ring_fds: OnceLock::new(),
            tls,
            receipts: crossbeam_channel::bounded(crate::stats::RECEIPT_QUEUE),
            app_topics: AppTopics::default(),
            connect_limit: crate::connect_limit::ConnectRateLimit::new(
                config.connect_rate_per_ip,
                config.connect_burst_per_ip,
            ),
            started: std::time::Instant::now(),
            live: crate::stats::LiveApps::default(),
            metrics: (0..config.shards).map(|_| Arc::default()).collect(),
            partitions,
            handoff_ids: AtomicU64::new(1),
            next_register_shard: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut handles = start_writers(&config, &shared, &dbs, &wal_paths, recovered.next_lsn)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<i32, String>)>();
        let go = Arc::new(std::sync::Barrier::new(config.shards + 1));
        let mut threads = Vec::new();
        for (index, inbox_rx) in receivers.into_iter().enumerate() {
            let db = dbs[index % writers].clone();
            let writer = handles[index].take().expect("every shard has a writer");
            let mut listeners = vec![crate::sys::reuseport_listener(config.mqtt_listen, config.listen_backlog)
                .map_err(|source| EngineError::Io { what: "listening for MQTT", source })?];
            if let Some(addr) = config.mqtt_tls_listen {
                listeners.push(
                    crate::sys::reuseport_listener(addr, config.listen_backlog)
                        .map_err(|source| EngineError::Io { what: "listening for MQTT over TLS", source })?,
                );
            }
            let setup = ShardSetup { index, shared: shared.clone(), listeners, inbox_rx, db, writer };
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let ready = ready_tx.clone();
            let go = go.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    match Shard::new(setup) {
                        Ok(shard) => {
                            let _ = ready.send((index, Ok(shard.ring_fd())));
                            go.wait();
                            shard.run();
                        }
                        Err(e) => {
                            let _ = ready.send((index, Err(e.to_string())));
                            go.wait();
                        }
                    }
                })
                .map_err(|source| EngineError::Io { what: "spawning a shard thread", source })?;
            threads.push(thread);
        }
        let mut fds = vec![-1; config.shards];
        let mut failure = None;
        for _ in 0..config.shards {
            match ready_rx.recv() {
                Ok((index, Ok(fd))) => fds[index] = fd,
                Ok((index, Err(reason))) => failure = Some(EngineError::ShardStart { index, reason }),
                Err(_) => failure = Some(EngineError::ShardStart { index: 0, reason: "thread died".into() }),
            }
        }
        let _ = shared.ring_fds.set(fds);
        go.wait();
        if let Some(e) = failure {
            for inbox in &shared.inboxes {
                inbox.send(ShardMsg::Shutdown);
            }
            return Err(e);
        }
        Ok(Node { shared, threads, message_ids: Arc::new(MessageIdSource::default()) })
    }

    /// A handle for the HTTP frontend.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle { shared: self.shared.clone(), message_ids: self.message_ids.clone() }
    }

    /// Closes connections (MQTT 5: reason 0x8B), flushes the store and joins the shards.
    pub fn shutdown(self) {
        for inbox in &self.shared.inboxes {
            inbox.send(ShardMsg::Shutdown);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Why an API call failed; the frontend maps it to an HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] PushError),
    #[error("the node is shutting down")]
    Unavailable,
    #[error("unknown RegID")]
    UnknownDevice,
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::UnknownDevice => ApiError::UnknownDevice,
            ControlError::QuotaExceeded(text) => ApiError::Quota(text),
            ControlError::Store(e) => ApiError::Store(e),
        }
    }
}

/// The answer to a push: its id, how many targets were valid, which were not.
#[derive(Debug, serde::Serialize)]
pub struct PushOutcome {
    pub id: String,
    pub targets: u64,
    pub invalid: Vec<String>,
}

/// The frontend's way into the node; cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<NodeShared>,
    message_ids: Arc<MessageIdSource>,
}

fn now_unix_ms() -> u64 {
    crate::clock::now_unix_ms()
}

impl NodeHandle {
    pub fn apps(&self) -> &AppRegistry {
        &self.shared.apps
    }

    /// A fresh message id (for a message that is sent later with [`NodeHandle::send_as`]);
    /// `receipts`: its delivery and click receipts go to a callback.
    pub fn new_message_id(&self, receipts: bool) -> MessageId {
        self.message_ids.next_with_receipts(now_unix_ms(), receipts)
    }

    /// Stores a push for its targets and answers once it is durable on every shard.
    pub async fn send(&self, app_id: AppId, request: SendRequest) -> Result<PushOutcome, ApiError> {
        self.send_as(app_id, self.new_message_id(false), request).await
    }

    /// [`NodeHandle::send`] under an id handed out before by [`NodeHandle::new_message_id`].
    pub async fn send_as(&self, app_id: AppId, id: MessageId, request: SendRequest) -> Result<PushOutcome, ApiError> {
        let now_ms = now_unix_ms();
        let envelope = Arc::new(request.message.into_envelope(id, app_id, now_ms / 1000)?);
        let mut invalid = Vec::new();
        let mut replies = Vec::new();
        match request.target {
            Target::RegIds(texts) => {
                let mut by_shard: Vec<Vec<RegId>> = vec![Vec::new(); self.shared.inboxes.len()];
                let mut seen = std::collections::HashSet::new();
                for text in texts {
                    match self.parse_regid(&text) {
                        Some(regid) => {
                            if seen.insert(regid) {
                                by_shard[self.shared.home_shard(regid)].push(regid);
                            }
                        }
                        None => invalid.push(text),
                    }
                }
                for (shard, regids) in by_shard.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                    replies.push(self.ask(shard, |reply| ShardMsg::Push {
                        envelope: envelope.clone(),
                        regids,
                        reply,
                    })?);
                }
            }
            Target::Aliases(aliases) => {
                let aliases: Arc<[String]> = aliases.into();
                for shard in 0..self.shared.inboxes.len() {
                    let aliases = aliases.clone();
                    replies.push(self.ask(shard, |reply| ShardMsg::PushAliases {
                        envelope: envelope.clone(),
                        aliases,
                        reply,
                    })?);
                }
                let mut found = std::collections::HashSet::new();
                let mut targets = 0;
                for rx in replies.drain(..) {
                    let part = rx.await.map_err(|_| ApiError::Unavailable)??;
                    targets += part.targets;
                    found.extend(part.found_aliases);
                }
                invalid.extend(aliases.iter().filter(|a| !found.contains(*a)).cloned());
                return Ok(PushOutcome { id: message_id_text(id), targets, invalid });
            }
            Target::Topics { .. } | Target::All => {
                let filter = Arc::new(match request.target {
                    Target::Topics { topics, op } => GroupFilter::Topics { topics, op },
                    _ => GroupFilter::All,
                });
                for shard in 0..self.shared.inboxes.len() {
                    let filter = filter.clone();
                    replies.push(self.ask(shard, |reply| ShardMsg::PushGroup {
                        envelope: envelope.clone(),
                        filter,
                        reply,
                    })?);
                }
            }
        }
        let mut targets = 0;
        for rx in replies {
            let part = rx.await.map_err(|_| ApiError::Unavailable)??;
            targets += part.targets;
            invalid.extend(part.invalid.iter().map(|r| r.to_string()));
        }
        Ok(PushOutcome { id: message_id_text(id), targets, invalid })
    }

    fn parse_regid(&self, text: &str) -> Option<RegId> {
        RegId::parse(text).filter(|r| r.partition() < self.shared.partitions)
    }

    /// Sends a request to a shard; the receiver answers it (woken through this thread's
    /// relay, if it relays: `wake_relay.rs`).
    fn ask<T>(
        &self,
        shard: usize,
        msg: impl FnOnce(oneshot::Sender<T>) -> ShardMsg,
    ) -> Result<Relayed<oneshot::Receiver<T>>, ApiError> {
        let (reply, rx) = oneshot::channel();
        if !self.shared.inboxes[shard].send(msg(reply)) {
            return Err(ApiError::Unavailable);
        }
        Ok(Relayed::new(rx))
    }

    /// Sets or removes an alias of one of the app's devices.
    pub async fn set_alias(&self, app_id: AppId, regid: &str, alias: String, set: bool) -> Result<(), ApiError> {
        let regid = self.parse_regid(regid).ok_or(ApiError::UnknownDevice)?;
        let rx = self.ask(self.shared.home_shard(regid), |reply| ShardMsg::DeviceAlias {
            app_id,
            regid,
            alias,
            set,
            reply,
        })?;
        Ok(rx.await.map_err(|_| ApiError::Unavailable)??)
    }

    /// Sets (or with `None` clears) the quiet hours of one of the app's devices.
    pub async fn set_quiet(
        &self,
        app_id: AppId,
        regid: &str,
        hours: Option<crate::push::QuietHours>,
    ) -> Result<(), ApiError> {
        let regid = self.parse_regid(regid).ok_or(ApiError::UnknownDevice)?;
        let rx = self.ask(self.shared.home_shard(regid), |reply| ShardMsg::SetQuiet { app_id, regid, hours, reply })?;
        Ok(rx.await.map_err(|_| ApiError::Unavailable)??)
    }

    /// A new token for one of the app's devices (the old one stops working at once).
    pub async fn rotate_device_token(&self, app_id: AppId, regid: &str) -> Result<String, ApiError> {
        let regid = self.parse_regid(regid).ok_or(ApiError::UnknownDevice)?;
        let rx = self.ask(self.shared.home_shard(regid), |reply| ShardMsg::RotateToken { app_id, regid, reply })?;
        Ok(rx.await.map_err(|_| ApiError::Unavailable)??)
    }

    /// The app's devices carrying `alias`.
    pub async fn lookup_alias(&self, app_id: AppId, alias: &str) -> Result<Vec<String>, ApiError> {
        let mut replies = Vec::new();
        for shard in 0..self.shared.inboxes.len() {
            let alias = alias.to_owned();
            replies.push(self.ask(shard, |reply| ShardMsg::LookupAlias { app_id, alias, reply })?);
        }
        let mut out = Vec::new();
        for rx in replies {
            out.extend(rx.await.map_err(|_| ApiError::Unavailable)?.iter().map(|r| r.to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// Adds the app's devices to `topic` (or removes them); answers how many changed and
    /// which RegIDs are not the app's.
    pub async fn topic_members(
        &self,
        app_id: AppId,
        topic: &str,
        regids: &[String],
        join: bool,
    ) -> Result<(u64, Vec<String>), ApiError> {
        let mut invalid = Vec::new();
        let mut by_shard: Vec<Vec<RegId>> = vec![Vec::new(); self.shared.inboxes.len()];
        for text in regids {
            match self.parse_regid(text) {
                Some(regid) => by_shard[self.shared.home_shard(regid)].push(regid),
                None => invalid.push(text.clone()),
            }
        }
        let mut replies = Vec::new();
        for (shard, regids) in by_shard.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let topic = topic.to_owned();
            replies.push(self.ask(shard, |reply| ShardMsg::TopicMembers { app_id, topic, regids, join, reply })?);
        }
        let mut changed = 0;
        for rx in replies {
            let part = rx.await.map_err(|_| ApiError::Unavailable)??;
            changed += part.changed;
            invalid.extend(part.invalid.iter().map(|r| r.to_string()));
        }
        Ok((changed, invalid))
    }

    /// Registers a device of `app_id`; answers its RegID and token.
    pub async fn register(&self, app_id: AppId) -> Result<(RegId, String), ApiError> {
        let shard = self.shared.next_register_shard.fetch_add(1, Ordering::Relaxed) % self.shared.inboxes.len();
        let rx = self.ask(shard, |reply| ShardMsg::Register { app_id, reply })?;
        Ok(rx.await.map_err(|_| ApiError::Unavailable)??)
    }

    /// (targets, delivered) of one of the app's messages, summed over the shards.
    pub async fn message_status(&self, app_id: AppId, id: MessageId) -> Result<Option<MessageStats>, ApiError> {
        let mut replies = Vec::new();
        for shard in 0..self.shared.inboxes.len() {
            replies.push(self.ask(shard, |reply| ShardMsg::MessageStatus { app_id, id, reply })?);
        }
        let mut total: Option<MessageStats> = None;
        for rx in replies {
            if let Some(counts) = rx.await.map_err(|_| ApiError::Unavailable)?? {
                total.get_or_insert_with(Default::default).merge(&counts);
            }
        }
        Ok(total)
    }

    /// An app's daily counts, days `from..=to`, summed over the shards (days without any
    /// count are left out).
    pub async fn day_stats(
        &self,
        app_id: AppId,
        from: u32,
        to: u32,
    ) -> Result<Vec<(u32, crate::stats::DayStats)>, ApiError> {
        let mut replies = Vec::new();
        for shard in 0..self.shared.inboxes.len() {
            replies.push(self.ask(shard, |reply| ShardMsg::DayStats { app_id, from, to, reply })?);
        }
        let mut days: std::collections::BTreeMap<u32, crate::stats::DayStats> = std::collections::BTreeMap::new();
        for rx in replies {
            for (day, stats) in rx.await.map_err(|_| ApiError::Unavailable)?? {
                days.entry(day).or_default().merge(&stats);
            }
        }
        let today = crate::clock::day_of(crate::clock::now_unix_s());
        if let Some((peak, at)) = self.shared.live.get(app_id).peak(today) {
            let row = days.entry(today).or_default();
            if peak > row.peak_online {
                row.peak_online = peak;
                row.peak_at = at;
            }
        }
        Ok(days.into_iter().collect())
    }

    /// Deliveries and clicks as they happen (for callbacks); one consumer should drain it.
    pub fn receipts(&self) -> crossbeam_channel::Receiver<crate::stats::Receipt> {
        self.shared.receipts.1.clone()
    }

    /// Devices of the app online now.
    pub fn online(&self, app_id: AppId) -> u64 {
        self.shared.live.get(app_id).online()
    }

    /// Every shard's metrics, in shard order.
    pub fn metrics(&self) -> &[Arc<crate::stats::ShardMetrics>] {
        &self.shared.metrics
    }

    /// Bytes of the store's database files (their length on disk, which redb grows and
    /// reuses but does not shrink): what pending pushes and kept message counts take.
    pub fn store_file_bytes(&self) -> u64 {
        let (dir, files) = (&self.shared.config.data_dir, self.shared.config.store_writers);
        (0..files)
            .filter_map(|index| std::fs::metadata(crate::store::layout::db_path(dir, index, files)).ok())
            .map(|meta| meta.len())
            .sum()
    }

    /// (app, devices online) for every app seen since start.
    pub fn online_by_app(&self) -> Vec<(AppId, u64)> {
        self.shared.live.online()
    }
}

#[cfg(test)]
mod tests {
    use super::store_writers_for;

    #[test]
    fn writers_are_the_most_dividing_the_shards_within_the_cores() {
        let cases = [((2, 2), 2), ((1, 8), 1), ((8, 2), 2), ((3, 2), 1), ((6, 4), 3), ((12, 8), 6), ((7, 64), 7)];
        for ((shards, cores), writers) in cases {
            assert_eq!(store_writers_for(shards, cores), writers, "{shards} shards on {cores} cores");
        }
        assert_eq!(store_writers_for(5, 0), 1, "no core count known: one writer");
    }
}
