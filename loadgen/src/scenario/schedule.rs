//! The open-loop send schedule: message `k` is due at `start + k / rate`, whatever
//! happened to earlier ones. A sender that falls behind sends every message that is
//! already due at once, and each keeps its own scheduled time as its latency origin,
//! so a stall shows up in the latency instead of being hidden (no coordinated
//! omission).

use std::time::Duration;

/// Fixed-rate schedule of `total` messages.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Messages per second (> 0).
    rate: f64,
    total: u64,
}

impl Schedule {
    /// `rate` messages per second for `duration`; at least one message.
    pub fn new(rate: f64, duration: Duration) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 1.0 };
        let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        Schedule { rate, total }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// When message `k` is due, as an offset from the start.
    pub fn due(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Messages `next..end` that are due at `elapsed` (end exclusive, at most
    /// `max` of them, never past `total`).
    pub fn due_range(&self, next: u64, elapsed: Duration, max: u64) -> std::ops::Range<u64> {
        if next >= self.total {
            return self.total..self.total;
        }
        // Message k is due when k / rate <= elapsed, i.e. k <= elapsed * rate.
        let due_through = (elapsed.as_secs_f64() * self.rate).floor() as u64;
        let end = due_through.saturating_add(1).min(self.total).min(next.saturating_add(max));
        next..end.max(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_times() {
        let s = Schedule::new(200.0, Duration::from_secs(3));
        assert_eq!(s.total(), 600);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(5));
        assert_eq!(s.due(200), Duration::from_secs(1));
        assert_eq!(Schedule::new(0.0, Duration::ZERO).total(), 1);
    }

    #[test]
    fn catch_up_keeps_scheduled_times() {
        let s = Schedule::new(1000.0, Duration::from_secs(1));
        // At t=0 only message 0 is due.
        assert_eq!(s.due_range(0, Duration::ZERO, 1000), 0..1);
        // On time: one more per millisecond.
        assert_eq!(s.due_range(1, Duration::from_micros(1500), 1000), 1..2);
        // A 100 ms stall: everything due meanwhile goes at once, each with its own
        // due time (k ms), so the stall is measured, not omitted.
        let r = s.due_range(2, Duration::from_millis(102), 1000);
        assert_eq!(r, 2..103);
        assert_eq!(s.due(r.start), Duration::from_millis(2));
        assert_eq!(s.due(r.end - 1), Duration::from_millis(102));
        // The cap bounds a burst; the rest stays due.
        assert_eq!(s.due_range(2, Duration::from_millis(102), 10), 2..12);
        // Never past the end.
        assert_eq!(s.due_range(990, Duration::from_secs(5), 1000), 990..1000);
        assert_eq!(s.due_range(1000, Duration::from_secs(5), 1000), 1000..1000);
        // Not yet due.
        assert_eq!(s.due_range(500, Duration::from_millis(100), 1000), 500..500);
    }
}
