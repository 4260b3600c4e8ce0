//! The per-source-address connect rate limit, sans-IO: a token bucket per source address
//! (IPv4 address, or IPv6 /64 prefix), `rate` tokens a second up to `burst`, one token per
//! accepted connection. Time comes in as milliseconds on any monotonic clock.
//!
//! One limiter serves the whole node: SO_REUSEPORT spreads one address's connections over
//! all shards, so a bucket per shard would let an address connect `shards` times as fast.
//! Shards share it through striped `Mutex`es (a stripe per hash of the address), each held
//! for one hash-map lookup.
//!
//! Memory is bounded: a bucket that has refilled to full is the same as no bucket, so each
//! stripe forgets those once a second; and at most [`MAX_TRACKED`] addresses are tracked.
//! When a stripe is full of buckets that are all still refilling, the one closest to full
//! is forgotten (its address gets a fresh burst early: the least harm an eviction can do).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// Source addresses tracked at most, node-wide (~40 bytes each).
pub const MAX_TRACKED: usize = 65_536;
/// Independent locks; a shard holds one for a single lookup.
const STRIPES: usize = 64;
/// How often a stripe forgets its full buckets.
const SWEEP_INTERVAL_MS: u64 = 1000;
/// Largest `rate` and `burst` (so token arithmetic in thousandths fits in `u64` easily).
pub const MAX_SETTING: u32 = 1_000_000;
/// Tokens are counted in thousandths: a rate of `r`/s adds `r` thousandths per millisecond.
const MILLI: u64 = 1000;

/// Who a bucket belongs to: an IPv4 address, or the /64 prefix of an IPv6 address (one
/// subscriber usually holds a whole /64, so its addresses share one bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d.
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens in thousandths at `updated_ms`.
    tokens_milli: u64,
    updated_ms: u64,
}

#[derive(Debug, Default)]
struct Stripe {
    buckets: HashMap<SourceKey, Bucket>,
    last_sweep_ms: u64,
}

/// The node's connect rate limit; see the module docs.
#[derive(Debug)]
pub struct ConnectRateLimit {
    /// Tokens added per second (= thousandths per millisecond).
    rate_per_s: u64,
    /// Bucket size in thousandths.
    capacity_milli: u64,
    stripe_of: RandomState,
    stripes: Box<[Mutex<Stripe>]>,
    /// Addresses one stripe tracks at most.
    max_tracked_per_stripe: usize,
}

impl ConnectRateLimit {
    /// A limiter of `rate_per_s` connections a second per source, bursts of `burst`;
    /// `None` when `rate_per_s` is 0 (the limit is off).
    pub fn new(rate_per_s: u32, burst: u32) -> Option<Self> {
        (rate_per_s > 0).then(|| Self::with_stripes(rate_per_s, burst, STRIPES, MAX_TRACKED))
    }

    fn with_stripes(rate_per_s: u32, burst: u32, stripes: usize, max_tracked: usize) -> Self {
        assert!((1..=MAX_SETTING).contains(&rate_per_s) && (1..=MAX_SETTING).contains(&burst), "checked by the config");
        assert!(stripes >= 1 && max_tracked >= stripes);
        ConnectRateLimit {
            rate_per_s: u64::from(rate_per_s),
            capacity_milli: u64::from(burst) * MILLI,
            stripe_of: RandomState::new(),
            stripes: (0..stripes).map(|_| Mutex::default()).collect(),
            max_tracked_per_stripe: max_tracked / stripes,
        }
    }

    /// Whether a connection from `ip` at `now_ms` is within the limit; takes a token if so.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> bool {
        let key = SourceKey::of(ip);
        let stripe = &self.stripes[(self.stripe_of.hash_one(key) % self.stripes.len() as u64) as usize];
        let mut stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms >= stripe.last_sweep_ms + SWEEP_INTERVAL_MS {
            stripe.last_sweep_ms = now_ms;
            self.forget_full(&mut stripe, now_ms);
        }
        if let Some(bucket) = stripe.buckets.get_mut(&key) {
            bucket.tokens_milli = self.refilled(bucket, now_ms);
            bucket.updated_ms = bucket.updated_ms.max(now_ms);
            if bucket.tokens_milli < MILLI {
                return false;
            }
            bucket.tokens_milli -= MILLI;
            return true;
        }
        if stripe.buckets.len() >= self.max_tracked_per_stripe {
            self.evict_fullest(&mut stripe, now_ms);
        }
        stripe.buckets.insert(key, Bucket { tokens_milli: self.capacity_milli - MILLI, updated_ms: now_ms });
        debug_assert!(stripe.buckets.len() <= self.max_tracked_per_stripe);
        true
    }

    /// Addresses tracked now (buckets not yet forgotten).
    pub fn tracked(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).buckets.len()).sum()
    }

    /// The bucket's tokens at `now_ms` (a clock that went backwards adds nothing).
    fn refilled(&self, bucket: &Bucket, now_ms: u64) -> u64 {
        let elapsed_ms = now_ms.saturating_sub(bucket.updated_ms);
        bucket.tokens_milli.saturating_add(elapsed_ms.saturating_mul(self.rate_per_s)).min(self.capacity_milli)
    }

    fn forget_full(&self, stripe: &mut Stripe, now_ms: u64) {
        stripe.buckets.retain(|_, bucket| self.refilled(bucket, now_ms) < self.capacity_milli);
    }

    /// Frees one place in a full stripe: forgets the bucket closest to full.
    fn evict_fullest(&self, stripe: &mut Stripe, now_ms: u64) {
        let fullest = stripe.buckets.iter().max_by_key(|(_, bucket)| self.refilled(bucket, now_ms)).map(|(k, _)| *k);
        if let Some(key) = fullest {
            stripe.buckets.remove(&key);
            tracing::debug!(
                "connect rate limit: tracking as many source addresses as it may; forgot the fullest bucket"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn off_when_rate_is_zero() {
        assert!(ConnectRateLimit::new(0, 10).is_none());
    }

    #[test]
    fn burst_then_refusal_then_refill() {
        let limit = ConnectRateLimit::new(5, 10).unwrap();
        let admitted = (0..30).filter(|_| limit.admit(v4(9), 1_000)).count();
        assert_eq!(admitted, 10, "the burst, then nothing within the same millisecond");
        // 5/s: one token every 200 ms.
        assert!(!limit.admit(v4(9), 1_199));
        assert!(limit.admit(v4(9), 1_200));
        assert!(!limit.admit(v4(9), 1_200));
        // Two seconds refill 10 tokens: a full burst again, never more.
        let later = (0..30).filter(|_| limit.admit(v4(9), 60_000)).count();
        assert_eq!(later, 10);
    }

    #[test]
    fn addresses_have_their_own_buckets() {
        let limit = ConnectRateLimit::new(1, 2).unwrap();
        assert!(limit.admit(v4(9), 0) && limit.admit(v4(9), 0));
        assert!(!limit.admit(v4(9), 0));
        assert!(limit.admit(v4(10), 0), "another address is not limited by the first one's use");
    }

    #[test]
    fn ipv6_shares_a_bucket_per_64_prefix() {
        let limit = ConnectRateLimit::new(1, 2).unwrap();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:eeee:dddd:cccc".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limit.admit(a, 0) && limit.admit(b, 0));
        assert!(!limit.admit(a, 0) && !limit.admit(b, 0), "one /64, one bucket");
        assert!(limit.admit(other, 0), "the next /64 is another source");
        // IPv4-mapped IPv6 is the IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        assert!(limit.admit(v4(9), 0) && limit.admit(mapped, 0));
        assert!(!limit.admit(v4(9), 0));
        assert_eq!(SourceKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)), SourceKey::V6(0));
    }

    #[test]
    fn full_buckets_are_forgotten() {
        // One stripe, so every lookup sees every bucket.
        let limit = ConnectRateLimit::with_stripes(10, 10, 1, 1024);
        for i in 0..100 {
            assert!(limit.admit(v4(i), 0));
        }
        for _ in 0..10 {
            assert!(limit.admit(v4(7), 500));
        }
        assert!(!limit.admit(v4(7), 500));
        assert_eq!(limit.tracked(), 100);
        // At 1 s the others are full again (v4(7) is not): the sweep forgets them.
        assert!(limit.admit(v4(200), 1_000));
        assert_eq!(limit.tracked(), 2, "v4(7), still refilling, and v4(200), just taken");
        assert!(limit.admit(v4(200), 2_500));
        assert_eq!(limit.tracked(), 1);
    }

    #[test]
    fn tracking_is_capped_and_evicts_the_fullest() {
        // 1 token/s, burst 3: nothing refills to full within the test.
        let limit = ConnectRateLimit::with_stripes(1, 3, 4, 256);
        let source = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let heavy = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        assert!(limit.admit(heavy, 0) && limit.admit(heavy, 0) && limit.admit(heavy, 0));
        assert!(!limit.admit(heavy, 0));
        for i in 0..2048 {
            assert!(limit.admit(source(i), 10), "a new address always gets its burst");
            assert!(limit.tracked() <= 256);
        }
        assert_eq!(limit.tracked(), 256);
        assert!(!limit.admit(heavy, 20), "the emptiest bucket is the last to be evicted");
        assert_eq!(ConnectRateLimit::new(1, 1).unwrap().max_tracked_per_stripe * STRIPES, MAX_TRACKED);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let limit = ConnectRateLimit::new(1, 1).unwrap();
        assert!(limit.admit(v4(1), 10_000));
        assert!(!limit.admit(v4(1), 5_000));
        assert!(!limit.admit(v4(1), 10_500));
        assert!(limit.admit(v4(1), 11_000));
    }
}
