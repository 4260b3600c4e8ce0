//! The node's configuration: a TOML file (every key optional, see
//! `configs/pushnode.toml`), CLI flags on top, validated once into an [`EngineConfig`].

use anyhow::{bail, Context};
use core_engine::store::Durability;
use core_engine::EngineConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The kernel's largest io_uring submission queue (`IORING_MAX_ENTRIES`); a completion
/// queue may be twice that.
const MAX_SQ: u32 = 32_768;
/// The smallest share of `send_buffer_bytes` a shard may get.
const MIN_SEND_BUFFER_PER_SHARD: usize = 64 * 1024;
/// Longest `message_stats_days`: ten years.
const MAX_STATS_DAYS: u32 = 3650;

/// Every setting; defaults are the embedded single-node setup.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address devices connect to over MQTT.
    pub mqtt_listen: SocketAddr,
    /// Address app servers send to over HTTP.
    pub http_listen: SocketAddr,
    /// Address for MQTT over TLS (e.g. "127.0.0.1:8883"); off unless set. Needs tls_cert and tls_key.
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// Address for HTTPS (e.g. "127.0.0.1:8443"); off unless set. Needs tls_cert and tls_key.
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain and PEM private key for both TLS listeners (TLS 1.2 and 1.3).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Folder for the databases and the admin token.
    pub data_dir: PathBuf,
    /// Shard threads; 0 means one per core.
    pub shards: usize,
    /// Partitions of a new data folder; fixed once the folder exists. At least `shards`.
    pub partitions: u16,
    /// Store databases, each with a writer thread that group-commits its shards' writes;
    /// must divide `shards`. 0: one per shard, or fewer when the shards outnumber the cores
    /// (the most that divides `shards` and is at most the core count). Changing it moves
    /// the store's rows into the new count's files at start, like changing `shards`.
    pub store_writers: usize,
    /// Connections one shard can hold (its io_uring fixed-file table).
    pub max_connections_per_shard: u32,
    /// Receive buffers per shard, a power of two, shared by all its connections. Filled
    /// incrementally where the kernel can (6.12+); elsewhere each packet takes a whole one
    /// until the shard has read it, and when a burst finds none left the receives it hit
    /// are armed again one submission each, so many small buffers beat few large ones.
    pub recv_buffers: u16,
    /// Bytes per receive buffer; a larger packet fills several.
    pub recv_buffer_bytes: u32,
    /// Submission queue entries of each shard's ring, a power of two; a shard submits
    /// whenever it fills. The queue is mapped into the process: 64 bytes an entry.
    pub submission_queue_entries: u32,
    /// Completion queue entries of each shard's ring, a power of two, at least
    /// `submission_queue_entries`; completions beyond it wait in the kernel (slower, none
    /// lost). Mapped into the process: 16 bytes an entry.
    pub completion_queue_entries: u32,
    /// Largest MQTT packet a device may send, in bytes.
    pub max_packet_bytes: usize,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// "fsync" (an answered push survives power loss) or "buffered" (fsync every second).
    pub durability: Durability,
    /// redb page cache of all store databases together, in bytes; each gets an equal share.
    pub store_cache_bytes: usize,
    /// Bytes all shards together may hold for sending to devices (encoded messages the
    /// kernel has not taken yet); each shard gets an equal share, at least 64 KiB. Past its
    /// share a shard's deliveries wait in the store and go out as its sends drain.
    pub send_buffer_bytes: usize,
    /// HTTP worker threads.
    pub http_threads: usize,
    /// Seconds an HTTP(S) connection may wait for the client: for the TLS handshake, for a
    /// request's headers, and idle between two requests on a keep-alive connection. At
    /// least 1.
    pub http_idle_timeout_secs: u64,
    /// Log filter, as for RUST_LOG (e.g. "info", "pushnode=debug").
    pub log: String,
    /// Aliases one device may carry.
    pub max_aliases_per_device: usize,
    /// Topics one device may join.
    pub max_topics_per_device: usize,
    /// Topics one app may have.
    pub max_topics_per_app: usize,
    /// Messages waiting for one device; when full, the oldest is dropped (and counted).
    pub max_pending_per_device: u32,
    /// Days a message's status (targets, delivered, clicked) stays answerable, from its
    /// creation; then its counts are forgotten (its status answers 404). Each message keeps
    /// a row per partition it reached (~85 bytes of store file), so this bounds the store
    /// under a steady push rate. Default 28: a week past the latest a message can expire
    /// (scheduled 7 days ahead, 14 days of TTL). Below 21, a message's deliveries and
    /// expiries after that go uncounted.
    pub message_stats_days: u32,
    /// Connections the node holds at most; 0 = shards x max_connections_per_shard.
    pub max_connections: u64,
    /// New connections a second one source address (an IPv4 address, or an IPv6 /64) may
    /// open, node-wide; a connection beyond it gets CONNACK 0x9F (3.1.1: code 3) to its
    /// CONNECT and is closed. 0 turns the limit off.
    pub connect_rate_per_ip: u32,
    /// New connections one source address may open at once before `connect_rate_per_ip`
    /// applies (the token bucket's size).
    pub connect_burst_per_ip: u32,
    /// Seconds between two broadcasts (`{"all":true}`) of one app; a faster one gets 429.
    /// 0 turns the limit off.
    pub broadcast_interval_secs: u64,
    /// Every app request must carry X-Pushnode-Timestamp and X-Pushnode-Signature
    /// (HMAC-SHA256 with the app secret); unsigned ones get 401 `signature_required`.
    pub require_signatures: bool,
    /// Shift of the node's clock in seconds (tests of day boundaries only).
    pub clock_offset_secs: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt_listen: "127.0.0.1:1883".parse().expect("literal"),
            http_listen: "127.0.0.1:8080".parse().expect("literal"),
            mqtt_tls_listen: None,
            https_listen: None,
            tls_cert: None,
            tls_key: None,
            data_dir: PathBuf::from("data"),
            shards: 0,
            partitions: 16,
            store_writers: 0,
            max_connections_per_shard: 16_384,
            recv_buffers: 8192,
            recv_buffer_bytes: 512,
            submission_queue_entries: 4096,
            completion_queue_entries: 16_384,
            max_packet_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            durability: Durability::Fsync,
            store_cache_bytes: 16 * 1024 * 1024,
            send_buffer_bytes: 1024 * 1024 * 1024,
            http_threads: 2,
            http_idle_timeout_secs: 10,
            log: "info".into(),
            max_aliases_per_device: 10,
            max_topics_per_device: 100,
            max_topics_per_app: 10_000,
            max_pending_per_device: 1000,
            message_stats_days: (core_engine::store::DEFAULT_STATS_KEPT_SECS / 86_400) as u32,
            max_connections: 0,
            // Generous on purpose: one carrier-grade-NAT address can front thousands of
            // devices, all of which reconnect after a network blip. 1000 at once and 100/s
            // after that lets 10,000 devices behind one address back in within ~90 s (their
            // clients retry with backoff), while one abusive host is held to 100 TCP+TLS
            // setups a second, a small share of a shard's capacity.
            connect_rate_per_ip: 100,
            connect_burst_per_ip: 1000,
            broadcast_interval_secs: 3,
            require_signatures: false,
            clock_offset_secs: 0,
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Checks the settings and derives the engine's.
    pub fn engine(&self) -> anyhow::Result<EngineConfig> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = if self.shards == 0 { cores } else { self.shards };
        let store_writers = match self.store_writers {
            0 => core_engine::node::store_writers_for(shards, cores),
            n if shards.is_multiple_of(n) => n,
            n => bail!("store_writers must divide the shard count ({shards}), got {n}"),
        };
        if !self.recv_buffers.is_power_of_two() {
            bail!("recv_buffers must be a power of two, got {}", self.recv_buffers);
        }
        if self.recv_buffer_bytes < 256 {
            bail!("recv_buffer_bytes must be at least 256, got {}", self.recv_buffer_bytes);
        }
        if !self.submission_queue_entries.is_power_of_two() || !(8..=MAX_SQ).contains(&self.submission_queue_entries) {
            bail!(
                "submission_queue_entries must be a power of two in 8..={MAX_SQ}, got {}",
                self.submission_queue_entries
            );
        }
        let cq = self.completion_queue_entries;
        if !cq.is_power_of_two() || !(self.submission_queue_entries..=2 * MAX_SQ).contains(&cq) {
            bail!(
                "completion_queue_entries must be a power of two from submission_queue_entries ({}) to {}, got {cq}",
                self.submission_queue_entries,
                2 * MAX_SQ
            );
        }
        if self.max_connections_per_shard == 0 {
            bail!("max_connections_per_shard must be at least 1");
        }
        if self.max_packet_bytes < 1024 {
            bail!("max_packet_bytes must be at least 1024, got {}", self.max_packet_bytes);
        }
        if self.max_pending_per_device == 0 {
            bail!("max_pending_per_device must be at least 1");
        }
        if !(1..=MAX_STATS_DAYS).contains(&self.message_stats_days) {
            bail!("message_stats_days must be 1..={MAX_STATS_DAYS}, got {}", self.message_stats_days);
        }
        let listens = [Some(self.mqtt_listen), Some(self.http_listen), self.mqtt_tls_listen, self.https_listen];
        let listens: Vec<SocketAddr> = listens.into_iter().flatten().collect();
        if let Some(twice) = listens.iter().enumerate().find_map(|(i, a)| listens[i + 1..].contains(a).then_some(a)) {
            bail!("{twice} is given to two listeners: mqtt_listen, http_listen, mqtt_tls_listen and https_listen must differ");
        }
        if (self.mqtt_tls_listen.is_some() || self.https_listen.is_some())
            && (self.tls_cert.is_none() || self.tls_key.is_none())
        {
            bail!("mqtt_tls_listen and https_listen need tls_cert and tls_key");
        }
        use core_engine::connect_limit::MAX_SETTING;
        if self.connect_rate_per_ip > MAX_SETTING {
            bail!("connect_rate_per_ip must be at most {MAX_SETTING} (0 = off), got {}", self.connect_rate_per_ip);
        }
        if self.connect_rate_per_ip > 0 && !(1..=MAX_SETTING).contains(&self.connect_burst_per_ip) {
            bail!("connect_burst_per_ip must be 1..={MAX_SETTING}, got {}", self.connect_burst_per_ip);
        }
        if self.http_threads == 0 {
            bail!("http_threads must be at least 1");
        }
        if self.http_idle_timeout_secs == 0 {
            bail!("http_idle_timeout_secs must be at least 1");
        }
        if self.send_buffer_bytes / shards < MIN_SEND_BUFFER_PER_SHARD {
            bail!(
                "send_buffer_bytes must be at least {MIN_SEND_BUFFER_PER_SHARD} per shard ({} for {shards} shards), got {}",
                MIN_SEND_BUFFER_PER_SHARD * shards,
                self.send_buffer_bytes
            );
        }
        Ok(EngineConfig {
            mqtt_listen: self.mqtt_listen,
            data_dir: self.data_dir.clone(),
            shards,
            partitions: self.partitions.max(shards as u16),
            store_writers,
            max_connections_per_shard: self.max_connections_per_shard,
            recv_buffers: self.recv_buffers,
            recv_buffer_bytes: self.recv_buffer_bytes,
            max_packet_bytes: self.max_packet_bytes,
            durability: self.durability,
            store_cache_bytes: self.store_cache_bytes,
            send_buffer_bytes: self.send_buffer_bytes,
            submission_queue_entries: self.submission_queue_entries,
            completion_queue_entries: self.completion_queue_entries,
            listen_backlog: 4096,
            max_aliases_per_device: self.max_aliases_per_device,
            max_topics_per_device: self.max_topics_per_device,
            max_topics_per_app: self.max_topics_per_app,
            max_pending_per_device: self.max_pending_per_device,
            message_stats_secs: u64::from(self.message_stats_days) * 86_400,
            max_connections: self.max_connections,
            connect_rate_per_ip: self.connect_rate_per_ip,
            connect_burst_per_ip: self.connect_burst_per_ip,
            mqtt_tls_listen: self.mqtt_tls_listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/pushnode.toml")).unwrap();
        let parsed: Config = toml::from_str(&text).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"), "configs/pushnode.toml documents the defaults");
        assert!(parsed.engine().is_ok());
    }

    #[test]
    fn zero_http_idle_timeout_is_refused() {
        let config = Config { http_idle_timeout_secs: 0, ..Config::default() };
        assert!(config.engine().is_err());
    }

    #[test]
    fn connect_rate_settings_are_checked() {
        let with = |rate, burst| Config { connect_rate_per_ip: rate, connect_burst_per_ip: burst, ..Config::default() };
        assert!(with(0, 0).engine().is_ok(), "off: the burst does not matter");
        assert!(with(10, 0).engine().is_err());
        assert!(with(2_000_000, 10).engine().is_err());
        let engine = with(5, 10).engine().unwrap();
        assert_eq!((engine.connect_rate_per_ip, engine.connect_burst_per_ip), (5, 10));
    }

    #[test]
    fn ring_sizes_are_checked() {
        let with = |sq, cq| Config { submission_queue_entries: sq, completion_queue_entries: cq, ..Config::default() };
        let engine = with(1024, 4096).engine().unwrap();
        assert_eq!((engine.submission_queue_entries, engine.completion_queue_entries), (1024, 4096));
        assert!(with(1000, 4096).engine().is_err(), "not a power of two");
        assert!(with(1024, 512).engine().is_err(), "completions fewer than submissions");
        assert!(with(65_536, 65_536).engine().is_err(), "beyond the kernel's limit");
        assert!(with(4, 8).engine().is_err());
    }

    #[test]
    fn send_buffer_share_is_at_least_64_kib_a_shard() {
        let with = |bytes| Config { shards: 4, send_buffer_bytes: bytes, ..Config::default() };
        assert_eq!(with(4 * 65_536).engine().unwrap().send_buffer_bytes, 4 * 65_536);
        let refused = with(4 * 65_536 - 1).engine().unwrap_err().to_string();
        assert!(
            refused.contains("send_buffer_bytes must be at least 65536 per shard (262144 for 4 shards)"),
            "{refused}"
        );
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let shared = Config { mqtt_listen: addr, http_listen: addr, ..Config::default() };
        assert!(shared.engine().unwrap_err().to_string().contains("127.0.0.1:9000"));
        let tls = Config { mqtt_tls_listen: Some(Config::default().http_listen), ..Config::default() };
        assert!(tls.engine().unwrap_err().to_string().contains("two listeners"));
        assert!(Config::default().engine().is_ok());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("shardz = 3").is_err());
    }
}
