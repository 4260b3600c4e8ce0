//! The decoder: turns the front of a byte buffer into one [`Packet`].
//!
//! Framing first: the fixed header's type and flags are validated from the first byte,
//! the remaining length (at most 4 bytes) is read, and an announced size above the
//! caller's limit is refused before the body is buffered. A partial frame is
//! `Ok(None)`. The body is then parsed through a bounded [`Reader`] over exactly the
//! frame, so no length field can reach past it, and leftover bytes are
//! [`DecodeError::TrailingBytes`].

use bytes::Bytes;

use super::error::DecodeError;
use super::packet::{
    Ack, Auth, Connack, Connect, Disconnect, LastWill, Packet, Publish, QoS, Suback, Subscribe, SubscribeFilter,
    Unsuback, Unsubscribe, Version,
};
use super::properties::{decode_properties, Properties};
use super::reader::Reader;

/// Decode one packet from the start of `buf`.
///
/// * `Ok(None)`: `buf` does not hold a whole packet yet (need more bytes). If the fixed
///   header already announces a packet larger than `max_packet_size` (total bytes,
///   fixed header included), `Err(PacketTooLarge)` is returned at once instead.
/// * `Ok(Some((packet, consumed)))`: the first `consumed` bytes were the packet.
///
/// `version` is the session's negotiated version. CONNECT ignores it and takes the
/// version from its own protocol level. AUTH (type 15) is an unknown type for 3.1.1.
///
/// Strictness beyond the brief, all per spec: DUP set on a QoS 0 PUBLISH is
/// `InvalidFlags`; an empty PUBLISH topic is malformed unless it is 5.0 with a topic
/// alias; topic filters must be non-empty with `+` / `#` occupying whole levels and `#`
/// last; a will topic must be a non-empty topic name; the 3.1.1 password flag without the
/// user-name flag is malformed (MQTT-3.1.2-22) while 5.0 accepts it.
pub fn decode(buf: &[u8], version: Version, max_packet_size: usize) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some((&first, after_first)) = buf.split_first() else {
        return Ok(None);
    };
    check_fixed_header(first, version)?;
    let Some((remaining, len_bytes)) = remaining_length(after_first)? else {
        return Ok(None);
    };
    let header = 1 + len_bytes;
    let total = header + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge { size: total, max: max_packet_size });
    }
    let Some(frame) = buf.get(header..total) else {
        return Ok(None);
    };
    let mut r = Reader::new(frame);
    let packet = decode_body(first, &mut r, version)?;
    r.finish()?;
    Ok(Some((packet, total)))
}

/// Validate packet type and fixed-header flags from the first byte alone.
fn check_fixed_header(first: u8, version: Version) -> Result<(), DecodeError> {
    let flags = first & 0x0F;
    let required = match first >> 4 {
        0 => return Err(DecodeError::UnknownPacketType(0)),
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS(3));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::InvalidFlags(first));
            }
            return Ok(());
        }
        6 | 8 | 10 => 0b0010,
        15 if version == Version::V311 => return Err(DecodeError::UnknownPacketType(15)),
        _ => 0,
    };
    if flags != required {
        return Err(DecodeError::InvalidFlags(first));
    }
    Ok(())
}

/// Remaining length from the bytes after the first: `Ok(None)` while incomplete,
/// `Ok(Some((value, bytes_used)))` when complete, `MalformedLength` past 4 bytes.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::MalformedLength)
    } else {
        Ok(None)
    }
}

fn decode_body(first: u8, r: &mut Reader<'_>, version: Version) -> Result<Packet, DecodeError> {
    Ok(match first >> 4 {
        1 => Packet::Connect(decode_connect(r)?),
        2 => Packet::Connack(decode_connack(r, version)?),
        3 => Packet::Publish(decode_publish(first, r, version)?),
        4 => Packet::Puback(decode_ack(r, version)?),
        5 => Packet::Pubrec(decode_ack(r, version)?),
        6 => Packet::Pubrel(decode_ack(r, version)?),
        7 => Packet::Pubcomp(decode_ack(r, version)?),
        8 => Packet::Subscribe(decode_subscribe(r, version)?),
        9 => Packet::Suback(decode_suback(r, version)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(r, version)?),
        11 => Packet::Unsuback(decode_unsuback(r, version)?),
        12 => Packet::Pingreq,
        13 => Packet::Pingresp,
        14 => {
            let (code, properties) = code_and_properties(r, version)?;
            Packet::Disconnect(Disconnect { code, properties })
        }
        15 => {
            let (code, properties) = code_and_properties(r, Version::V5)?;
            Packet::Auth(Auth { code, properties })
        }
        t => return Err(DecodeError::UnknownPacketType(t)),
    })
}

fn qos(bits: u8) -> Result<QoS, DecodeError> {
    match bits {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        b => Err(DecodeError::InvalidQoS(b)),
    }
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn properties(r: &mut Reader<'_>, version: Version) -> Result<Properties, DecodeError> {
    match version {
        Version::V311 => Ok(Properties::default()),
        Version::V5 => decode_properties(r),
    }
}

/// MQTT 5 "reason code, then properties, both omittable" tail (PUBACK family,
/// DISCONNECT, AUTH). 3.1.1 has neither.
fn code_and_properties(r: &mut Reader<'_>, version: Version) -> Result<(u8, Properties), DecodeError> {
    if version == Version::V311 || r.is_empty() {
        return Ok((0, Properties::default()));
    }
    let code = r.u8()?;
    if r.is_empty() {
        return Ok((code, Properties::default()));
    }
    Ok((code, decode_properties(r)?))
}

/// A topic name as used by PUBLISH and wills: no wildcard characters.
fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.contains(['+', '#']) {
        return Err(DecodeError::Malformed("wildcard in topic name"));
    }
    Ok(())
}

/// A topic filter: non-empty, `+` and `#` each occupy a whole level, `#` is last.
fn check_topic_filter(filter: &str) -> Result<(), DecodeError> {
    let bad = Err(DecodeError::Malformed("invalid topic filter"));
    if filter.is_empty() {
        return bad;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return bad;
        }
        if level.contains('+') && level != "+" {
            return bad;
        }
    }
    Ok(())
}

fn decode_connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name, level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        _ => return Err(DecodeError::UnsupportedProtocol { name: name.to_owned(), level }),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS/retain without will flag"));
    }
    let will_qos = qos(will_qos_bits)?;
    if version == Version::V311 && password_flag && !username_flag {
        return Err(DecodeError::Malformed("password flag without user name flag"));
    }
    let keep_alive = r.u16()?;
    let properties = properties(r, version)?;
    let client_id = r.string_owned()?;
    let will = if will_flag {
        let will_properties = self::properties(r, version)?;
        let topic = r.string_owned()?;
        if topic.is_empty() {
            return Err(DecodeError::Malformed("empty will topic"));
        }
        check_topic_name(&topic)?;
        let payload = r.binary()?.to_vec();
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties: will_properties })
    } else {
        None
    };
    let username = if username_flag { Some(r.string_owned()?) } else { None };
    let password = if password_flag { Some(r.binary()?.to_vec()) } else { None };
    Ok(Connect { version, client_id, clean_start, keep_alive, username, password, will, properties })
}

fn decode_connack(r: &mut Reader<'_>, version: Version) -> Result<Connack, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flags set"));
    }
    let code = r.u8()?;
    let properties = properties(r, version)?;
    Ok(Connack { session_present: ack_flags & 0x01 != 0, code, properties })
}

fn decode_publish(first: u8, r: &mut Reader<'_>, version: Version) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    let qos = qos((first >> 1) & 0x03)?;
    let retain = first & 0x01 != 0;
    let topic = r.string_owned()?;
    check_topic_name(&topic)?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(packet_id(r)?),
    };
    let properties = properties(r, version)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::Malformed("empty topic name without topic alias"));
    }
    Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload: Bytes::copy_from_slice(r.rest()) })
}

fn decode_ack(r: &mut Reader<'_>, version: Version) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let (code, properties) = code_and_properties(r, version)?;
    Ok(Ack { packet_id, code, properties })
}

fn decode_subscribe(r: &mut Reader<'_>, version: Version) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string_owned()?;
        check_topic_filter(&filter)?;
        let options = r.u8()?;
        let qos = qos(options & 0x03)?;
        let (no_local, retain_as_published, retain_handling) = match version {
            Version::V311 => {
                if options & 0xFC != 0 {
                    return Err(DecodeError::Malformed("reserved subscription option bits"));
                }
                (false, false, 0)
            }
            Version::V5 => {
                if options & 0xC0 != 0 {
                    return Err(DecodeError::Malformed("reserved subscription option bits"));
                }
                let retain_handling = (options >> 4) & 0x03;
                if retain_handling == 3 {
                    return Err(DecodeError::Malformed("retain handling 3"));
                }
                (options & 0x04 != 0, options & 0x08 != 0, retain_handling)
            }
        };
        filters.push(SubscribeFilter { filter, qos, no_local, retain_as_published, retain_handling });
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Subscribe { packet_id, filters, properties })
}

fn decode_suback(r: &mut Reader<'_>, version: Version) -> Result<Suback, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version)?;
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Malformed("SUBACK without return codes"));
    }
    Ok(Suback { packet_id, codes, properties })
}

fn decode_unsubscribe(r: &mut Reader<'_>, version: Version) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string_owned()?;
        check_topic_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

fn decode_unsuback(r: &mut Reader<'_>, version: Version) -> Result<Unsuback, DecodeError> {
    let packet_id = packet_id(r)?;
    if version == Version::V311 {
        return Ok(Unsuback { packet_id, codes: Vec::new(), properties: Properties::default() });
    }
    let properties = decode_properties(r)?;
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Malformed("UNSUBACK without reason codes"));
    }
    Ok(Unsuback { packet_id, codes, properties })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["a", "#", "+", "a/+/b", "a/#", "+/+", "/", "$share/g/a/#", "a//b"] {
            assert!(check_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "#/a", "a/b#", "a+", "+a/b", "a/#/b"] {
            assert!(check_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remaining_length_states() {
        assert_eq!(remaining_length(&[]), Ok(None));
        assert_eq!(remaining_length(&[0x80, 0x80, 0x80]), Ok(None));
        assert_eq!(remaining_length(&[0x05, 0xFF]), Ok(Some((5, 1))));
        assert_eq!(remaining_length(&[0x80, 0x80, 0x80, 0x80]), Err(DecodeError::MalformedLength));
    }
}
