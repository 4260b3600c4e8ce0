//! Property tests of the MQTT codec (`core_engine::proto`): arbitrary valid packets
//! round-trip in both versions and every prefix is "need more bytes"; arbitrary and
//! mutated bytes never make the decoder panic, and whatever it accepts re-encodes to
//! the same packet.

// Wrapped in `mod proto` so that `cargo test -p core-engine proto` selects these tests.
mod proto {
    use bytes::Bytes;
    use core_engine::proto::{
        decode, encode, Ack, Auth, Connack, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Publish,
        QoS, Suback, Subscribe, SubscribeFilter, Unsuback, Unsubscribe, Version,
    };
    use proptest::collection::vec;
    use proptest::option::of as opt;
    use proptest::prelude::*;

    fn version() -> impl Strategy<Value = Version> {
        prop_oneof![Just(Version::V311), Just(Version::V5)]
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
    }

    /// Any UTF-8 without U+0000 (mix of ASCII, multi-byte and astral characters).
    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _./+#$é€😀\u{1}-]{0,12}"
    }

    fn topic_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_/$é€😀-]{1,16}"
    }

    fn topic_filter() -> impl Strategy<Value = String> {
        (vec(prop_oneof!["[a-z0-9é]{0,4}", Just("+".to_string())], 1..4), any::<bool>()).prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str(if f.is_empty() { "#" } else { "/#" });
            }
            if f.is_empty() {
                f.push('#');
            }
            f
        })
    }

    fn data() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..16)
    }

    fn packet_id() -> impl Strategy<Value = u16> {
        1u16..
    }

    fn flag() -> impl Strategy<Value = u8> {
        0u8..=1
    }

    prop_compose! {
        fn some_properties()(
            a in (opt(flag()), opt(any::<u32>()), opt(text()), opt(text()), opt(data()),
                  vec(1u32..=268_435_455, 0..3), opt(any::<u32>()), opt(text()), opt(any::<u16>())),
            b in (opt(text()), opt(data()), opt(flag()), opt(any::<u32>()), opt(flag()),
                  opt(text()), opt(text()), opt(text()), opt(1u16..)),
            c in (opt(any::<u16>()), opt(1u16..), opt(flag()), opt(flag()),
                  vec((text(), text()), 0..3), opt(1u32..), opt(flag()), opt(flag()), opt(flag())),
        ) -> Properties {
            Properties {
                payload_format_indicator: a.0,
                message_expiry_interval: a.1,
                content_type: a.2,
                response_topic: a.3,
                correlation_data: a.4,
                subscription_identifiers: a.5,
                session_expiry_interval: a.6,
                assigned_client_identifier: a.7,
                server_keep_alive: a.8,
                authentication_method: b.0,
                authentication_data: b.1,
                request_problem_information: b.2,
                will_delay_interval: b.3,
                request_response_information: b.4,
                response_information: b.5,
                server_reference: b.6,
                reason_string: b.7,
                receive_maximum: b.8,
                topic_alias_maximum: c.0,
                topic_alias: c.1,
                maximum_qos: c.2,
                retain_available: c.3,
                user_properties: c.4,
                maximum_packet_size: c.5,
                wildcard_subscription_available: c.6,
                subscription_identifier_available: c.7,
                shared_subscription_available: c.8,
            }
        }
    }

    fn properties() -> impl Strategy<Value = Properties> {
        prop_oneof![
            2 => Just(Properties::default()),
            1 => (opt(text()), vec((text(), text()), 0..2)).prop_map(|(reason_string, user_properties)| {
                Properties { reason_string, user_properties, ..Properties::default() }
            }),
            2 => some_properties(),
        ]
    }

    fn will() -> impl Strategy<Value = LastWill> {
        (topic_name(), data(), qos(), any::<bool>(), properties())
            .prop_map(|(topic, payload, qos, retain, properties)| LastWill { topic, payload, qos, retain, properties })
    }

    fn connect() -> impl Strategy<Value = Packet> {
        (text(), any::<bool>(), any::<u16>(), opt(text()), opt(data()), opt(will()), properties()).prop_map(
            |(client_id, clean_start, keep_alive, username, password, will, properties)| {
                Packet::Connect(Connect {
                    version: Version::V5,
                    client_id,
                    clean_start,
                    keep_alive,
                    username,
                    password,
                    will,
                    properties,
                })
            },
        )
    }

    fn publish() -> impl Strategy<Value = Packet> {
        (any::<bool>(), qos(), any::<bool>(), topic_name(), packet_id(), properties(), vec(any::<u8>(), 0..64))
            .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { None } else { Some(id) },
                    properties,
                    payload: Bytes::from(payload),
                })
            })
    }

    fn ack() -> impl Strategy<Value = Ack> {
        (packet_id(), any::<u8>(), properties()).prop_map(|(packet_id, code, properties)| Ack {
            packet_id,
            code,
            properties,
        })
    }

    fn subscribe_filter() -> impl Strategy<Value = SubscribeFilter> {
        (topic_filter(), qos(), any::<bool>(), any::<bool>(), 0u8..=2).prop_map(
            |(filter, qos, no_local, retain_as_published, retain_handling)| SubscribeFilter {
                filter,
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
    }

    fn packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            3 => connect().boxed(),
            1 => (any::<bool>(), any::<u8>(), properties())
                .prop_map(|(session_present, code, properties)| Packet::Connack(Connack {
                    session_present,
                    code,
                    properties
                }))
                .boxed(),
            4 => publish().boxed(),
            1 => ack().prop_map(Packet::Puback).boxed(),
            1 => ack().prop_map(Packet::Pubrec).boxed(),
            1 => ack().prop_map(Packet::Pubrel).boxed(),
            1 => ack().prop_map(Packet::Pubcomp).boxed(),
            2 => (packet_id(), vec(subscribe_filter(), 1..4), properties())
                .prop_map(|(packet_id, filters, properties)| Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties
                }))
                .boxed(),
            1 => (packet_id(), vec(any::<u8>(), 1..4), properties())
                .prop_map(|(packet_id, codes, properties)| Packet::Suback(Suback {
                    packet_id,
                    codes,
                    properties
                }))
                .boxed(),
            1 => (packet_id(), vec(topic_filter(), 1..4), properties())
                .prop_map(|(packet_id, filters, properties)| Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties
                }))
                .boxed(),
            1 => (packet_id(), vec(any::<u8>(), 1..4), properties())
                .prop_map(|(packet_id, codes, properties)| Packet::Unsuback(Unsuback {
                    packet_id,
                    codes,
                    properties
                }))
                .boxed(),
            1 => Just(Packet::Pingreq).boxed(),
            1 => Just(Packet::Pingresp).boxed(),
            1 => (any::<u8>(), properties())
                .prop_map(|(code, properties)| Packet::Disconnect(Disconnect { code, properties }))
                .boxed(),
            1 => (any::<u8>(), properties())
                .prop_map(|(code, properties)| Packet::Auth(Auth { code, properties }))
                .boxed(),
        ]
    }

    /// Drop what `v` cannot express, so the packet must round-trip exactly.
    fn for_version(p: Packet, v: Version) -> Packet {
        if v == Version::V5 {
            return p;
        }
        let none = Properties::default;
        match p {
            Packet::Connect(mut c) => {
                c.version = Version::V311;
                c.properties = none();
                if let Some(w) = &mut c.will {
                    w.properties = none();
                }
                if c.username.is_none() {
                    c.password = None;
                }
                Packet::Connect(c)
            }
            Packet::Connack(c) => Packet::Connack(Connack { properties: none(), ..c }),
            Packet::Publish(p) => Packet::Publish(Publish { properties: none(), ..p }),
            Packet::Puback(a) => Packet::Puback(strip_ack(a)),
            Packet::Pubrec(a) => Packet::Pubrec(strip_ack(a)),
            Packet::Pubrel(a) => Packet::Pubrel(strip_ack(a)),
            Packet::Pubcomp(a) => Packet::Pubcomp(strip_ack(a)),
            Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
                packet_id: s.packet_id,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubscribeFilter { no_local: false, retain_as_published: false, retain_handling: 0, ..f })
                    .collect(),
                properties: none(),
            }),
            Packet::Suback(s) => Packet::Suback(Suback { properties: none(), ..s }),
            Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe { properties: none(), ..u }),
            Packet::Unsuback(u) => {
                Packet::Unsuback(Unsuback { packet_id: u.packet_id, codes: vec![], properties: none() })
            }
            Packet::Disconnect(_) => Packet::Disconnect(Disconnect { code: 0, properties: none() }),
            // AUTH does not exist in 3.1.1.
            Packet::Auth(_) => Packet::Pingreq,
            p @ (Packet::Pingreq | Packet::Pingresp) => p,
        }
    }

    fn strip_ack(a: Ack) -> Ack {
        Ack { packet_id: a.packet_id, code: 0, properties: Properties::default() }
    }

    /// If the decoder accepted something, re-encoding it must give the same packet back.
    fn check_reencode(bytes: &[u8], v: Version) -> Result<(), TestCaseError> {
        if let Ok(Some((p, n))) = decode(bytes, v, usize::MAX) {
            prop_assert!(n <= bytes.len());
            let mut out = Vec::new();
            encode(&p, v, &mut out).map_err(|e| TestCaseError::fail(format!("{e}: {p:?}")))?;
            let again = decode(&out, v, usize::MAX);
            prop_assert_eq!(again, Ok(Some((p, out.len()))));
        }
        Ok(())
    }

    proptest! {
        // 512 cases by default; set PROPTEST_CASES for a longer soak.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
        ))]

        #[test]
        fn round_trip(p in packet(), v in version()) {
            let p = for_version(p, v);
            let mut bytes = Vec::new();
            encode(&p, v, &mut bytes).unwrap();
            prop_assert_eq!(decode(&bytes, v, usize::MAX), Ok(Some((p.clone(), bytes.len()))));
            for n in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..n], v, usize::MAX), Ok(None));
            }
            prop_assert_eq!(
                decode(&bytes, v, bytes.len() - 1),
                Err(DecodeError::PacketTooLarge { size: bytes.len(), max: bytes.len() - 1 })
            );
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), v in version(), max in 0usize..512) {
            let r = decode(&bytes, v, max);
            if let Ok(Some((_, n))) = r {
                prop_assert!(n <= bytes.len() && n <= max);
            }
            check_reencode(&bytes, v)?;
        }

        #[test]
        fn framed_arbitrary_body_never_panics(first in any::<u8>(), body in vec(any::<u8>(), 0..128), v in version()) {
            // A well-formed fixed header around garbage reaches the body parsers.
            let mut bytes = vec![first, body.len() as u8];
            bytes.extend_from_slice(&body);
            match decode(&bytes, v, usize::MAX) {
                Ok(None) => prop_assert!(false, "complete frame reported incomplete"),
                Ok(Some((_, n))) => prop_assert_eq!(n, bytes.len()),
                Err(_) => {}
            }
            check_reencode(&bytes, v)?;
        }

        #[test]
        fn mutated_packets_never_panic(
            p in packet(),
            v in version(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let p = for_version(p, v);
            let mut bytes = Vec::new();
            encode(&p, v, &mut bytes).unwrap();
            for (i, b) in &edits {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            check_reencode(&bytes, v)?;
            let cut = cut.index(bytes.len() + 1);
            let _ = decode(&bytes[..cut], v, usize::MAX);
            check_reencode(&bytes[..cut], v)?;
        }

        #[test]
        fn reframed_packets_never_panic(p in packet(), v in version(), delta in -8i64..8) {
            // Change the remaining length (keeping the body) to lie about the frame size.
            let p = for_version(p, v);
            let mut bytes = Vec::new();
            encode(&p, v, &mut bytes).unwrap();
            let mut i = 1;
            while bytes[i] & 0x80 != 0 { i += 1; }
            let body = &bytes[i + 1..];
            let new_len = (body.len() as i64 + delta).max(0) as usize;
            let mut f = vec![bytes[0]];
            let mut x = new_len;
            loop {
                let mut b = (x % 128) as u8;
                x /= 128;
                if x > 0 { b |= 0x80; }
                f.push(b);
                if x == 0 { break; }
            }
            let header = f.len();
            f.extend_from_slice(&body[..new_len.min(body.len())]);
            match decode(&f, v, usize::MAX) {
                Ok(None) => prop_assert!(new_len > body.len()),
                Ok(Some((_, n))) => prop_assert_eq!(n, header + new_len),
                Err(_) => {}
            }
            check_reencode(&f, v)?;
        }
    }
}
