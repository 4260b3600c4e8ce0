//! Hand-written tests of the MQTT codec (`core_engine::proto`): round trips of every
//! packet type in both versions, byte-exact vectors, truncation / re-framing behaviour,
//! and one test per malformation the decoder must refuse.

// Wrapped in `mod proto` so that `cargo test -p core-engine proto` selects these tests.
mod proto {
    use bytes::Bytes;
    use core_engine::proto::{
        decode, encode, encode_publish_qos1, publish_qos1_len, Ack, Auth, Connack, Connect, DecodeError, Disconnect,
        EncodeError, LastWill, Packet, Properties, Publish, QoS, Suback, Subscribe, SubscribeFilter, Unsuback,
        Unsubscribe, Version,
    };

    const NO_LIMIT: usize = usize::MAX;

    fn enc(p: &Packet, v: Version) -> Vec<u8> {
        let mut out = Vec::new();
        encode(p, v, &mut out).expect("encodable");
        out
    }

    fn dec(bytes: &[u8], v: Version) -> Result<Option<(Packet, usize)>, DecodeError> {
        decode(bytes, v, NO_LIMIT)
    }

    /// Decode a buffer that must hold exactly one whole packet.
    fn dec_whole(bytes: &[u8], v: Version) -> Result<Packet, DecodeError> {
        match dec(bytes, v)? {
            Some((p, n)) => {
                assert_eq!(n, bytes.len(), "consumed");
                Ok(p)
            }
            None => panic!("whole packet reported as incomplete: {bytes:02x?}"),
        }
    }

    /// Split a frame into (first byte, remaining length, body).
    fn split_frame(bytes: &[u8]) -> (u8, Vec<u8>) {
        let mut rl = 0usize;
        let mut i = 1;
        loop {
            let b = bytes[i];
            rl |= usize::from(b & 0x7F) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        assert_eq!(bytes.len() - i, rl);
        (bytes[0], bytes[i..].to_vec())
    }

    fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut x = body.len();
        loop {
            let mut b = (x % 128) as u8;
            x /= 128;
            if x > 0 {
                b |= 0x80;
            }
            out.push(b);
            if x == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn rich_props() -> Properties {
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(vec![1, 2, 3]),
            subscription_identifiers: vec![1, 268_435_455],
            session_expiry_interval: Some(u32::MAX),
            assigned_client_identifier: Some("auto-1".into()),
            server_keep_alive: Some(30),
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(vec![0, 0xFF]),
            request_problem_information: Some(0),
            will_delay_interval: Some(5),
            request_response_information: Some(1),
            response_information: Some("resp".into()),
            server_reference: Some("other.example:1883".into()),
            reason_string: Some("because ✓".into()),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            topic_alias: Some(3),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
            maximum_packet_size: Some(65_536),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(1),
        }
    }

    fn props_for(v: Version) -> Properties {
        match v {
            Version::V311 => Properties::default(),
            Version::V5 => rich_props(),
        }
    }

    fn examples(v: Version) -> Vec<Packet> {
        let v5 = v == Version::V5;
        let code = |c: u8| if v5 { c } else { 0 };
        let mut list = vec![
            Packet::Connect(Connect {
                version: v,
                client_id: "device-1".into(),
                clean_start: true,
                keep_alive: 60,
                username: Some("user".into()),
                password: Some(b"secret".to_vec()),
                will: Some(LastWill {
                    topic: "devices/1/status".into(),
                    payload: b"offline".to_vec(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: props_for(v),
                }),
                properties: props_for(v),
            }),
            Packet::Connect(Connect {
                version: v,
                client_id: String::new(),
                clean_start: false,
                keep_alive: 0,
                username: None,
                password: None,
                will: None,
                properties: Properties::default(),
            }),
            Packet::Connack(Connack { session_present: true, code: 0, properties: props_for(v) }),
            Packet::Connack(Connack {
                session_present: false,
                code: if v5 { 0x87 } else { 5 },
                properties: Properties::default(),
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "a/b".into(),
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::from_static(b"hello"),
            }),
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: "α/β/γ".into(),
                packet_id: Some(65_535),
                properties: props_for(v),
                payload: Bytes::new(),
            }),
            Packet::Puback(Ack { packet_id: 1, code: 0, properties: Properties::default() }),
            Packet::Pubrec(Ack { packet_id: 2, code: code(0x10), properties: Properties::default() }),
            Packet::Pubrel(Ack { packet_id: 3, code: code(0x92), properties: props_for(v) }),
            Packet::Pubcomp(Ack { packet_id: 4, code: 0, properties: props_for(v) }),
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                filters: vec![
                    SubscribeFilter {
                        filter: "a/+/c".into(),
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                    SubscribeFilter {
                        filter: "#".into(),
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                ],
                properties: props_for(v),
            }),
            Packet::Suback(Suback { packet_id: 10, codes: vec![1, 2, 0x80], properties: props_for(v) }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 11,
                filters: vec!["a/+/c".into(), "x".into()],
                properties: props_for(v),
            }),
            Packet::Unsuback(Unsuback {
                packet_id: 11,
                codes: if v5 { vec![0, 0x11] } else { vec![] },
                properties: props_for(v),
            }),
            Packet::Pingreq,
            Packet::Pingresp,
            Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() }),
        ];
        if v5 {
            list.extend([
                Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: String::new(),
                    packet_id: Some(9),
                    properties: Properties { topic_alias: Some(1), ..Properties::default() },
                    payload: Bytes::from_static(b"aliased"),
                }),
                Packet::Disconnect(Disconnect { code: 0x8E, properties: Properties::default() }),
                Packet::Disconnect(Disconnect { code: 0x04, properties: rich_props() }),
                Packet::Auth(Auth { code: 0, properties: Properties::default() }),
                Packet::Auth(Auth { code: 0x18, properties: rich_props() }),
            ]);
        }
        list
    }

    const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

    #[test]
    fn round_trip_every_packet_type() {
        for v in VERSIONS {
            for p in examples(v) {
                let bytes = enc(&p, v);
                assert_eq!(dec_whole(&bytes, v), Ok(p.clone()), "{v:?} {p:?}");
                // Followed by more data: only the first packet is consumed.
                let mut two = bytes.clone();
                two.extend_from_slice(&[0xC0, 0x00]);
                assert_eq!(dec(&two, v), Ok(Some((p.clone(), bytes.len()))));
                // Exactly at the size limit is fine, one below is refused.
                assert!(decode(&bytes, v, bytes.len()).is_ok());
                assert_eq!(
                    decode(&bytes, v, bytes.len() - 1),
                    Err(DecodeError::PacketTooLarge { size: bytes.len(), max: bytes.len() - 1 })
                );
            }
        }
    }

    #[test]
    fn every_truncation_needs_more_bytes() {
        for v in VERSIONS {
            for p in examples(v) {
                let bytes = enc(&p, v);
                for n in 0..bytes.len() {
                    assert_eq!(dec(&bytes[..n], v), Ok(None), "{v:?} {p:?} n={n}");
                }
            }
        }
    }

    #[test]
    fn shortened_remaining_length_never_panics() {
        for v in VERSIONS {
            for p in examples(v) {
                let (first, body) = split_frame(&enc(&p, v));
                for k in 0..body.len() {
                    let f = frame(first, &body[..k]);
                    match dec(&f, v) {
                        Err(_) => {}
                        Ok(Some((_, n))) => {
                            assert_eq!(n, f.len());
                            // Only list/payload-terminated packets can stay valid when cut.
                            assert!(!matches!(p, Packet::Connect(_) | Packet::Connack(_)), "{p:?} cut to {k} decoded");
                        }
                        Ok(None) => panic!("whole frame reported incomplete"),
                    }
                }
            }
        }
    }

    #[test]
    fn shortened_fixed_shape_packets_error() {
        let connect = enc(&examples(Version::V311)[0], Version::V311);
        let (first, body) = split_frame(&connect);
        for k in 0..body.len() {
            let err = dec(&frame(first, &body[..k]), Version::V311).unwrap_err();
            assert!(matches!(err, DecodeError::Truncated | DecodeError::Malformed(_)), "k={k}: {err:?}");
        }
        assert_eq!(dec(&[0x40, 0x01, 0x00], Version::V311), Err(DecodeError::Truncated));
        assert_eq!(
            dec(&[0x90, 0x02, 0x00, 0x01], Version::V311),
            Err(DecodeError::Malformed("SUBACK without return codes"))
        );
        // V5 CONNACK whose property length runs past the frame.
        assert_eq!(dec(&[0x20, 0x03, 0x00, 0x00, 0x05], Version::V5), Err(DecodeError::Truncated));
    }

    #[test]
    fn lengthened_fixed_shape_packets_have_trailing_bytes() {
        for (v, p) in [
            (Version::V311, examples(Version::V311)[0].clone()),
            (Version::V5, examples(Version::V5)[0].clone()),
            (Version::V5, examples(Version::V5)[2].clone()),
            (Version::V311, Packet::Pingreq),
            (Version::V311, examples(Version::V311)[6].clone()),
            (Version::V5, examples(Version::V5)[8].clone()),
            (Version::V311, examples(Version::V311)[13].clone()),
        ] {
            let (first, mut body) = split_frame(&enc(&p, v));
            body.push(0);
            assert_eq!(dec(&frame(first, &body), v), Err(DecodeError::TrailingBytes), "{p:?}");
        }
        assert_eq!(dec(&[0xE0, 0x01, 0x00], Version::V311), Err(DecodeError::TrailingBytes));
    }

    // ---- byte-exact vectors ----

    #[test]
    fn vector_ping() {
        for v in VERSIONS {
            assert_eq!(enc(&Packet::Pingreq, v), [0xC0, 0x00]);
            assert_eq!(enc(&Packet::Pingresp, v), [0xD0, 0x00]);
            assert_eq!(dec(&[0xC0, 0x00], v), Ok(Some((Packet::Pingreq, 2))));
            assert_eq!(dec(&[0xD0, 0x00], v), Ok(Some((Packet::Pingresp, 2))));
        }
    }

    #[test]
    fn vector_mosquitto_sub_connect_311() {
        // `mosquitto_sub -V mqttv311 -i mosq-test -k 60 -t ...`: clean session, no credentials.
        let mut wire = vec![0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x09];
        wire.extend_from_slice(b"mosq-test");
        let want = Packet::Connect(Connect {
            version: Version::V311,
            client_id: "mosq-test".into(),
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
        });
        // The session version passed in is irrelevant for CONNECT.
        assert_eq!(dec_whole(&wire, Version::V5), Ok(want.clone()));
        assert_eq!(enc(&want, Version::V311), wire);
    }

    #[test]
    fn vector_v5_connect_with_session_expiry() {
        // MQTT 5 CONNECT, clean start, keep-alive 10, session expiry 120, client id "c".
        let wire = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, 0x05, 0x11, 0x00, 0x00, 0x00, 0x78,
            0x00, 0x01, b'c',
        ];
        let p = dec_whole(&wire, Version::V311).unwrap();
        let Packet::Connect(c) = &p else { panic!("{p:?}") };
        assert_eq!(c.version, Version::V5);
        assert_eq!(c.properties.session_expiry_interval, Some(120));
        assert_eq!(c.client_id, "c");
        assert_eq!(enc(&p, Version::V5), wire);
    }

    #[test]
    fn vector_v5_connack_assigned_client_id() {
        let mut wire = vec![0x20, 0x0F, 0x00, 0x00, 0x0C, 0x12, 0x00, 0x09];
        wire.extend_from_slice(b"auto-1234");
        let want = Packet::Connack(Connack {
            session_present: false,
            code: 0,
            properties: Properties { assigned_client_identifier: Some("auto-1234".into()), ..Properties::default() },
        });
        assert_eq!(dec_whole(&wire, Version::V5), Ok(want.clone()));
        assert_eq!(enc(&want, Version::V5), wire);
        // 3.1.1 CONNACK: accepted, session present.
        let c311 = Packet::Connack(Connack { session_present: true, code: 0, properties: Properties::default() });
        assert_eq!(enc(&c311, Version::V311), [0x20, 0x02, 0x01, 0x00]);
    }

    #[test]
    fn vector_publish_311_spec_example() {
        // MQTT 3.1.1 §3.3.2.3: topic "a/b", packet identifier 10.
        let wire = [0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'];
        let want = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(10),
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        });
        assert_eq!(dec_whole(&wire, Version::V311), Ok(want.clone()));
        assert_eq!(enc(&want, Version::V311), wire);
    }

    #[test]
    fn vector_v5_acks_short_and_long_forms() {
        let short = Packet::Puback(Ack { packet_id: 1, code: 0, properties: Properties::default() });
        assert_eq!(enc(&short, Version::V5), [0x40, 0x02, 0x00, 0x01]);
        assert_eq!(enc(&short, Version::V311), [0x40, 0x02, 0x00, 0x01]);
        // Code 0 + empty property block is the same packet.
        assert_eq!(dec_whole(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], Version::V5), Ok(short.clone()));
        let code_only = Packet::Pubrec(Ack { packet_id: 1, code: 0x10, properties: Properties::default() });
        let wire = [0x50, 0x03, 0x00, 0x01, 0x10];
        assert_eq!(enc(&code_only, Version::V5), wire);
        assert_eq!(dec_whole(&wire, Version::V5), Ok(code_only));
        // PUBREL has fixed-header flags 0b0010.
        assert_eq!(
            enc(&Packet::Pubrel(Ack { packet_id: 0x1234, code: 0, properties: Properties::default() }), Version::V5),
            [0x62, 0x02, 0x12, 0x34]
        );
    }

    #[test]
    fn vector_subscribe_and_disconnect() {
        let wire = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'#', 0x01];
        let want = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: "a/#".into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            properties: Properties::default(),
        });
        assert_eq!(dec_whole(&wire, Version::V311), Ok(want.clone()));
        assert_eq!(enc(&want, Version::V311), wire);
        // V5 options byte: retain handling 1, RAP, NL, QoS 2 = 0b0001_1110.
        let wire5 = [0x82, 0x07, 0x00, 0x02, 0x00, 0x00, 0x01, b'x', 0x1E];
        let Packet::Subscribe(s) = dec_whole(&wire5, Version::V5).unwrap() else { panic!() };
        let f = &s.filters[0];
        assert_eq!((f.qos, f.no_local, f.retain_as_published, f.retain_handling), (QoS::ExactlyOnce, true, true, 1));
        let normal = Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() });
        assert_eq!(enc(&normal, Version::V5), [0xE0, 0x00]);
        assert_eq!(enc(&normal, Version::V311), [0xE0, 0x00]);
        let taken_over = Packet::Disconnect(Disconnect { code: 0x8E, properties: Properties::default() });
        assert_eq!(enc(&taken_over, Version::V5), [0xE0, 0x01, 0x8E]);
        assert_eq!(dec_whole(&[0xE0, 0x01, 0x8E], Version::V5), Ok(taken_over));
    }

    #[test]
    fn fast_path_matches_generic_encoder() {
        for v in VERSIONS {
            for expiry in [None, Some(0), Some(86_400)] {
                for dup in [false, true] {
                    for payload in [&b""[..], &b"payload"[..], &[7u8; 300][..], &[7u8; 20_000][..]] {
                        let mut fast = vec![0xAA];
                        encode_publish_qos1(v, dup, "t/1", 77, expiry, payload, &mut fast);
                        assert_eq!(publish_qos1_len(v, "t/1", expiry, payload), fast.len() - 1, "length foretold");
                        let p = Packet::Publish(Publish {
                            dup,
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            topic: "t/1".into(),
                            packet_id: Some(77),
                            properties: Properties {
                                message_expiry_interval: if v == Version::V5 { expiry } else { None },
                                ..Properties::default()
                            },
                            payload: Bytes::copy_from_slice(payload),
                        });
                        let mut slow = vec![0xAA];
                        encode(&p, v, &mut slow).unwrap();
                        assert_eq!(fast, slow);
                        assert_eq!(dec_whole(&fast[1..], v), Ok(p));
                    }
                }
            }
        }
    }

    // ---- malformed input ----

    #[test]
    fn five_byte_remaining_length() {
        for v in VERSIONS {
            assert_eq!(dec(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], v), Err(DecodeError::MalformedLength));
            assert_eq!(dec(&[0x30, 0x80, 0x80, 0x80, 0x80], v), Err(DecodeError::MalformedLength));
            // Three continuation bytes: the fourth may still come.
            assert_eq!(dec(&[0x30, 0x80, 0x80, 0x80], v), Ok(None));
        }
        // A malformed varint inside the body (property length).
        assert_eq!(
            dec(&[0x20, 0x07, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Version::V5),
            Err(DecodeError::MalformedLength)
        );
    }

    #[test]
    fn oversized_packet_refused_from_header() {
        // 2,097,151 bytes announced; only the fixed header has arrived.
        assert_eq!(
            decode(&[0x30, 0xFF, 0xFF, 0x7F], Version::V311, 1024),
            Err(DecodeError::PacketTooLarge { size: 1 + 3 + 2_097_151, max: 1024 })
        );
        // Maximum remaining length.
        assert_eq!(
            decode(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], Version::V5, 1 << 20),
            Err(DecodeError::PacketTooLarge { size: 5 + 268_435_455, max: 1 << 20 })
        );
        // Under the limit but incomplete: need more bytes.
        assert_eq!(decode(&[0x30, 0x80, 0x01], Version::V5, 1024), Ok(None));
        assert_eq!(DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(), 0x95);
    }

    #[test]
    fn unknown_packet_types() {
        assert_eq!(dec(&[0x00, 0x00], Version::V5), Err(DecodeError::UnknownPacketType(0)));
        assert_eq!(dec(&[0xF0, 0x00], Version::V311), Err(DecodeError::UnknownPacketType(15)));
        assert_eq!(
            dec(&[0xF0, 0x00], Version::V5),
            Ok(Some((Packet::Auth(Auth { code: 0, properties: Properties::default() }), 2)))
        );
        // Refused from the first byte, before the length arrives.
        assert_eq!(dec(&[0x00], Version::V5), Err(DecodeError::UnknownPacketType(0)));
    }

    #[test]
    fn invalid_fixed_header_flags() {
        for (bytes, first) in [
            (&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00][..], 0x80), // SUBSCRIBE flags 0
            (&[0x60, 0x02, 0x00, 0x01][..], 0x60),                         // PUBREL flags 0
            (&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'][..], 0xA0),       // UNSUBSCRIBE flags 0
            (&[0xC1, 0x00][..], 0xC1),                                     // PINGREQ
            (&[0x42, 0x02, 0x00, 0x01][..], 0x42),                         // PUBACK
            (&[0x11, 0x00][..], 0x11),                                     // CONNECT
            (&[0xE8, 0x00][..], 0xE8),                                     // DISCONNECT
            (&[0x38, 0x03, 0x00, 0x01, b'a'][..], 0x38),                   // DUP on QoS 0
        ] {
            for v in VERSIONS {
                assert_eq!(dec(bytes, v), Err(DecodeError::InvalidFlags(first)));
                // Detected from the first byte alone.
                assert_eq!(dec(&bytes[..1], v), Err(DecodeError::InvalidFlags(first)));
            }
        }
        assert_eq!(DecodeError::InvalidFlags(0x80).reason_code(), 0x81);
    }

    #[test]
    fn qos_3() {
        for v in VERSIONS {
            assert_eq!(dec(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], v), Err(DecodeError::InvalidQoS(3)));
            // Subscription option QoS 3.
            assert_eq!(
                dec(
                    &[0x82, 0x06 + u8::from(v == Version::V5), 0x00, 0x01]
                        .into_iter()
                        .chain(if v == Version::V5 { vec![0x00] } else { vec![] })
                        .chain([0x00, 0x01, b'a', 0x03])
                        .collect::<Vec<_>>(),
                    v
                ),
                Err(DecodeError::InvalidQoS(3))
            );
        }
        // Will QoS 3 (connect flags 0b0001_1110).
        let mut c = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1E, 0x00, 0x00];
        c.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, b't', 0x00, 0x00]);
        assert_eq!(dec(&frame(0x10, &c), Version::V311), Err(DecodeError::InvalidQoS(3)));
    }

    #[test]
    fn zero_packet_id() {
        for v in VERSIONS {
            assert_eq!(dec(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], v), Err(DecodeError::ZeroPacketId));
            for first in [0x40, 0x50, 0x62, 0x70] {
                assert_eq!(dec(&[first, 0x02, 0x00, 0x00], v), Err(DecodeError::ZeroPacketId));
            }
        }
        assert_eq!(DecodeError::ZeroPacketId.reason_code(), 0x82);
        let p = Packet::Puback(Ack { packet_id: 0, code: 0, properties: Properties::default() });
        let mut out = vec![1, 2, 3];
        assert!(matches!(encode(&p, Version::V5, &mut out), Err(EncodeError::Invalid(_))));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn empty_subscribe_and_unsubscribe() {
        assert_eq!(dec(&[0x82, 0x02, 0x00, 0x01], Version::V311), Err(DecodeError::EmptySubscription));
        assert_eq!(dec(&[0x82, 0x03, 0x00, 0x01, 0x00], Version::V5), Err(DecodeError::EmptySubscription));
        assert_eq!(dec(&[0xA2, 0x02, 0x00, 0x01], Version::V311), Err(DecodeError::EmptySubscription));
        assert_eq!(dec(&[0xA2, 0x03, 0x00, 0x01, 0x00], Version::V5), Err(DecodeError::EmptySubscription));
        let empty = Packet::Subscribe(Subscribe { packet_id: 1, filters: vec![], properties: Properties::default() });
        assert!(encode(&empty, Version::V5, &mut Vec::new()).is_err());
    }

    #[test]
    fn bad_utf8() {
        for v in VERSIONS {
            // PUBLISH topic 0xFF
            assert_eq!(dec(&[0x30, 0x03, 0x00, 0x01, 0xFF], v), Err(DecodeError::InvalidUtf8));
            // PUBLISH topic with U+0000
            assert_eq!(dec(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], v), Err(DecodeError::InvalidUtf8));
        }
        // CONNECT client id with an overlong encoding of '/'.
        let mut c = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00];
        c.extend_from_slice(&[0x00, 0x02, 0xC0, 0xAF]);
        assert_eq!(dec(&frame(0x10, &c), Version::V311), Err(DecodeError::InvalidUtf8));
        // V5 user property value.
        assert_eq!(
            dec(&[0xE0, 0x08, 0x00, 0x06, 0x26, 0x00, 0x00, 0x00, 0x01, 0xFE], Version::V5),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn wildcards_in_publish_topic() {
        for v in VERSIONS {
            for topic in ["a/+", "#", "a/#", "+", "sport+"] {
                let mut body = vec![0x00, topic.len() as u8];
                body.extend_from_slice(topic.as_bytes());
                if v == Version::V5 {
                    body.push(0x00);
                }
                assert_eq!(
                    dec(&frame(0x30, &body), v),
                    Err(DecodeError::Malformed("wildcard in topic name")),
                    "{topic}"
                );
            }
        }
        // Empty topic: malformed in 3.1.1, and in 5.0 without a topic alias.
        assert!(dec(&[0x30, 0x02, 0x00, 0x00], Version::V311).is_err());
        assert!(dec(&[0x30, 0x03, 0x00, 0x00, 0x00], Version::V5).is_err());
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(dec(&[0xC0, 0x01, 0x00], Version::V311), Err(DecodeError::TrailingBytes));
        assert_eq!(dec(&[0x40, 0x03, 0x00, 0x01, 0x00], Version::V311), Err(DecodeError::TrailingBytes));
        assert_eq!(dec(&[0x20, 0x03, 0x00, 0x00, 0x00], Version::V311), Err(DecodeError::TrailingBytes));
        // V311 UNSUBACK has no payload.
        assert_eq!(dec(&[0xB0, 0x03, 0x00, 0x01, 0x00], Version::V311), Err(DecodeError::TrailingBytes));
        // V5 PUBACK: empty property block then one more byte.
        assert_eq!(dec(&[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], Version::V5), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn connect_protocol_checks() {
        let connect = |name: &[u8], level: u8, flags: u8| {
            let mut c = vec![0x00, name.len() as u8];
            c.extend_from_slice(name);
            c.extend_from_slice(&[level, flags, 0x00, 0x3C]);
            if level == 5 {
                c.push(0x00);
            }
            c.extend_from_slice(&[0x00, 0x01, b'c']);
            frame(0x10, &c)
        };
        let err = dec(&connect(b"MQIsdp", 3, 0x02), Version::V311).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedProtocol { name: "MQIsdp".into(), level: 3 });
        assert_eq!(err.reason_code(), 0x84);
        assert!(matches!(
            dec(&connect(b"MQTT", 6, 0x02), Version::V311),
            Err(DecodeError::UnsupportedProtocol { level: 6, .. })
        ));
        assert!(matches!(dec(&connect(b"MQTX", 4, 0x02), Version::V311), Err(DecodeError::UnsupportedProtocol { .. })));
        assert!(dec(&connect(b"MQTT", 4, 0x02), Version::V311).is_ok());
        assert!(dec(&connect(b"MQTT", 5, 0x02), Version::V311).is_ok());
        // Reserved flag.
        assert_eq!(
            dec(&connect(b"MQTT", 4, 0x03), Version::V311),
            Err(DecodeError::Malformed("reserved CONNECT flag set"))
        );
        // Will QoS / retain without the will flag.
        for flags in [0x08, 0x10, 0x20] {
            assert_eq!(
                dec(&connect(b"MQTT", 4, flags), Version::V311),
                Err(DecodeError::Malformed("will QoS/retain without will flag"))
            );
        }
        // Password without user name: malformed in 3.1.1, allowed in 5.0.
        let mut c = connect(b"MQTT", 4, 0x40);
        c.extend_from_slice(&[0x00, 0x01, b'p']);
        c[1] += 3;
        assert!(matches!(dec(&c, Version::V311), Err(DecodeError::Malformed(_))));
        let mut c = connect(b"MQTT", 5, 0x40);
        c.extend_from_slice(&[0x00, 0x01, b'p']);
        c[1] += 3;
        let Packet::Connect(c) = dec_whole(&c, Version::V311).unwrap() else { panic!() };
        assert_eq!((c.username, c.password), (None, Some(b"p".to_vec())));
    }

    #[test]
    fn malformed_properties() {
        // DISCONNECT with code 0 and: unknown id 0x04; duplicated reason string.
        for props in [&[0x02, 0x04, 0x00][..], &[0x06, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00][..], &[0x02, 0x24, 0x02][..]]
        {
            let mut body = vec![0x00];
            body.extend_from_slice(props);
            assert_eq!(dec(&frame(0xE0, &body), Version::V5), Err(DecodeError::MalformedProperties), "{props:02x?}");
        }
        assert_eq!(DecodeError::MalformedProperties.reason_code(), 0x81);
    }

    #[test]
    fn encode_errors_leave_output_untouched() {
        let long = "x".repeat(65_536);
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: long,
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        });
        let mut out = vec![9];
        assert_eq!(encode(&p, Version::V311, &mut out), Err(EncodeError::FieldTooLong));
        assert_eq!(out, [9]);
        let auth = Packet::Auth(Auth { code: 0, properties: Properties::default() });
        assert!(matches!(encode(&auth, Version::V311, &mut out), Err(EncodeError::Invalid(_))));
        let qos1_no_id = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        });
        assert!(encode(&qos1_no_id, Version::V5, &mut out).is_err());
        assert_eq!(out, [9]);
        // Largest encodable string is fine.
        let ok = Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            filters: vec!["y".repeat(65_535)],
            properties: Properties::default(),
        });
        let bytes = enc(&ok, Version::V5);
        assert_eq!(dec_whole(&bytes, Version::V5), Ok(ok));
    }

    #[test]
    fn large_payload_uses_multi_byte_length() {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "big".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from(vec![0x5A; 3_000_000]),
        });
        for v in VERSIONS {
            let bytes = enc(&p, v);
            assert_eq!(bytes[1] & 0x80, 0x80);
            assert_eq!(dec_whole(&bytes, v), Ok(p.clone()));
            assert!(matches!(decode(&bytes[..5], v, 1_000_000), Err(DecodeError::PacketTooLarge { .. })));
        }
    }
}
