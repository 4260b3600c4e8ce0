//! What workers report ([`WorkerReport`]), how the parent sums them, and the final
//! `--json` object ([`Report`]) with its human summary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::{LatencyHist, Percentiles};

/// One worker's figures. Times are unix microseconds (0 = never happened).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub connections: u64,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    pub connect_start_us: u64,
    pub connect_end_us: u64,
    /// Messages the server accepted (one per target device; fan-out: one per send).
    pub messages_sent: u64,
    pub deliveries: u64,
    pub send_start_us: u64,
    pub send_end_us: u64,
    pub first_send_us: u64,
    pub last_delivery_us: u64,
    /// [`LatencyHist::encode`] of the delivery latencies.
    pub histogram: String,
    pub lost: u64,
    pub duplicates: u64,
    /// Device reconnects done (churn).
    pub reconnects: u64,
    /// First connections tried again after a timeout, a broken socket or an early
    /// DISCONNECT.
    pub connect_retries: u64,
    pub cpu_s: f64,
    pub max_rss_bytes: u64,
    pub rss_before_connect: u64,
    pub rss_after_connect: u64,
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

/// Sums worker reports: counts add up, start times take the earliest, end times
/// the latest, histograms merge.
pub fn sum_reports(reports: &[WorkerReport]) -> Result<(WorkerReport, LatencyHist), String> {
    let mut total = WorkerReport::default();
    let mut hist = LatencyHist::new();
    for r in reports {
        total.connections += r.connections;
        total.connected += r.connected;
        for (reason, n) in &r.failed {
            *total.failed.entry(reason.clone()).or_default() += n;
        }
        total.connect_start_us = min_nonzero(total.connect_start_us, r.connect_start_us);
        total.connect_end_us = total.connect_end_us.max(r.connect_end_us);
        total.messages_sent += r.messages_sent;
        total.deliveries += r.deliveries;
        total.send_start_us = min_nonzero(total.send_start_us, r.send_start_us);
        total.send_end_us = total.send_end_us.max(r.send_end_us);
        total.first_send_us = min_nonzero(total.first_send_us, r.first_send_us);
        total.last_delivery_us = total.last_delivery_us.max(r.last_delivery_us);
        total.lost += r.lost;
        total.duplicates += r.duplicates;
        total.reconnects += r.reconnects;
        total.connect_retries += r.connect_retries;
        total.cpu_s += r.cpu_s;
        total.max_rss_bytes += r.max_rss_bytes;
        total.rss_before_connect += r.rss_before_connect;
        total.rss_after_connect += r.rss_after_connect;
        hist.merge(&LatencyHist::decode(&r.histogram)?);
    }
    Ok((total, hist))
}

/// loadgen's own cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadgenCost {
    pub cpu_s: f64,
    pub max_rss_bytes: u64,
    pub bytes_per_conn: u64,
}

/// The `--json` object; fields a scenario does not measure are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub connections: u64,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_rate_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub achieved_rate_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<Vec<(f64, u64)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slab_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slab_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_bytes_per_conn: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_bytes_per_conn: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// A spread unicast run (see `plan`): accepted targets whose device another worker held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets_on_other_workers: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnects: Option<u64>,
    /// First connections that timed out, broke or were disconnected early and were tried
    /// again (counted in `connected` if a retry succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_retries: Option<u64>,
    pub loadgen: LoadgenCost,
}

/// (after - before) / n, signed (memory can shrink), 0 without connections.
pub fn per_conn(before: u64, after: u64, n: u64) -> i64 {
    if n == 0 {
        return 0;
    }
    let delta = i128::from(after) - i128::from(before);
    i64::try_from(delta / i128::from(n)).unwrap_or(0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// The human summary printed on stdout.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let failed: u64 = self.failed.values().sum();
        s += &format!(
            "{} ({}): connected {}/{}, elapsed {:.2}s, {} failed{}\n",
            self.scenario,
            self.target,
            self.connected,
            self.connections,
            self.elapsed_s,
            failed,
            if self.failed.is_empty() { String::new() } else { format!(" {:?}", self.failed) }
        );
        if let Some(r) = self.connect_rate_per_s {
            s += &format!("connect+subscribe rate: {r:.0}/s\n");
        }
        if let Some(n) = self.connect_retries {
            s += &format!("first connections tried again after a timeout: {n}\n");
        }
        if let (Some(b), Some(a)) = (self.server_rss_before, self.server_rss_after) {
            s += &format!(
                "server RSS {:.1} -> {:.1} MiB: {} bytes/conn\n",
                mib(b),
                mib(a),
                self.user_bytes_per_conn.unwrap_or(0)
            );
        }
        if let (Some(b), Some(a)) = (self.slab_before, self.slab_after) {
            s += &format!(
                "kernel Slab {:.1} -> {:.1} MiB: {} bytes/conn\n",
                mib(b),
                mib(a),
                self.kernel_bytes_per_conn.unwrap_or(0)
            );
        }
        if let Some(sent) = self.messages_sent {
            s += &format!("messages sent (accepted): {sent}");
            if let Some(r) = self.achieved_rate_per_s {
                s += &format!(", achieved {r:.0}/s");
            }
            s += "\n";
        }
        if let Some(d) = self.deliveries {
            s += &format!("deliveries: {d}");
            if let Some(r) = self.deliveries_per_s {
                s += &format!(" ({r:.0}/s)");
            }
            s += "\n";
        }
        if let Some(l) = &self.latency_us {
            s += &format!("latency: {l}\n");
        }
        if let (Some(l), Some(d)) = (self.lost, self.duplicates) {
            s += &format!("lost {l}, duplicates {d}, reconnects {}\n", self.reconnects.unwrap_or(0));
        }
        s += &format!(
            "loadgen: cpu {:.2}s, max RSS {:.1} MiB, {} bytes/conn\n",
            self.loadgen.cpu_s,
            mib(self.loadgen.max_rss_bytes),
            self.loadgen.bytes_per_conn
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_reports_sum_up() {
        let mut h1 = LatencyHist::new();
        h1.record(100);
        let mut h2 = LatencyHist::new();
        h2.record(900);
        h2.record(1000);
        let a = WorkerReport {
            connections: 10,
            connected: 9,
            failed: BTreeMap::from([("timeout connect".to_string(), 1)]),
            connect_start_us: 500,
            connect_end_us: 900,
            messages_sent: 3,
            deliveries: 3,
            first_send_us: 1000,
            last_delivery_us: 5000,
            histogram: h1.encode(),
            cpu_s: 0.5,
            max_rss_bytes: 100,
            ..WorkerReport::default()
        };
        let b = WorkerReport {
            connections: 10,
            connected: 8,
            failed: BTreeMap::from([("timeout connect".to_string(), 1), ("connack 0x87".to_string(), 1)]),
            connect_start_us: 400,
            connect_end_us: 800,
            deliveries: 4,
            first_send_us: 0,
            last_delivery_us: 6000,
            histogram: h2.encode(),
            lost: 1,
            cpu_s: 0.25,
            max_rss_bytes: 200,
            ..WorkerReport::default()
        };
        let (t, h) = sum_reports(&[a, b]).unwrap();
        assert_eq!((t.connections, t.connected), (20, 17));
        assert_eq!(t.failed["timeout connect"], 2);
        assert_eq!(t.failed["connack 0x87"], 1);
        assert_eq!((t.connect_start_us, t.connect_end_us), (400, 900));
        assert_eq!((t.first_send_us, t.last_delivery_us), (1000, 6000));
        assert_eq!((t.messages_sent, t.deliveries, t.lost), (3, 7, 1));
        assert_eq!(t.max_rss_bytes, 300);
        assert!((t.cpu_s - 0.75).abs() < 1e-9);
        assert_eq!(h.count(), 3);
        let bad = WorkerReport { histogram: "%%%".into(), ..WorkerReport::default() };
        assert!(sum_reports(&[bad]).is_err());
    }

    #[test]
    fn per_connection_deltas() {
        assert_eq!(per_conn(1000, 3000, 4), 500);
        assert_eq!(per_conn(3000, 1000, 4), -500);
        assert_eq!(per_conn(1, 2, 0), 0);
    }

    #[test]
    fn json_leaves_out_what_was_not_measured() {
        let r = Report { scenario: "connect".into(), connect_rate_per_s: Some(10.0), ..Report::default() };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("connect_rate_per_s").is_some());
        assert!(v.get("latency_us").is_none());
        assert!(v.get("loadgen").unwrap().get("cpu_s").is_some());
    }
}
