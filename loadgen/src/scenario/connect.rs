//! `loadgen connect`: open N connections at R/s (0 = as fast as the handshake
//! concurrency allows), each CONNECT + SUBSCRIBE (pushnode `inbox`, plain MQTT
//! `lg/<id>`); report the connect+subscribe rate over the connect phase and failures
//! by reason.

use super::options::{parse_rate_or_zero, CommonArgs};
use super::parent::{self, Spec};
use super::plan::Load;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to open.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub connections: u64,
    /// Connects started per second; 0 = as fast as possible (bounded concurrency).
    #[arg(long, default_value = "0", value_parser = parse_rate_or_zero)]
    pub rate: f64,
}

pub fn run(args: ConnectArgs) -> anyhow::Result<()> {
    parent::run(
        args.common,
        Spec { connections: args.connections, connect_rate: args.rate, load: Load::Connect, idle: None },
    )
}
