//! Arbitrary bytes into the MQTT decoder, for both protocol versions and several packet
//! size limits. Invariants:
//! * `decode` never panics;
//! * `Ok(Some((packet, n)))` has `0 < n <= len`, `n <= max`, and every strict prefix of the
//!   frame is `Ok(None)` (a truncated packet is never an error, only "need more bytes");
//! * a decoded packet re-encodes, and the encoding decodes to the same packet, whole;
//! * a larger limit never changes a successful decode.
#![no_main]

use core_engine::proto::{decode, encode, Packet, Version};
use libfuzzer_sys::fuzz_target;

const MAXES: [usize; 4] = [2, 64, 65_536, usize::MAX];

fuzz_target!(|data: &[u8]| {
    for version in [Version::V311, Version::V5] {
        let mut first_ok: Option<(Packet, usize)> = None;
        for max in MAXES {
            match decode(data, version, max) {
                Ok(Some((packet, n))) => {
                    assert!(n > 0 && n <= data.len(), "consumed {n} of {}", data.len());
                    assert!(n <= max, "consumed {n} above max {max}");
                    if let Some((p0, n0)) = &first_ok {
                        assert_eq!((p0, *n0), (&packet, n), "a larger max changed the result");
                    } else {
                        check_prefixes(&data[..n], version, max);
                        round_trip(&packet, version);
                        first_ok = Some((packet, n));
                    }
                }
                Ok(None) => assert!(first_ok.is_none(), "a larger max made a packet incomplete"),
                Err(_) => assert!(first_ok.is_none(), "a larger max made a packet invalid"),
            }
        }
    }
});

/// Every strict prefix of a whole frame is "need more bytes".
fn check_prefixes(frame: &[u8], version: Version, max: usize) {
    let n = frame.len();
    // All short prefixes (the fixed header) and a few long ones.
    let cuts = (0..n.min(6)).chain([n / 2, n.saturating_sub(2), n - 1]);
    for k in cuts.filter(|&k| k < n) {
        match decode(&frame[..k], version, max) {
            Ok(None) => {}
            other => panic!("prefix {k}/{n} of a valid frame gave {other:?}"),
        }
    }
}

fn round_trip(packet: &Packet, version: Version) {
    let mut out = Vec::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("decoded packet does not re-encode: {e}: {packet:?}");
    }
    match decode(&out, version, usize::MAX) {
        Ok(Some((again, n))) => {
            assert_eq!(n, out.len(), "re-encoding not consumed whole: {out:02x?}");
            assert_eq!(&again, packet, "re-encoding decodes differently: {out:02x?}");
        }
        other => panic!("re-encoding {out:02x?} of {packet:?} decodes as {other:?}"),
    }
    // Appending to a non-empty buffer appends exactly the same bytes.
    let mut prefixed = vec![0xAA];
    encode(packet, version, &mut prefixed).expect("encoded once already");
    assert_eq!(&prefixed[1..], &out[..]);
}
