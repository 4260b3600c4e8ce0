//! `loadgen unicast`: N connected devices; open-loop at R messages/s to random devices
//! for T seconds, latency from each message's scheduled send time (no coordinated
//! omission); then wait (bounded) for late deliveries and report the achieved rate
//! and latency percentiles. Every worker sends R / workers, to its own devices or, in a
//! spread run (several RegIDs a request, several workers), to every worker's.
//! `--offline` (pushnode): the devices disconnect once registered and connected, and the
//! sends measure the HTTP frontend and the store alone: "deliveries" are stored targets
//! and the latency is from the scheduled send time to the HTTP answer.

use std::rc::Rc;

use tokio::time::Instant;

use super::common::read_stdin_until;
use super::open_loop;
use super::options::{parse_rate_or_zero, CommonArgs};
use super::parent::{self, Spec};
use super::plan::Load;
use super::plan::{parse_expect_line, WorkerMsg};
use super::worker::{emit, wait_for, Worker};

#[derive(Debug, Clone, clap::Args)]
pub struct UnicastArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Devices to connect.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub connections: u64,
    /// Messages per second (open loop).
    #[arg(long, value_parser = super::common::parse_rate)]
    pub rate: f64,
    /// How long to send, seconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_secs: u64,
    /// RegIDs per HTTP request (pushnode), 1..=100; with several workers (up to 200,000
    /// connections), drawn from every worker's devices.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch: u32,
    /// QoS of the subscriptions and plain-MQTT publishes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Connects started per second; 0 = as fast as possible.
    #[arg(long, default_value = "0", value_parser = parse_rate_or_zero)]
    pub connect_rate: f64,
    /// Devices disconnect before the sends (pushnode): measures the HTTP frontend and
    /// the store without deliveries; latency is the HTTP answer's.
    #[arg(long)]
    pub offline: bool,
}

pub fn run(args: UnicastArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.offline || args.common.target == super::options::Target::Pushnode,
        "--offline measures pushnode's HTTP API: it needs --target pushnode"
    );
    parent::run(
        args.common,
        Spec {
            connections: args.connections,
            connect_rate: args.connect_rate,
            load: Load::Unicast {
                rate: args.rate,
                duration_secs: args.duration_secs as f64,
                batch: args.batch,
                qos: args.qos,
                offline: args.offline,
            },
            idle: None,
        },
    )
}

/// Worker side: send, then wait for every accepted message to arrive (bounded by
/// `--straggler-secs` and the deadline).
pub async fn load(w: &Rc<Worker>, rate: f64, duration_secs: f64, batch: u32, qos: u8, offline: bool) {
    if offline {
        for signal in &w.signals {
            signal.notify_one();
        }
        let until = (Instant::now() + std::time::Duration::from_secs(10)).min(w.deadline);
        wait_for(until, || {
            let t = w.tally.borrow();
            t.left >= t.connected
        })
        .await;
    }
    let followed = if offline { open_loop::Followed::Answered } else { open_loop::Followed::Delivered };
    open_loop::send(w, rate, duration_secs, batch, qos, followed).await;
    let straggle = std::time::Duration::from_secs(w.plan.straggler_secs);
    let expected = if w.plan.spread && !offline {
        // Other workers' requests name this worker's devices: the parent counts them.
        let mut to = w.tally.borrow().sent_to.clone();
        to.resize(w.plan.workers as usize, 0);
        emit(&WorkerMsg::Sent { to });
        let limit = straggle.min(w.time_left());
        let (_, lines) = read_stdin_until(|line| parse_expect_line(line).is_some(), limit).await;
        lines.iter().find_map(|line| parse_expect_line(line))
    } else {
        None
    };
    let until = (Instant::now() + straggle).min(w.deadline);
    wait_for(until, || {
        let t = w.tally.borrow();
        t.deliveries >= expected.unwrap_or(t.sent)
    })
    .await;
}
