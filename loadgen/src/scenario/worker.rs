//! The hidden `loadgen worker` process: reads its [`WorkerPlan`] (one JSON line on
//! stdin), opens its share of the connections at its share of the rate (at most
//! `concurrency` handshakes at once), reports `connected`, waits for `go`, runs the
//! scenario's load phase, and reports `done` with its figures, all as JSON lines on
//! stdout. Everything runs on one thread (a current-thread runtime and a `LocalSet`),
//! so the tasks share their bookkeeping without locks. Every wait is bounded by the
//! plan's deadline.

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use core_engine::proto::Version;
use loadgen::http_client::HttpClient;
use loadgen::mqtt_client::{resolve, SourcePorts};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{sleep, sleep_until, Instant};

use super::common::{read_stdin_until, unix_micros, StdinWait};
use super::device::{run_device, DeviceCfg, Subscription};
use super::open_loop::Recipient;
use super::options::Target;
use super::plan::{Load, SpreadTargets, WorkerMsg, WorkerPlan};
use super::report::WorkerReport;
use super::sender::qos_of;
use super::sysinfo::{cpu_seconds, own_rss};
use super::tally::Tally;
use super::{churn, fanout, unicast};

/// How often a worker reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A worker's running state, shared with its load phase.
pub struct Worker {
    pub plan: WorkerPlan,
    pub tally: Rc<RefCell<Tally>>,
    pub cfg: Rc<DeviceCfg>,
    pub server: SocketAddr,
    pub ports: Vec<Rc<SourcePorts>>,
    /// One per connection with churn on (disconnect and come back) or with `unicast
    /// --offline` (disconnect and stay away), else empty.
    pub signals: Vec<Rc<Notify>>,
    pub http: Option<HttpClient>,
    pub deadline: Instant,
    /// A spread run's targets: every worker's devices (see `plan`).
    pub spread: RefCell<Vec<Recipient>>,
}

impl Worker {
    /// The time limit left, at least 1 ms.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
    }

    /// Source ports for connection `i` of this worker (round robin over addresses).
    pub fn ports_for(&self, i: u32) -> Rc<SourcePorts> {
        let n = self.ports.len().max(1) as u64;
        let k = ((self.plan.first_index + u64::from(i)) % n) as usize;
        self.ports[k.min(self.ports.len() - 1)].clone()
    }
}

/// Writes one message line on stdout (errors ignored: the parent may be gone; the
/// deadline ends the worker anyway).
pub fn emit(msg: &WorkerMsg) {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, msg).is_ok() {
        let _ = writeln!(out);
        let _ = out.flush();
    }
}

/// Polls `done` every 20 ms until it holds or `deadline` passes; true if it held.
pub async fn wait_for(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Entry point of `loadgen worker`.
pub fn run_worker() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the plan")?;
    let plan: WorkerPlan = serde_json::from_str(&line).context("parsing the plan")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, worker_main(plan));
    if let Err(e) = &result {
        emit(&WorkerMsg::Error { message: format!("{e:#}") });
    }
    drop(local);
    rt.shutdown_background();
    result
}

async fn worker_main(plan: WorkerPlan) -> anyhow::Result<()> {
    let (rss_before, _) = own_rss();
    let left_us = plan.deadline_unix_us.saturating_sub(unix_micros());
    let deadline = Instant::now() + Duration::from_micros(left_us);
    let server =
        resolve(&plan.mqtt, Duration::from_secs(10)).await.map_err(|e| anyhow::anyhow!("--mqtt {}: {e}", plan.mqtt))?;
    let version = if plan.v5 { Version::V5 } else { Version::V311 };
    let (subscription, sub_qos) = match (&plan.load, plan.target) {
        (Load::Fanout { qos, .. }, Target::Pushnode) => (Subscription::Shared("topic/bench".into()), qos_of(*qos)),
        (Load::Fanout { qos, .. }, Target::Mqtt) => (Subscription::Shared("bench/fanout".into()), qos_of(*qos)),
        (_, Target::Pushnode) => (Subscription::Inbox, qos_of(1)),
        (_, Target::Mqtt) => (Subscription::PerClient, qos_of(1)),
    };
    let http = match plan.target {
        Target::Pushnode => {
            Some(HttpClient::new(&plan.http, Duration::from_secs(30)).map_err(|e| anyhow::anyhow!("--http: {e}"))?)
        }
        Target::Mqtt => None,
    };
    let tls = match &plan.tls {
        Some(t) => Some(loadgen::tls::TlsClient::from_ca_file(&t.ca, &t.server_name)?),
        None => None,
    };
    let cfg = Rc::new(DeviceCfg {
        target: plan.target,
        tls,
        version,
        server,
        app: plan.app.clone(),
        keep_alive: plan.keep_alive,
        handshake_timeout: Duration::from_secs(plan.handshake_timeout_secs),
        subscription,
        sub_qos,
        worker: plan.worker,
        http: http.clone(),
        retry_first_connect: !matches!(plan.load, Load::Connect),
        leave_when_signalled: matches!(plan.load, Load::Unicast { offline: true, .. }),
    });
    let ports = plan
        .source_ips
        .iter()
        .map(|ip| Rc::new(SourcePorts::new(IpAddr::V4(*ip), plan.ports.0, plan.ports.1)))
        .collect::<Vec<_>>();
    anyhow::ensure!(!ports.is_empty(), "no source address");
    let n = plan.connections;
    let churn_on = matches!(plan.load, Load::Churn { .. });
    let offline = matches!(plan.load, Load::Unicast { offline: true, .. });
    let signals = if churn_on || offline { (0..n).map(|_| Rc::new(Notify::new())).collect() } else { Vec::new() };
    let mut tally = Tally::new(n);
    tally.track_ids = churn_on;
    let w = Rc::new(Worker {
        plan,
        tally: Rc::new(RefCell::new(tally)),
        cfg,
        server,
        ports,
        signals,
        http,
        deadline,
        spread: RefCell::new(Vec::new()),
    });

    // Progress lines until the process ends.
    let progress_tally = w.tally.clone();
    tokio::task::spawn_local(async move {
        loop {
            sleep(PROGRESS_EVERY).await;
            let p = progress_tally.borrow().progress();
            emit(&WorkerMsg::Progress(p));
        }
    });

    connect_all(&w).await;
    let (rss_after, _) = own_rss();
    {
        let t = w.tally.borrow();
        let regids = if w.plan.spread {
            t.live.iter().filter_map(|&i| t.addresses.get(i as usize)?.as_deref().map(str::to_string)).collect()
        } else {
            Vec::new()
        };
        emit(&WorkerMsg::Connected { connected: t.connected, failed: t.failed.clone(), regids });
    }

    let (waited, lines) = read_stdin_until(|line| line == "go", w.time_left()).await;
    match waited {
        StdinWait::Line => {}
        StdinWait::Eof => anyhow::bail!("stdin closed before `go`"),
        StdinWait::Timeout => anyhow::bail!("no `go` before the deadline"),
    }
    if w.plan.spread {
        let line = lines.iter().find(|l| l.starts_with('{')).context("a spread run without its targets")?;
        let spread: SpreadTargets = serde_json::from_str(line).context("parsing the targets")?;
        *w.spread.borrow_mut() = spread
            .targets
            .into_iter()
            .enumerate()
            .flat_map(|(owner, regids)| {
                regids.into_iter().map(move |r| Recipient { idx: u32::MAX, owner: owner as u32, address: r.into() })
            })
            .collect();
    }
    match w.plan.load.clone() {
        Load::Connect | Load::Idle => {}
        Load::Fanout { messages, qos, interval_ms } => fanout::load(&w, messages, qos, interval_ms).await,
        Load::Unicast { rate, duration_secs, batch, qos, offline } => {
            unicast::load(&w, rate, duration_secs, batch, qos, offline).await
        }
        Load::Churn { churn_per_sec, rate, duration_secs } => churn::load(&w, churn_per_sec, rate, duration_secs).await,
    }

    let t = w.tally.borrow();
    let report = WorkerReport {
        connections: u64::from(n),
        connected: t.connected,
        failed: t.failed.clone(),
        connect_start_us: t.connect_start_us,
        connect_end_us: t.connect_end_us,
        messages_sent: t.sent,
        deliveries: t.deliveries,
        send_start_us: t.send_start_us,
        send_end_us: t.send_end_us,
        first_send_us: t.first_send_us,
        last_delivery_us: t.last_delivery_us,
        histogram: t.latency.encode(),
        lost: t.lost,
        duplicates: t.duplicates,
        reconnects: t.reconnects,
        connect_retries: t.connect_retries,
        cpu_s: cpu_seconds().0,
        max_rss_bytes: own_rss().1,
        rss_before_connect: rss_before,
        rss_after_connect: rss_after,
    };
    emit(&WorkerMsg::Done(Box::new(report)));
    Ok(())
}

/// Opens every connection (paced, bounded concurrency) and waits until each one has
/// connected or failed, within a bound derived from the rate and handshake timeout.
async fn connect_all(w: &Rc<Worker>) {
    let n = w.plan.connections;
    let rate = w.plan.connect_rate;
    let concurrency = w.plan.concurrency.max(1);
    let start = Instant::now();
    w.tally.borrow_mut().connect_start_us = unix_micros();
    let pacing = if rate > 0.0 { f64::from(n) / rate } else { 0.0 };
    let waves = f64::from(n / concurrency + 2);
    let bound = pacing + waves * w.plan.handshake_timeout_secs as f64 + 5.0;
    let phase_deadline = (start + Duration::from_secs_f64(bound.min(86_400.0))).min(w.deadline);
    let spawner = {
        let w = w.clone();
        tokio::task::spawn_local(async move {
            let slots = Arc::new(Semaphore::new(concurrency as usize));
            for i in 0..n {
                if rate > 0.0 {
                    sleep_until(start + Duration::from_secs_f64(f64::from(i) / rate)).await;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                tokio::task::spawn_local(run_device(
                    i,
                    w.cfg.clone(),
                    w.ports_for(i),
                    w.tally.clone(),
                    permit,
                    w.signals.get(i as usize).cloned(),
                ));
            }
        })
    };
    let all = u64::from(n);
    let settled = wait_for(phase_deadline, || w.tally.borrow().settled >= all).await;
    if !settled {
        spawner.abort();
        let mut t = w.tally.borrow_mut();
        let missing = all.saturating_sub(t.settled);
        *t.failed.entry("timeout connect phase".into()).or_default() += missing;
        t.settled = all;
    }
}
