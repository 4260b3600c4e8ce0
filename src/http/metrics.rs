//! `GET /metrics`: the node's metrics in the Prometheus text exposition format 0.0.4,
//! written by hand (a dozen families; no registry or extra crate needed). The engine's
//! figures are per shard ([`core_engine::stats::ShardMetrics`], relaxed atomics) and are
//! summed here, except connections, which stay per shard. HTTP answers are counted by
//! status code in this module ([`count_response`]), for every route.

use super::HttpState;
use bytes::Bytes;
use core_engine::stats::{AtomicHistogram, ShardMetrics, DISCONNECT_REASONS, REFUSE_REASONS};
use http_body_util::Full;
use hyper::{Response, StatusCode};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The content type of the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers counted per status code 100..=599 (one process serves one node).
static HTTP_RESPONSES: [AtomicU64; 500] = [const { AtomicU64::new(0) }; 500];

/// Counts one HTTP answer by its status code.
pub fn count_response(status: StatusCode) {
    if let Some(slot) = usize::from(status.as_u16()).checked_sub(100).and_then(|i| HTTP_RESPONSES.get(i)) {
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// (status, count) of every status answered at least once.
fn http_responses() -> Vec<(u16, u64)> {
    HTTP_RESPONSES
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u16 + 100, n))
        })
        .collect()
}

/// The `/metrics` answer.
/// The per-app series (`pushnode_online{app}`) are shown only with the admin token
/// (`Authorization: Bearer <token>`): without it anyone could count any app's devices.
pub fn metrics(state: &HttpState, admin: bool) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(render(state, admin))));
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Summed histogram snapshot: (bound, cumulative count) per bucket, count, sum.
type Snapshot = (Vec<(u64, u64)>, u64, u64);

fn sum_histograms<'a, const N: usize>(histograms: impl Iterator<Item = &'a AtomicHistogram<N>>) -> Snapshot {
    let mut total: Snapshot = (Vec::new(), 0, 0);
    for h in histograms {
        let (buckets, count, sum) = h.snapshot();
        if total.0.is_empty() {
            total.0 = buckets;
        } else {
            for (acc, (_, c)) in total.0.iter_mut().zip(buckets) {
                acc.1 += c;
            }
        }
        total.1 += count;
        total.2 += sum;
    }
    total
}

/// A counter of a shard's metrics.
type Field = fn(&ShardMetrics) -> &AtomicU64;

/// The exposition text.
pub fn render(state: &HttpState, admin: bool) -> String {
    let shards = state.node.metrics();
    let sum = |field: Field| -> u64 { shards.iter().map(|m| field(m).load(Ordering::Relaxed)).sum() };
    let mut out = String::with_capacity(4096);

    header(&mut out, "pushnode_connections", "gauge", "Device connections held, per shard.");
    for (i, m) in shards.iter().enumerate() {
        let n = m.connections.load(Ordering::Relaxed).max(0);
        let _ = writeln!(out, "pushnode_connections{{shard=\"{i}\"}} {n}");
    }

    header(&mut out, "pushnode_connects_total", "counter", "Device connections accepted (CONNACK 0) since start.");
    let _ = writeln!(out, "pushnode_connects_total {}", sum(|m| &m.connects));

    header(&mut out, "pushnode_disconnects_total", "counter", "Device connections ended since start, by reason.");
    for (i, reason) in DISCONNECT_REASONS.iter().enumerate() {
        let n: u64 = shards.iter().map(|m| m.disconnects[i].load(Ordering::Relaxed)).sum();
        let _ = writeln!(out, "pushnode_disconnects_total{{reason=\"{reason}\"}} {n}");
    }

    header(
        &mut out,
        "pushnode_connects_refused_total",
        "counter",
        "Connections refused by a connection limit since start, by limit (rate: per source address).",
    );
    for (i, reason) in REFUSE_REASONS.iter().enumerate() {
        let n: u64 = shards.iter().map(|m| m.connects_refused[i].load(Ordering::Relaxed)).sum();
        let _ = writeln!(out, "pushnode_connects_refused_total{{reason=\"{reason}\"}} {n}");
    }

    let sums: [(&str, &str, &str, Field); 7] = [
        ("pushnode_messages_accepted_total", "counter", "Deliveries stored (one per target device) since start.", |m| {
            &m.accepted
        }),
        ("pushnode_messages_delivered_total", "counter", "Deliveries acknowledged by the device (PUBACK) since start.", |m| {
            &m.delivered
        }),
        (
            "pushnode_messages_expired_total",
            "counter",
            "Deliveries that expired before the device acknowledged them, since start.",
            |m| &m.expired,
        ),
        ("pushnode_messages_dropped_total", "counter", "Deliveries dropped from a full pending queue since start.", |m| {
            &m.dropped
        }),
        (
            "pushnode_receipts_dropped_total",
            "counter",
            "Delivery and click receipts for callbacks dropped from a full queue since start.",
            |m| &m.receipts_dropped,
        ),
        (
            "pushnode_send_deferrals_total",
            "counter",
            "Times a device's deliveries waited in the store because its shard's send_buffer_bytes share was held, since start.",
            |m| &m.send_deferrals,
        ),
        (
            "pushnode_send_buffered_bytes",
            "gauge",
            "Bytes held for sending to devices (counted against send_buffer_bytes).",
            |m| &m.send_buffered_bytes,
        ),
    ];
    for (name, kind, help, field) in sums {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {}", sum(field));
    }

    header(&mut out, "pushnode_pending_messages", "gauge", "Deliveries waiting in pending queues.");
    let pending: i64 = shards.iter().map(|m| m.pending.load(Ordering::Relaxed)).sum();
    let _ = writeln!(out, "pushnode_pending_messages {}", pending.max(0));

    header(
        &mut out,
        "pushnode_store_file_bytes",
        "gauge",
        "Bytes of the store's database files: pending pushes and message counts (kept message_stats_days).",
    );
    let _ = writeln!(out, "pushnode_store_file_bytes {}", state.node.store_file_bytes());

    histogram(
        &mut out,
        "pushnode_delivery_latency_ms",
        "Time from acceptance to the device's acknowledgement, in milliseconds.",
        &sum_histograms(shards.iter().map(|m| &m.delivery_latency_ms)),
    );
    histogram(
        &mut out,
        "pushnode_store_commit_latency_us",
        "Time of one store commit (write transaction), in microseconds.",
        &sum_histograms(shards.iter().map(|m| &m.commit_latency_us)),
    );
    histogram(
        &mut out,
        "pushnode_store_commit_batch_ops",
        "Write operations grouped into one store commit.",
        &sum_histograms(shards.iter().map(|m| &m.commit_batch_ops)),
    );

    header(&mut out, "pushnode_http_requests_total", "counter", "HTTP requests answered since start, by status code.");
    for (status, n) in http_responses() {
        let _ = writeln!(out, "pushnode_http_requests_total{{status=\"{status}\"}} {n}");
    }

    if !admin {
        return out;
    }
    header(
        &mut out,
        "pushnode_online",
        "gauge",
        "Devices online now, per app (apps seen since start; admin token only).",
    );
    let mut online = state.node.online_by_app();
    online.sort_unstable();
    for (app, n) in online {
        let _ = writeln!(out, "pushnode_online{{app=\"{app}\"}} {n}");
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, (buckets, count, sum): &Snapshot) {
    header(out, name, "histogram", help);
    for (bound, cumulative) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_sum_per_bucket() {
        let a = AtomicHistogram::new([1, 10]);
        let b = AtomicHistogram::new([1, 10]);
        a.record(1);
        b.record(5);
        b.record(50);
        let total = sum_histograms([&a, &b].into_iter());
        assert_eq!(total, (vec![(1, 1), (10, 2)], 3, 56));
        let mut out = String::new();
        histogram(&mut out, "x", "help", &total);
        assert!(out.contains("x_bucket{le=\"10\"} 2\nx_bucket{le=\"+Inf\"} 3\nx_sum 56\nx_count 3\n"), "{out}");
    }

    #[test]
    fn responses_are_counted_by_code() {
        let before = http_responses().into_iter().find(|(s, _)| *s == 418).map_or(0, |(_, n)| n);
        count_response(StatusCode::IM_A_TEAPOT);
        let after = http_responses().into_iter().find(|(s, _)| *s == 418).map_or(0, |(_, n)| n);
        assert_eq!(after, before + 1);
    }
}
