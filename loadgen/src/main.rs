//! `loadgen`: drives load scenarios against a pushnode node or any MQTT broker. The
//! CLI is one clap subcommand per scenario; each scenario lives in its own file under
//! `scenario/` and exposes its `Args` + `run(args)`. The multi-process scenarios
//! re-execute this binary as the hidden `worker` subcommand. Shared MQTT/HTTP clients
//! are in this crate's library (`loadgen::mqtt_client`, `loadgen::http_client`).

mod scenario;

// The glibc allocator was a fifth of a worker's CPU under HTTP load (malloc, free and their
// consolidation, in `perf`); the node uses mimalloc too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for pushnode (MQTT devices + HTTP app server) and other MQTT brokers",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Scenarios.
#[derive(Subcommand)]
enum Scenario {
    /// Hold N registered MQTT 5 connections, then push one message to each over HTTP
    /// and measure delivery latency.
    Hold(scenario::hold::HoldArgs),
    /// Open N connections at a rate; report the connect+subscribe rate and failures.
    Connect(scenario::connect::ConnectArgs),
    /// Hold N idle connections; report server and kernel bytes per connection.
    Idle(scenario::idle::IdleArgs),
    /// N subscribers on one topic, M messages; report deliveries/s and latency.
    Fanout(scenario::fanout::FanoutArgs),
    /// Open-loop messages to random devices; report achieved rate and latency.
    Unicast(scenario::unicast::UnicastArgs),
    /// Devices reconnect while pushes flow; report lost and duplicated messages.
    Churn(scenario::churn::ChurnArgs),
    /// Internal: one worker process of a multi-process scenario.
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Hold(args) => scenario::hold::run(args),
        Scenario::Connect(args) => scenario::connect::run(args),
        Scenario::Idle(args) => scenario::idle::run(args),
        Scenario::Fanout(args) => scenario::fanout::run(args),
        Scenario::Unicast(args) => scenario::unicast::run(args),
        Scenario::Churn(args) => scenario::churn::run(args),
        Scenario::Worker => scenario::worker::run_worker(),
    }
}
