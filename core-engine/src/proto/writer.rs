//! Primitive wire writers used by the encoder: big-endian integers, variable byte
//! integers, length-prefixed strings/binary data, and length-prefixed blocks whose size
//! is only known after they are written (remaining length, property length).

use super::error::EncodeError;
use super::reader::MAX_VARINT;

/// Encode `v` as a variable byte integer into a 4-byte scratch array; returns the
/// array and the number of bytes used. `None` if `v > MAX_VARINT`.
pub(crate) fn varint_bytes(v: usize) -> Option<([u8; 4], usize)> {
    if v > MAX_VARINT as usize {
        return None;
    }
    let mut out = [0u8; 4];
    let mut x = v;
    let mut n = 0;
    for slot in out.iter_mut() {
        let mut b = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            b |= 0x80;
        }
        *slot = b;
        n += 1;
        if x == 0 {
            break;
        }
    }
    Some((out, n))
}

/// Append `v` as a variable byte integer.
pub(crate) fn put_varint(out: &mut Vec<u8>, v: usize) -> Result<(), EncodeError> {
    let (bytes, n) = varint_bytes(v).ok_or(EncodeError::PacketTooLarge)?;
    out.extend_from_slice(bytes.get(..n).unwrap_or(&bytes));
    Ok(())
}

/// Append a big-endian u16.
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Append a big-endian u32.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Append two-byte length + bytes.
pub(crate) fn put_binary(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong)?;
    put_u16(out, n);
    out.extend_from_slice(b);
    Ok(())
}

/// Append two-byte length + UTF-8 bytes.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    put_binary(out, s.as_bytes())
}

/// Append a variable-byte-integer length prefix followed by whatever `body` writes.
///
/// Reserves 4 bytes for the prefix, lets `body` write, then stores the real prefix and
/// closes the gap (one memmove of the body when the prefix is shorter than 4 bytes).
/// A body above 268,435,455 bytes is `PacketTooLarge`.
pub(crate) fn put_len_prefixed<F>(out: &mut Vec<u8>, body: F) -> Result<(), EncodeError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
{
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out)?;
    let len = out.len() - at - 4;
    let (bytes, n) = varint_bytes(len).ok_or(EncodeError::PacketTooLarge)?;
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&bytes);
    }
    out.drain(at + n..at + 4);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_encodings() {
        for (v, want) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v).unwrap();
            assert_eq!(out, want, "{v}");
        }
        assert_eq!(put_varint(&mut Vec::new(), 268_435_456), Err(EncodeError::PacketTooLarge));
    }

    #[test]
    fn len_prefixed_closes_gap() {
        let mut out = vec![0xAA];
        put_len_prefixed(&mut out, |o| {
            o.extend_from_slice(&[1, 2, 3]);
            Ok(())
        })
        .unwrap();
        assert_eq!(out, [0xAA, 3, 1, 2, 3]);
        let mut out = Vec::new();
        put_len_prefixed(&mut out, |o| {
            o.extend(std::iter::repeat_n(7u8, 200));
            Ok(())
        })
        .unwrap();
        assert_eq!(out.get(..2), Some(&[0xC8, 0x01][..]));
        assert_eq!(out.len(), 202);
    }
}
