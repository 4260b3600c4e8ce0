//! Identifiers: RegIDs (which encode their partition), app ids, message ids, secrets and
//! their hashes. Everything here is plain data; nothing touches I/O.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A device's registration id: 2 bytes of partition and 10 random bytes, shown as 24
/// lowercase hex characters. The partition names the device's home shard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegId(pub [u8; 12]);

impl RegId {
    /// A fresh random RegID in `partition`.
    pub fn generate(partition: u16) -> Self {
        let mut bytes = [0u8; 12];
        rand::rng().fill_bytes(&mut bytes[2..]);
        bytes[..2].copy_from_slice(&partition.to_be_bytes());
        RegId(bytes)
    }

    /// The partition this RegID was created in.
    pub fn partition(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    /// Parses the 24-hex-character form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 12];
        decode_hex(text, &mut bytes)?;
        Some(RegId(bytes))
    }
}

impl fmt::Display for RegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegId({self})")
    }
}

/// An app's id, shown as a decimal string.
pub type AppId = u32;

/// A message id: milliseconds since the epoch in the high 44 bits and a sequence in the
/// low 20, so ids are unique within a node and ordered by acceptance. A message sent with
/// a callback has an odd id ([`wants_receipts`]).
pub type MessageId = u64;

/// Whether the delivery and click receipts of message `id` go to a callback (its id is
/// odd, [`MessageIdSource::next_with_receipts`]): the shards hand the callback dispatcher
/// only those, not one receipt per delivery of every message.
pub fn wants_receipts(id: MessageId) -> bool {
    id & 1 == 1
}

/// Hands out increasing message ids, also across restarts (the clock moves on).
#[derive(Debug, Default)]
pub struct MessageIdSource {
    last: AtomicU64,
}

impl MessageIdSource {
    /// The next id; strictly greater than every id handed out before by this source.
    pub fn next(&self, now_ms: u64) -> MessageId {
        self.next_where(now_ms, |_| true)
    }

    /// [`MessageIdSource::next`] of a message whose receipts do (`true`) or do not go to a
    /// callback, told apart by [`wants_receipts`].
    pub fn next_with_receipts(&self, now_ms: u64, receipts: bool) -> MessageId {
        self.next_where(now_ms, |id| wants_receipts(id) == receipts)
    }

    /// The next id, or the one after it where `fits` refuses that one (`fits` holds for
    /// one of any two consecutive ids).
    fn next_where(&self, now_ms: u64, fits: impl Fn(MessageId) -> bool) -> MessageId {
        let floor = now_ms << 20;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let mut next = floor.max(last + 1);
            if !fits(next) {
                next += 1;
            }
            debug_assert!(fits(next), "of two consecutive ids one fits");
            match self.last.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

/// Text form of a message id (16 hex characters).
pub fn message_id_text(id: MessageId) -> String {
    format!("{id:016x}")
}

/// Parses the text form of a message id.
pub fn parse_message_id(text: &str) -> Option<MessageId> {
    let mut bytes = [0u8; 8];
    decode_hex(text, &mut bytes)?;
    Some(u64::from_be_bytes(bytes))
}

/// A random secret of `N` bytes, as lowercase hex.
pub fn random_secret<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// The stored form of a secret or token: its SHA-256, truncated to 16 bytes.
pub fn secret_hash(secret: &str) -> [u8; 16] {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Compares two hashes without an early exit.
pub fn hash_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn decode_hex(text: &str, out: &mut [u8]) -> Option<()> {
    let raw = text.as_bytes();
    if raw.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        if pair.iter().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regid_round_trip_keeps_partition() {
        let id = RegId::generate(513);
        assert_eq!(id.partition(), 513);
        let text = id.to_string();
        assert_eq!(text.len(), 24);
        assert_eq!(RegId::parse(&text), Some(id));
    }

    #[test]
    fn regid_rejects_bad_text() {
        assert_eq!(RegId::parse(""), None);
        assert_eq!(RegId::parse("zz0000000000000000000000"), None);
        assert_eq!(RegId::parse("00000000000000000000000"), None);
        assert_eq!(RegId::parse("AB0000000000000000000000"), None);
        assert_eq!(RegId::parse("é00000000000000000000000"), None);
    }

    #[test]
    fn message_ids_increase() {
        let source = MessageIdSource::default();
        let a = source.next(1000);
        let b = source.next(1000);
        let c = source.next(999);
        assert!(a < b && b < c);
        assert_eq!(parse_message_id(&message_id_text(c)), Some(c));
    }

    #[test]
    fn an_id_says_whether_its_receipts_are_wanted() {
        let source = MessageIdSource::default();
        let mut last = 0;
        for (i, receipts) in [true, true, false, false, true, false].into_iter().enumerate() {
            let id = source.next_with_receipts(1000 + i as u64 / 3, receipts);
            assert!(id > last, "ids still increase");
            assert_eq!(wants_receipts(id), receipts);
            last = id;
        }
        assert!(source.next(0) > last);
    }
}
