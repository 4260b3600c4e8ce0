//! Latency bookkeeping for the multi-process scenarios: an hdrhistogram in
//! microseconds (1 us .. 1 h, 3 significant digits) that workers fill, encode
//! (hdrhistogram V2 serialization + base64) into their JSON report, and the parent
//! decodes and merges; plus the percentile summary and the percentile distribution
//! rows written to `--json`.

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable latency, microseconds (one hour).
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyHist {
    hist: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles in microseconds (all 0 without samples).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl LatencyHist {
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid");
        LatencyHist { hist }
    }

    /// Records one sample; 0 counts as 1 us, values beyond an hour are clamped.
    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so adding cannot fail; saturate just in case.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.hist.is_empty() {
            return Percentiles::default();
        }
        let q = |q: f64| self.hist.value_at_quantile(q);
        Percentiles {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max(),
            count: self.hist.len(),
        }
    }

    /// The percentile distribution: `[percentile (0..100), value_us]` rows from
    /// hdrhistogram's `iter_quantiles(1)`.
    pub fn distribution(&self) -> Vec<(f64, u64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        self.hist
            .iter_quantiles(1)
            .map(|v| (v.quantile_iterated_to() * 100.0, self.hist.highest_equivalent(v.value_iterated_to())))
            .collect()
    }

    /// V2 serialization, base64 (standard alphabet).
    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        if V2Serializer::new().serialize(&self.hist, &mut bytes).is_err() {
            return String::new();
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The inverse of [`LatencyHist::encode`]; an empty string is an empty histogram.
    pub fn decode(text: &str) -> Result<LatencyHist, String> {
        if text.is_empty() {
            return Ok(LatencyHist::new());
        }
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("histogram base64: {e}"))?;
        let decoded: Histogram<u64> =
            Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("histogram: {e:?}"))?;
        let mut out = LatencyHist::new();
        for v in decoded.iter_recorded() {
            out.hist.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
        Ok(out)
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_clamping() {
        let mut h = LatencyHist::new();
        assert_eq!(h.percentiles(), Percentiles::default());
        assert!(h.distribution().is_empty());
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        h.record(0);
        h.record(u64::MAX);
        let p = h.percentiles();
        assert_eq!(p.count, 1002);
        assert!((499_000..=502_000).contains(&p.p50), "{p:?}");
        assert!((989_000..=992_000).contains(&p.p99), "{p:?}");
        assert!(p.max >= 3_599_000_000);
        let rows = h.distribution();
        assert!(rows.first().unwrap().0 <= 1.0);
        assert_eq!(rows.last().unwrap().0, 100.0);
        assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn encode_decode_merge() {
        let mut a = LatencyHist::new();
        let mut b = LatencyHist::new();
        for v in 0..500u64 {
            a.record(100 + v);
            b.record(10_000 + v * 10);
        }
        let a2 = LatencyHist::decode(&a.encode()).unwrap();
        assert_eq!(a2.percentiles(), a.percentiles());
        let mut merged = LatencyHist::decode(&LatencyHist::new().encode()).unwrap();
        merged.merge(&a2);
        merged.merge(&LatencyHist::decode(&b.encode()).unwrap());
        let p = merged.percentiles();
        assert_eq!(p.count, 1000);
        assert!(p.p50 < 1000, "{p:?}");
        assert!(p.p90 > 10_000, "{p:?}");
        assert_eq!(p.max, b.percentiles().max);
        assert_eq!(LatencyHist::decode("").unwrap().count(), 0);
        assert!(LatencyHist::decode("!!notbase64").is_err());
    }
}
