//! `loadgen fanout`: N subscribers on one topic (pushnode `topic/bench`, sent over
//! HTTP with a topic target; plain MQTT `bench/fanout`, PUBLISHed by loadgen); the
//! publishing worker sends M messages I ms apart, each without waiting for the answer to
//! the one before (MQTT: PUBACK; pushnode: the HTTP answer), each carrying its send time (unix
//! micros); report deliveries/s (deliveries / first send to last delivery) and the
//! end-to-end latency.

use std::rc::Rc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::common::unix_micros;
use super::options::{parse_rate_or_zero, CommonArgs, Target};
use super::parent::{self, Spec};
use super::plan::Load;
use super::sender::{qos_of, HttpSender, MqttPublisher, PushBody, PushTarget};
use super::worker::{wait_for, Worker};

/// Most messages the pushnode publisher has in flight (the MQTT publisher's default window).
const HTTP_IN_FLIGHT: u32 = 1000;

/// The shared topic's name (pushnode topic target; MQTT `bench/fanout`).
const TOPIC: &str = "bench";

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Subscribers on the topic.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub subscribers: u64,
    /// Messages to publish.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub messages: u32,
    /// QoS of the subscriptions (and plain-MQTT publishes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Milliseconds between messages.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub interval_ms: u64,
    /// Connects started per second; 0 = as fast as possible.
    #[arg(long, default_value = "0", value_parser = parse_rate_or_zero)]
    pub connect_rate: f64,
}

pub fn run(args: FanoutArgs) -> anyhow::Result<()> {
    parent::run(
        args.common,
        Spec {
            connections: args.subscribers,
            connect_rate: args.connect_rate,
            load: Load::Fanout { messages: args.messages, qos: args.qos, interval_ms: args.interval_ms },
            idle: None,
        },
    )
}

/// Worker side: the publisher sends; every worker waits until each of its
/// subscribers got every message (bounded).
pub async fn load(w: &Rc<Worker>, messages: u32, qos: u8, interval_ms: u64) {
    let interval = Duration::from_millis(interval_ms);
    let start = Instant::now();
    let mut sent = u64::from(messages);
    if w.plan.publisher {
        sent = publish_all(w, messages, qos, interval).await;
    }
    let subscribers = w.tally.borrow().connected;
    let expected = subscribers * sent;
    let sending_ends = start + interval * messages;
    let until = (Instant::now().max(sending_ends) + Duration::from_secs(w.plan.straggler_secs)).min(w.deadline);
    wait_for(until, || w.tally.borrow().deliveries >= expected).await;
}

/// Sends the messages; returns how many the server accepted.
async fn publish_all(w: &Rc<Worker>, messages: u32, qos: u8, interval: Duration) -> u64 {
    let start = Instant::now();
    w.tally.borrow_mut().send_start_us = unix_micros();
    let mut accepted = 0;
    match w.plan.target {
        Target::Pushnode => {
            let (Some(http), Some(app)) = (&w.http, &w.plan.app) else {
                return 0;
            };
            // Up to HTTP_IN_FLIGHT messages in flight at once over one HTTP/2 connection, as the
            // MQTT publisher below writes each PUBLISH without waiting for the last one's PUBACK
            // (within the broker's receive window).
            let sender = match HttpSender::new(http, &app.app_secret, messages.min(HTTP_IN_FLIGHT), 1) {
                Ok(sender) => sender,
                Err(e) => {
                    w.tally.borrow_mut().count_failure(format!("send: {e}"));
                    return 0;
                }
            };
            let mut posts = Vec::new();
            for m in 0..messages {
                sleep_until(start + interval * m).await;
                if Instant::now() >= w.deadline {
                    break;
                }
                let sent_us = unix_micros();
                let body = PushBody::passthrough(PushTarget::Topic(TOPIC), sent_us.to_string()).to_bytes();
                let Some(slot) = sender.slot().await else { break };
                let (sender, w) = (sender.clone(), w.clone());
                posts.push(tokio::task::spawn_local(async move {
                    let _slot = slot;
                    let outcome = match body {
                        Ok(body) => sender.post(&body, w.time_left()).await,
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(_) => {
                            w.tally.borrow_mut().note_send(1, sent_us);
                            true
                        }
                        Err(reason) => {
                            w.tally.borrow_mut().count_failure(format!("send: {reason}"));
                            false
                        }
                    }
                }));
            }
            for post in posts {
                accepted += u64::from(post.await.unwrap_or(false));
            }
        }
        Target::Mqtt => {
            let ports = w.ports_for(0);
            let client_id = format!("lg-pub-{}", w.plan.worker);
            let mut publisher =
                match MqttPublisher::connect(w.server, &ports, w.cfg.version, client_id, w.deadline).await {
                    Ok(p) => p,
                    Err(e) => {
                        w.tally.borrow_mut().count_failure(format!("publisher: {}", e.reason_label()));
                        return 0;
                    }
                };
            for m in 0..messages {
                sleep_until(start + interval * m).await;
                if Instant::now() >= w.deadline {
                    break;
                }
                let sent_us = unix_micros();
                let message = [("bench/fanout".to_string(), sent_us.to_string().into_bytes())];
                match publisher.publish(&message, qos_of(qos), w.deadline).await {
                    Ok(_) => {
                        accepted += 1;
                        w.tally.borrow_mut().note_send(1, sent_us);
                    }
                    Err(e) => {
                        w.tally.borrow_mut().count_failure(format!("send: {}", e.reason_label()));
                        break;
                    }
                }
            }
            let deadline = w.deadline;
            tokio::task::spawn_local(async move {
                sleep_until(deadline).await;
                drop(publisher);
            });
        }
    }
    w.tally.borrow_mut().send_end_us = unix_micros();
    accepted
}
