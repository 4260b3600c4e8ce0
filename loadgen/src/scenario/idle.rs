//! `loadgen idle`: connect N clients, then measure what holding them costs the
//! server: its RSS (`--server-pid`, /proc/PID/status VmRSS) and the kernel's Slab
//! (/proc/meminfo) before connecting and after every connection is up and settled
//! (2 s), hold them T seconds, and report bytes per connection for each. The
//! measuring and holding happen in the parent; workers only hold.

use super::options::{parse_rate_or_zero, CommonArgs};
use super::parent::{self, IdleSpec, Spec};
use super::plan::Load;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to hold.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub connections: u64,
    /// Seconds to hold them once connected and measured.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub hold_secs: u64,
    /// PID of the server whose RSS is measured.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Connects started per second; 0 = as fast as possible.
    #[arg(long, default_value = "0", value_parser = parse_rate_or_zero)]
    pub rate: f64,
}

pub fn run(args: IdleArgs) -> anyhow::Result<()> {
    parent::run(
        args.common,
        Spec {
            connections: args.connections,
            connect_rate: args.rate,
            load: Load::Idle,
            idle: Some(IdleSpec { hold_secs: args.hold_secs, server_pid: args.server_pid }),
        },
    )
}
