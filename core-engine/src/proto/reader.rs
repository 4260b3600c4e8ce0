//! Bounded, panic-free reader over one frame (or one sub-block of it, such as an MQTT 5
//! property block). Like rustls' `codec::Reader`: every read is checked against the bytes
//! left, a length field can only carve a sub-reader out of what remains, and `finish`
//! turns leftover bytes into [`DecodeError::TrailingBytes`].

use super::error::DecodeError;

/// Largest value a variable byte integer can hold (4 bytes).
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Cursor over a byte slice that can never read past its end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reader over exactly `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// True when nothing is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Next `n` bytes, or `Truncated`.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A reader bounded to the next `n` bytes (which this reader skips).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        self.take(n).map(Reader::new)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, tail) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = tail;
        Ok(b)
    }

    /// Big-endian two-byte integer.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| DecodeError::Truncated)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Big-endian four-byte integer.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Variable byte integer (1..=4 bytes; non-minimal encodings are accepted).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedLength)
    }

    /// Two-byte length followed by that many bytes.
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// Two-byte length followed by UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let s = std::str::from_utf8(self.binary()?).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(s)
    }

    /// Owned [`Reader::string`].
    pub(crate) fn string_owned(&mut self) -> Result<String, DecodeError> {
        self.string().map(str::to_owned)
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(&[0x00, 0x05, b'a']);
        assert_eq!(r.binary(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[0x01]);
        assert_eq!(r.u16(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[1, 2, 3, 4, 5]);
        let mut sub = r.sub(2).unwrap();
        assert_eq!(sub.u16(), Ok(0x0102));
        assert_eq!(sub.u8(), Err(DecodeError::Truncated));
        assert_eq!(r.sub(4).err(), Some(DecodeError::Truncated));
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn varints() {
        assert_eq!(Reader::new(&[0x00]).varint(), Ok(0));
        assert_eq!(Reader::new(&[0x7F]).varint(), Ok(127));
        assert_eq!(Reader::new(&[0x80, 0x01]).varint(), Ok(128));
        assert_eq!(Reader::new(&[0xFF, 0xFF, 0xFF, 0x7F]).varint(), Ok(MAX_VARINT));
        assert_eq!(Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).varint(), Err(DecodeError::MalformedLength));
        assert_eq!(Reader::new(&[0x80]).varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn strings() {
        assert_eq!(Reader::new(&[0, 2, b'h', b'i']).string(), Ok("hi"));
        assert_eq!(Reader::new(&[0, 1, 0xFF]).string(), Err(DecodeError::InvalidUtf8));
        assert_eq!(Reader::new(&[0, 1, 0x00]).string(), Err(DecodeError::InvalidUtf8));
        // UTF-16 surrogate encoded as UTF-8 (CESU) is refused.
        assert_eq!(Reader::new(&[0, 3, 0xED, 0xA0, 0x80]).string(), Err(DecodeError::InvalidUtf8));
    }
}
