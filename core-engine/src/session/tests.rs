//! Session state machine tests: client packets in, server packets and events out.

use super::*;
use crate::proto::{decode, encode, Publish, Subscribe, SubscribeFilter, Unsubscribe};

const LIMITS: SessionLimits = SessionLimits { max_packet_bytes: 4096 };

fn bytes(packet: Packet, version: Version) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&packet, version, &mut out).unwrap();
    out
}

fn body(bytes: &[u8]) -> Arc<[u8]> {
    Arc::from(bytes)
}

fn connect(version: Version, receive_max: Option<u16>) -> Vec<u8> {
    bytes(
        Packet::Connect(Connect {
            version,
            client_id: "dev".into(),
            clean_start: false,
            keep_alive: 10,
            username: Some("1".into()),
            password: Some(b"t".to_vec()),
            will: None,
            properties: Properties { receive_maximum: receive_max, ..Properties::default() },
        }),
        version,
    )
}

fn output(session: &mut Session, version: Version) -> Vec<Packet> {
    let out = session.take_output();
    let mut packets = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let (packet, used) = decode(&out[at..], version, usize::MAX).unwrap().expect("whole packets");
        packets.push(packet);
        at += used;
    }
    packets
}

fn connected(version: Version, receive_max: Option<u16>) -> Session {
    let mut session = Session::new(0);
    let mut events = Vec::new();
    session.handle_bytes(0, &connect(version, receive_max), LIMITS, &mut events);
    assert!(matches!(events.as_slice(), [Event::Connect(c)] if c.client_id == "dev"));
    events.clear();
    session.accept(0, true, Properties::default(), LIMITS, &mut events);
    assert!(events.is_empty());
    let packets = output(&mut session, version);
    assert!(matches!(packets.as_slice(), [Packet::Connack(Connack { session_present: true, code: 0, .. })]));
    session
}

#[test]
fn connect_split_byte_by_byte_then_accept() {
    for version in [Version::V311, Version::V5] {
        let mut session = Session::new(0);
        let mut events = Vec::new();
        let raw = connect(version, None);
        for b in &raw {
            session.handle_bytes(0, std::slice::from_ref(b), LIMITS, &mut events);
        }
        assert_eq!(events.len(), 1, "one CONNECT event for {version:?}");
    }
}

#[test]
fn bytes_after_connect_wait_for_accept() {
    let mut session = Session::new(0);
    let mut events = Vec::new();
    let mut raw = connect(Version::V5, None);
    raw.extend(bytes(Packet::Pingreq, Version::V5));
    session.handle_bytes(0, &raw, LIMITS, &mut events);
    assert_eq!(events.len(), 1);
    assert!(!session.has_output(), "nothing is answered before authentication");
    events.clear();
    session.accept(0, false, Properties::default(), LIMITS, &mut events);
    let packets = output(&mut session, Version::V5);
    assert!(matches!(packets.as_slice(), [Packet::Connack(_), Packet::Pingresp]));
}

#[test]
fn refuse_answers_the_version_code() {
    for (version, code) in [(Version::V311, 4), (Version::V5, 0x86)] {
        let mut session = Session::new(0);
        let mut events = Vec::new();
        session.handle_bytes(0, &connect(version, None), LIMITS, &mut events);
        session.refuse(0x86, 4);
        assert!(session.is_closed());
        let packets = output(&mut session, version);
        assert!(matches!(packets.as_slice(), [Packet::Connack(Connack { code: c, .. })] if *c == code));
    }
}

#[test]
fn first_packet_must_be_connect() {
    let mut session = Session::new(0);
    let mut events = Vec::new();
    session.handle_bytes(0, &bytes(Packet::Pingreq, Version::V311), LIMITS, &mut events);
    assert!(matches!(events.as_slice(), [Event::Close(CloseReason::OutOfProfile(_))]));
    assert!(session.is_closed());
}

#[test]
fn pushes_respect_receive_maximum_and_acks_free_room() {
    let mut session = connected(Version::V5, Some(2));
    session.push(PushRef { seq: 1, id: 10, group: false }, false, Some(60), PushTopic::Inbox, &body(b"a"));
    session.push(PushRef { seq: 2, id: 11, group: false }, true, Some(60), PushTopic::Inbox, &body(b"b"));
    assert!(!session.can_push());
    let packets = output(&mut session, Version::V5);
    let Packet::Publish(first) = &packets[0] else { panic!("a publish") };
    assert_eq!((first.topic.as_str(), first.qos, first.dup), (INBOX_TOPIC, QoS::AtLeastOnce, false));
    assert_eq!(first.properties.message_expiry_interval, Some(60));
    let Packet::Publish(second) = &packets[1] else { panic!("a publish") };
    assert!(second.dup);
    let mut events = Vec::new();
    let ack = bytes(
        Packet::Puback(Ack { packet_id: second.packet_id.unwrap(), code: 0, properties: Properties::default() }),
        Version::V5,
    );
    session.handle_bytes(1, &ack, LIMITS, &mut events);
    assert_eq!(events, vec![Event::Acked(PushRef { seq: 2, id: 11, group: false })]);
    assert!(session.can_push());
    assert_eq!(session.inflight().collect::<Vec<_>>(), vec![PushRef { seq: 1, id: 10, group: false }]);
    events.clear();
    session.handle_bytes(1, &ack, LIMITS, &mut events);
    assert!(events.is_empty(), "a repeated PUBACK acknowledges nothing");
}

#[test]
fn queued_pushes_go_out_before_a_later_packet_in_one_buffer_of_their_size() {
    for version in [Version::V5, Version::V311] {
        let mut session = connected(version, None);
        let shared = body(&[b'x'; 500]);
        let topic = PushTopic::Named("topic/news".into());
        for seq in 1..=10 {
            session.push(PushRef { seq, id: seq, group: true }, false, Some(60), topic.clone(), &shared);
        }
        assert_eq!(Arc::strong_count(&shared), 11, "each queued push shares the body");
        assert!(session.has_output());
        assert!(session.output_capacity() < 10 * 500, "queued, not encoded yet: {}", session.output_capacity());
        // A packet written now (the answer to a PINGREQ) follows the queued pushes.
        let mut events = Vec::new();
        session.handle_bytes(1, &bytes(Packet::Pingreq, version), LIMITS, &mut events);
        session.push(PushRef { seq: 11, id: 11, group: false }, false, None, PushTopic::Inbox, &body(b"own"));
        let packets = output(&mut session, version);
        assert_eq!(Arc::strong_count(&shared), 1, "encoded: the session keeps no reference");
        assert!(!session.has_output() && session.output_capacity() == 0, "nothing held after taking");
        assert_eq!(packets.len(), 12);
        for (i, packet) in packets[..10].iter().enumerate() {
            let Packet::Publish(p) = packet else { panic!("a publish first, got {packet:?}") };
            assert_eq!((p.topic.as_str(), p.payload.len(), p.packet_id), ("topic/news", 500, Some(i as u16 + 1)));
        }
        assert_eq!(packets[10], Packet::Pingresp, "the answer after the pushes queued before it");
        assert!(matches!(&packets[11], Packet::Publish(p) if p.topic == INBOX_TOPIC && &p.payload[..] == b"own"));
    }
}

#[test]
fn v311_push_has_no_properties() {
    let mut session = connected(Version::V311, None);
    session.push(PushRef { seq: 1, id: 1, group: false }, false, Some(60), PushTopic::Inbox, &body(b"{}"));
    let packets = output(&mut session, Version::V311);
    assert!(matches!(&packets[0], Packet::Publish(p) if p.properties == Properties::default()));
}

#[test]
fn subscribe_grants_inbox_and_refuses_the_rest() {
    for (version, wildcard, other) in [(Version::V5, 0xA2, 0x8F), (Version::V311, 0x80, 0x80)] {
        let mut session = connected(version, None);
        let filter = |f: &str, qos| SubscribeFilter {
            filter: f.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        };
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 7,
            filters: vec![
                filter("inbox", QoS::AtLeastOnce),
                filter("#", QoS::AtMostOnce),
                filter("other", QoS::AtLeastOnce),
            ],
            properties: Properties::default(),
        });
        let mut events = Vec::new();
        session.handle_bytes(0, &bytes(sub, version), LIMITS, &mut events);
        assert!(events.is_empty());
        let packets = output(&mut session, version);
        assert!(matches!(&packets[..], [Packet::Suback(s)] if s.packet_id == 7 && s.codes == vec![1, wildcard, other]));
        if version == Version::V5 {
            assert!(
                matches!(&packets[..], [Packet::Suback(s)] if s.properties.reason_string.as_deref() == Some(PROFILE_FILTERS))
            );
        }
        let unsub = Packet::Unsubscribe(Unsubscribe {
            packet_id: 8,
            filters: vec!["inbox".into()],
            properties: Properties::default(),
        });
        session.handle_bytes(0, &bytes(unsub, version), LIMITS, &mut events);
        assert!(matches!(&output(&mut session, version)[..], [Packet::Unsuback(u)] if u.packet_id == 8));
    }
}

#[test]
fn device_publish_is_refused() {
    let publish = |qos, retain| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: "x".into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(3),
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"p"),
        })
    };
    let mut session = connected(Version::V5, None);
    let mut events = Vec::new();
    session.handle_bytes(0, &bytes(publish(QoS::AtLeastOnce, false), Version::V5), LIMITS, &mut events);
    assert!(events.is_empty());
    assert!(matches!(&output(&mut session, Version::V5)[..], [Packet::Puback(a)] if a.code == 0x87));
    session.handle_bytes(0, &bytes(publish(QoS::ExactlyOnce, false), Version::V5), LIMITS, &mut events);
    assert_eq!(events, vec![Event::Close(CloseReason::OutOfProfile(0x9B))]);
    assert!(matches!(&output(&mut session, Version::V5)[..], [Packet::Disconnect(d)] if d.code == 0x9B));

    let mut session = connected(Version::V311, None);
    events.clear();
    session.handle_bytes(0, &bytes(publish(QoS::AtLeastOnce, false), Version::V311), LIMITS, &mut events);
    assert_eq!(events, vec![Event::Close(CloseReason::OutOfProfile(0x87))]);
    assert!(!session.has_output(), "3.1.1 has no DISCONNECT from the server");
}

#[test]
fn malformed_bytes_close_with_0x81() {
    let mut session = connected(Version::V5, None);
    let mut events = Vec::new();
    session.handle_bytes(0, &[0x00, 0x00, 0xff], LIMITS, &mut events);
    assert_eq!(events, vec![Event::Close(CloseReason::Malformed(0x81))]);
    assert!(matches!(&output(&mut session, Version::V5)[..], [Packet::Disconnect(d)] if d.code == 0x81));
    events.clear();
    session.handle_bytes(0, &[0xC0, 0x00], LIMITS, &mut events);
    assert!(events.is_empty(), "a closed session ignores further bytes");
}

#[test]
fn oversized_packet_closes_with_0x95() {
    let mut session = connected(Version::V5, None);
    let mut events = Vec::new();
    // PUBLISH announcing 1 MB, none of it sent.
    session.handle_bytes(0, &[0x30, 0x80, 0x80, 0x40], LIMITS, &mut events);
    assert_eq!(events, vec![Event::Close(CloseReason::Malformed(0x95))]);
}

#[test]
fn timeouts() {
    let session = Session::new(0);
    assert!(!session.is_timed_out(CONNECT_TIMEOUT_S));
    assert!(session.is_timed_out(CONNECT_TIMEOUT_S + 1));
    let mut session = connected(Version::V311, None); // keep-alive 10 s
    assert!(!session.is_timed_out(15));
    assert!(session.is_timed_out(16));
    let mut events = Vec::new();
    session.handle_bytes(15, &bytes(Packet::Pingreq, Version::V311), LIMITS, &mut events);
    assert!(!session.is_timed_out(30));
}

#[test]
fn a_connect_the_node_cannot_answer_in_time_is_refused_as_busy() {
    for (version, code) in [(Version::V5, reason::SERVER_BUSY), (Version::V311, reason::V311_SERVER_UNAVAILABLE)] {
        let mut session = Session::new(0);
        let mut events = Vec::new();
        session.handle_bytes(5, &connect(version, None), LIMITS, &mut events);
        assert!(matches!(events.as_slice(), [Event::Connect(_)]));
        assert!(!session.is_timed_out(5 + CONNECT_TIMEOUT_S + 1), "the device waits on the node");
        assert!(session.is_timed_out(5 + ANSWER_TIMEOUT_S + 1));
        session.time_out();
        let packets = output(&mut session, version);
        assert!(
            matches!(packets.as_slice(), [Packet::Connack(Connack { code: c, .. })] if *c == code),
            "{version:?}: {packets:?}"
        );
        assert!(!session.is_timed_out(1000), "closed");
    }
    let mut session = connected(Version::V5, None);
    session.time_out();
    let packets = output(&mut session, Version::V5);
    assert!(matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.code == reason::KEEP_ALIVE_TIMEOUT));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, in whatever chunks, the session never panics and a closed
        /// session stays closed.
        #[test]
        fn arbitrary_input_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16), v5 in any::<bool>()) {
            let version = if v5 { Version::V5 } else { Version::V311 };
            let mut session = connected(version, None);
            let mut events = Vec::new();
            for chunk in chunks {
                session.handle_bytes(1, &chunk, LIMITS, &mut events);
            }
            if events.iter().any(|e| matches!(e, Event::Close(_))) {
                prop_assert!(session.is_closed());
            }
        }
    }
}

#[test]
fn no_answer_after_disconnect() {
    // A SUBSCRIBE for a topic and malformed bytes in one read: the SUBSCRIBE event comes
    // out, then the session closes with DISCONNECT; a late SUBACK must not follow it.
    let mut session = connected(Version::V5, None);
    let filter = SubscribeFilter {
        filter: "topic/a".into(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    let mut raw = bytes(
        Packet::Subscribe(Subscribe { packet_id: 9, filters: vec![filter], properties: Properties::default() }),
        Version::V5,
    );
    raw.extend_from_slice(&[0x00, 0x00]);
    let mut events = Vec::new();
    session.handle_bytes(0, &raw, LIMITS, &mut events);
    assert!(matches!(events.as_slice(), [Event::Subscribe(_), Event::Close(_)]), "{events:?}");
    session.suback(9, vec![1]);
    session.unsuback(9, vec![0]);
    session.ack_control(Some(3), 0, &mut events);
    assert!(matches!(&output(&mut session, Version::V5)[..], [Packet::Disconnect(_)]));
}
