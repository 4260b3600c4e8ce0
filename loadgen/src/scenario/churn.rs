//! `loadgen churn` (pushnode only for now): N devices; C per second disconnect
//! cleanly and reconnect as the same device (same RegID/token, clean session false)
//! while unicast pushes flow at R/s. Afterwards churn stops, late deliveries are
//! awaited (bounded), and the report counts lost messages (accepted with 200, never
//! received by their device) and duplicates (one message id received twice by one
//! device).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::common::unix_micros;
use super::open_loop::{self, Expected, Rng};
use super::options::{parse_rate_or_zero, CommonArgs};
use super::parent::{self, Spec};
use super::plan::Load;
use super::schedule::Schedule;
use super::worker::{wait_for, Worker};

#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Devices to connect.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub connections: u64,
    /// Devices that disconnect and reconnect per second.
    #[arg(long, value_parser = super::common::parse_rate)]
    pub churn_per_sec: f64,
    /// Pushes per second (open loop, one RegID per request).
    #[arg(long, value_parser = super::common::parse_rate)]
    pub rate: f64,
    /// How long pushes and churn go on, seconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_secs: u64,
    /// Connects started per second; 0 = as fast as possible.
    #[arg(long, default_value = "0", value_parser = parse_rate_or_zero)]
    pub connect_rate: f64,
}

pub fn run(args: ChurnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.common.target == super::options::Target::Pushnode,
        "churn supports --target pushnode only for now"
    );
    parent::run(
        args.common,
        Spec {
            connections: args.connections,
            connect_rate: args.connect_rate,
            load: Load::Churn {
                churn_per_sec: args.churn_per_sec,
                rate: args.rate,
                duration_secs: args.duration_secs as f64,
            },
            idle: None,
        },
    )
}

/// Worker side: churn and send together, then wait for every accepted message.
pub async fn load(w: &Rc<Worker>, churn_per_sec: f64, rate: f64, duration_secs: f64) {
    let duration = Duration::from_secs_f64(duration_secs.max(0.0));
    let churner = {
        let w = w.clone();
        tokio::task::spawn_local(async move { churn_devices(&w, churn_per_sec, duration).await })
    };
    let expected: Expected = Rc::new(RefCell::new(Vec::new()));
    open_loop::send(w, rate, duration_secs, 1, 1, open_loop::Followed::Tracked(expected.clone())).await;
    churner.abort();
    let until = (Instant::now() + Duration::from_secs(w.plan.straggler_secs)).min(w.deadline);
    wait_for(until, || w.tally.borrow().count_lost(&expected.borrow()) == 0).await;
    let lost = w.tally.borrow().count_lost(&expected.borrow());
    w.tally.borrow_mut().lost = lost;
}

/// Signals random live devices to reconnect, `per_sec` a second, for `duration`.
async fn churn_devices(w: &Rc<Worker>, per_sec: f64, duration: Duration) {
    let live: Vec<u32> = w.tally.borrow().live.clone();
    if live.is_empty() || per_sec <= 0.0 {
        return;
    }
    let schedule = Schedule::new(per_sec, duration);
    let mut rng = Rng::new(unix_micros() ^ 0x9E37_79B9);
    let start = Instant::now();
    for k in 0..schedule.total() {
        sleep_until(start + schedule.due(k)).await;
        if Instant::now() >= w.deadline {
            return;
        }
        let idx = live[rng.below(live.len())];
        if let Some(signal) = w.signals.get(idx as usize) {
            signal.notify_one();
        }
    }
}
