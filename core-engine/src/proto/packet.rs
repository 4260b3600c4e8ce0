//! The MQTT control-packet data model shared by the decoder and the encoder:
//! [`Version`], [`QoS`], one struct per packet body and the [`Packet`] enum.
//!
//! These are plain owned values; the wire rules live in `decode.rs` / `encode.rs`.

use super::properties::Properties;

/// The negotiated MQTT protocol version (protocol level 4 or 5 in CONNECT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Version {
    /// The protocol level byte carried by CONNECT.
    pub(crate) fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Quality-of-service level of a PUBLISH, a will or a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QoS {
    /// QoS 0: fire and forget.
    AtMostOnce = 0,
    /// QoS 1: acknowledged with PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: four-step PUBREC/PUBREL/PUBCOMP handshake.
    ExactlyOnce = 2,
}

/// The will message carried by CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    /// Topic name the will is published to (no wildcards).
    pub topic: String,
    /// Will payload.
    pub payload: Vec<u8>,
    /// QoS of the will publication.
    pub qos: QoS,
    /// Retain flag of the will publication.
    pub retain: bool,
    /// MQTT 5 will properties (default for 3.1.1).
    pub properties: Properties,
}

/// CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version announced by the client (protocol level 4 or 5).
    pub version: Version,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// "Clean start" (5.0) / "clean session" (3.1.1).
    pub clean_start: bool,
    /// Keep-alive in seconds.
    pub keep_alive: u16,
    /// User name, if the user-name flag is set.
    pub username: Option<String>,
    /// Password, if the password flag is set.
    pub password: Option<Vec<u8>>,
    /// Will message, if the will flag is set.
    pub will: Option<LastWill>,
    /// MQTT 5 CONNECT properties (always default for 3.1.1).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connack {
    /// Session-present flag.
    pub session_present: bool,
    /// Raw byte: 3.1.1 return code (0..=5) or 5.0 reason code.
    pub code: u8,
    /// MQTT 5 CONNACK properties (default for 3.1.1).
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag (always false for QoS 0).
    pub dup: bool,
    /// Delivery QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (no wildcards; may be empty in 5.0 when a topic alias is set).
    pub topic: String,
    /// `Some` iff `qos > 0`; never 0.
    pub packet_id: Option<u16>,
    /// MQTT 5 PUBLISH properties (default for 3.1.1).
    pub properties: Properties,
    /// Application payload.
    pub payload: bytes::Bytes,
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Packet identifier being acknowledged (never 0).
    pub packet_id: u16,
    /// MQTT 5 reason code (0 for 3.1.1).
    pub code: u8,
    /// MQTT 5 properties (default for 3.1.1).
    pub properties: Properties,
}

/// One topic filter of a SUBSCRIBE with its subscription options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// Topic filter (may contain `+` / `#` wildcards).
    pub filter: String,
    /// Maximum QoS granted for this filter.
    pub qos: QoS,
    /// MQTT 5 "No Local" option (false for 3.1.1).
    pub no_local: bool,
    /// MQTT 5 "Retain As Published" option (false for 3.1.1).
    pub retain_as_published: bool,
    /// MQTT 5 "Retain Handling" option, 0..=2 (0 for 3.1.1).
    pub retain_handling: u8,
}

/// SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (never 0).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<SubscribeFilter>,
    /// MQTT 5 SUBSCRIBE properties (default for 3.1.1).
    pub properties: Properties,
}

/// SUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suback {
    /// Packet identifier of the SUBSCRIBE (never 0).
    pub packet_id: u16,
    /// One raw return/reason code per filter (3.1.1: 0, 1, 2 or 0x80).
    pub codes: Vec<u8>,
    /// MQTT 5 SUBACK properties (default for 3.1.1).
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (never 0).
    pub packet_id: u16,
    /// At least one topic filter.
    pub filters: Vec<String>,
    /// MQTT 5 UNSUBSCRIBE properties (default for 3.1.1).
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsuback {
    /// Packet identifier of the UNSUBSCRIBE (never 0).
    pub packet_id: u16,
    /// One MQTT 5 reason code per filter; empty for 3.1.1.
    pub codes: Vec<u8>,
    /// MQTT 5 UNSUBACK properties (default for 3.1.1).
    pub properties: Properties,
}

/// DISCONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// MQTT 5 reason code (0 for 3.1.1, which has no body).
    pub code: u8,
    /// MQTT 5 DISCONNECT properties (default for 3.1.1).
    pub properties: Properties,
}

/// AUTH (MQTT 5 only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// Reason code (0 success, 0x18 continue, 0x19 re-authenticate).
    pub code: u8,
    /// AUTH properties.
    pub properties: Properties,
}

/// Any MQTT control packet.
///
/// Variants hold their structs inline (the agreed API), so a `Packet` is as large as
/// `Connect` (two inline [`Properties`], ~800 bytes); box it if it must be stored in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (type 1).
    Connect(Connect),
    /// CONNACK (type 2).
    Connack(Connack),
    /// PUBLISH (type 3).
    Publish(Publish),
    /// PUBACK (type 4).
    Puback(Ack),
    /// PUBREC (type 5).
    Pubrec(Ack),
    /// PUBREL (type 6).
    Pubrel(Ack),
    /// PUBCOMP (type 7).
    Pubcomp(Ack),
    /// SUBSCRIBE (type 8).
    Subscribe(Subscribe),
    /// SUBACK (type 9).
    Suback(Suback),
    /// UNSUBSCRIBE (type 10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (type 11).
    Unsuback(Unsuback),
    /// PINGREQ (type 12).
    Pingreq,
    /// PINGRESP (type 13).
    Pingresp,
    /// DISCONNECT (type 14).
    Disconnect(Disconnect),
    /// AUTH (type 15, MQTT 5 only).
    Auth(Auth),
}
