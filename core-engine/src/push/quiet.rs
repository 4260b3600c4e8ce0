//! Quiet hours: a daily period, in the device's local time, during which pushes are held
//! on the node and delivered when it ends (if still within their TTL).

use serde::Deserialize;

/// A quiet period: from `start` to `end` (minutes after local midnight), local time being
/// UTC plus `utc_offset_minutes`. It may wrap midnight (23:00 -> 07:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start_min: u16,
    pub end_min: u16,
    pub utc_offset_min: i16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuietJson {
    start: String,
    end: String,
    #[serde(default)]
    utc_offset_minutes: i32,
}

fn parse_hhmm(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl QuietHours {
    /// Parses `{"start":"HH:MM","end":"HH:MM","utc_offset_minutes":N}`.
    pub fn from_json(raw: &[u8]) -> Result<QuietHours, String> {
        let json: QuietJson = serde_json::from_slice(raw).map_err(|e| format!("invalid quiet hours: {e}"))?;
        let start_min = parse_hhmm(&json.start).ok_or("start must be HH:MM")?;
        let end_min = parse_hhmm(&json.end).ok_or("end must be HH:MM")?;
        if !(-14 * 60..=14 * 60).contains(&json.utc_offset_minutes) {
            return Err("utc_offset_minutes must be within -840..=840".into());
        }
        Ok(QuietHours { start_min, end_min, utc_offset_min: json.utc_offset_minutes as i16 })
    }

    /// Whether the device is in its quiet period at unix time `now_s`.
    pub fn is_quiet(&self, now_s: u64) -> bool {
        let local = ((now_s / 60) as i64 + i64::from(self.utc_offset_min)).rem_euclid(1440) as u16;
        match self.start_min.cmp(&self.end_min) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => (self.start_min..self.end_min).contains(&local),
            std::cmp::Ordering::Greater => local >= self.start_min || local < self.end_min,
        }
    }

    pub fn to_bytes(self) -> [u8; 6] {
        let mut out = [0u8; 6];
        out[..2].copy_from_slice(&self.start_min.to_le_bytes());
        out[2..4].copy_from_slice(&self.end_min.to_le_bytes());
        out[4..].copy_from_slice(&self.utc_offset_min.to_le_bytes());
        out
    }

    pub fn from_bytes(raw: &[u8]) -> Option<QuietHours> {
        Some(QuietHours {
            start_min: u16::from_le_bytes(raw.get(..2)?.try_into().ok()?),
            end_min: u16::from_le_bytes(raw.get(2..4)?.try_into().ok()?),
            utc_offset_min: i16::from_le_bytes(raw.get(4..6)?.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_period_in_local_time() {
        let q = QuietHours::from_json(br#"{"start":"23:00","end":"07:00","utc_offset_minutes":480}"#).unwrap();
        // 15:30 UTC is 23:30 at UTC+8: quiet. 23:30 UTC is 07:30 local: not quiet.
        assert!(q.is_quiet(15 * 3600 + 30 * 60));
        assert!(!q.is_quiet(23 * 3600 + 30 * 60));
        assert!(q.is_quiet(22 * 3600 + 59 * 60), "06:59 local");
        assert_eq!(QuietHours::from_bytes(&q.to_bytes()), Some(q));
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [&br#"{"start":"24:00","end":"07:00"}"#[..], br#"{"start":"7:00","end":"08:00"}"#, br#"{}"#, b"x"] {
            assert!(QuietHours::from_json(bad).is_err());
        }
        let same = QuietHours::from_json(br#"{"start":"08:00","end":"08:00"}"#).unwrap();
        assert!(!same.is_quiet(8 * 3600));
    }
}
