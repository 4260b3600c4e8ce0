//! Codec error types: [`DecodeError`] (what can be wrong with bytes from the wire, and
//! which MQTT 5 reason code to answer with) and [`EncodeError`] (what cannot be put on
//! the wire).

/// Why a frame could not be decoded. Every variant is fatal for the connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A variable byte integer (remaining length, property length, ...) is longer than 4 bytes.
    #[error("malformed variable byte integer (more than 4 bytes)")]
    MalformedLength,
    /// The fixed header announces a packet of `size` bytes (fixed header included), above `max`.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total announced packet size, fixed header included.
        size: usize,
        /// The limit that was passed to `decode`.
        max: usize,
    },
    /// Packet type nibble 0, or 15 (AUTH) on a 3.1.1 session.
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// Fixed-header flags are wrong for the packet type; carries the whole first byte.
    #[error("invalid fixed header flags in byte {0:#04x}")]
    InvalidFlags(u8),
    /// CONNECT names a protocol other than "MQTT" level 4 or 5 (e.g. "MQIsdp" level 3).
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// Protocol name from CONNECT.
        name: String,
        /// Protocol level from CONNECT.
        level: u8,
    },
    /// A string is not valid UTF-8 or contains U+0000.
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// MQTT 5 property block is malformed: unknown id, duplicated single-value property,
    /// out-of-range value, or a value running past the block.
    #[error("malformed properties")]
    MalformedProperties,
    /// A QoS field holds 3 (or more).
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// A packet identifier is 0.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// SUBSCRIBE / UNSUBSCRIBE carries no topic filter.
    #[error("SUBSCRIBE/UNSUBSCRIBE without topic filters")]
    EmptySubscription,
    /// Bytes are left inside the frame after the packet body.
    #[error("trailing bytes inside the frame")]
    TrailingBytes,
    /// The frame ended before a field it announced.
    #[error("frame truncated before an announced field")]
    Truncated,
    /// Any other protocol violation.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// MQTT 5 reason code to send in DISCONNECT / CONNACK for this error.
    ///
    /// `PacketTooLarge` → 0x95, `UnsupportedProtocol` → 0x84, `ZeroPacketId` and
    /// `EmptySubscription` → 0x82 (Protocol Error, as the 5.0 spec classifies them);
    /// everything else → 0x81 (Malformed Packet). Invalid fixed-header flags are a
    /// Malformed Packet per MQTT 5.0 §2.1.3, hence 0x81 for `InvalidFlags` too.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => 0x95,
            DecodeError::UnsupportedProtocol { .. } => 0x84,
            DecodeError::ZeroPacketId | DecodeError::EmptySubscription => 0x82,
            _ => 0x81,
        }
    }
}

/// Why a packet could not be encoded. On error `encode` leaves the output buffer as it was.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// The remaining length (or a property block) exceeds 268,435,455 bytes.
    #[error("packet larger than 268435455 bytes")]
    PacketTooLarge,
    /// The packet cannot be expressed in the requested version (e.g. AUTH in 3.1.1, packet
    /// id 0 or missing for QoS > 0, empty SUBSCRIBE, subscription identifier out of range).
    #[error("packet not representable: {0}")]
    Invalid(&'static str),
}
