//! The node's wall clock: unix time plus an offset that tests set to put the node at a
//! chosen moment (for example just before midnight, to cross a day boundary). Every
//! wall-clock read in the engine goes through here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts the node's clock by `offset_s` seconds (tests and demos only).
pub fn set_offset_s(offset_s: i64) {
    OFFSET_MS.store(offset_s.saturating_mul(1000), Ordering::Relaxed);
}

/// Milliseconds since the unix epoch, as the node sees it.
pub fn now_unix_ms() -> u64 {
    let real = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    real.saturating_add(OFFSET_MS.load(Ordering::Relaxed)).max(0) as u64
}

/// Seconds since the unix epoch, as the node sees it.
pub fn now_unix_s() -> u64 {
    now_unix_ms() / 1000
}

/// Days since the unix epoch (UTC) of a unix time in seconds.
pub fn day_of(unix_s: u64) -> u32 {
    (unix_s / 86_400) as u32
}

/// `YYYY-MM-DD` of a day number (proleptic Gregorian, UTC).
pub fn day_text(day: u32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of `YYYY-MM-DD`.
pub fn parse_day(text: &str) -> Option<u32> {
    let mut parts = text.split('-');
    let (y, m, d) =
        (parts.next()?.parse::<i64>().ok()?, parts.next()?.parse::<u32>().ok()?, parts.next()?.parse::<u32>().ok()?);
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || text.len() != 10 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(u32::try_from(days).ok()?)
}

// Howard Hinnant's civil-calendar algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(parse_day("2026-11-25"), Some(day_of(1_795_564_800)));
        assert_eq!(day_text(parse_day("2024-02-29").unwrap()), "2024-02-29");
        assert_eq!(parse_day("2023-02-29"), None);
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("26-1-1"), None);
    }
}
