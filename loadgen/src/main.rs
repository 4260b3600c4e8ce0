//! `loadgen`: drives load scenarios against a pushnode node. The CLI is one clap
//! subcommand per scenario; each scenario lives in its own file under `scenario/`
//! and exposes `Args` + `run(args)`. Shared MQTT/HTTP clients are in this crate's
//! library (`loadgen::mqtt_client`, `loadgen::http_client`).

mod scenario;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for pushnode (MQTT devices + HTTP app server)",
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Hold(args) => scenario::hold::run(args),
    }
}
