//! Counting: per-app daily push and user statistics (each shard counts its own, the API
//! sums them), node-wide live online counts with the day's peak, and the metrics that
//! `/metrics` exports. Hot-path updates are plain integers on the owning shard or relaxed
//! atomics; nothing here takes a lock on the hot path.

use crate::ids::AppId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One app's figures for one day, as one shard counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayStats {
    /// Targets pushed (single + group).
    pub total: u64,
    /// Targets of RegID and alias sends.
    pub single: u64,
    /// Targets of topic and broadcast sends.
    pub group: u64,
    /// Deliveries acknowledged (PUBACK).
    pub delivered: u64,
    pub clicked: u64,
    /// Deliveries that did not happen before the message expired.
    pub expired: u64,
    /// Messages dropped from a full pending queue.
    pub dropped: u64,
    /// Devices registered.
    pub new: u64,
    /// Distinct devices that connected.
    pub active: u64,
    /// Most devices online at once (node-wide; kept by shard 0), and when (unix s).
    pub peak_online: u64,
    pub peak_at: u64,
}

impl DayStats {
    pub const LEN: usize = 11 * 8;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        for (i, v) in self.fields().into_iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        if raw.len() != Self::LEN {
            return None;
        }
        let v = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        Some(DayStats {
            total: v(0),
            single: v(1),
            group: v(2),
            delivered: v(3),
            clicked: v(4),
            expired: v(5),
            dropped: v(6),
            new: v(7),
            active: v(8),
            peak_online: v(9),
            peak_at: v(10),
        })
    }

    fn fields(self) -> [u64; 11] {
        [
            self.total,
            self.single,
            self.group,
            self.delivered,
            self.clicked,
            self.expired,
            self.dropped,
            self.new,
            self.active,
            self.peak_online,
            self.peak_at,
        ]
    }

    /// Adds another shard's figures of the same day; the peak is the larger one.
    pub fn merge(&mut self, other: &DayStats) {
        self.total += other.total;
        self.single += other.single;
        self.group += other.group;
        self.delivered += other.delivered;
        self.clicked += other.clicked;
        self.expired += other.expired;
        self.dropped += other.dropped;
        self.new += other.new;
        self.active += other.active;
        if other.peak_online > self.peak_online {
            self.peak_online = other.peak_online;
            self.peak_at = other.peak_at;
        }
    }
}

/// A shard's counts of the current day, per app; rolled over at midnight UTC.
#[derive(Debug, Default)]
pub struct ShardDayStats {
    pub day: u32,
    pub apps: foldhash::HashMap<AppId, DayStats>,
    /// Apps whose counts changed since the last flush to the store.
    pub dirty: Vec<AppId>,
}

impl ShardDayStats {
    /// The counts of `app_id` for `day`; a new day first hands back the finished one.
    pub fn entry(&mut self, day: u32, app_id: AppId, finished: &mut Vec<(AppId, u32, DayStats)>) -> &mut DayStats {
        if day != self.day {
            finished.extend(self.apps.drain().map(|(app, stats)| (app, self.day, stats)));
            self.dirty.clear();
            self.day = day;
        }
        if !self.dirty.contains(&app_id) {
            self.dirty.push(app_id);
        }
        self.apps.entry(app_id).or_default()
    }

    /// Moves to `day`; hands back the finished day's counts.
    pub fn roll(&mut self, day: u32) -> Vec<(AppId, u32, DayStats)> {
        if day == self.day {
            return Vec::new();
        }
        let finished = self.apps.drain().map(|(app, stats)| (app, self.day, stats)).collect();
        self.dirty.clear();
        self.day = day;
        finished
    }

    /// The changed counts to write, and forgets that they changed.
    pub fn take_dirty(&mut self) -> Vec<(AppId, u32, DayStats)> {
        let day = self.day;
        let apps = &self.apps;
        self.dirty.drain(..).filter_map(|app| apps.get(&app).map(|s| (app, day, *s))).collect()
    }
}

/// An app's live online count and today's peak, shared by all shards.
#[derive(Debug, Default)]
pub struct AppLive {
    online: AtomicI64,
    peak: AtomicI64,
    peak_at: AtomicU64,
    peak_day: AtomicU32,
    /// The day before `peak_day` and its peak, until shard 0 has written it away.
    prev_peak: AtomicI64,
    prev_peak_at: AtomicU64,
    prev_day: AtomicU32,
}

impl AppLive {
    /// A device of the app came online at `now_s`.
    pub fn connected(&self, now_s: u64) {
        let online = self.online.fetch_add(1, Ordering::Relaxed) + 1;
        self.raise_peak(online, now_s);
    }

    /// A device of the app went offline.
    pub fn disconnected(&self) {
        self.online.fetch_sub(1, Ordering::Relaxed);
    }

    fn raise_peak(&self, online: i64, now_s: u64) {
        self.start_day(crate::clock::day_of(now_s), now_s);
        if self.peak.fetch_max(online, Ordering::Relaxed) < online {
            self.peak_at.store(now_s, Ordering::Relaxed);
        }
    }

    /// A new day: its peak starts from those online now (once, whichever shard comes first).
    pub fn start_day(&self, day: u32, now_s: u64) {
        let old_day = self.peak_day.swap(day, Ordering::Relaxed);
        if old_day != day {
            self.prev_peak.store(self.peak.load(Ordering::Relaxed), Ordering::Relaxed);
            self.prev_peak_at.store(self.peak_at.load(Ordering::Relaxed), Ordering::Relaxed);
            self.prev_day.store(old_day, Ordering::Relaxed);
            self.peak.store(self.online.load(Ordering::Relaxed).max(0), Ordering::Relaxed);
            self.peak_at.store(now_s, Ordering::Relaxed);
        }
    }

    /// Restores today's peak after a restart.
    pub fn seed_peak(&self, day: u32, peak: u64, at: u64) {
        self.peak_day.store(day, Ordering::Relaxed);
        self.peak.store(peak as i64, Ordering::Relaxed);
        self.peak_at.store(at, Ordering::Relaxed);
    }

    pub fn online(&self) -> u64 {
        self.online.load(Ordering::Relaxed).max(0) as u64
    }

    /// Today's peak and when, if it was reached on `day`.
    pub fn peak(&self, day: u32) -> Option<(u64, u64)> {
        if self.peak_day.load(Ordering::Relaxed) == day {
            Some((self.peak.load(Ordering::Relaxed).max(0) as u64, self.peak_at.load(Ordering::Relaxed)))
        } else if self.prev_day.load(Ordering::Relaxed) == day {
            Some((self.prev_peak.load(Ordering::Relaxed).max(0) as u64, self.prev_peak_at.load(Ordering::Relaxed)))
        } else {
            None
        }
    }
}

/// Every app's [`AppLive`]; shards keep their own `Arc`s so only the first lookup of an
/// app takes the lock.
#[derive(Debug, Default)]
pub struct LiveApps {
    apps: RwLock<HashMap<AppId, Arc<AppLive>>>,
}

impl LiveApps {
    pub fn get(&self, app_id: AppId) -> Arc<AppLive> {
        if let Some(live) = self.apps.read().unwrap_or_else(|p| p.into_inner()).get(&app_id) {
            return live.clone();
        }
        self.apps.write().unwrap_or_else(|p| p.into_inner()).entry(app_id).or_default().clone()
    }

    /// (app, online) for every app seen.
    pub fn online(&self) -> Vec<(AppId, u64)> {
        self.apps.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(a, l)| (*a, l.online())).collect()
    }
}

/// A delivery or click of one message on one device, for app-server callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub app_id: AppId,
    pub id: crate::ids::MessageId,
    pub regid: crate::ids::RegId,
    pub clicked: bool,
    pub at_s: u64,
}

/// Receipts waiting for the callback dispatcher; bounded, so a slow dispatcher drops
/// receipts (counted, `ShardMetrics::receipts_dropped`) rather than holding shard memory.
pub const RECEIPT_QUEUE: usize = 65_536;

/// Upper bounds (milliseconds) of the delivery-latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30_000];
/// Upper bounds of the store commit batch-size histogram buckets (operations).
pub const BATCH_BUCKETS: [u64; 8] = [1, 4, 16, 64, 256, 1024, 4096, 16_384];
/// Upper bounds (microseconds) of the store commit latency buckets.
pub const COMMIT_BUCKETS_US: [u64; 10] = [100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 100_000, 1_000_000];

/// A fixed-bucket histogram of relaxed atomics (Prometheus style: cumulative on export).
#[derive(Debug)]
pub struct AtomicHistogram<const N: usize> {
    bounds: [u64; N],
    /// One count per bucket, plus one for values above the last bound.
    counts: [AtomicU64; 17],
    sum: AtomicU64,
}

impl<const N: usize> AtomicHistogram<N> {
    pub fn new(bounds: [u64; N]) -> Self {
        assert!(N < 17, "at most 16 buckets");
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        AtomicHistogram { bounds, counts: Default::default(), sum: AtomicU64::new(0) }
    }

    pub fn record(&self, value: u64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(N);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// (bound, cumulative count) per bucket, then the total count and the sum.
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(N);
        for (i, &bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((bound, cumulative));
        }
        let total = cumulative + self.counts[N].load(Ordering::Relaxed);
        (buckets, total, self.sum.load(Ordering::Relaxed))
    }
}

/// Why connections ended, for the disconnect counter's `reason` label.
pub const DISCONNECT_REASONS: [&str; 7] =
    ["client", "malformed", "out_of_profile", "refused", "timeout", "server", "slow_reader"];

/// Why connections were refused at accept, for the refusal counter's `reason` label:
/// over the per-source-address connect rate (CONNECT answered 0x9F), over `max_connections`
/// (closed at once).
pub const REFUSE_REASONS: [&str; 2] = ["rate", "max_connections"];
/// Index of `rate` in [`REFUSE_REASONS`].
pub const REFUSED_RATE: usize = 0;
/// Index of `max_connections` in [`REFUSE_REASONS`].
pub const REFUSED_MAX_CONNECTIONS: usize = 1;

/// One shard's metrics; written by the shard, read by `/metrics`.
#[derive(Debug)]
pub struct ShardMetrics {
    pub connections: AtomicI64,
    pub connects: AtomicU64,
    pub disconnects: [AtomicU64; DISCONNECT_REASONS.len()],
    /// Connections refused by a connection limit, by [`REFUSE_REASONS`].
    pub connects_refused: [AtomicU64; REFUSE_REASONS.len()],
    /// Messages stored for delivery (targets).
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub expired: AtomicU64,
    pub dropped: AtomicU64,
    /// Receipts for callbacks dropped because the dispatcher's queue was full.
    pub receipts_dropped: AtomicU64,
    /// Times a device's deliveries were left in the store because the shard's send buffer
    /// budget was used up (they went out once its sends drained).
    pub send_deferrals: AtomicU64,
    /// Bytes held for sending to devices (the send budget's charge), at the end of the last
    /// pass of the shard's event loop.
    pub send_buffered_bytes: AtomicU64,
    /// Rows waiting in this shard's pending queues (approximate across restarts of counting).
    pub pending: AtomicI64,
    /// Accepted -> acknowledged, in milliseconds.
    pub delivery_latency_ms: AtomicHistogram<12>,
    pub commit_latency_us: AtomicHistogram<10>,
    pub commit_batch_ops: AtomicHistogram<8>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            connections: AtomicI64::new(0),
            connects: AtomicU64::new(0),
            disconnects: Default::default(),
            connects_refused: Default::default(),
            accepted: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            receipts_dropped: AtomicU64::new(0),
            send_deferrals: AtomicU64::new(0),
            send_buffered_bytes: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            delivery_latency_ms: AtomicHistogram::new(LATENCY_BUCKETS_MS),
            commit_latency_us: AtomicHistogram::new(COMMIT_BUCKETS_US),
            commit_batch_ops: AtomicHistogram::new(BATCH_BUCKETS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_stats_round_trip_and_merge() {
        let a =
            DayStats { total: 3, single: 2, group: 1, delivered: 2, peak_online: 5, peak_at: 9, ..Default::default() };
        assert_eq!(DayStats::from_bytes(&a.to_bytes()), Some(a));
        let mut sum = a;
        sum.merge(&DayStats { total: 1, peak_online: 7, peak_at: 11, ..Default::default() });
        assert_eq!((sum.total, sum.peak_online, sum.peak_at), (4, 7, 11));
    }

    #[test]
    fn shard_day_rolls_over() {
        let mut stats = ShardDayStats::default();
        let mut finished = Vec::new();
        stats.entry(10, 1, &mut finished).total += 2;
        assert!(finished.is_empty());
        assert_eq!(stats.take_dirty(), vec![(1, 10, DayStats { total: 2, ..Default::default() })]);
        assert!(stats.take_dirty().is_empty());
        stats.entry(11, 1, &mut finished).total += 1;
        assert_eq!(finished, vec![(1, 10, DayStats { total: 2, ..Default::default() })]);
        assert_eq!(stats.apps[&1].total, 1);
    }

    #[test]
    fn peak_follows_online() {
        let live = AppLive::default();
        let day = crate::clock::day_of(1000);
        live.connected(1000);
        live.connected(1001);
        live.disconnected();
        live.connected(1002);
        assert_eq!(live.online(), 2);
        assert_eq!(live.peak(day), Some((2, 1001)));
        // Midnight: the new day starts from those online; yesterday's peak stays readable.
        live.start_day(day + 1, 86_400 * u64::from(day + 1));
        assert_eq!(live.peak(day + 1), Some((2, 86_400 * u64::from(day + 1))));
        assert_eq!(live.peak(day), Some((2, 1001)));
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = AtomicHistogram::new([1, 10]);
        for v in [0, 1, 5, 50] {
            h.record(v);
        }
        assert_eq!(h.snapshot(), (vec![(1, 2), (10, 3)], 4, 56));
    }
}
