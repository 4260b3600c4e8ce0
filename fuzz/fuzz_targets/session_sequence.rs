//! A `Session` driven by an arbitrary sequence of operations, the way a shard drives it:
//! bytes from the device (raw, or encoded packets of any kind, split across reads), the
//! shard's answers to a CONNECT (accept / refuse / hand over to another shard), pushes,
//! time passing, keep-alive checks, node-side close and abandon.
//!
//! Preconditions the shard keeps are kept here too: `accept`/`refuse`/hand-over only
//! after a `Connect` event (or `adopt_connect`) and before the session closes, `push`
//! only when `can_push()`.
//!
//! Invariants checked after every operation:
//! * nothing panics (debug assertions included: cargo fuzz builds with them on);
//! * the output taken after each operation decodes as whole, valid server packets
//!   (CONNACK first and once, then PUBLISH / PUBACK / SUBACK / UNSUBACK / PINGRESP, a
//!   DISCONNECT only in MQTT 5 and only last) in the session's version;
//! * every push appears as a QoS 1 PUBLISH on `inbox` with the payload, DUP flag and
//!   (MQTT 5) expiry that were asked for, and a packet id not already in flight;
//! * `Acked` names exactly the push whose packet id the device acknowledged; `inflight()`
//!   equals the model (send order, minus acknowledged) and never exceeds the device's
//!   Receive Maximum (the node may keep a smaller window, never an empty one);
//! * events follow the protocol (one `Connect`, nothing after `Close`), and once closed
//!   the session stays closed, silent and without events;
//! * `is_timed_out` matches the CONNECT deadline and the 1.5 x keep-alive rule.
#![no_main]

use arbitrary::Arbitrary;
use core_engine::ids::MessageId;
use core_engine::proto::{
    self, Ack, Auth, Connack, Connect, Disconnect, LastWill, Packet, Properties, Publish, QoS,
    Subscribe, SubscribeFilter, Unsubscribe, Version,
};
use core_engine::session::{
    reason, CloseReason, Event, PushRef, Session, SessionLimits, ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S,
    INBOX_TOPIC, PushTopic,
};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, VecDeque};

#[derive(Arbitrary, Debug)]
struct Input {
    start_s: u32,
    max_packet: u8,
    /// Start as a connection handed over from another shard (`adopt_connect`).
    adopted: Option<(ConnectSpec, Vec<u8>)>,
    /// Codes the "shard" answers control publishes with, used in turn.
    control_codes: Vec<u8>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Bytes(Vec<u8>),
    Packet { packet: PacketSpec, split: u16 },
    Accept { session_present: bool, assigned_id: bool },
    Refuse { code_v5: u8, code_v311: u8 },
    /// The shard hands the connection to the device's home shard.
    Handoff,
    Push { count: u8, dup: bool, group: bool, expiry: Option<u32>, payload_len: u8 },
    /// Many pushes at once (up to the Receive Maximum), to reach packet id wrap-around.
    Flood { count: u16 },
    Advance(u16),
    CheckTimeout,
    Close(u8),
    Abandon,
}

#[derive(Arbitrary, Debug)]
struct ConnectSpec {
    v5: bool,
    client_id: String,
    clean_start: bool,
    keep_alive: u16,
    username: Option<String>,
    password: Option<Vec<u8>>,
    receive_maximum: Option<u16>,
    will: Option<(String, Vec<u8>, u8, bool)>,
}

impl ConnectSpec {
    fn build(&self) -> Connect {
        let properties = Properties {
            receive_maximum: self.receive_maximum,
            ..Properties::default()
        };
        Connect {
            version: if self.v5 { Version::V5 } else { Version::V311 },
            client_id: self.client_id.clone(),
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            username: self.username.clone(),
            password: self.password.clone(),
            will: self.will.as_ref().map(|(topic, payload, qos, retain)| LastWill {
                topic: topic.clone(),
                payload: payload.clone(),
                qos: qos_of(*qos),
                retain: *retain,
                properties: Properties::default(),
            }),
            properties: if self.v5 { properties } else { Properties::default() },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Topic {
    Inbox,
    Wildcard,
    /// An app topic, `topic/<name>`.
    App(String),
    /// A control topic a device publishes to.
    Control(u8),
    Other(String),
}

impl Topic {
    fn text(&self) -> String {
        match self {
            Topic::Inbox => INBOX_TOPIC.to_owned(),
            Topic::Wildcard => "inbox/#".to_owned(),
            Topic::App(name) => format!("topic/{name}"),
            Topic::Control(n) => {
                ["ctl/alias/set", "ctl/alias/unset", "ctl/quiet", "ack/click"][usize::from(n % 4)]
                    .to_owned()
            }
            Topic::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum PacketSpec {
    Connect(ConnectSpec),
    Publish { qos: u8, dup: bool, retain: bool, topic: Topic, packet_id: u16, payload: Vec<u8> },
    /// PUBACK of the `pick`-th push in flight (or a raw id when nothing is in flight / `raw`).
    Puback { pick: u16, raw: bool, code: u8 },
    Pubrec(u16),
    Pubrel(u16),
    Pubcomp(u16),
    Subscribe { packet_id: u16, filters: Vec<(Topic, u8)> },
    Unsubscribe { packet_id: u16, filters: Vec<Topic> },
    Pingreq,
    Pingresp,
    Disconnect(u8),
    Auth(u8),
    Connack(u8),
}

fn qos_of(b: u8) -> QoS {
    match b % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn nz(id: u16) -> u16 {
    id.max(1)
}

fn ack(packet_id: u16, code: u8) -> Ack {
    Ack { packet_id: nz(packet_id), code, properties: Properties::default() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    Authenticating,
    Connected,
    Closed,
}

struct Model {
    phase: Phase,
    version: Version,
    keep_alive: u16,
    receive_max: usize,
    now: u32,
    last_rx: u32,
    accepted_at: u32,
    connack_sent: bool,
    disconnect_sent: bool,
    /// Pushes in flight in send order: (packet id, push), and by packet id.
    inflight: Vec<(u16, PushRef)>,
    by_pid: HashMap<u16, PushRef>,
    /// No bytes of an unfinished packet can be buffered in the session (so a PUBACK the
    /// harness sends is read as that PUBACK).
    framed: bool,
    /// Pushes queued by `push()` whose PUBLISH has not been read from the output yet.
    queued: VecDeque<(PushRef, bool, Option<u32>, &'static str, Vec<u8>)>,
    next_seq: u64,
    pending_connect: Option<Connect>,
}

struct Harness {
    s: Session,
    m: Model,
    limits: SessionLimits,
    control_codes: Vec<u8>,
    control_turn: usize,
}

fn payload(seq: u64, len: u8) -> Vec<u8> {
    let mut p = format!("{{\"seq\":{seq}}}").into_bytes();
    p.resize(p.len() + usize::from(len), b' ');
    p
}

impl Harness {
    fn feed(&mut self, data: &[u8]) {
        let mut events = Vec::new();
        let was_closed = self.s.is_closed();
        self.s.handle_bytes(self.m.now, data, self.limits, &mut events);
        if !was_closed {
            self.m.last_rx = self.m.now;
        }
        self.events(events);
        if !self.s.is_closed() {
            assert!(!self.s.is_timed_out(self.m.now), "timed out right after receiving bytes");
        }
    }

    /// Applies a batch of events to the model, answering SUBSCRIBE / UNSUBSCRIBE /
    /// control publishes at once the way the shard does.
    fn events(&mut self, events: Vec<Event>) {
        let mut work: std::collections::VecDeque<Event> = events.into();
        let mut closed_seen = false;
        while let Some(ev) = work.pop_front() {
            assert!(!closed_seen, "event after Close: {ev:?}");
            assert_ne!(self.m.phase, Phase::Closed, "event from a closed session: {ev:?}");
            match ev {
                Event::Connect(c) => {
                    assert_eq!(self.m.phase, Phase::AwaitConnect, "second Connect event");
                    self.m.phase = Phase::Authenticating;
                    self.m.version = c.version;
                    self.m.keep_alive = c.keep_alive;
                    self.m.receive_max =
                        usize::from(c.properties.receive_maximum.unwrap_or(u16::MAX).max(1));
                    self.m.pending_connect = Some(*c);
                }
                Event::Acked(push) => {
                    assert_eq!(self.m.phase, Phase::Connected, "Acked({push:?}) while {:?}", self.m.phase);
                    let pos = self.m.inflight.iter().position(|&(_, p)| p == push);
                    let pos = pos.unwrap_or_else(|| panic!("Acked({push:?}) is not in flight"));
                    let (pid, _) = self.m.inflight.remove(pos);
                    self.m.by_pid.remove(&pid);
                }
                Event::Subscribe(sub) => {
                    assert_eq!(self.m.phase, Phase::Connected, "Subscribe while {:?}", self.m.phase);
                    assert!(!sub.filters.is_empty());
                    let codes = sub
                        .filters
                        .iter()
                        .map(|f| self.s.filter_code(&f.filter, f.qos).unwrap_or(1))
                        .collect();
                    self.s.suback(sub.packet_id, codes);
                }
                Event::Unsubscribe(unsub) => {
                    assert_eq!(self.m.phase, Phase::Connected, "Unsubscribe while {:?}", self.m.phase);
                    let codes = unsub.filters.iter().map(|_| reason::SUCCESS).collect();
                    self.s.unsuback(unsub.packet_id, codes);
                }
                Event::Control { packet_id, .. } => {
                    assert_eq!(self.m.phase, Phase::Connected, "Control while {:?}", self.m.phase);
                    let code = self.next_control_code();
                    let mut more = Vec::new();
                    self.s.ack_control(packet_id, code, &mut more);
                    work.extend(more);
                }
                Event::Close(reason) => {
                    closed_seen = true;
                    self.m.phase = Phase::Closed;
                    if let CloseReason::Malformed(code) | CloseReason::OutOfProfile(code) = reason {
                        assert!(code >= 0x80, "close reason code {code:#x} is not an error");
                    }
                }
            }
        }
    }

    fn next_control_code(&mut self) -> u8 {
        const CODES: [u8; 5] = [0x00, 0x80, 0x87, 0x97, 0x99];
        let pick = self.control_codes.get(self.control_turn % self.control_codes.len().max(1));
        self.control_turn += 1;
        CODES[usize::from(pick.copied().unwrap_or(0)) % CODES.len()]
    }

    /// Feeds a PUBACK for `pid`; when the framing is known, the push acknowledged must be
    /// exactly the one sent with that packet id.
    fn feed_puback(&mut self, bytes: &[u8], pid: u16, split: usize) {
        let expected = self.m.by_pid.get(&pid).copied();
        let check = self.m.framed && self.m.phase == Phase::Connected;
        let mut events = Vec::new();
        let was_closed = self.s.is_closed();
        let (a, b) = bytes.split_at(split.min(bytes.len()));
        self.s.handle_bytes(self.m.now, a, self.limits, &mut events);
        self.s.handle_bytes(self.m.now, b, self.limits, &mut events);
        if !was_closed {
            self.m.last_rx = self.m.now;
        }
        if check {
            let acked: Vec<PushRef> = events
                .iter()
                .filter_map(|e| if let Event::Acked(p) = e { Some(*p) } else { None })
                .collect();
            assert_eq!(acked, expected.into_iter().collect::<Vec<_>>(), "PUBACK {pid}");
        }
        self.events(events);
    }

    /// Takes the output and checks it packet by packet.
    fn drain(&mut self) {
        let had = self.s.has_output();
        let out = self.s.take_output();
        assert_eq!(had, !out.is_empty(), "has_output() disagrees with take_output()");
        assert!(!self.s.has_output(), "output left after take_output()");
        let mut pos = 0;
        while pos < out.len() {
            let (packet, n) = match proto::decode(&out[pos..], self.m.version, usize::MAX) {
                Ok(Some(x)) => x,
                other => panic!("output at {pos} of {} does not decode: {other:?}: {out:02x?}", out.len()),
            };
            pos += n;
            assert!(!self.m.disconnect_sent, "packet after DISCONNECT: {packet:?}");
            if !self.m.connack_sent {
                // A node-side close while the CONNECT is being checked may say DISCONNECT
                // (MQTT 5) before any CONNACK; nothing else may come first.
                assert!(
                    matches!(packet, Packet::Connack(_) | Packet::Disconnect(_)),
                    "first server packet {packet:?}"
                );
            }
            match packet {
                Packet::Connack(c) => {
                    assert!(!self.m.connack_sent, "second CONNACK");
                    self.m.connack_sent = true;
                    if self.m.version == Version::V311 {
                        assert_eq!(c.properties, Properties::default());
                    }
                }
                Packet::Publish(p) => self.check_publish(p),
                Packet::Puback(a) => {
                    if self.m.version == Version::V311 {
                        assert_eq!(a.code, 0, "3.1.1 PUBACK carries no code");
                    }
                }
                Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => {}
                Packet::Disconnect(d) => {
                    assert_eq!(self.m.version, Version::V5, "DISCONNECT to a 3.1.1 device");
                    assert!(d.code >= 0x80, "DISCONNECT reason {:#x}", d.code);
                    self.m.disconnect_sent = true;
                }
                other => panic!("not a server packet: {other:?}"),
            }
        }
        assert!(self.m.queued.is_empty(), "pushes missing from the output: {:?}", self.m.queued);
    }

    fn check_publish(&mut self, p: Publish) {
        assert!(!self.m.queued.is_empty(), "PUBLISH that no push() asked for: {p:?}");
        let (push, dup, expiry, topic, json) = self.m.queued.pop_front().expect("checked");
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(!p.retain);
        assert_eq!(p.dup, dup);
        assert_eq!(&p.payload[..], &json[..]);
        let expected_expiry = if self.m.version == Version::V5 { expiry } else { None };
        assert_eq!(p.properties.message_expiry_interval, expected_expiry);
        let pid = p.packet_id.expect("QoS 1 has a packet id");
        if let Some(other) = self.m.by_pid.insert(pid, push) {
            panic!(
                "packet id {pid} reused while {other:?} is still in flight ({} in flight)",
                self.m.inflight.len()
            );
        }
        self.m.inflight.push((pid, push));
    }

    fn push(&mut self, dup: bool, group: bool, expiry: Option<u32>, len: u8) {
        let seq = self.m.next_seq;
        self.m.next_seq += 1;
        let id = (seq as MessageId).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let push = PushRef { seq, id, group };
        let (topic, shared) =
            if group { ("topic/news", PushTopic::Named("topic/news".into())) } else { (INBOX_TOPIC, PushTopic::Inbox) };
        let json = payload(seq, len);
        self.s.push(push, dup, expiry, shared, &std::sync::Arc::from(json.as_slice()));
        self.m.queued.push_back((push, dup, expiry, topic, json));
    }

    /// Compares the session with the model; the O(inflight) comparison only while few
    /// pushes are in flight (and always when `full`), so floods stay fast.
    fn check_state(&self, full: bool) {
        assert_eq!(self.s.is_closed(), self.m.phase == Phase::Closed, "closed: model {:?}", self.m.phase);
        assert_eq!(self.s.is_connected(), self.m.phase == Phase::Connected);
        if self.m.phase != Phase::AwaitConnect {
            assert_eq!(self.s.version(), self.m.version);
        }
        if self.m.phase == Phase::Connected && (full || self.m.inflight.len() <= 256) {
            let inflight: Vec<PushRef> = self.s.inflight().collect();
            let model: Vec<PushRef> = self.m.inflight.iter().map(|&(_, p)| p).collect();
            assert_eq!(inflight, model, "inflight differs from the model");
            assert!(inflight.len() <= self.m.receive_max, "inflight above Receive Maximum");
        }
        if self.m.phase == Phase::Connected {
            // The node may keep a smaller window than the device's Receive Maximum, but
            // never a larger one, and always at least one.
            let n = self.m.inflight.len();
            if self.s.can_push() {
                assert!(n < self.m.receive_max, "can_push() with {n} in flight");
            } else {
                assert!(n >= 1, "window closed with nothing in flight");
            }
        } else {
            assert!(!self.s.can_push(), "can_push() while {:?}", self.m.phase);
        }
    }
}

fuzz_target!(|input: Input| {
    let max_packet_bytes = match input.max_packet % 4 {
        0 => 16,
        1 => 128,
        2 => 4096,
        _ => 65_536,
    };
    let limits = SessionLimits { max_packet_bytes };
    let now = input.start_s % (u32::MAX / 2);
    let mut h = Harness {
        s: Session::new(now),
        m: Model {
            phase: Phase::AwaitConnect,
            version: Version::V311,
            keep_alive: 0,
            receive_max: usize::from(u16::MAX),
            now,
            last_rx: now,
            accepted_at: now,
            connack_sent: false,
            disconnect_sent: false,
            inflight: Vec::new(),
            by_pid: HashMap::new(),
            framed: true,
            queued: VecDeque::new(),
            next_seq: 1,
            pending_connect: None,
        },
        limits,
        control_codes: input.control_codes.clone(),
        control_turn: 0,
    };
    if let Some((spec, unprocessed)) = &input.adopted {
        let c = spec.build();
        h.s.adopt_connect(&c, unprocessed.clone());
        h.m.framed = unprocessed.is_empty();
        h.events(vec![Event::Connect(Box::new(c))]);
    }
    h.check_state(true);

    let mut total_pushes = 0usize;
    for op in input.ops.iter().take(256) {
        let was_closed = h.s.is_closed();
        match op {
            Op::Bytes(b) => {
                h.feed(b);
                h.m.framed &= b.is_empty();
            }
            Op::Packet { packet, split } => {
                let version = h.s.version();
                let mut puback_pid = None;
                let p = match packet {
                    PacketSpec::Connect(c) => Packet::Connect(c.build()),
                    PacketSpec::Publish { qos, dup, retain, topic, packet_id, payload } => {
                        let qos = qos_of(*qos);
                        Packet::Publish(Publish {
                            dup: *dup,
                            qos,
                            retain: *retain,
                            topic: topic.text(),
                            packet_id: (qos != QoS::AtMostOnce).then_some(nz(*packet_id)),
                            properties: Properties::default(),
                            payload: bytes::Bytes::copy_from_slice(payload),
                        })
                    }
                    PacketSpec::Puback { pick, raw, code } => {
                        let pid = if *raw || h.m.inflight.is_empty() {
                            nz(*pick)
                        } else {
                            h.m.inflight[usize::from(*pick) % h.m.inflight.len()].0
                        };
                        puback_pid = Some(pid);
                        Packet::Puback(ack(pid, *code))
                    }
                    PacketSpec::Pubrec(id) => Packet::Pubrec(ack(*id, 0)),
                    PacketSpec::Pubrel(id) => Packet::Pubrel(ack(*id, 0)),
                    PacketSpec::Pubcomp(id) => Packet::Pubcomp(ack(*id, 0)),
                    PacketSpec::Subscribe { packet_id, filters } => Packet::Subscribe(Subscribe {
                        packet_id: nz(*packet_id),
                        filters: filters
                            .iter()
                            .take(8)
                            .map(|(t, q)| SubscribeFilter {
                                filter: t.text(),
                                qos: qos_of(*q),
                                no_local: false,
                                retain_as_published: false,
                                retain_handling: 0,
                            })
                            .collect(),
                        properties: Properties::default(),
                    }),
                    PacketSpec::Unsubscribe { packet_id, filters } => {
                        Packet::Unsubscribe(Unsubscribe {
                            packet_id: nz(*packet_id),
                            filters: filters.iter().take(8).map(Topic::text).collect(),
                            properties: Properties::default(),
                        })
                    }
                    PacketSpec::Pingreq => Packet::Pingreq,
                    PacketSpec::Pingresp => Packet::Pingresp,
                    PacketSpec::Disconnect(code) => {
                        Packet::Disconnect(Disconnect { code: *code, properties: Properties::default() })
                    }
                    PacketSpec::Auth(code) => {
                        Packet::Auth(Auth { code: *code, properties: Properties::default() })
                    }
                    PacketSpec::Connack(code) => Packet::Connack(Connack {
                        session_present: false,
                        code: *code,
                        properties: Properties::default(),
                    }),
                };
                let mut bytes = Vec::new();
                if proto::encode(&p, version, &mut bytes).is_err() {
                    continue; // not representable (empty filter list, AUTH in 3.1.1, ...)
                }
                let split = usize::from(*split) % (bytes.len() + 1);
                match puback_pid {
                    Some(pid) => h.feed_puback(&bytes, pid, split),
                    None => {
                        let (a, b) = bytes.split_at(split);
                        h.feed(a);
                        h.feed(b);
                    }
                }
            }
            Op::Accept { session_present, assigned_id } => {
                if h.m.phase != Phase::Authenticating {
                    continue;
                }
                let properties = Properties {
                    assigned_client_identifier: assigned_id.then(|| "R0001".to_owned()),
                    user_properties: if *assigned_id {
                        vec![("token".to_owned(), "t".to_owned())]
                    } else {
                        Vec::new()
                    },
                    ..Properties::default()
                };
                let mut events = Vec::new();
                h.m.phase = Phase::Connected;
                h.m.accepted_at = h.m.now;
                h.s.accept(h.m.now, *session_present, properties, limits, &mut events);
                h.events(events);
            }
            Op::Refuse { code_v5, code_v311 } => {
                if h.m.phase != Phase::Authenticating {
                    continue;
                }
                h.s.refuse(*code_v5 | 0x80, (*code_v311 % 5) + 1);
                h.m.phase = Phase::Closed;
            }
            Op::Handoff => {
                if h.m.phase != Phase::Authenticating {
                    continue;
                }
                let Some(connect) = h.m.pending_connect.clone() else { continue };
                // The old shard keeps nothing to send; the home shard starts afresh.
                assert!(!h.s.has_output(), "output before the CONNECT was answered");
                let unprocessed = h.s.take_unprocessed();
                h.s = Session::new(h.m.now);
                h.s.adopt_connect(&connect, unprocessed);
                h.m.last_rx = h.m.now;
            }
            Op::Push { count, dup, group, expiry, payload_len } => {
                for _ in 0..*count {
                    if !h.s.can_push() {
                        break;
                    }
                    h.push(*dup, *group, *expiry, *payload_len);
                    total_pushes += 1;
                }
            }
            Op::Flood { count } => {
                for _ in 0..*count {
                    if !h.s.can_push() || total_pushes >= 200_000 {
                        break;
                    }
                    h.push(false, false, None, 0);
                    total_pushes += 1;
                }
            }
            Op::Advance(secs) => h.m.now = h.m.now.saturating_add(u32::from(*secs)),
            Op::CheckTimeout => {
                let t = h.s.is_timed_out(h.m.now);
                let silent = h.m.now.saturating_sub(h.m.last_rx);
                match h.m.phase {
                    Phase::Closed => assert!(!t, "a closed session timed out"),
                    Phase::AwaitConnect => {
                        assert_eq!(t, silent > CONNECT_TIMEOUT_S, "CONNECT deadline, silent {silent}s")
                    }
                    Phase::Authenticating => {
                        assert_eq!(t, silent > ANSWER_TIMEOUT_S, "answer deadline, silent {silent}s")
                    }
                    Phase::Connected => {
                        let limit = u32::from(h.m.keep_alive) * 3 / 2;
                        let since_accept = h.m.now.saturating_sub(h.m.accepted_at.max(h.m.last_rx));
                        if h.m.keep_alive == 0 {
                            assert!(!t, "keep-alive 0 timed out");
                        } else if t {
                            assert!(silent > limit, "timed out after {silent}s of {limit}");
                        } else {
                            assert!(since_accept <= limit, "not timed out after {since_accept}s > {limit}");
                        }
                    }
                }
            }
            Op::Close(code) => {
                h.s.close(*code | 0x80);
                h.m.phase = Phase::Closed;
            }
            Op::Abandon => {
                h.s.abandon();
                h.m.phase = Phase::Closed;
            }
        }
        let had_output_while_closed = was_closed && h.s.has_output();
        assert!(!had_output_while_closed, "a closed session produced output after {op:?}");
        h.drain();
        h.check_state(false);
        if was_closed {
            assert!(h.s.is_closed(), "a closed session reopened after {op:?}");
        }
    }
    h.check_state(true);
});
