//! Helpers shared by scenarios: rate parsing, wall-clock timestamps, the latency
//! histogram and its JSON summary, and a stdin line waiter that never blocks the
//! runtime's shutdown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Parses a rate such as `5000`, `5000/s` or `2.5k/s` (events per second, > 0).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let (num, mult) = match t.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1000.0),
        None => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * mult),
        _ => Err(format!("bad rate {s:?}: expected e.g. 5000/s")),
    }
}

/// Wall-clock time in unix microseconds (0 if the clock is before 1970).
pub fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Latency histogram in microseconds, 1 us .. 1 h, 3 significant digits.
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Records one sample; values beyond the range are clamped.
    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us.max(1));
    }

    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let q = |q: f64| self.hist.value_at_quantile(q);
        LatencySummary {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max(),
            mean: self.hist.mean().round() as u64,
        }
    }
}

/// Latency percentiles in microseconds (all 0 without samples).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: u64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, mean {:.2} ms",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.mean)
        )
    }
}

/// What became of waiting for a line on stdin.
#[derive(Debug, PartialEq, Eq)]
pub enum StdinWait {
    /// The awaited line arrived.
    Line,
    /// stdin reached end of file (or failed) first.
    Eof,
    /// The time limit passed first.
    Timeout,
}

/// Waits up to `limit` for a line equal to `word` (trimmed) on stdin. Reads on a
/// detached std thread, so a pending read never holds up the runtime's shutdown.
pub async fn wait_for_stdin_line(word: &'static str, limit: Duration) -> StdinWait {
    read_stdin_until(move |line| line == word, limit).await.0
}

/// Reads stdin lines (trimmed) until one for which `is_last` holds, for up to `limit`;
/// answers how that went and every line read, the last one included. Reads on a detached
/// std thread, so a pending read never holds up the runtime's shutdown.
pub async fn read_stdin_until(
    is_last: impl Fn(&str) -> bool + Send + 'static,
    limit: Duration,
) -> (StdinWait, Vec<String>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut lines = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((StdinWait::Eof, lines));
                    return;
                }
                Ok(_) => {
                    let last = is_last(line.trim());
                    lines.push(line.trim().to_string());
                    if last {
                        let _ = tx.send((StdinWait::Line, lines));
                        return;
                    }
                }
            }
        }
    });
    if spawned.is_err() {
        return (StdinWait::Eof, Vec::new());
    }
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(got)) => got,
        Ok(Err(_)) => (StdinWait::Eof, Vec::new()),
        Err(_) => (StdinWait::Timeout, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5000/s"), Ok(5000.0));
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate("2.5k/s"), Ok(2500.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[test]
    fn latency_summary() {
        let mut l = Latency::new();
        assert_eq!(l.summary().max, 0);
        for v in 1..=1000 {
            l.record(v * 1000);
        }
        l.record(u64::MAX);
        let s = l.summary();
        assert!(s.p50 >= 499_000 && s.p50 <= 502_000, "{s:?}");
        assert!(s.max >= 3_599_000_000);
        assert_eq!(l.len(), 1001);
    }
}
