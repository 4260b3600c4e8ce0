//! The `pushnode` binary: `serve` runs a node; `app`, `send` and `device` are clients of
//! a running node for operators, app developers and demos.

mod client;
mod config;
mod http;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pushnode", version, about = "Self-hosted push notification node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (defaults: MQTT 127.0.0.1:1883, HTTP 127.0.0.1:8080, data in ./data).
    Serve(ServeArgs),
    /// Manage apps.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Send a push through a node's HTTP API.
    Send(client::SendArgs),
    /// A reference device: registers, connects and prints the pushes that arrive.
    Device(client::DeviceArgs),
    /// An app's push (or, with --users, user) statistics per day, as a table.
    Stats(client::StatsArgs),
}

#[derive(Subcommand)]
enum AppCommand {
    /// Create an app; prints its id, device key and server secret.
    Create(client::AppCreateArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (see configs/pushnode.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// MQTT over TLS address (needs --tls-cert/--tls-key or the config).
    #[arg(long)]
    mqtt_tls_listen: Option<SocketAddr>,
    /// HTTPS address (needs --tls-cert/--tls-key or the config).
    #[arg(long)]
    https_listen: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listeners.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Shard threads (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Store databases and their writer threads; must divide the shard count (0 = one per
    /// shard, fewer when shards outnumber cores).
    #[arg(long)]
    store_writers: Option<usize>,
    #[arg(long)]
    max_connections_per_shard: Option<u32>,
    /// New connections a second per source address (IPv4, or IPv6 /64); 0 = no limit.
    #[arg(long)]
    connect_rate_per_ip: Option<u32>,
    /// New connections one source address may open at once before the rate applies.
    #[arg(long)]
    connect_burst_per_ip: Option<u32>,
    #[arg(long)]
    durability: Option<String>,
    /// Seconds an HTTP(S) connection may wait for the handshake, a request's headers, or
    /// idle between requests.
    #[arg(long)]
    http_idle_timeout_secs: Option<u64>,
    /// Log filter, e.g. "info" or "debug".
    #[arg(long)]
    log: Option<String>,
    /// Check the config and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::App { command: AppCommand::Create(args) } => client::run_app_create(args),
        Command::Send(args) => client::run_send(args),
        Command::Device(args) => client::run_device(args),
        Command::Stats(args) => client::run_stats(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.mqtt_listen {
        config.mqtt_listen = v;
    }
    if let Some(v) = args.http_listen {
        config.http_listen = v;
    }
    if let Some(v) = args.mqtt_tls_listen {
        config.mqtt_tls_listen = Some(v);
    }
    if let Some(v) = args.https_listen {
        config.https_listen = Some(v);
    }
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.shards {
        config.shards = v;
    }
    if let Some(v) = args.store_writers {
        config.store_writers = v;
    }
    if let Some(v) = args.max_connections_per_shard {
        config.max_connections_per_shard = v;
    }
    if let Some(v) = args.connect_rate_per_ip {
        config.connect_rate_per_ip = v;
    }
    if let Some(v) = args.connect_burst_per_ip {
        config.connect_burst_per_ip = v;
    }
    if let Some(v) = args.durability {
        config.durability = serde_json::from_value(serde_json::Value::String(v.clone()))
            .with_context(|| format!("--durability must be fsync or buffered, got {v}"))?;
    }
    if let Some(v) = args.log {
        config.log = v;
    }
    if let Some(v) = args.http_idle_timeout_secs {
        config.http_idle_timeout_secs = v;
    }
    let engine = config.engine()?;
    core_engine::clock::set_offset_s(config.clock_offset_secs);
    if args.check {
        println!(
            "config ok: {} shards, mqtt {}, http {}, data {}",
            engine.shards,
            config.mqtt_listen,
            config.http_listen,
            config.data_dir.display()
        );
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).context("invalid log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // mimalloc asks for transparent huge pages on its arenas (madvise), so with THP on
    // each allocating thread's first touch of a 2 MiB region took a whole huge page: at
    // 200,000 idle connections on 16 shards that was 53 MB of the start-up RSS and 100-300 B
    // per connection (BENCHMARKS.md). Off for the whole process; plain 4 KiB pages after.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "could not turn transparent huge pages off (prctl PR_SET_THP_DISABLE)");
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let admin_token = admin_token(&config.data_dir)?;
    let api = http::ApiState::open(&config.data_dir, std::time::Duration::from_secs(config.broadcast_interval_secs))
        .context("opening data/api.redb")?;
    let node = core_engine::Node::start(engine.clone())?;
    let state = Arc::new(http::HttpState {
        node: node.handle(),
        admin_token,
        max_body_bytes: config.max_body_bytes,
        api: Arc::new(api),
        auth: http::AuthState::new(config.require_signatures),
        callbacks: Arc::new(http::Callbacks::default()),
    });
    let https = match (config.https_listen, &config.tls_cert, &config.tls_key) {
        (Some(addr), Some(cert), Some(key)) => Some((addr, core_engine::tls::server_config(cert, key)?)),
        _ => None,
    };
    let http_idle_timeout = std::time::Duration::from_secs(config.http_idle_timeout_secs);
    http::start(config.http_listen, https, config.http_threads, http_idle_timeout, state)?;
    let started = std::time::Instant::now();
    let handle = node.handle();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = engine.shards,
        mqtt = %config.mqtt_listen,
        http = %config.http_listen,
        data = %config.data_dir.display(),
        "node started"
    );
    eprintln!("pushnode ready mqtt={} http={}", config.mqtt_listen, config.http_listen);
    wait_for_signal()?;
    let connections: i64 = handle.metrics().iter().map(|m| m.connections.load(Ordering::Relaxed)).sum();
    tracing::info!(connections, "shutting down");
    node.shutdown();
    let total = |f: fn(&core_engine::stats::ShardMetrics) -> &AtomicU64| -> u64 {
        handle.metrics().iter().map(|m| f(m).load(Ordering::Relaxed)).sum()
    };
    tracing::info!(
        uptime_s = started.elapsed().as_secs(),
        connects = total(|m| &m.connects),
        accepted = total(|m| &m.accepted),
        delivered = total(|m| &m.delivered),
        expired = total(|m| &m.expired),
        dropped = total(|m| &m.dropped),
        "stopped"
    );
    Ok(())
}

/// Reads `data/admin.token`, creating it (mode 0600) on first start.
fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) => Ok(token.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let token = core_engine::ids::random_secret::<24>();
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "wrote a new admin token");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        Ok::<_, std::io::Error>(())
    })?;
    Ok(())
}
