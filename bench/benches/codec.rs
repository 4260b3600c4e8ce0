//! Codec micro-benchmarks (criterion): encode/decode of PUBLISH (small and 4 KiB
//! payloads, QoS 0 and QoS 1, plus the QoS 1 fast path the delivery loop uses) and of
//! CONNECT, for MQTT 3.1.1 and 5.0, through `core_engine::proto`.
//!
//! `cargo bench -p bench` (or `cargo bench -p bench -- publish` to filter).

use std::hint::black_box;

use bytes::Bytes;
use core_engine::proto::{decode, encode, encode_publish_qos1, Connect, Packet, Properties, Publish, QoS, Version};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MAX_PACKET: usize = 1 << 20;

fn versions() -> [(Version, &'static str); 2] {
    [(Version::V311, "v3.1.1"), (Version::V5, "v5")]
}

fn payloads() -> [(Bytes, &'static str); 2] {
    let small =
        Bytes::from_static(br#"{"id":"m1","type":"passthrough","payload":"1732540000000000","sent_at":1732540000}"#);
    let large = Bytes::from(vec![b'x'; 4096]);
    [(small, "small"), (large, "4KiB")]
}

fn publish(qos: QoS, version: Version, payload: Bytes) -> Publish {
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.message_expiry_interval = Some(86_400);
    }
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "inbox".to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(42),
        properties,
        payload,
    }
}

fn connect(version: Version) -> Connect {
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.session_expiry_interval = Some(u32::MAX);
        properties.receive_maximum = Some(64);
    }
    Connect {
        version,
        client_id: "0123456789abcdef0123456789abcdef".to_owned(),
        clean_start: false,
        keep_alive: 300,
        username: Some("2882303761517400865".to_owned()),
        password: Some(b"5601740085865-device-token-abcdef".to_vec()),
        will: None,
        properties,
    }
}

fn encoded(packet: &Packet, version: Version) -> Vec<u8> {
    let mut out = Vec::new();
    encode(packet, version, &mut out).expect("benchmark packets encode");
    out
}

fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    for (version, vname) in versions() {
        for (payload, pname) in payloads() {
            for (qos, qname) in [(QoS::AtMostOnce, "qos0"), (QoS::AtLeastOnce, "qos1")] {
                let packet = Packet::Publish(publish(qos, version, payload.clone()));
                let wire = encoded(&packet, version);
                g.throughput(Throughput::Bytes(wire.len() as u64));
                let id = format!("{vname}/{pname}/{qname}");
                g.bench_with_input(BenchmarkId::new("encode", &id), &packet, |b, p| {
                    let mut out = Vec::with_capacity(wire.len());
                    b.iter(|| {
                        out.clear();
                        encode(black_box(p), version, &mut out).unwrap();
                        black_box(out.len())
                    })
                });
                g.bench_with_input(BenchmarkId::new("decode", &id), &wire, |b, w| {
                    b.iter(|| {
                        let r = decode(black_box(w), version, MAX_PACKET).unwrap();
                        black_box(r.map(|(_, n)| n))
                    })
                });
            }
            let id = format!("{vname}/{pname}");
            g.bench_with_input(BenchmarkId::new("encode_publish_qos1", &id), &payload, |b, p| {
                let mut out = Vec::with_capacity(p.len() + 32);
                b.iter(|| {
                    out.clear();
                    encode_publish_qos1(version, false, black_box("inbox"), 42, Some(86_400), black_box(p), &mut out);
                    black_box(out.len())
                })
            });
        }
    }
    g.finish();
}

fn bench_connect(c: &mut Criterion) {
    let mut g = c.benchmark_group("connect");
    for (version, vname) in versions() {
        let packet = Packet::Connect(connect(version));
        let wire = encoded(&packet, version);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", vname), &packet, |b, p| {
            let mut out = Vec::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                encode(black_box(p), version, &mut out).unwrap();
                black_box(out.len())
            })
        });
        g.bench_with_input(BenchmarkId::new("decode", vname), &wire, |b, w| {
            b.iter(|| {
                let r = decode(black_box(w), version, MAX_PACKET).unwrap();
                black_box(r.map(|(_, n)| n))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_publish, bench_connect);
criterion_main!(benches);
