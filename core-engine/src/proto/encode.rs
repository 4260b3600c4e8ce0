//! The encoder: appends the wire form of a [`Packet`] for a protocol version, plus the
//! allocation-free QoS 1 PUBLISH fast path used by the server's delivery loop.
//!
//! Fields that do not exist in 3.1.1 (properties, reason codes of acks / DISCONNECT,
//! UNSUBACK codes, 5.0 subscription options) are dropped when encoding for 3.1.1.
//! The encoder only refuses what cannot be represented (see [`EncodeError`]); it does not
//! re-validate content such as topic syntax or U+0000 in strings.

use super::error::EncodeError;
use super::packet::{Ack, Connack, Connect, Packet, Publish, QoS, Suback, Subscribe, Unsuback, Unsubscribe, Version};
use super::properties::{encode_properties, Properties};
use super::reader::MAX_VARINT;
use super::writer::{put_binary, put_len_prefixed, put_string, put_u16, put_u32, varint_bytes};

/// Append the wire encoding of `packet` for `version` to `out`.
///
/// CONNECT is encoded for its own `version` field (mirroring the decoder). For
/// `Version::V5`, PUBACK/PUBREC/PUBREL/PUBCOMP use the short form (packet id only) when
/// the code is 0 and there are no properties, and DISCONNECT/AUTH likewise omit the
/// code and properties. The DUP flag is never set on a QoS 0 PUBLISH.
///
/// On error nothing is appended: `out` keeps its previous length.
pub fn encode(packet: &Packet, version: Version, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = encode_packet(packet, version, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_packet(packet: &Packet, version: Version, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let v5 = version == Version::V5;
    match packet {
        Packet::Connect(c) => frame(out, 0x10, |out| connect(c, out)),
        Packet::Connack(c) => frame(out, 0x20, |out| connack(c, v5, out)),
        Packet::Publish(p) => frame(out, publish_header(p), |out| publish(p, v5, out)),
        Packet::Puback(a) => frame(out, 0x40, |out| ack(a, v5, out)),
        Packet::Pubrec(a) => frame(out, 0x50, |out| ack(a, v5, out)),
        Packet::Pubrel(a) => frame(out, 0x62, |out| ack(a, v5, out)),
        Packet::Pubcomp(a) => frame(out, 0x70, |out| ack(a, v5, out)),
        Packet::Subscribe(s) => frame(out, 0x82, |out| subscribe(s, v5, out)),
        Packet::Suback(s) => frame(out, 0x90, |out| suback(s, v5, out)),
        Packet::Unsubscribe(u) => frame(out, 0xA2, |out| unsubscribe(u, v5, out)),
        Packet::Unsuback(u) => frame(out, 0xB0, |out| unsuback(u, v5, out)),
        Packet::Pingreq => frame(out, 0xC0, |_| Ok(())),
        Packet::Pingresp => frame(out, 0xD0, |_| Ok(())),
        Packet::Disconnect(d) => frame(out, 0xE0, |out| {
            if v5 {
                code_and_properties(d.code, &d.properties, out)?;
            }
            Ok(())
        }),
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::Invalid("AUTH does not exist in MQTT 3.1.1"));
            }
            frame(out, 0xF0, |out| code_and_properties(a.code, &a.properties, out))
        }
    }
}

/// First byte, remaining length, body.
fn frame<F>(out: &mut Vec<u8>, first: u8, body: F) -> Result<(), EncodeError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
{
    out.push(first);
    put_len_prefixed(out, body)
}

fn packet_id(id: u16, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::Invalid("packet identifier 0"));
    }
    put_u16(out, id);
    Ok(())
}

fn props(p: &Properties, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if v5 {
        encode_properties(p, out)?;
    }
    Ok(())
}

fn connect(c: &Connect, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let v5 = c.version == Version::V5;
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid("MQTT 3.1.1 CONNECT cannot carry a password without a user name"));
    }
    put_string(out, "MQTT")?;
    out.push(c.version.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.push(flags);
    put_u16(out, c.keep_alive);
    props(&c.properties, v5, out)?;
    put_string(out, &c.client_id)?;
    if let Some(w) = &c.will {
        props(&w.properties, v5, out)?;
        put_string(out, &w.topic)?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_string(out, u)?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p)?;
    }
    Ok(())
}

fn connack(c: &Connack, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(u8::from(c.session_present));
    out.push(c.code);
    props(&c.properties, v5, out)
}

fn publish_header(p: &Publish) -> u8 {
    let mut b = 0x30 | ((p.qos as u8) << 1);
    if p.dup && p.qos != QoS::AtMostOnce {
        b |= 0x08;
    }
    if p.retain {
        b |= 0x01;
    }
    b
}

fn publish(p: &Publish, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    put_string(out, &p.topic)?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::Invalid("QoS 0 PUBLISH with a packet identifier")),
        (_, Some(id)) => packet_id(id, out)?,
        (_, None) => return Err(EncodeError::Invalid("QoS 1/2 PUBLISH without a packet identifier")),
    }
    props(&p.properties, v5, out)?;
    out.extend_from_slice(&p.payload);
    Ok(())
}

/// MQTT 5 tail of acks / DISCONNECT / AUTH in its shortest legal form.
fn code_and_properties(code: u8, p: &Properties, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if p.is_empty() {
        if code != 0 {
            out.push(code);
        }
        return Ok(());
    }
    out.push(code);
    encode_properties(p, out)
}

fn ack(a: &Ack, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    packet_id(a.packet_id, out)?;
    if v5 {
        code_and_properties(a.code, &a.properties, out)?;
    }
    Ok(())
}

fn subscribe(s: &Subscribe, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if s.filters.is_empty() {
        return Err(EncodeError::Invalid("SUBSCRIBE without topic filters"));
    }
    packet_id(s.packet_id, out)?;
    props(&s.properties, v5, out)?;
    for f in &s.filters {
        put_string(out, &f.filter)?;
        let mut options = f.qos as u8;
        if v5 {
            if f.retain_handling > 2 {
                return Err(EncodeError::Invalid("retain handling above 2"));
            }
            if f.no_local {
                options |= 0x04;
            }
            if f.retain_as_published {
                options |= 0x08;
            }
            options |= f.retain_handling << 4;
        }
        out.push(options);
    }
    Ok(())
}

fn suback(s: &Suback, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if s.codes.is_empty() {
        return Err(EncodeError::Invalid("SUBACK without return codes"));
    }
    packet_id(s.packet_id, out)?;
    props(&s.properties, v5, out)?;
    out.extend_from_slice(&s.codes);
    Ok(())
}

fn unsubscribe(u: &Unsubscribe, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if u.filters.is_empty() {
        return Err(EncodeError::Invalid("UNSUBSCRIBE without topic filters"));
    }
    packet_id(u.packet_id, out)?;
    props(&u.properties, v5, out)?;
    for f in &u.filters {
        put_string(out, f)?;
    }
    Ok(())
}

fn unsuback(u: &Unsuback, v5: bool, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    packet_id(u.packet_id, out)?;
    if v5 {
        if u.codes.is_empty() {
            return Err(EncodeError::Invalid("MQTT 5 UNSUBACK without reason codes"));
        }
        encode_properties(&u.properties, out)?;
        out.extend_from_slice(&u.codes);
    }
    Ok(())
}

/// How many bytes [`encode_publish_qos1`] appends for these arguments (0 where it appends
/// nothing: an over-long topic or packet).
pub fn publish_qos1_len(version: Version, topic: &str, message_expiry: Option<u32>, payload: &[u8]) -> usize {
    if topic.len() > usize::from(u16::MAX) {
        return 0;
    }
    let remaining = publish_qos1_remaining(version, topic, message_expiry, payload);
    varint_bytes(remaining).map_or(0, |(_, n)| 1 + n + remaining)
}

/// The remaining length of a QoS 1 PUBLISH: topic, packet id, properties, payload.
fn publish_qos1_remaining(version: Version, topic: &str, message_expiry: Option<u32>, payload: &[u8]) -> usize {
    let props_len: usize = match (version, message_expiry) {
        (Version::V311, _) => 0,
        // property length byte, then optionally id + u32
        (Version::V5, None) => 1,
        (Version::V5, Some(_)) => 6,
    };
    2 + topic.len() + 2 + props_len + payload.len()
}

/// Fast path for the server's hot loop: append a QoS 1 PUBLISH (dup flag, topic, packet
/// id, optional V5 message expiry interval, payload) without building a [`Publish`].
/// `message_expiry` is ignored for 3.1.1.
///
/// Preconditions (debug-asserted): `topic` is at most 65,535 bytes, `packet_id != 0`,
/// and the packet fits the 268,435,455-byte remaining-length limit (the server's
/// maximum packet size guarantees this). In release builds an over-long topic or an
/// oversized packet appends nothing rather than a corrupt frame; packet id 0 is written
/// as is.
pub fn encode_publish_qos1(
    version: Version,
    dup: bool,
    topic: &str,
    packet_id: u16,
    message_expiry: Option<u32>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    debug_assert!(packet_id != 0, "packet id 0");
    let Ok(topic_len) = u16::try_from(topic.len()) else {
        debug_assert!(false, "topic longer than 65535 bytes");
        return;
    };
    let remaining = publish_qos1_remaining(version, topic, message_expiry, payload);
    let Some((len_bytes, n)) = varint_bytes(remaining) else {
        debug_assert!(remaining <= MAX_VARINT as usize, "packet too large");
        return;
    };
    out.reserve(1 + n + remaining);
    out.push(if dup { 0x3A } else { 0x32 });
    out.extend_from_slice(len_bytes.get(..n).unwrap_or(&len_bytes));
    put_u16(out, topic_len);
    out.extend_from_slice(topic.as_bytes());
    put_u16(out, packet_id);
    if version == Version::V5 {
        match message_expiry {
            None => out.push(0),
            Some(secs) => {
                out.extend_from_slice(&[5, 0x02]);
                put_u32(out, secs);
            }
        }
    }
    out.extend_from_slice(payload);
}
