//! The device session state machine, sans-IO: bytes and the time in, bytes to send and
//! events out. It enforces the MQTT push profile (what a device may send) and tracks the
//! QoS 1 pushes in flight. The shard owns the socket and decides what a CONNECT means.

use crate::ids::MessageId;
use crate::proto::{
    self, Ack, Connack, Connect, DecodeError, Disconnect, Packet, Properties, QoS, Suback, Unsuback, Version,
};
use std::collections::VecDeque;
use std::sync::Arc;
use thin_vec::ThinVec;

mod queued;
pub use queued::PushTopic;
use queued::QueuedPush;

/// The topic pushes arrive on.
pub const INBOX_TOPIC: &str = "inbox";
/// Most pushes in flight (sent, not acknowledged) per session, whatever the device's
/// Receive Maximum: it bounds what a connection can hold in memory; the rest waits in the store.
pub const MAX_INFLIGHT: u16 = 64;
/// Seconds a new connection has to send CONNECT.
pub const CONNECT_TIMEOUT_S: u32 = 10;
/// Seconds the node may take to answer a CONNECT (a registration's commit, a token check)
/// before it refuses it as busy: meanwhile the device waits on the node, it is not silent.
pub const ANSWER_TIMEOUT_S: u32 = 60;

/// MQTT 5 reason codes the node sends.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const BAD_CREDENTIALS: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const CLIENT_ID_INVALID: u8 = 0x85;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const WILDCARDS_NOT_SUPPORTED: u8 = 0xA2;
    /// MQTT 3.1.1 CONNACK return codes.
    pub const V311_BAD_CREDENTIALS: u8 = 4;
    pub const V311_NOT_AUTHORIZED: u8 = 5;
    pub const V311_SERVER_UNAVAILABLE: u8 = 3;
    pub const V311_ID_REJECTED: u8 = 2;
    pub const V311_SUBSCRIBE_FAILURE: u8 = 0x80;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    Authenticating,
    Connected,
    Closed,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The device sent DISCONNECT.
    ClientDisconnect,
    /// Bytes that are not MQTT, or a packet too large (the MQTT 5 reason code).
    Malformed(u8),
    /// A packet outside the push profile (the MQTT 5 reason code).
    OutOfProfile(u8),
    /// CONNECT was refused.
    Refused,
    /// No CONNECT in time, or silent beyond 1.5 x keep-alive.
    Timeout,
    /// The node closed it (shutdown, session taken over).
    Server,
    /// The device stopped reading while the node had bytes for it.
    SlowReader,
}

/// A push as the session tracks it: its place in the device's queue and its message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushRef {
    /// Order of the push on its home shard (the pending queue's key).
    pub seq: u64,
    pub id: MessageId,
    /// A topic or broadcast message (kept once per shard) rather than a device's own.
    pub group: bool,
}

/// Topics a device publishes to, to ask something of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlTopic {
    /// `ctl/alias/set`: payload is the alias.
    AliasSet,
    /// `ctl/alias/unset`: payload is the alias.
    AliasUnset,
    /// `ctl/quiet`: payload is the quiet period as JSON, empty to clear it.
    Quiet,
    /// `ack/click`: payload is the id of the message the user clicked.
    Click,
}

impl ControlTopic {
    fn parse(topic: &str) -> Option<Self> {
        Some(match topic {
            "ctl/alias/set" => ControlTopic::AliasSet,
            "ctl/alias/unset" => ControlTopic::AliasUnset,
            "ctl/quiet" => ControlTopic::Quiet,
            "ack/click" => ControlTopic::Click,
            _ => return None,
        })
    }
}

/// Why a filter outside the push profile is refused (MQTT 5 reason string).
pub const PROFILE_FILTERS: &str =
    "only `inbox` and `topic/<name>` can be subscribed; wildcards and other topics are not supported";

/// Prefix of the topic filters that join an app topic (tag).
pub const TOPIC_PREFIX: &str = "topic/";

/// What a subscription filter asks for, in the push profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// The device's own inbox.
    Inbox,
    /// An app topic; the name after `topic/`.
    Topic(&'a str),
    /// A wildcard filter: refused.
    Wildcard,
    /// Anything else: refused.
    Other,
}

/// Classifies a SUBSCRIBE/UNSUBSCRIBE filter.
pub fn classify_filter(filter: &str) -> FilterKind<'_> {
    if filter == INBOX_TOPIC {
        FilterKind::Inbox
    } else if filter.contains(['#', '+']) {
        FilterKind::Wildcard
    } else if let Some(name) = filter.strip_prefix(TOPIC_PREFIX) {
        if crate::push::valid_name(name) {
            FilterKind::Topic(name)
        } else {
            FilterKind::Other
        }
    } else {
        FilterKind::Other
    }
}

/// What the shard must act on.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A CONNECT to authenticate; answer with [`Session::accept`] or [`Session::refuse`].
    Connect(Box<Connect>),
    /// The device acknowledged this push.
    Acked(PushRef),
    /// A SUBSCRIBE naming app topics; answer with [`Session::suback`].
    Subscribe(Box<crate::proto::Subscribe>),
    /// An UNSUBSCRIBE naming app topics; answer with [`Session::unsuback`].
    Unsubscribe(Box<crate::proto::Unsubscribe>),
    /// A control publish; answer with [`Session::ack_control`].
    Control { topic: ControlTopic, payload: bytes::Bytes, packet_id: Option<u16> },
    /// The session is over; any farewell bytes are queued. Close the socket after sending them.
    Close(CloseReason),
}

/// Limits of one session.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Largest packet accepted from a device, in bytes.
    pub max_packet_bytes: usize,
}

/// One device connection's protocol state.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    version: Version,
    keep_alive_s: u16,
    receive_max: u16,
    next_packet_id: u16,
    last_rx_s: u32,
    /// Bytes of a packet split across reads; empty (no allocation) while idle.
    partial: Vec<u8>,
    /// Bytes to send; empty (no allocation) while idle.
    out: Vec<u8>,
    /// Pushes to send after `out`, encoded when the output is taken (`queued.rs`); a thin
    /// vector (one pointer) as every idle connection carries it.
    queued: ThinVec<QueuedPush>,
    /// Pushes sent and not yet acknowledged, in send order: (packet id, message id).
    inflight: VecDeque<(u16, PushRef)>,
}

impl Session {
    /// A session for a connection accepted at `now_s` (seconds on the shard's clock).
    pub fn new(now_s: u32) -> Self {
        Session {
            phase: Phase::AwaitConnect,
            version: Version::V311,
            keep_alive_s: 0,
            receive_max: u16::MAX,
            next_packet_id: 1,
            last_rx_s: now_s,
            partial: Vec::new(),
            out: Vec::new(),
            queued: ThinVec::new(),
            inflight: VecDeque::new(),
        }
    }

    /// The protocol version (meaningful after CONNECT).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether CONNECT was accepted and the session is live.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether another push may be sent now (the device's Receive Maximum).
    pub fn can_push(&self) -> bool {
        self.phase == Phase::Connected && self.inflight.len() < usize::from(self.receive_max)
    }

    /// Pushes sent and not acknowledged.
    pub fn inflight(&self) -> impl Iterator<Item = PushRef> + '_ {
        self.inflight.iter().map(|&(_, push)| push)
    }

    /// Bytes or pushes waiting to be sent.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.queued.is_empty()
    }

    /// Bytes allocated for output (what waits to be sent, and room for more), the queued
    /// pushes' records included (their bodies are shared, not this session's).
    pub fn output_capacity(&self) -> usize {
        self.out.capacity() + self.queued.capacity() * std::mem::size_of::<QueuedPush>()
    }

    /// Takes the bytes to send, the queued pushes encoded, leaving nothing allocated.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.encode_queued();
        std::mem::take(&mut self.out)
    }

    /// Encodes the queued pushes after what `out` holds, so a packet written next follows them.
    fn encode_queued(&mut self) {
        if !self.queued.is_empty() {
            queued::encode_all(&self.queued, self.version, &mut self.out);
            self.queued = ThinVec::new();
        }
    }

    /// Bytes read but not yet processed (handed along when the connection moves shard).
    pub fn take_unprocessed(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    /// Takes over a CONNECT decoded elsewhere (by the shard that accepted the connection)
    /// and the bytes that followed it; answer with [`Session::accept`] or [`Session::refuse`].
    pub fn adopt_connect(&mut self, connect: &Connect, unprocessed: Vec<u8>) {
        assert_eq!(self.phase, Phase::AwaitConnect, "one CONNECT per session");
        self.version = connect.version;
        self.keep_alive_s = connect.keep_alive;
        self.receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX).clamp(1, MAX_INFLIGHT);
        self.phase = Phase::Authenticating;
        self.partial = unprocessed;
    }

    /// Feeds bytes read from the socket.
    pub fn handle_bytes(&mut self, now_s: u32, data: &[u8], limits: SessionLimits, events: &mut Vec<Event>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_rx_s = now_s;
        if self.phase == Phase::Authenticating || !self.partial.is_empty() {
            self.partial.extend_from_slice(data);
            if self.phase == Phase::Authenticating {
                return;
            }
            let buffered = std::mem::take(&mut self.partial);
            let used = self.process(&buffered, limits, events);
            self.keep_rest(&buffered[used..], buffered.len() - used);
        } else {
            let used = self.process(data, limits, events);
            self.keep_rest(&data[used..], data.len() - used);
        }
    }

    fn keep_rest(&mut self, rest: &[u8], len: usize) {
        debug_assert_eq!(rest.len(), len);
        if self.phase != Phase::Closed && !rest.is_empty() {
            self.partial.extend_from_slice(rest);
        }
        if self.partial.is_empty() {
            self.partial = Vec::new(); // give the memory back while idle
        }
    }

    /// Decodes and handles whole packets from `buf`; answers how many bytes it used.
    fn process(&mut self, buf: &[u8], limits: SessionLimits, events: &mut Vec<Event>) -> usize {
        let mut used = 0;
        while used < buf.len() && matches!(self.phase, Phase::AwaitConnect | Phase::Connected) {
            match proto::decode(&buf[used..], self.version, limits.max_packet_bytes) {
                Ok(Some((packet, n))) => {
                    debug_assert!(n > 0 && used + n <= buf.len());
                    used += n;
                    self.handle_packet(packet, events);
                }
                Ok(None) => break,
                Err(error) => {
                    self.fail(&error, events);
                    break;
                }
            }
        }
        used
    }

    fn fail(&mut self, error: &DecodeError, events: &mut Vec<Event>) {
        let code = error.reason_code();
        if self.phase == Phase::Connected {
            self.disconnect(code);
        }
        self.phase = Phase::Closed;
        events.push(Event::Close(CloseReason::Malformed(code)));
    }

    fn handle_packet(&mut self, packet: Packet, events: &mut Vec<Event>) {
        if self.phase == Phase::AwaitConnect {
            match packet {
                Packet::Connect(connect) => {
                    self.adopt_connect(&connect, Vec::new());
                    events.push(Event::Connect(Box::new(connect)));
                }
                _ => {
                    self.phase = Phase::Closed;
                    events.push(Event::Close(CloseReason::OutOfProfile(reason::PROTOCOL_ERROR)));
                }
            }
            return;
        }
        match packet {
            Packet::Puback(ack) => {
                if let Some(pos) = self.inflight.iter().position(|&(pid, _)| pid == ack.packet_id) {
                    if let Some((_, push)) = self.inflight.remove(pos) {
                        events.push(Event::Acked(push));
                    }
                }
                if self.inflight.is_empty() {
                    self.inflight = VecDeque::new();
                }
            }
            Packet::Pingreq => self.write(&Packet::Pingresp),
            Packet::Subscribe(sub) => {
                if sub.filters.iter().any(|f| matches!(classify_filter(&f.filter), FilterKind::Topic(_))) {
                    events.push(Event::Subscribe(Box::new(sub)));
                } else {
                    let codes: Vec<u8> = sub
                        .filters
                        .iter()
                        .map(|f| self.filter_code(&f.filter, f.qos).unwrap_or(reason::UNSPECIFIED))
                        .collect();
                    let refused = codes.iter().any(|&c| c >= reason::UNSPECIFIED);
                    let why = refused.then(|| PROFILE_FILTERS.to_owned());
                    self.suback_with_reason(sub.packet_id, codes, why);
                }
            }
            Packet::Unsubscribe(unsub) => {
                if unsub.filters.iter().any(|f| matches!(classify_filter(f), FilterKind::Topic(_))) {
                    events.push(Event::Unsubscribe(Box::new(unsub)));
                } else {
                    let codes = unsub
                        .filters
                        .iter()
                        .map(|f| if f == INBOX_TOPIC { reason::SUCCESS } else { reason::NO_SUBSCRIPTION_EXISTED })
                        .collect();
                    self.unsuback(unsub.packet_id, codes);
                }
            }
            Packet::Publish(publish) => {
                let code = if publish.qos == QoS::ExactlyOnce {
                    reason::QOS_NOT_SUPPORTED
                } else if publish.retain {
                    reason::RETAIN_NOT_SUPPORTED
                } else {
                    reason::NOT_AUTHORIZED
                };
                if code == reason::NOT_AUTHORIZED {
                    if let Some(topic) = ControlTopic::parse(&publish.topic) {
                        events.push(Event::Control { topic, payload: publish.payload, packet_id: publish.packet_id });
                        return;
                    }
                }
                match (self.version, publish.packet_id) {
                    (Version::V5, Some(packet_id)) if code == reason::NOT_AUTHORIZED => {
                        let ack = Ack { packet_id, code, properties: Properties::default() };
                        self.write(&Packet::Puback(ack));
                    }
                    _ => self.close_out_of_profile(code, events),
                }
            }
            Packet::Disconnect(_) => {
                self.phase = Phase::Closed;
                events.push(Event::Close(CloseReason::ClientDisconnect));
            }
            _ => self.close_out_of_profile(reason::PROTOCOL_ERROR, events),
        }
    }

    /// The SUBACK code of a filter the profile decides alone; `None` for an app topic,
    /// which the shard decides (limits, storage).
    pub fn filter_code(&self, filter: &str, qos: QoS) -> Option<u8> {
        let refused = |v5_code| if self.version == Version::V5 { v5_code } else { reason::V311_SUBSCRIBE_FAILURE };
        match classify_filter(filter) {
            FilterKind::Inbox => Some(if qos == QoS::AtMostOnce { 0 } else { 1 }),
            FilterKind::Topic(_) => None,
            FilterKind::Wildcard => Some(refused(reason::WILDCARDS_NOT_SUPPORTED)),
            FilterKind::Other => Some(refused(reason::TOPIC_FILTER_INVALID)),
        }
    }

    /// Answers a SUBSCRIBE with one code per filter.
    pub fn suback(&mut self, packet_id: u16, codes: Vec<u8>) {
        self.suback_with_reason(packet_id, codes, None);
    }

    /// Answers a SUBSCRIBE; MQTT 5 also carries `reason` (why a filter was refused).
    pub fn suback_with_reason(&mut self, packet_id: u16, codes: Vec<u8>, reason: Option<String>) {
        debug_assert!(!codes.is_empty());
        if self.phase != Phase::Connected {
            return; // closed meanwhile (a later packet in the same read): nothing after DISCONNECT
        }
        let properties = Properties { reason_string: reason, ..Properties::default() };
        self.write(&Packet::Suback(Suback { packet_id, codes, properties }));
    }

    /// Answers an UNSUBSCRIBE (MQTT 5: one code per filter; 3.1.1 has none).
    pub fn unsuback(&mut self, packet_id: u16, codes: Vec<u8>) {
        if self.phase != Phase::Connected {
            return;
        }
        let codes = if self.version == Version::V5 { codes } else { Vec::new() };
        self.write(&Packet::Unsuback(Unsuback { packet_id, codes, properties: Properties::default() }));
    }

    /// Answers a control publish: MQTT 5 PUBACK with `code`; 3.1.1 PUBACK on success and,
    /// having no way to say no, closes the connection on failure.
    pub fn ack_control(&mut self, packet_id: Option<u16>, code: u8, events: &mut Vec<Event>) {
        if self.phase != Phase::Connected {
            return;
        }
        match (self.version, packet_id) {
            (Version::V5, Some(packet_id)) => {
                self.write(&Packet::Puback(Ack { packet_id, code, properties: Properties::default() }));
            }
            (Version::V311, Some(packet_id)) if code == reason::SUCCESS => {
                self.write(&Packet::Puback(Ack { packet_id, code, properties: Properties::default() }));
            }
            (Version::V311, Some(_)) => self.close_out_of_profile(code, events),
            (_, None) => {}
        }
    }

    fn close_out_of_profile(&mut self, code: u8, events: &mut Vec<Event>) {
        self.disconnect(code);
        self.phase = Phase::Closed;
        events.push(Event::Close(CloseReason::OutOfProfile(code)));
    }

    /// Queues an MQTT 5 DISCONNECT with `code` (MQTT 3.1.1 has none: the socket just closes).
    pub fn disconnect(&mut self, code: u8) {
        if self.version == Version::V5 && matches!(self.phase, Phase::Connected | Phase::Authenticating) {
            self.write(&Packet::Disconnect(Disconnect { code, properties: Properties::default() }));
        }
    }

    /// Accepts the CONNECT: queues CONNACK and processes any bytes that followed it.
    pub fn accept(
        &mut self,
        now_s: u32,
        session_present: bool,
        properties: Properties,
        limits: SessionLimits,
        events: &mut Vec<Event>,
    ) {
        assert_eq!(self.phase, Phase::Authenticating, "accept() answers a Connect event");
        let properties = if self.version == Version::V5 { properties } else { Properties::default() };
        self.write(&Packet::Connack(Connack { session_present, code: 0, properties }));
        self.phase = Phase::Connected;
        let buffered = std::mem::take(&mut self.partial);
        if !buffered.is_empty() {
            self.handle_bytes(now_s, &buffered, limits, events);
        }
    }

    /// Refuses the CONNECT with a version-appropriate code; the session is closed.
    pub fn refuse(&mut self, code_v5: u8, code_v311: u8) {
        assert_eq!(self.phase, Phase::Authenticating, "refuse() answers a Connect event");
        let code = if self.version == Version::V5 { code_v5 } else { code_v311 };
        self.write(&Packet::Connack(Connack { session_present: false, code, properties: Properties::default() }));
        self.phase = Phase::Closed;
        self.partial = Vec::new();
    }

    /// Queues a QoS 1 push on `topic`. The caller checks [`Session::can_push`] first.
    pub fn push(&mut self, push: PushRef, dup: bool, expiry_s: Option<u32>, topic: PushTopic, body: &Arc<[u8]>) {
        assert!(self.can_push(), "push() without room in flight");
        let packet_id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        let expiry_s = if self.version == Version::V5 { expiry_s } else { None };
        self.queued.push(QueuedPush { packet_id, dup, expiry_s, topic, body: body.clone() });
        self.inflight.push_back((packet_id, push));
    }

    /// Whether the session outlived its deadline: CONNECT within [`CONNECT_TIMEOUT_S`],
    /// the node's answer within [`ANSWER_TIMEOUT_S`], then a packet at least every 1.5 x
    /// keep-alive.
    pub fn is_timed_out(&self, now_s: u32) -> bool {
        let silent = now_s.saturating_sub(self.last_rx_s);
        match self.phase {
            Phase::AwaitConnect => silent > CONNECT_TIMEOUT_S,
            Phase::Authenticating => silent > ANSWER_TIMEOUT_S,
            Phase::Connected => self.keep_alive_s > 0 && silent > u32::from(self.keep_alive_s) * 3 / 2,
            Phase::Closed => false,
        }
    }

    /// Ends a session that [`Session::is_timed_out`]: one still waiting for its CONNACK is
    /// refused as busy (0x89; 3.1.1: 3) so its device tries again, as no DISCONNECT may
    /// come before a CONNACK; any other gets DISCONNECT 0x8D (MQTT 5).
    pub fn time_out(&mut self) {
        if self.phase == Phase::Authenticating {
            self.refuse(reason::SERVER_BUSY, reason::V311_SERVER_UNAVAILABLE);
        } else {
            self.close(reason::KEEP_ALIVE_TIMEOUT);
        }
        debug_assert_eq!(self.phase, Phase::Closed);
    }

    /// Closes the session from the node's side with an MQTT 5 reason.
    pub fn close(&mut self, code: u8) {
        self.disconnect(code);
        self.phase = Phase::Closed;
    }

    /// Ends the session without a farewell (the peer is gone).
    pub fn abandon(&mut self) {
        self.phase = Phase::Closed;
        self.partial = Vec::new();
        self.queued = ThinVec::new(); // not sent; in flight, so read back on the next connection
    }

    fn write(&mut self, packet: &Packet) {
        self.encode_queued();
        if let Err(e) = proto::encode(packet, self.version, &mut self.out) {
            // Only node-built packets get here; they always fit.
            debug_assert!(false, "encoding a node packet failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
