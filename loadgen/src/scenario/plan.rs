//! The parent <-> worker protocol. The parent writes one [`WorkerPlan`] as a JSON line
//! on a worker's stdin, later the line `go` (start the load phase); the worker writes
//! [`WorkerMsg`] JSON lines on its stdout: progress, `connected` (its connect phase
//! is over), then `done` with its [`WorkerReport`](super::report::WorkerReport).
//!
//! With [`WorkerPlan::spread`], a request's devices are drawn from every worker, as a
//! real request's devices are separate phones (one worker reading a 100-device request's
//! deliveries one after another would add its own queue to their latency): `connected`
//! carries the worker's RegIDs, the parent writes every worker's ([`SpreadTargets`])
//! before `go`, each worker reports whose devices its accepted targets were (`sent`), and
//! the parent tells each worker how many deliveries to wait for (`expect N`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::options::Target;
use super::report::WorkerReport;

/// App credentials (pushnode).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppCreds {
    pub app_id: String,
    pub app_key: String,
    pub app_secret: String,
}

/// MQTT over TLS: each worker loads the CA file itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsPlan {
    pub ca: PathBuf,
    pub server_name: String,
}

/// What happens after every connection is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Load {
    /// Nothing: report the connect phase.
    Connect,
    /// Nothing in the worker: the parent measures and holds.
    Idle,
    /// One topic, every connection subscribed; the publishing worker sends `messages`.
    Fanout { messages: u32, qos: u8, interval_ms: u64 },
    /// Open-loop sends to random connected devices; `offline`: the devices disconnect
    /// first and the latency is the HTTP answer's.
    Unicast { rate: f64, duration_secs: f64, batch: u32, qos: u8, offline: bool },
    /// Unicast at `rate` while `churn_per_sec` devices reconnect per second.
    Churn { churn_per_sec: f64, rate: f64, duration_secs: f64 },
}

impl Load {
    pub fn name(&self) -> &'static str {
        match self {
            Load::Connect => "connect",
            Load::Idle => "idle",
            Load::Fanout { .. } => "fanout",
            Load::Unicast { offline: false, .. } => "unicast",
            Load::Unicast { offline: true, .. } => "unicast-offline",
            Load::Churn { .. } => "churn",
        }
    }
}

/// Everything one worker process needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub worker: u32,
    pub workers: u32,
    /// Global index of this worker's first connection.
    pub first_index: u64,
    pub connections: u32,
    pub target: Target,
    pub v5: bool,
    pub mqtt: String,
    /// Set for MQTT over TLS.
    pub tls: Option<TlsPlan>,
    pub http: String,
    pub app: Option<AppCreds>,
    pub source_ips: Vec<Ipv4Addr>,
    /// This worker's local ports on every source address (disjoint across workers).
    pub ports: (u16, u16),
    /// Connects started per second by this worker; 0 = as fast as `concurrency` allows.
    pub connect_rate: f64,
    pub concurrency: u32,
    pub handshake_timeout_secs: u64,
    pub keep_alive: u16,
    pub http_concurrency: u32,
    /// HTTP/2 connections for the sends; 0 = HTTP/1.1 keep-alive.
    pub http2_connections: u32,
    pub straggler_secs: u64,
    /// The worker must have reported by then (unix micros).
    pub deadline_unix_us: u64,
    /// This worker sends the fan-out messages.
    pub publisher: bool,
    pub load: Load,
    /// Unicast requests name devices of every worker (see the module docs).
    #[serde(default)]
    pub spread: bool,
}

/// Every worker's device RegIDs, by worker: the targets of a spread run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpreadTargets {
    pub targets: Vec<Vec<String>>,
}

/// The line telling a spread run's worker how many deliveries its devices will get.
pub fn expect_line(deliveries: u64) -> String {
    format!("expect {deliveries}")
}

/// The count of an [`expect_line`].
pub fn parse_expect_line(line: &str) -> Option<u64> {
    line.strip_prefix("expect ")?.trim().parse().ok()
}

/// Counters a worker reports a few times a second.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub connected: u64,
    pub failed: u64,
    pub sent: u64,
    pub deliveries: u64,
}

/// One line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress(Progress),
    Connected {
        connected: u64,
        failed: BTreeMap<String, u64>,
        /// Its devices' RegIDs (a spread run only).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        regids: Vec<String>,
    },
    /// A spread run's sending is over: its accepted targets, by the worker holding them.
    Sent {
        to: Vec<u64>,
    },
    Done(Box<WorkerReport>),
    Error {
        message: String,
    },
}

/// Splits `n` connections over `workers`: (first index, count) per worker.
pub fn split_connections(n: u64, workers: u32) -> Vec<(u64, u32)> {
    let w = u64::from(workers.max(1));
    let (base, extra) = (n / w, n % w);
    let mut first = 0;
    (0..w)
        .map(|i| {
            let count = base + u64::from(i < extra);
            let part = (first, u32::try_from(count).unwrap_or(u32::MAX));
            first += count;
            part
        })
        .collect()
}

/// Worker `w` of `workers` gets this slice of local ports 1024..=65535.
pub fn port_slice(worker: u32, workers: u32) -> (u16, u16) {
    let span = (65_535u32 - 1024 + 1) / workers.max(1);
    let span = span.max(1);
    let first = 1024 + worker.min(workers.saturating_sub(1)) * span;
    let last = (first + span - 1).min(65_535);
    (u16::try_from(first).unwrap_or(65_535), u16::try_from(last).unwrap_or(65_535))
}

/// Default worker count: no process nears the 20,000 fd limit.
pub fn default_workers(connections: u64) -> u32 {
    u32::try_from(connections.div_ceil(15_000).max(1)).unwrap_or(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_everything_once() {
        assert_eq!(split_connections(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split_connections(2, 4), vec![(0, 1), (1, 1), (2, 0), (2, 0)]);
        assert_eq!(default_workers(0), 1);
        assert_eq!(default_workers(15_000), 1);
        assert_eq!(default_workers(15_001), 2);
        assert_eq!(default_workers(1_000_000), 67);
    }

    #[test]
    fn port_slices_are_disjoint() {
        assert_eq!(port_slice(0, 1), (1024, 65_535));
        let slices: Vec<_> = (0..67).map(|w| port_slice(w, 67)).collect();
        for pair in slices.windows(2) {
            assert!(pair[0].1 < pair[1].0, "{pair:?}");
        }
        assert!(slices.iter().all(|(a, b)| a <= b && *a >= 1024));
    }

    #[test]
    fn expect_lines_round_trip() {
        assert_eq!(parse_expect_line(&expect_line(1234)), Some(1234));
        assert_eq!(parse_expect_line("go"), None);
        assert_eq!(parse_expect_line("expect many"), None);
    }

    #[test]
    fn messages_round_trip() {
        let line =
            serde_json::to_string(&WorkerMsg::Progress(Progress { connected: 3, failed: 1, sent: 0, deliveries: 9 }))
                .unwrap();
        assert!(line.contains("\"event\":\"progress\""), "{line}");
        match serde_json::from_str::<WorkerMsg>(&line).unwrap() {
            WorkerMsg::Progress(p) => assert_eq!(p.deliveries, 9),
            other => panic!("{other:?}"),
        }
    }
}
