//! `loadgen hold`: opens N MQTT 5 connections from one source address, each of which
//! registers as a new device (empty client id, app id/key); prints `ready <connected>`;
//! waits for `go` on stdin; pushes one passthrough message to every RegID over HTTP
//! (`POST /v1/messages`, up to 1000 RegIDs per request, a few requests at a time,
//! payload = send time in unix microseconds); waits until every connection got its
//! PUBLISH on `inbox` (PUBACKing it); then reports counts and delivery latency.
//!
//! Shape: one small tokio task per connection (a 256-byte read buffer that grows only
//! for larger packets), all reporting to the coordinator over one channel; the
//! coordinator keeps per-connection flags and the latency histogram. Connects are
//! paced to `--rate` with at most `--concurrency` handshakes in flight. Every phase
//! has a deadline, nothing is retried, and the process exits by itself.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use core_engine::proto::{Packet, QoS, Version};
use loadgen::http_client::HttpClient;
use loadgen::mqtt_client::{tcp_connect, tcp_connect_from, ClientError, MqttConn, SourcePorts, INBOX};
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::common::{parse_rate, unix_micros, wait_for_stdin_line, Latency, LatencySummary, StdinWait};
use super::sender::{PushBody, PushTarget};

/// Most RegIDs in one `POST /v1/messages`.
const MAX_BATCH: usize = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// Node MQTT address, IP:PORT.
    #[arg(long)]
    pub mqtt: SocketAddr,
    /// Base URL of the node's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    #[arg(long)]
    pub app_id: String,
    #[arg(long)]
    pub app_key: String,
    #[arg(long)]
    pub app_secret: String,
    /// Number of connections (devices) to hold.
    #[arg(long)]
    pub connections: u32,
    /// Local address every connection is bound to before connecting.
    #[arg(long)]
    pub source_ip: Option<IpAddr>,
    /// Local ports used with --source-ip, FIRST-LAST, taken in order (busy ones skipped).
    #[arg(long, default_value = "1024-65535", value_parser = parse_port_range)]
    pub source_ports: (u16, u16),
    /// Connects started per second, e.g. 5000 or 5000/s.
    #[arg(long, default_value = "5000/s", value_parser = parse_rate)]
    pub rate: f64,
    /// Most TCP connect + CONNECT/CONNACK handshakes in flight.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Time limit of one connection's TCP connect + CONNACK.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout_secs: u64,
    /// Time limit of waiting for `go`, and of the push phase.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub push_timeout_secs: u64,
    /// HTTP push requests in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_concurrency: u32,
    /// RegIDs per push request (at most 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Keep-alive announced in CONNECT, seconds (PINGREQ every keep-alive/2).
    #[arg(long, default_value_t = 300)]
    pub keep_alive: u16,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What connection tasks and push workers tell the coordinator.
enum Event {
    Connected { idx: u32, regid: String },
    Failed { reason: String },
    Received { idx: u32, recv_us: u64, sent_us: Option<u64>, dup_flag: bool },
    Lost { idx: u32, reason: String },
    BatchDone { sent: usize, accepted: Vec<u32>, invalid: usize, error: Option<String> },
}

/// What every connection task needs.
struct ConnCfg {
    mqtt: SocketAddr,
    source: Option<SourcePorts>,
    app_id: String,
    app_key: String,
    keep_alive: u16,
    handshake_timeout: Duration,
}

const CONNECTED: u8 = 1;
const LOST: u8 = 2;
const TARGETED: u8 = 4;
const RECEIVED: u8 = 8;

/// The coordinator's view of the run.
#[derive(Default)]
struct State {
    flags: Vec<u8>,
    regids: Vec<Option<String>>,
    settled: u64,
    connected: u64,
    failed: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    received: u64,
    duplicates: u64,
    dup_flag: u64,
    unparsed: u64,
    outstanding: u64,
    batches_done: usize,
    targets: u64,
    invalid: u64,
    push_errors: BTreeMap<String, u64>,
    latency: Latency,
}

impl State {
    fn new(n: usize) -> Self {
        State { flags: vec![0; n], regids: vec![None; n], ..State::default() }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connected { idx, regid } => {
                self.settled += 1;
                self.connected += 1;
                if let Some(f) = self.flags.get_mut(idx as usize) {
                    *f |= CONNECTED;
                }
                if let Some(r) = self.regids.get_mut(idx as usize) {
                    *r = Some(regid);
                }
            }
            Event::Failed { reason } => {
                self.settled += 1;
                *self.failed.entry(reason).or_default() += 1;
            }
            Event::Received { idx, recv_us, sent_us, dup_flag } => {
                if dup_flag {
                    self.dup_flag += 1;
                }
                let Some(f) = self.flags.get_mut(idx as usize) else {
                    return;
                };
                if *f & RECEIVED != 0 {
                    self.duplicates += 1;
                    return;
                }
                if *f & (TARGETED | LOST) == TARGETED {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                *f |= RECEIVED;
                self.received += 1;
                match sent_us {
                    Some(sent) => self.latency.record(recv_us.saturating_sub(sent)),
                    None => self.unparsed += 1,
                }
            }
            Event::Lost { idx, reason } => {
                *self.lost.entry(reason).or_default() += 1;
                if let Some(f) = self.flags.get_mut(idx as usize) {
                    if *f & (TARGETED | RECEIVED | LOST) == TARGETED {
                        self.outstanding = self.outstanding.saturating_sub(1);
                    }
                    *f |= LOST;
                }
            }
            Event::BatchDone { sent, accepted, invalid, error } => {
                self.batches_done += 1;
                self.invalid += invalid as u64;
                if let Some(e) = error {
                    *self.push_errors.entry(e).or_default() += sent as u64;
                }
                for idx in accepted {
                    if let Some(f) = self.flags.get_mut(idx as usize) {
                        if *f & TARGETED != 0 {
                            continue;
                        }
                        *f |= TARGETED;
                        self.targets += 1;
                        if *f & (RECEIVED | LOST) == 0 {
                            self.outstanding += 1;
                        }
                    }
                }
            }
        }
    }

    fn lost_total(&self) -> u64 {
        self.lost.values().sum()
    }
}

/// The `--json` report.
#[derive(Serialize)]
struct Report {
    connected: u64,
    failed: BTreeMap<String, u64>,
    /// Connections that closed after registering.
    lost: BTreeMap<String, u64>,
    /// Connections that received their push (at least once).
    received: u64,
    /// Extra PUBLISHes beyond the first on a connection.
    duplicates: u64,
    /// PUBLISHes with the DUP flag set.
    dup_flag: u64,
    /// PUBLISHes whose envelope payload was not a timestamp (no latency sample).
    unparsed: u64,
    /// RegIDs the node accepted as push targets.
    targets: u64,
    /// RegIDs the node listed as invalid.
    invalid: u64,
    /// RegIDs in push requests that failed, by reason.
    push_errors: BTreeMap<String, u64>,
    /// How the wait for `go` ended: `go`, `eof` or `timeout`.
    go: &'static str,
    /// True if the push phase hit --push-timeout-secs.
    timed_out: bool,
    latency_us: LatencySummary,
    /// Connect phase: first connect until every connection settled.
    connect_elapsed_s: f64,
    /// Push phase: `go` until the last delivery (or the deadline).
    elapsed_s: f64,
}

pub fn run(args: HoldArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(hold(args));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Soft limit on open files, from /proc/self/limits (Linux), if readable.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let n = args.connections;
    if let Some(limit) = open_files_limit() {
        if u64::from(n) + 32 > limit {
            eprintln!("warning: {n} connections but the open files limit is {limit}; expect `socket` failures");
        }
    }
    let http = HttpClient::new(&args.http, Duration::from_secs(args.push_timeout_secs)).context("--http")?;
    let cfg = Arc::new(ConnCfg {
        mqtt: args.mqtt,
        source: args.source_ip.map(|ip| SourcePorts::new(ip, args.source_ports.0, args.source_ports.1)),
        app_id: args.app_id.clone(),
        app_key: args.app_key.clone(),
        keep_alive: args.keep_alive,
        handshake_timeout: Duration::from_secs(args.handshake_timeout_secs),
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut state = State::new(n as usize);

    // Phase 1: connect and register, paced and bounded.
    let connect_start = Instant::now();
    let pacing = f64::from(n) / args.rate;
    let waves = f64::from(n / args.concurrency + 2);
    let bound = (pacing + waves * args.handshake_timeout_secs as f64 + 5.0).min(86_400.0);
    let connect_deadline = connect_start + Duration::from_secs_f64(bound);
    tokio::spawn(spawn_connections(n, args.rate, args.concurrency, cfg, tx.clone()));
    while state.settled < u64::from(n) {
        match timeout_at(connect_deadline, rx.recv()).await {
            Ok(Some(ev)) => state.handle(ev),
            Ok(None) => break,
            Err(_) => {
                let missing = u64::from(n) - state.settled;
                *state.failed.entry("timeout phase".into()).or_default() += missing;
                break;
            }
        }
    }
    let connect_elapsed = connect_start.elapsed();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", state.connected)?;
        out.flush()?;
    }

    // Phase 2: wait for `go`.
    let go = match wait_for_stdin_line("go", Duration::from_secs(args.push_timeout_secs)).await {
        StdinWait::Line => "go",
        StdinWait::Eof => "eof",
        StdinWait::Timeout => {
            eprintln!("warning: no `go` on stdin within {}s; pushing anyway", args.push_timeout_secs);
            "timeout"
        }
    };
    while let Ok(ev) = rx.try_recv() {
        state.handle(ev);
    }

    // Phase 3: push one message to every connected device, wait for deliveries.
    let push_start = Instant::now();
    let push_deadline = push_start + Duration::from_secs(args.push_timeout_secs);
    let targets: Vec<(u32, String)> =
        state.regids.iter_mut().enumerate().filter_map(|(i, r)| r.take().map(|r| (i as u32, r))).collect();
    let batches: Vec<Vec<(u32, String)>> =
        targets.chunks(args.batch.min(MAX_BATCH as u32) as usize).map(<[_]>::to_vec).collect();
    drop(targets);
    let total_batches = batches.len();
    let workers = (args.http_concurrency as usize).min(total_batches.max(1));
    let mut lists: Vec<Vec<Vec<(u32, String)>>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, b) in batches.into_iter().enumerate() {
        lists[i % workers].push(b);
    }
    let secret = Arc::new(args.app_secret.clone());
    for list in lists {
        tokio::spawn(push_worker(http.clone(), secret.clone(), list, push_deadline, tx.clone()));
    }
    drop(tx);
    let mut timed_out = false;
    while state.batches_done < total_batches || state.outstanding > 0 {
        match timeout_at(push_deadline, rx.recv()).await {
            Ok(Some(ev)) => state.handle(ev),
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let push_elapsed = push_start.elapsed();
    while let Ok(ev) = rx.try_recv() {
        state.handle(ev);
    }

    // Phase 4: report.
    let report = Report {
        connected: state.connected,
        failed: state.failed.clone(),
        lost: state.lost.clone(),
        received: state.received,
        duplicates: state.duplicates,
        dup_flag: state.dup_flag,
        unparsed: state.unparsed,
        targets: state.targets,
        invalid: state.invalid,
        push_errors: state.push_errors.clone(),
        go,
        timed_out,
        latency_us: state.latency.summary(),
        connect_elapsed_s: connect_elapsed.as_secs_f64(),
        elapsed_s: push_elapsed.as_secs_f64(),
    };
    print_summary(&args, &state, &report)?;
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_summary(args: &HoldArgs, state: &State, r: &Report) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let failed: u64 = r.failed.values().sum();
    writeln!(
        out,
        "hold: connected {}/{} in {:.2}s ({} failed{})",
        r.connected,
        args.connections,
        r.connect_elapsed_s,
        failed,
        if r.failed.is_empty() { String::new() } else { format!(": {:?}", r.failed) }
    )?;
    let push_failed: u64 = r.push_errors.values().sum();
    writeln!(
        out,
        "push: {} targets accepted, {} invalid, {} in failed requests{}; received {}/{} in {:.2}s{}",
        r.targets,
        r.invalid,
        push_failed,
        if r.push_errors.is_empty() { String::new() } else { format!(" {:?}", r.push_errors) },
        r.received,
        r.targets,
        r.elapsed_s,
        if r.timed_out { " (timed out)" } else { "" }
    )?;
    writeln!(
        out,
        "duplicates {}, dup-flagged {}, lost connections {}{}",
        r.duplicates,
        r.dup_flag,
        state.lost_total(),
        if r.lost.is_empty() { String::new() } else { format!(" {:?}", r.lost) }
    )?;
    writeln!(out, "latency ({} samples): {}", state.latency.len(), r.latency_us)?;
    out.flush()?;
    Ok(())
}

/// Starts `n` connection tasks at `rate` per second, at most `concurrency` in their
/// handshake at once.
async fn spawn_connections(n: u32, rate: f64, concurrency: u32, cfg: Arc<ConnCfg>, tx: mpsc::UnboundedSender<Event>) {
    let sem = Arc::new(Semaphore::new(concurrency as usize));
    let start = Instant::now();
    for idx in 0..n {
        let due = start + Duration::from_secs_f64(f64::from(idx) / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(connection(idx, cfg.clone(), permit, tx.clone()));
    }
}

/// One device: connect + register (bounded), then hold the connection.
async fn connection(idx: u32, cfg: Arc<ConnCfg>, permit: OwnedSemaphorePermit, tx: mpsc::UnboundedSender<Event>) {
    let deadline = Instant::now() + cfg.handshake_timeout;
    let established = establish(&cfg, deadline).await;
    drop(permit);
    let mut conn = match established {
        Ok((conn, regid)) => {
            if tx.send(Event::Connected { idx, regid }).is_err() {
                return;
            }
            conn
        }
        Err(e) => {
            let _ = tx.send(Event::Failed { reason: e.reason_label() });
            return;
        }
    };
    let end = hold_connection(&mut conn, idx, cfg.keep_alive, &tx).await;
    let _ = tx.send(Event::Lost { idx, reason: end.reason_label() });
}

async fn establish(cfg: &ConnCfg, deadline: Instant) -> Result<(MqttConn, String), ClientError> {
    let connect = async {
        match &cfg.source {
            Some(ports) => tcp_connect_from(cfg.mqtt, ports).await,
            None => tcp_connect(cfg.mqtt, None).await,
        }
    };
    let stream = timeout_at(deadline, connect).await.map_err(|_| ClientError::Timeout("connect"))??;
    let mut conn = MqttConn::new(stream, Version::V5);
    let reg = timeout_at(deadline, conn.register(&cfg.app_id, &cfg.app_key, cfg.keep_alive))
        .await
        .map_err(|_| ClientError::Timeout("connack"))??;
    Ok((conn, reg.regid))
}

/// Reads pushes (PUBACKing them) and pings every keep-alive/2 until the connection
/// ends or the coordinator is gone; returns why it ended.
async fn hold_connection(
    conn: &mut MqttConn,
    idx: u32,
    keep_alive: u16,
    tx: &mpsc::UnboundedSender<Event>,
) -> ClientError {
    let ping_every = Duration::from_secs(u64::from(keep_alive.max(2) / 2));
    let mut next_ping = Instant::now() + ping_every;
    loop {
        match timeout_at(next_ping, conn.read_packet()).await {
            Err(_) => {
                if let Err(e) = conn.pingreq().await {
                    return e;
                }
                next_ping = Instant::now() + ping_every;
            }
            Ok(Err(e)) => return e,
            Ok(Ok(Packet::Publish(p))) => {
                let recv_us = unix_micros();
                if matches!(p.qos, QoS::AtLeastOnce) {
                    if let Some(id) = p.packet_id {
                        if let Err(e) = conn.puback(id).await {
                            return e;
                        }
                    }
                }
                if p.topic == INBOX {
                    let ev = Event::Received { idx, recv_us, sent_us: sent_micros(&p.payload), dup_flag: p.dup };
                    if tx.send(ev).is_err() {
                        return ClientError::Closed;
                    }
                }
            }
            Ok(Ok(Packet::Disconnect(d))) => return ClientError::Disconnected { code: d.code },
            Ok(Ok(_)) => {}
        }
    }
}

/// Parses `FIRST-LAST` (inclusive, FIRST <= LAST).
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("bad port range {s:?}: expected e.g. 1024-65535");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// The send time carried in a push envelope's `payload` field (unix micros).
fn sent_micros(envelope: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        payload: Option<String>,
    }
    serde_json::from_slice::<Envelope>(envelope).ok()?.payload?.trim().parse().ok()
}

/// Sends its batches one after another, each carrying its own send timestamp, and
/// reports each outcome. Stops sending at the deadline.
async fn push_worker(
    http: HttpClient,
    secret: Arc<String>,
    batches: Vec<Vec<(u32, String)>>,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Event>,
) {
    let auth = format!("key={secret}");
    for batch in batches {
        let sent = batch.len();
        let now = Instant::now();
        if now >= deadline {
            let _ = tx.send(Event::BatchDone {
                sent,
                accepted: Vec::new(),
                invalid: 0,
                error: Some("not sent before the deadline".into()),
            });
            continue;
        }
        let regids: Vec<&str> = batch.iter().map(|(_, r)| r.as_str()).collect();
        let bytes = match PushBody::passthrough(PushTarget::Regids(regids), unix_micros().to_string()).to_bytes() {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Event::BatchDone { sent, accepted: Vec::new(), invalid: 0, error: Some(e) });
                continue;
            }
        };
        let resp = http
            .request_within(hyper::Method::POST, "/v1/messages", Some(&auth), Some(bytes), deadline - now)
            .await
            .and_then(|r| r.error_for_status());
        let ev = match resp {
            Ok(r) => {
                let invalid: HashSet<String> = r
                    .json::<serde_json::Value>()
                    .ok()
                    .and_then(|v| {
                        v.get("invalid")
                            .and_then(|i| i.as_array())
                            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    })
                    .unwrap_or_default();
                let accepted = batch.iter().filter(|(_, r)| !invalid.contains(r)).map(|(i, _)| *i).collect();
                Event::BatchDone { sent, accepted, invalid: invalid.len(), error: None }
            }
            Err(e) => Event::BatchDone { sent, accepted: Vec::new(), invalid: 0, error: Some(e.reason_label()) },
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("1024-65535"), Ok((1024, 65535)));
        assert_eq!(parse_port_range("2000-2000"), Ok((2000, 2000)));
        assert!(parse_port_range("3000-2000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("1024").is_err());
        assert!(parse_port_range("1-70000").is_err());
    }

    #[test]
    fn envelope_timestamp() {
        let env = br#"{"id":"m1","type":"passthrough","payload":"1700000000123456","sent_at":1}"#;
        assert_eq!(sent_micros(env), Some(1_700_000_000_123_456));
        assert_eq!(sent_micros(br#"{"payload":"hello"}"#), None);
        assert_eq!(sent_micros(b"not json"), None);
        assert_eq!(sent_micros(br#"{"payload":5}"#), None);
    }

    #[test]
    fn outstanding_accounting() {
        let mut s = State::new(3);
        for (idx, r) in ["a", "b", "c"].iter().enumerate() {
            s.handle(Event::Connected { idx: idx as u32, regid: r.to_string() });
        }
        // 0 receives before its batch is acknowledged; 2 is lost.
        s.handle(Event::Received { idx: 0, recv_us: 200, sent_us: Some(100), dup_flag: false });
        s.handle(Event::BatchDone { sent: 3, accepted: vec![0, 1, 2], invalid: 0, error: None });
        assert_eq!(s.outstanding, 2);
        s.handle(Event::Lost { idx: 2, reason: "closed".into() });
        assert_eq!(s.outstanding, 1);
        s.handle(Event::Received { idx: 1, recv_us: 300, sent_us: None, dup_flag: false });
        s.handle(Event::Received { idx: 1, recv_us: 300, sent_us: None, dup_flag: true });
        assert_eq!(s.outstanding, 0);
        assert_eq!((s.received, s.duplicates, s.dup_flag, s.unparsed), (2, 1, 1, 1));
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.targets, 3);
    }
}
