//! MQTT 5 properties: the [`Properties`] struct and the codec for a property block
//! (variable-byte-integer length, then `id value` pairs bounded by that length).
//!
//! All 27 property identifiers defined by MQTT 5.0 §2.2.2.2 are kept. Any other id,
//! a repeated single-value property, or an out-of-range value (a boolean-like byte above
//! 1, receive maximum / maximum packet size / topic alias / subscription identifier 0)
//! is [`DecodeError::MalformedProperties`]. Whether a property is allowed in the packet
//! that carries it is not checked here; the engine ignores properties it does not expect.

use super::error::{DecodeError, EncodeError};
use super::reader::{Reader, MAX_VARINT};
use super::writer::{put_binary, put_len_prefixed, put_string, put_u16, put_u32, put_varint};

/// MQTT 5 properties we keep (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator (0 or 1).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<String>,
    /// 0x08 Response Topic.
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Vec<u8>>,
    /// 0x0B Subscription Identifier(s), each 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Vec<u8>>,
    /// 0x17 Request Problem Information (0 or 1).
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information (0 or 1).
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information.
    pub response_information: Option<String>,
    /// 0x1C Server Reference.
    pub server_reference: Option<String>,
    /// 0x1F Reason String.
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum (non-zero).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (non-zero).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1).
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available (0 or 1).
    pub retain_available: Option<u8>,
    /// 0x26 User Property pairs, in wire order.
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Maximum Packet Size (non-zero).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (0 or 1).
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available (0 or 1).
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available (0 or 1).
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// True when no property is set (encodes as a single 0x00 length byte).
    pub(crate) fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// Store `v` in a single-value slot; a second occurrence is malformed.
fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::MalformedProperties);
    }
    *slot = Some(v);
    Ok(())
}

/// A byte property whose only legal values are 0 and 1.
fn bool_byte(r: &mut Reader<'_>) -> Result<u8, DecodeError> {
    match r.u8()? {
        b @ (0 | 1) => Ok(b),
        _ => Err(DecodeError::MalformedProperties),
    }
}

fn nonzero_u16(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::MalformedProperties),
        v => Ok(v),
    }
}

/// Decode a property block (length prefix included) from `r`.
pub(crate) fn decode_properties(r: &mut Reader<'_>) -> Result<Properties, DecodeError> {
    let len = r.varint()?;
    let mut block = r.sub(len as usize)?;
    let mut p = Properties::default();
    while !block.is_empty() {
        decode_one(&mut block, &mut p).map_err(|e| match e {
            // A value running past the property block, or a bad varint inside it.
            DecodeError::Truncated | DecodeError::MalformedLength => DecodeError::MalformedProperties,
            other => other,
        })?;
    }
    Ok(p)
}

fn decode_one(r: &mut Reader<'_>, p: &mut Properties) -> Result<(), DecodeError> {
    let id = r.varint()?;
    match id {
        0x01 => once(&mut p.payload_format_indicator, bool_byte(r)?),
        0x02 => once(&mut p.message_expiry_interval, r.u32()?),
        0x03 => once(&mut p.content_type, r.string_owned()?),
        0x08 => once(&mut p.response_topic, r.string_owned()?),
        0x09 => once(&mut p.correlation_data, r.binary()?.to_vec()),
        0x0B => {
            let v = r.varint()?;
            if v == 0 {
                return Err(DecodeError::MalformedProperties);
            }
            p.subscription_identifiers.push(v);
            Ok(())
        }
        0x11 => once(&mut p.session_expiry_interval, r.u32()?),
        0x12 => once(&mut p.assigned_client_identifier, r.string_owned()?),
        0x13 => once(&mut p.server_keep_alive, r.u16()?),
        0x15 => once(&mut p.authentication_method, r.string_owned()?),
        0x16 => once(&mut p.authentication_data, r.binary()?.to_vec()),
        0x17 => once(&mut p.request_problem_information, bool_byte(r)?),
        0x18 => once(&mut p.will_delay_interval, r.u32()?),
        0x19 => once(&mut p.request_response_information, bool_byte(r)?),
        0x1A => once(&mut p.response_information, r.string_owned()?),
        0x1C => once(&mut p.server_reference, r.string_owned()?),
        0x1F => once(&mut p.reason_string, r.string_owned()?),
        0x21 => once(&mut p.receive_maximum, nonzero_u16(r)?),
        0x22 => once(&mut p.topic_alias_maximum, r.u16()?),
        0x23 => once(&mut p.topic_alias, nonzero_u16(r)?),
        0x24 => once(&mut p.maximum_qos, bool_byte(r)?),
        0x25 => once(&mut p.retain_available, bool_byte(r)?),
        0x26 => {
            let k = r.string_owned()?;
            let v = r.string_owned()?;
            p.user_properties.push((k, v));
            Ok(())
        }
        0x27 => match r.u32()? {
            0 => Err(DecodeError::MalformedProperties),
            v => once(&mut p.maximum_packet_size, v),
        },
        0x28 => once(&mut p.wildcard_subscription_available, bool_byte(r)?),
        0x29 => once(&mut p.subscription_identifier_available, bool_byte(r)?),
        0x2A => once(&mut p.shared_subscription_available, bool_byte(r)?),
        _ => Err(DecodeError::MalformedProperties),
    }
}

/// Append a property block (length prefix included), properties in id order.
pub(crate) fn encode_properties(p: &Properties, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if p.is_empty() {
        out.push(0);
        return Ok(());
    }
    put_len_prefixed(out, |out| encode_body(p, out))
}

fn byte(out: &mut Vec<u8>, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        out.extend_from_slice(&[id, v]);
    }
}

fn two(out: &mut Vec<u8>, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        out.push(id);
        put_u16(out, v);
    }
}

fn four(out: &mut Vec<u8>, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        out.push(id);
        put_u32(out, v);
    }
}

fn string(out: &mut Vec<u8>, id: u8, v: &Option<String>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        out.push(id);
        put_string(out, v)?;
    }
    Ok(())
}

fn binary(out: &mut Vec<u8>, id: u8, v: &Option<Vec<u8>>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        out.push(id);
        put_binary(out, v)?;
    }
    Ok(())
}

fn encode_body(p: &Properties, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    byte(out, 0x01, p.payload_format_indicator);
    four(out, 0x02, p.message_expiry_interval);
    string(out, 0x03, &p.content_type)?;
    string(out, 0x08, &p.response_topic)?;
    binary(out, 0x09, &p.correlation_data)?;
    for &id in &p.subscription_identifiers {
        if id == 0 || id > MAX_VARINT {
            return Err(EncodeError::Invalid("subscription identifier outside 1..=268435455"));
        }
        out.push(0x0B);
        put_varint(out, id as usize)?;
    }
    four(out, 0x11, p.session_expiry_interval);
    string(out, 0x12, &p.assigned_client_identifier)?;
    two(out, 0x13, p.server_keep_alive);
    string(out, 0x15, &p.authentication_method)?;
    binary(out, 0x16, &p.authentication_data)?;
    byte(out, 0x17, p.request_problem_information);
    four(out, 0x18, p.will_delay_interval);
    byte(out, 0x19, p.request_response_information);
    string(out, 0x1A, &p.response_information)?;
    string(out, 0x1C, &p.server_reference)?;
    string(out, 0x1F, &p.reason_string)?;
    two(out, 0x21, p.receive_maximum);
    two(out, 0x22, p.topic_alias_maximum);
    two(out, 0x23, p.topic_alias);
    byte(out, 0x24, p.maximum_qos);
    byte(out, 0x25, p.retain_available);
    for (k, v) in &p.user_properties {
        out.push(0x26);
        put_string(out, k)?;
        put_string(out, v)?;
    }
    four(out, 0x27, p.maximum_packet_size);
    byte(out, 0x28, p.wildcard_subscription_available);
    byte(out, 0x29, p.subscription_identifier_available);
    byte(out, 0x2A, p.shared_subscription_available);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8]) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(bytes);
        let p = decode_properties(&mut r)?;
        r.finish()?;
        Ok(p)
    }

    #[test]
    fn empty_block() {
        assert_eq!(dec(&[0]), Ok(Properties::default()));
        let mut out = Vec::new();
        encode_properties(&Properties::default(), &mut out).unwrap();
        assert_eq!(out, [0]);
    }

    #[test]
    fn known_values() {
        let p = dec(&[
            11, 0x02, 0, 0, 0, 60, 0x26, 0, 1, b'k', 0, 0, //
        ])
        .unwrap();
        assert_eq!(p.message_expiry_interval, Some(60));
        assert_eq!(p.user_properties, vec![("k".into(), String::new())]);
    }

    #[test]
    fn multiple_user_properties_and_subscription_ids() {
        let p = dec(&[12, 0x0B, 0x01, 0x0B, 0x80, 0x01, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0]);
        // length 12 cuts the second user property: malformed.
        assert_eq!(p, Err(DecodeError::MalformedProperties));
        let p = dec(&[15, 0x0B, 0x01, 0x0B, 0x80, 0x01, 0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0]).unwrap();
        assert_eq!(p.subscription_identifiers, vec![1, 128]);
        assert_eq!(p.user_properties.len(), 2);
    }

    #[test]
    fn rejects() {
        // unknown id
        assert_eq!(dec(&[2, 0x04, 0]), Err(DecodeError::MalformedProperties));
        // duplicated single-value property
        assert_eq!(dec(&[4, 0x01, 0, 0x01, 1]), Err(DecodeError::MalformedProperties));
        // value past the block
        assert_eq!(dec(&[3, 0x02, 0, 0, 0, 0]), Err(DecodeError::MalformedProperties));
        // block past the frame
        assert_eq!(dec(&[9, 0x01, 0]), Err(DecodeError::Truncated));
        // boolean-like value 2
        assert_eq!(dec(&[2, 0x01, 2]), Err(DecodeError::MalformedProperties));
        // receive maximum 0, subscription identifier 0
        assert_eq!(dec(&[3, 0x21, 0, 0]), Err(DecodeError::MalformedProperties));
        assert_eq!(dec(&[2, 0x0B, 0]), Err(DecodeError::MalformedProperties));
        // bad UTF-8 in a string property keeps its own error
        assert_eq!(dec(&[4, 0x03, 0, 1, 0xFF]), Err(DecodeError::InvalidUtf8));
    }
}
