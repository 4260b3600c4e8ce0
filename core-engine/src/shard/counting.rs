//! The shard's counting: per-app daily statistics (flushed to the store every few seconds
//! and at midnight), node-wide online counts, and the shard's metrics.

use super::Shard;
use crate::ids::{AppId, RegId};
use crate::session::CloseReason;
use crate::stats::{AppLive, DayStats};
use crate::store::{StoreEvent, StoreJob, WriteOp};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Seconds between flushes of the day's counts to the store.
pub(super) const STATS_FLUSH_S: u32 = 5;

impl Shard {
    /// Applies `f` to today's counts of `app_id` (rolling the day over first if needed).
    pub(super) fn count(&mut self, app_id: AppId, f: impl FnOnce(&mut DayStats)) {
        let day = crate::clock::day_of(self.now_unix_s());
        if day != self.day_stats.day {
            self.roll_day();
        }
        let mut finished = Vec::new();
        f(self.day_stats.entry(day, app_id, &mut finished));
        if !finished.is_empty() {
            self.persist_day_stats(finished);
        }
    }

    fn live(&mut self, app_id: AppId) -> Arc<AppLive> {
        let shared = &self.shared;
        self.live.entry(app_id).or_insert_with(|| shared.live.get(app_id)).clone()
    }

    /// A connection now speaks for `regid`: online, connects, daily active.
    pub(super) fn count_attach(&mut self, regid: RegId) {
        self.roll_day();
        let now = self.now_unix_s();
        let today = crate::clock::day_of(now);
        let Some(device) = self.devices.get_mut(&regid) else { return };
        let app_id = device.record.app_id;
        let first_today = device.active_day != today;
        device.active_day = today;
        self.metrics.connects.fetch_add(1, Ordering::Relaxed);
        self.live(app_id).connected(now);
        if first_today {
            self.count(app_id, |s| s.active += 1);
            self.writer.submit(StoreJob {
                ops: vec![WriteOp::ActiveDay { regid, day: today }],
                done: None,
                awaited: false,
            });
        }
    }

    /// The connection of `regid` at slab key `key` no longer speaks for it.
    pub(super) fn detach(&mut self, key: u32, regid: RegId) {
        let Some(device) = self.devices.get_mut(&regid) else { return };
        if device.conn != Some(key) {
            return;
        }
        device.conn = None;
        let app_id = device.record.app_id;
        self.live(app_id).disconnected();
    }

    pub(super) fn count_close(&self, reason: CloseReason) {
        let index = match reason {
            CloseReason::ClientDisconnect => 0,
            CloseReason::Malformed(_) => 1,
            CloseReason::OutOfProfile(_) => 2,
            CloseReason::Refused => 3,
            CloseReason::Timeout => 4,
            CloseReason::Server => 5,
            CloseReason::SlowReader => 6,
        };
        self.metrics.disconnects[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A device acknowledged message `id` (whose high bits are its acceptance time).
    /// Hands a receipt to the callback dispatcher if the message has a callback; a full
    /// queue drops it (counted).
    pub(super) fn receipt(&self, app_id: AppId, id: crate::ids::MessageId, regid: RegId, clicked: bool) {
        if !crate::ids::wants_receipts(id) {
            return;
        }
        let at_s = self.now_unix_s();
        if self.shared.receipts.0.try_send(crate::stats::Receipt { app_id, id, regid, clicked, at_s }).is_err() {
            self.metrics.receipts_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn count_delivered(&mut self, app_id: AppId, id: crate::ids::MessageId) {
        self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
        let accepted_ms = id >> 20;
        self.metrics.delivery_latency_ms.record(self.now_unix_ms().saturating_sub(accepted_ms));
        self.count(app_id, |s| s.delivered += 1);
    }

    /// `targets` deliveries of a message were stored.
    pub(super) fn count_accepted(&mut self, app_id: AppId, targets: u64, group: bool) {
        self.metrics.accepted.fetch_add(targets, Ordering::Relaxed);
        self.count(app_id, |s| {
            s.total += targets;
            if group {
                s.group += targets;
            } else {
                s.single += targets;
            }
        });
    }

    pub(super) fn on_store_events(&mut self, events: Vec<StoreEvent>) {
        for event in events {
            match event {
                StoreEvent::Dropped { app_id } => {
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    self.count(app_id, |s| s.dropped += 1);
                }
                StoreEvent::Expired { app_id, count } => {
                    self.metrics.expired.fetch_add(count, Ordering::Relaxed);
                    self.count(app_id, |s| s.expired += count);
                }
                StoreEvent::Clicked { app_id, regid, id } => {
                    self.count(app_id, |s| s.clicked += 1);
                    self.receipt(app_id, id, regid, true);
                }
                StoreEvent::PendingRows(_) => {}
            }
        }
    }

    /// Writes the counts that changed (shard 0 also writes each app's peak online).
    pub(super) fn flush_day_stats(&mut self) {
        self.roll_day();
        self.flush_counted_day();
    }

    /// Writes the changed counts of the day being counted (shard 0 first folds in each
    /// app's peak online of that day).
    fn flush_counted_day(&mut self) {
        let day = self.day_stats.day;
        if self.index == 0 {
            let mut finished = Vec::new();
            for (app_id, _) in self.shared.live.online() {
                if let Some((peak, at)) = self.shared.live.get(app_id).peak(day) {
                    let s = self.day_stats.entry(day, app_id, &mut finished);
                    if peak > s.peak_online {
                        s.peak_online = peak;
                        s.peak_at = at;
                    }
                }
            }
            debug_assert!(finished.is_empty(), "the same day");
        }
        let dirty = self.day_stats.take_dirty();
        self.persist_day_stats(dirty);
    }

    /// At midnight (UTC, node clock): finishes the old day with its peak, and starts the new
    /// one with the devices still connected: they are online (the peak starts there) and
    /// active today.
    fn roll_day(&mut self) {
        let now = self.now_unix_s();
        let today = crate::clock::day_of(now);
        if today == self.day_stats.day {
            return;
        }
        self.flush_counted_day();
        let finished = self.day_stats.roll(today);
        self.persist_day_stats(finished);
        for (app_id, _) in self.shared.live.online() {
            self.shared.live.get(app_id).start_day(today, now);
        }
        let connected: Vec<RegId> =
            self.devices.iter().filter(|(_, d)| d.conn.is_some() && d.active_day != today).map(|(r, _)| *r).collect();
        let mut ops = Vec::with_capacity(connected.len());
        for regid in connected {
            let Some(device) = self.devices.get_mut(&regid) else { continue };
            device.active_day = today;
            let app_id = device.record.app_id;
            self.count(app_id, |s| s.active += 1);
            ops.push(WriteOp::ActiveDay { regid, day: today });
        }
        if !ops.is_empty() {
            self.writer.submit(StoreJob { ops, done: None, awaited: false });
        }
        tracing::info!(shard = self.index, day = %crate::clock::day_text(today), "day rolled over");
    }

    fn persist_day_stats(&mut self, rows: Vec<(AppId, u32, DayStats)>) {
        if rows.is_empty() {
            return;
        }
        let partition = self.group_partition;
        let ops =
            rows.into_iter().map(|(app_id, day, stats)| WriteOp::DayStats { partition, app_id, day, stats }).collect();
        self.writer.submit(StoreJob { ops, done: None, awaited: false });
    }
}
