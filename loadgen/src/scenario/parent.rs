//! The parent process of the multi-process scenarios: gets app credentials (or
//! creates an app), starts the worker processes (`loadgen worker`, its own executable)
//! with their plans, draws progress bars (stderr) from their progress lines, moves
//! every worker to the load phase at once (`go`) once all are connected, measures
//! the server around an idle hold, sums the workers' reports, and writes the summary
//! (stdout) and `--json`. The whole run is bounded by `--timeout-secs`; workers still
//! running after it are killed (only our own children, by their handle).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::http_client::HttpClient;

use super::common::unix_micros;
use super::histogram::LatencyHist;
use super::options::{CommonArgs, Target};
use super::plan::{
    default_workers, expect_line, port_slice, split_connections, AppCreds, Load, Progress, SpreadTargets, TlsPlan,
    WorkerMsg, WorkerPlan,
};
use super::report::{per_conn, sum_reports, LoadgenCost, Report, WorkerReport};
use super::sysinfo::{cpu_seconds, own_rss, process_rss, slab_bytes};

/// Settle time between "all connected" and the idle measurement.
const SETTLE: Duration = Duration::from_secs(2);
/// Reserve of the run's time bound for workers to report and exit.
const REPORT_RESERVE: Duration = Duration::from_secs(3);
/// Most connections of a spread run: every worker is sent every RegID.
const SPREAD_MAX_CONNECTIONS: u64 = 200_000;

/// What the idle scenario adds.
#[derive(Debug, Clone, Copy)]
pub struct IdleSpec {
    pub hold_secs: u64,
    pub server_pid: Option<u32>,
}

/// One scenario run as the parent sees it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub connections: u64,
    pub connect_rate: f64,
    pub load: Load,
    pub idle: Option<IdleSpec>,
}

/// A running worker process.
struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Progress,
    connected: bool,
    /// Its devices' RegIDs, until sent to every worker (a spread run).
    regids: Vec<String>,
    /// A spread run: its accepted targets by the worker holding them, once it sent them all.
    sent_to: Option<Vec<u64>>,
    report: Option<WorkerReport>,
    ended: bool,
}

/// A line (or the end of output) from worker `usize`.
type WorkerLine = (usize, Option<String>);

pub fn run(common: CommonArgs, spec: Spec) -> anyhow::Result<()> {
    let started = Instant::now();
    let hard_deadline = started + Duration::from_secs(common.timeout_secs);
    let tls = tls_plan(&common, &spec.load)?;
    let app = match common.target {
        Target::Pushnode => Some(app_credentials(&common)?),
        Target::Mqtt => None,
    };
    let n = spec.connections;
    let workers = common.workers.unwrap_or_else(|| default_workers(n)).min(u32::try_from(n.max(1)).unwrap_or(u32::MAX));
    // A request's devices come from every worker (see `plan`) where it matters: a pushnode
    // unicast of several RegIDs a request, its targets online.
    let spread = common.target == Target::Pushnode
        && matches!(spec.load, Load::Unicast { batch: 2.., offline: false, .. })
        && workers > 1
        && n <= SPREAD_MAX_CONNECTIONS;
    let worker_deadline_us =
        unix_micros() + (Duration::from_secs(common.timeout_secs).saturating_sub(REPORT_RESERVE)).as_micros() as u64;

    // Idle: the "before" figures come before any connection exists.
    let server_rss_before = spec.idle.and_then(|i| i.server_pid).and_then(process_rss);
    let slab_before = spec.idle.and_then(|_| slab_bytes());

    let (tx, rx) = mpsc::channel::<WorkerLine>();
    let mut procs = Vec::new();
    for (w, (first_index, count)) in split_connections(n, workers).into_iter().enumerate() {
        let plan = WorkerPlan {
            worker: w as u32,
            workers,
            first_index,
            connections: count,
            target: common.target,
            v5: common.mqtt_v5(),
            mqtt: common.mqtt.clone(),
            tls: tls.clone(),
            http: common.http.clone(),
            app: app.clone(),
            source_ips: common.source_ips.0.clone(),
            ports: port_slice(w as u32, workers),
            connect_rate: spec.connect_rate / f64::from(workers),
            concurrency: common.concurrency,
            handshake_timeout_secs: common.handshake_timeout_secs,
            keep_alive: common.keep_alive,
            http_concurrency: common.http_concurrency,
            http2_connections: common.http2_connections,
            straggler_secs: common.straggler_secs,
            deadline_unix_us: worker_deadline_us,
            publisher: w == 0,
            load: share_of_load(&spec.load, workers),
            spread,
        };
        procs.push(spawn_worker(w, &plan, tx.clone())?);
    }
    drop(tx);
    let result = drive(&spec, spread, &mut procs, &rx, hard_deadline);
    // Whatever happened, no worker outlives the run.
    for p in &mut procs {
        p.stdin = None;
    }
    reap(&mut procs, Instant::now() + Duration::from_secs(5));
    let measured = result?;

    let reports: Vec<WorkerReport> = procs.iter_mut().filter_map(|p| p.report.take()).collect();
    if reports.len() != procs.len() {
        bail!("{} of {} workers did not report", procs.len() - reports.len(), procs.len());
    }
    let (total, hist) = sum_reports(&reports).map_err(|e| anyhow::anyhow!(e))?;
    let mut report = build_report(&common, &spec, &total, &hist, measured, server_rss_before, slab_before);
    if spread {
        let elsewhere = |(w, p): (usize, &WorkerProc)| {
            p.sent_to.as_ref().map_or(0, |to| to.iter().sum::<u64>() - to.get(w).copied().unwrap_or(0))
        };
        report.targets_on_other_workers = Some(procs.iter().enumerate().map(elsewhere).sum());
    }
    print!("{}", report.summary());
    std::io::stdout().flush()?;
    if let Some(path) = &common.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--tls-ca`, checked here once (the CA file loads, the name parses) so a mistake fails
/// before any worker starts.
fn tls_plan(common: &CommonArgs, load: &Load) -> anyhow::Result<Option<TlsPlan>> {
    let Some(ca) = &common.tls_ca else {
        return Ok(None);
    };
    if common.target == Target::Mqtt && !matches!(load, Load::Connect | Load::Idle) {
        bail!("--tls-ca with --target mqtt works for the connect and idle scenarios only (the publisher is plain TCP)");
    }
    loadgen::tls::TlsClient::from_ca_file(ca, &common.tls_server_name)?;
    let ca = std::fs::canonicalize(ca).with_context(|| format!("--tls-ca {}", ca.display()))?;
    Ok(Some(TlsPlan { ca, server_name: common.tls_server_name.clone() }))
}

/// This worker's part of the load: rates are divided among workers.
fn share_of_load(load: &Load, workers: u32) -> Load {
    let w = f64::from(workers.max(1));
    match load.clone() {
        Load::Unicast { rate, duration_secs, batch, qos, offline } => {
            Load::Unicast { rate: rate / w, duration_secs, batch, qos, offline }
        }
        Load::Churn { churn_per_sec, rate, duration_secs } => {
            Load::Churn { churn_per_sec: churn_per_sec / w, rate: rate / w, duration_secs }
        }
        other => other,
    }
}

/// --app-id/--app-key/--app-secret, or a new app made with the admin token.
fn app_credentials(common: &CommonArgs) -> anyhow::Result<AppCreds> {
    if let (Some(id), Some(key), Some(secret)) = (&common.app_id, &common.app_key, &common.app_secret) {
        return Ok(AppCreds { app_id: id.clone(), app_key: key.clone(), app_secret: secret.clone() });
    }
    let Some(path) = &common.admin_token_file else {
        bail!("pushnode needs --app-id, --app-key and --app-secret, or --admin-token-file");
    };
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let http = HttpClient::new(&common.http, Duration::from_secs(10)).map_err(|e| anyhow::anyhow!("--http: {e}"))?;
    let resp = rt
        .block_on(http.create_app(&token, "loadgen", "dev.pushnode.loadgen"))
        .and_then(|r| r.error_for_status())
        .map_err(|e| anyhow::anyhow!("creating an app: {e}"))?;
    let app: AppCreds = resp.json().context("the POST /v1/apps answer")?;
    Ok(app)
}

fn spawn_worker(w: usize, plan: &WorkerPlan, tx: mpsc::Sender<WorkerLine>) -> anyhow::Result<WorkerProc> {
    let exe = std::env::current_exe().context("finding loadgen's own executable")?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a worker")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    writeln!(stdin, "{}", serde_json::to_string(plan)?)?;
    stdin.flush()?;
    std::thread::Builder::new().name(format!("worker-{w}")).spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send((w, Some(l))).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send((w, None));
    })?;
    Ok(WorkerProc {
        child,
        stdin: Some(stdin),
        progress: Progress::default(),
        connected: false,
        regids: Vec::new(),
        sent_to: None,
        report: None,
        ended: false,
    })
}

/// Waits for the workers to exit; kills (by handle) those still running at `until`.
fn reap(procs: &mut [WorkerProc], until: Instant) {
    for p in procs.iter_mut() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= until => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Figures the parent measured itself.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    server_rss_after: Option<u64>,
    slab_after: Option<u64>,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(what.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// Takes one line from a worker into its state.
fn absorb(procs: &mut [WorkerProc], (w, line): WorkerLine) -> anyhow::Result<()> {
    let Some(p) = procs.get_mut(w) else {
        return Ok(());
    };
    let Some(line) = line else {
        p.ended = true;
        if p.report.is_none() {
            bail!("worker {w} exited without reporting");
        }
        return Ok(());
    };
    match serde_json::from_str::<WorkerMsg>(&line) {
        Ok(WorkerMsg::Progress(pr)) => p.progress = pr,
        Ok(WorkerMsg::Connected { connected, regids, .. }) => {
            p.connected = true;
            p.progress.connected = connected;
            p.regids = regids;
        }
        Ok(WorkerMsg::Sent { to }) => p.sent_to = Some(to),
        Ok(WorkerMsg::Done(r)) => p.report = Some(*r),
        Ok(WorkerMsg::Error { message }) => bail!("worker {w}: {message}"),
        Err(_) => eprintln!("worker {w}: {line}"),
    }
    Ok(())
}

/// Runs the phases: connect, (idle measure + hold), go, load, reports.
fn drive(
    spec: &Spec,
    spread: bool,
    procs: &mut [WorkerProc],
    rx: &mpsc::Receiver<WorkerLine>,
    deadline: Instant,
) -> anyhow::Result<Measured> {
    let tick = Duration::from_millis(100);
    let pump = |procs: &mut [WorkerProc], until: Instant| -> anyhow::Result<()> {
        let wait = until.saturating_duration_since(Instant::now()).min(tick);
        match rx.recv_timeout(wait) {
            Ok(line) => absorb(procs, line),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(wait);
                Ok(())
            }
        }
    };

    // Connect phase.
    let b = bar(spec.connections, "connect");
    while !procs.iter().all(|p| p.connected) {
        if Instant::now() >= deadline {
            b.abandon();
            bail!("the connect phase did not finish within --timeout-secs");
        }
        pump(procs, deadline)?;
        b.set_position(procs.iter().map(|p| p.progress.connected + p.progress.failed).sum());
    }
    b.finish();

    // Idle: settle, measure, hold.
    let mut measured = Measured::default();
    if let Some(idle) = spec.idle {
        let settle_end = Instant::now() + SETTLE;
        while Instant::now() < settle_end.min(deadline) {
            pump(procs, settle_end)?;
        }
        measured.server_rss_after = idle.server_pid.and_then(process_rss);
        measured.slab_after = slab_bytes();
        let hold_end = (Instant::now() + Duration::from_secs(idle.hold_secs))
            .min(deadline.checked_sub(REPORT_RESERVE).unwrap_or(deadline));
        let b = bar(idle.hold_secs, "hold (s)");
        let hold_start = Instant::now();
        while Instant::now() < hold_end {
            pump(procs, hold_end)?;
            b.set_position(hold_start.elapsed().as_secs());
        }
        b.finish();
    }

    // Load phase: everyone starts together.
    let targets =
        spread.then(|| SpreadTargets { targets: procs.iter_mut().map(|p| std::mem::take(&mut p.regids)).collect() });
    let targets = targets.map(|t| serde_json::to_string(&t)).transpose()?;
    for p in procs.iter_mut() {
        if let Some(stdin) = p.stdin.as_mut() {
            if let Some(targets) = &targets {
                writeln!(stdin, "{targets}").context("telling a worker the targets")?;
            }
            writeln!(stdin, "go").context("telling a worker to go")?;
            stdin.flush()?;
        }
    }
    let mut expectations_told = !spread;
    let (len, what) = match &spec.load {
        Load::Fanout { messages, .. } => {
            let connected: u64 = procs.iter().map(|p| p.progress.connected).sum();
            (connected * u64::from(*messages), "deliveries")
        }
        Load::Unicast { rate, duration_secs, .. } | Load::Churn { rate, duration_secs, .. } => {
            ((rate * duration_secs) as u64, "deliveries")
        }
        Load::Connect | Load::Idle => (0, "report"),
    };
    let b = bar(len, what);
    while !procs.iter().all(|p| p.report.is_some()) {
        if Instant::now() >= deadline {
            b.abandon();
            bail!("workers did not report within --timeout-secs");
        }
        pump(procs, deadline)?;
        b.set_position(procs.iter().map(|p| p.progress.deliveries).sum());
        if !expectations_told && procs.iter().all(|p| p.sent_to.is_some()) {
            tell_expectations(procs)?;
            expectations_told = true;
        }
    }
    b.finish();
    Ok(measured)
}

/// A spread run whose workers all sent: tells each how many deliveries its devices get.
fn tell_expectations(procs: &mut [WorkerProc]) -> anyhow::Result<()> {
    let mut expected = vec![0u64; procs.len()];
    for sent_to in procs.iter().filter_map(|p| p.sent_to.as_ref()) {
        for (total, n) in expected.iter_mut().zip(sent_to) {
            *total += n;
        }
    }
    for (p, n) in procs.iter_mut().zip(expected) {
        if let Some(stdin) = p.stdin.as_mut() {
            writeln!(stdin, "{}", expect_line(n)).context("telling a worker what to expect")?;
            stdin.flush()?;
        }
    }
    Ok(())
}

fn build_report(
    common: &CommonArgs,
    spec: &Spec,
    total: &WorkerReport,
    hist: &LatencyHist,
    measured: Measured,
    server_rss_before: Option<u64>,
    slab_before: Option<u64>,
) -> Report {
    let secs = |from: u64, to: u64| {
        if from > 0 && to > from {
            (to - from) as f64 / 1e6
        } else {
            0.0
        }
    };
    let rate = |count: u64, s: f64| if s > 0.0 { count as f64 / s } else { 0.0 };
    let connect_s = secs(total.connect_start_us, total.connect_end_us);
    let (own_cpu, children_cpu) = cpu_seconds();
    let (_, own_hwm) = own_rss();
    let mut r = Report {
        scenario: spec.load.name().to_string(),
        target: common.target.name().to_string(),
        connections: spec.connections,
        connected: total.connected,
        failed: total.failed.clone(),
        elapsed_s: connect_s,
        connect_rate_per_s: Some(rate(total.connected, connect_s)),
        connect_retries: (total.connect_retries > 0).then_some(total.connect_retries),
        loadgen: LoadgenCost {
            cpu_s: own_cpu + children_cpu.max(total.cpu_s),
            max_rss_bytes: own_hwm + total.max_rss_bytes,
            bytes_per_conn: per_conn(total.rss_before_connect, total.rss_after_connect, total.connected).max(0) as u64,
        },
        ..Report::default()
    };
    let latency = |r: &mut Report| {
        r.latency_us = Some(hist.percentiles());
        r.histogram = Some(hist.distribution());
    };
    match &spec.load {
        Load::Connect => {}
        Load::Idle => {
            r.server_rss_before = server_rss_before;
            r.server_rss_after = measured.server_rss_after;
            r.slab_before = slab_before;
            r.slab_after = measured.slab_after;
            if let (Some(b), Some(a)) = (server_rss_before, measured.server_rss_after) {
                r.user_bytes_per_conn = Some(per_conn(b, a, total.connected));
            }
            if let (Some(b), Some(a)) = (slab_before, measured.slab_after) {
                r.kernel_bytes_per_conn = Some(per_conn(b, a, total.connected));
            }
        }
        Load::Fanout { .. } => {
            let s = secs(total.first_send_us, total.last_delivery_us);
            r.elapsed_s = s;
            r.messages_sent = Some(total.messages_sent);
            r.deliveries = Some(total.deliveries);
            r.deliveries_per_s = Some(rate(total.deliveries, s));
            latency(&mut r);
        }
        Load::Unicast { .. } | Load::Churn { .. } => {
            let s = secs(total.send_start_us, total.send_end_us);
            r.elapsed_s = s;
            r.messages_sent = Some(total.messages_sent);
            r.deliveries = Some(total.deliveries);
            r.achieved_rate_per_s = Some(rate(total.messages_sent, s));
            latency(&mut r);
            if matches!(spec.load, Load::Churn { .. }) {
                r.lost = Some(total.lost);
                r.duplicates = Some(total.duplicates);
                r.reconnects = Some(total.reconnects);
            }
        }
    }
    r
}
