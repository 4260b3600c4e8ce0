//! The open-loop unicast sender shared by `unicast` and `churn`: messages to random
//! connected devices at a fixed rate for a fixed time ([`Schedule`]), each stamped
//! with its scheduled send time (unix micros) so latency counts any delay of the
//! sender itself (woken by a [`PreciseTimer`], not tokio's millisecond timer). Pushnode:
//! `POST /v1/messages` with `batch` RegIDs per request (a bounded number in flight); plain
//! MQTT: PUBLISH to `lg/<id>`, every message due at once going out in one write.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::common::unix_micros;
use super::options::Target;
use super::precise_timer::PreciseTimer;
use super::schedule::Schedule;
use super::sender::{qos_of, HttpSender, MqttPublisher, PushBody, PushTarget};
use super::worker::Worker;

/// Most messages handed out in one catch-up burst before the loop looks again.
const MAX_BURST: u64 = 1000;

/// A small xorshift64* generator: picking random devices needs no more.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// (device index, message id) pairs the server accepted.
pub type Expected = Rc<RefCell<Vec<(u32, Box<str>)>>>;

/// A device a message may go to.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// Its index among this worker's devices (what churn's tracking keys on); `u32::MAX`
    /// for another worker's device.
    pub idx: u32,
    /// The worker holding it.
    pub owner: u32,
    /// Its RegID (pushnode) or topic suffix (plain MQTT).
    pub address: Box<str>,
}

/// How an accepted send is followed up.
#[derive(Clone)]
pub enum Followed {
    /// Its deliveries are counted as they arrive.
    Delivered,
    /// Also every accepted (device, message id) is recorded, to count losses (churn).
    Tracked(Expected),
    /// The targets are offline: the HTTP answer counts as the delivery (pushnode).
    Answered,
}

/// Sends `rate` messages/s for `duration_secs` to random live devices of this worker, or
/// of every worker in a spread run whose deliveries are counted (see `plan`).
pub async fn send(w: &Rc<Worker>, rate: f64, duration_secs: f64, batch: u32, qos: u8, followed: Followed) {
    let targets: Vec<Recipient> = if w.plan.spread && matches!(followed, Followed::Delivered) {
        std::mem::take(&mut *w.spread.borrow_mut())
    } else {
        let t = w.tally.borrow();
        let owner = w.plan.worker;
        t.live
            .iter()
            .filter_map(|&idx| {
                let address = t.addresses.get(idx as usize)?.clone()?;
                Some(Recipient { idx, owner, address })
            })
            .collect()
    };
    if targets.is_empty() || rate <= 0.0 {
        return;
    }
    let duration = Duration::from_secs_f64(duration_secs.max(0.0));
    let mut rng = Rng::new(unix_micros() ^ (u64::from(w.plan.worker) << 32));
    match w.plan.target {
        Target::Pushnode => {
            let batch = batch.clamp(1, 100);
            send_http(w, rate / f64::from(batch), duration, batch, &targets, &mut rng, followed).await
        }
        Target::Mqtt => send_mqtt(w, rate, duration, qos, &targets, &mut rng).await,
    }
}

async fn send_http(
    w: &Rc<Worker>,
    request_rate: f64,
    duration: Duration,
    batch: u32,
    targets: &[Recipient],
    rng: &mut Rng,
    followed: Followed,
) {
    let (Some(http), Some(app)) = (&w.http, &w.plan.app) else {
        return;
    };
    let sender = match HttpSender::new(http, &app.app_secret, w.plan.http_concurrency, w.plan.http2_connections) {
        Ok(sender) => sender,
        Err(e) => {
            w.tally.borrow_mut().count_failure(format!("send: {e}"));
            return;
        }
    };
    let schedule = Schedule::new(request_rate, duration);
    let timer = PreciseTimer::new();
    let start = Instant::now();
    let start_us = unix_micros();
    w.tally.borrow_mut().send_start_us = start_us;
    let mut next = 0;
    while next < schedule.total() && Instant::now() < w.deadline {
        let due = schedule.due_range(next, start.elapsed(), MAX_BURST);
        if due.is_empty() {
            timer.sleep_until(start + schedule.due(next)).await;
            continue;
        }
        for k in due.clone() {
            let scheduled_us = start_us + schedule.due(k).as_micros() as u64;
            let picked = pick_distinct(rng, targets, batch as usize);
            let regids = picked.iter().map(|t| &*t.address).collect();
            let body = match PushBody::passthrough(PushTarget::Regids(regids), scheduled_us.to_string()).to_bytes() {
                Ok(body) => body,
                Err(e) => {
                    w.tally.borrow_mut().count_failure(format!("send: {e}"));
                    continue;
                }
            };
            let Some(slot) = sender.slot().await else {
                return;
            };
            let (sender, tally, followed) = (sender.clone(), w.tally.clone(), followed.clone());
            let spread = w.plan.spread;
            let limit = w.time_left();
            tokio::task::spawn_local(async move {
                let outcome = sender.post(&body, limit).await;
                drop(slot);
                let mut t = tally.borrow_mut();
                match outcome {
                    Ok(o) => {
                        let accepted: Vec<&Recipient> =
                            picked.iter().filter(|p| !o.invalid.iter().any(|i| **i == *p.address)).collect();
                        t.note_send(accepted.len() as u64, scheduled_us);
                        if spread {
                            for target in &accepted {
                                t.note_sent_to(target.owner);
                            }
                        }
                        if !o.invalid.is_empty() {
                            t.count_failure("send: invalid regid".into());
                        }
                        match (&followed, &o.id) {
                            (Followed::Tracked(exp), Some(id)) => {
                                let mut exp = exp.borrow_mut();
                                for target in accepted {
                                    exp.push((target.idx, id.clone().into_boxed_str()));
                                }
                            }
                            (Followed::Answered, _) => {
                                t.on_answered(accepted.len() as u64, scheduled_us, unix_micros());
                            }
                            _ => {}
                        }
                    }
                    Err(reason) => t.count_failure(format!("send: {reason}")),
                }
            });
        }
        next = due.end;
    }
    sender.drain(w.deadline).await;
    w.tally.borrow_mut().send_end_us = unix_micros();
}

async fn send_mqtt(w: &Rc<Worker>, rate: f64, duration: Duration, qos: u8, targets: &[Recipient], rng: &mut Rng) {
    let ports = w.ports_for(0);
    let client_id = format!("lg-pub-{}", w.plan.worker);
    let mut publisher = match MqttPublisher::connect(w.server, &ports, w.cfg.version, client_id, w.deadline).await {
        Ok(p) => p,
        Err(e) => {
            w.tally.borrow_mut().count_failure(format!("publisher: {}", e.reason_label()));
            return;
        }
    };
    let schedule = Schedule::new(rate, duration);
    let timer = PreciseTimer::new();
    let start = Instant::now();
    let start_us = unix_micros();
    w.tally.borrow_mut().send_start_us = start_us;
    let mut next = 0;
    while next < schedule.total() && Instant::now() < w.deadline {
        let due = schedule.due_range(next, start.elapsed(), MAX_BURST);
        if due.is_empty() {
            timer.sleep_until(start + schedule.due(next)).await;
            continue;
        }
        let messages: Vec<(String, Vec<u8>)> = due
            .clone()
            .map(|k| {
                let scheduled_us = start_us + schedule.due(k).as_micros() as u64;
                let target = &targets[rng.below(targets.len())];
                (format!("lg/{}", target.address), scheduled_us.to_string().into_bytes())
            })
            .collect();
        let first_us = start_us + schedule.due(due.start).as_micros() as u64;
        match publisher.publish(&messages, qos_of(qos), w.deadline).await {
            Ok(n) => w.tally.borrow_mut().note_send(n, first_us),
            Err(e) => {
                w.tally.borrow_mut().count_failure(format!("send: {}", e.reason_label()));
                break;
            }
        }
        next = due.end;
    }
    w.tally.borrow_mut().send_end_us = unix_micros();
    // Keep the publisher connected while deliveries drain: a broker may drop what a
    // closing client published last.
    let deadline = w.deadline;
    tokio::task::spawn_local(async move {
        sleep_until(deadline).await;
        drop(publisher);
    });
}

/// `count` different random entries of `targets` (all of them if there are fewer):
/// the node delivers a message once per device, so a request must not name a device
/// twice.
fn pick_distinct(rng: &mut Rng, targets: &[Recipient], count: usize) -> Vec<Recipient> {
    let count = count.min(targets.len());
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    while chosen.len() < count {
        let i = rng.below(targets.len());
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen.into_iter().map(|i| targets[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_spreads_over_the_range() {
        let mut r = Rng::new(42);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[r.below(10)] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800 && h < 1200), "{hits:?}");
        assert_eq!(Rng::new(0).below(1), 0);
    }

    #[test]
    fn picks_are_distinct() {
        let targets: Vec<Recipient> =
            (0..12).map(|i| Recipient { idx: i, owner: i % 2, address: i.to_string().into() }).collect();
        let mut r = Rng::new(7);
        for _ in 0..100 {
            let mut p: Vec<u32> = pick_distinct(&mut r, &targets, 10).iter().map(|t| t.idx).collect();
            p.sort_unstable();
            p.dedup();
            assert_eq!(p.len(), 10);
        }
        assert_eq!(pick_distinct(&mut r, &targets[..3], 10).len(), 3);
    }
}
