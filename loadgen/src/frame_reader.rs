//! Splits a byte stream into MQTT packets across arbitrary read boundaries, for
//! connections that read into one buffer shared by many of them: only the bytes of
//! an unfinished packet are kept per connection (`pending`), and an empty `pending`
//! holds no memory at all, so an idle connection costs nothing here.

use core_engine::proto::{self, DecodeError, Packet, Version};

/// Largest packet accepted from a server.
pub const MAX_PACKET_SIZE: usize = 1 << 20;

/// Per-connection carry-over of an unfinished packet.
#[derive(Debug, Default)]
pub struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Bytes of an unfinished packet kept from earlier reads.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Decodes every whole packet of (carried-over bytes + `input`) into `out`, and
    /// keeps the tail of an unfinished one. A malformed packet is an error; the
    /// connection should then be closed.
    pub fn feed(&mut self, input: &[u8], version: Version, out: &mut Vec<Packet>) -> Result<(), DecodeError> {
        if self.pending.is_empty() {
            let used = decode_all(input, version, out)?;
            if let Some(rest) = input.get(used..) {
                self.pending.extend_from_slice(rest);
            }
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let used = decode_all(&self.pending, version, out)?;
        self.pending.drain(..used.min(self.pending.len()));
        if self.pending.is_empty() {
            // Give the memory back: idle connections should hold none.
            self.pending = Vec::new();
        }
        Ok(())
    }
}

/// Decodes packets from the start of `buf` until an unfinished one; returns how many
/// bytes were used.
fn decode_all(buf: &[u8], version: Version, out: &mut Vec<Packet>) -> Result<usize, DecodeError> {
    let mut used = 0;
    while let Some(rest) = buf.get(used..) {
        if rest.is_empty() {
            break;
        }
        match proto::decode(rest, version, MAX_PACKET_SIZE)? {
            Some((packet, n)) => {
                out.push(packet);
                used += n.max(1);
            }
            None => break,
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_engine::proto::{encode, Ack, Properties};

    fn puback(id: u16) -> Packet {
        Packet::Puback(Ack { packet_id: id, code: 0, properties: Properties::default() })
    }

    fn stream(version: Version) -> (Vec<u8>, Vec<Packet>) {
        let mut bytes = Vec::new();
        let mut packets = Vec::new();
        let mut publish = Vec::new();
        core_engine::proto::encode_publish_qos1(version, false, "inbox", 7, None, &[b'x'; 300], &mut publish);
        for i in 1..=5u16 {
            let p = puback(i);
            encode(&p, version, &mut bytes).unwrap();
            packets.push(p);
            bytes.extend_from_slice(&publish);
            let (p, _) = proto::decode(&publish, version, MAX_PACKET_SIZE).unwrap().unwrap();
            packets.push(p);
        }
        encode(&Packet::Pingresp, version, &mut bytes).unwrap();
        packets.push(Packet::Pingresp);
        (bytes, packets)
    }

    #[test]
    fn packets_survive_every_split() {
        for version in [Version::V311, Version::V5] {
            let (bytes, want) = stream(version);
            for chunk in [1, 2, 3, 7, 64, 299, 1000, bytes.len()] {
                let mut r = FrameReader::new();
                let mut got = Vec::new();
                for piece in bytes.chunks(chunk) {
                    r.feed(piece, version, &mut got).unwrap();
                }
                assert_eq!(got, want, "chunk {chunk}");
                assert_eq!(r.pending_len(), 0);
                assert_eq!(r.pending.capacity(), 0, "idle reader holds no memory");
            }
        }
    }

    #[test]
    fn unfinished_tail_is_kept() {
        let mut bytes = Vec::new();
        encode(&puback(1), Version::V5, &mut bytes).unwrap();
        let first_len = bytes.len();
        encode(&puback(2), Version::V5, &mut bytes).unwrap();
        let cut = bytes.len() - 2;
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        r.feed(&bytes[..cut], Version::V5, &mut got).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(r.pending_len(), cut - first_len);
        r.feed(&bytes[cut..], Version::V5, &mut got).unwrap();
        assert_eq!(got, vec![puback(1), puback(2)]);
    }

    #[test]
    fn malformed_is_an_error() {
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        // Reserved packet type 0.
        assert!(r.feed(&[0x00, 0x00], Version::V311, &mut got).is_err());
    }
}
