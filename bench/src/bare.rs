//! The bare accept-and-hold MQTT server: the ceiling row of the benchmarks.
//!
//! What it does, and nothing more: accept; decode with `core_engine::proto`; answer
//! CONNECT (CONNACK; an MQTT 5 CONNECT with an empty client id gets an Assigned Client
//! Identifier and a `token` user property, like a Pushnode registration), SUBSCRIBE
//! (SUBACK, granting the requested QoS capped at 1), UNSUBSCRIBE, PINGREQ, a QoS 1
//! PUBLISH (PUBACK) and a QoS 2 PUBLISH (PUBREC/PUBCOMP); route every PUBLISH to the
//! subscribers of exactly its topic. No persistence, no wildcards, no retained
//! messages, no session state across connections, no keep-alive enforcement.
//!
//! Delivery is the "ceiling sender": a message is encoded once per (version, QoS) that
//! its subscribers need, and the same bytes (`Bytes`, shared) are written to every
//! subscriber socket; the PUBLISHes of one read are routed together, so a subscriber of
//! several of them gets them in one vectored write (what a broker that coalesces does,
//! at its least cost). The publishing task writes straight into a subscriber's socket
//! with `try_write` when nothing is queued for it; only what the kernel does not take is
//! queued and flushed by that subscriber's own task. A QoS 1 copy carries the same packet
//! identifier for every subscriber (identifiers are per session, so this is valid).
//!
//! Per connection it holds one task, one `Arc<Conn>` (socket, an empty queue, a
//! `Notify`) and no read buffer while idle: reads go into a stack buffer and only a
//! partial packet is carried over.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use core_engine::proto::{
    decode, encode, encode_publish_qos1, Ack, Connack, Packet, Properties, Publish, QoS, Suback, Unsuback, Version,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Clone, clap::Args)]
pub struct BareArgs {
    /// Address to accept MQTT connections on, e.g. 127.0.0.1:1883.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Runtime worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Listen backlog.
    #[arg(long, default_value_t = 8192)]
    pub backlog: i32,
    /// Largest packet accepted, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_packet_bytes: usize,
    /// The server exits by itself after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
}

/// Read chunk (on the stack of a poll, never held while idle).
const READ_CHUNK: usize = 16 * 1024;
/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

/// One connection's write side, shared with publishers.
struct Conn {
    stream: TcpStream,
    /// Bytes the kernel has not taken yet, in order. Every write to the socket happens
    /// under this lock, so frames never interleave.
    queue: Mutex<VecDeque<Bytes>>,
    /// Wakes the connection's task to flush `queue`.
    wake: Notify,
}

impl Conn {
    /// Writes `bytes` now if nothing is queued, queueing whatever the kernel does not
    /// take; otherwise queues it behind the rest. Returns false if the socket failed.
    fn send(&self, bytes: Bytes) -> bool {
        self.send_all(std::slice::from_ref(&bytes))
    }

    /// [`Conn::send`] for several frames, written in one vectored write.
    fn send_all(&self, frames: &[Bytes]) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !q.is_empty() {
            q.extend(frames.iter().cloned());
            return true;
        }
        let slices: Vec<IoSlice<'_>> = frames.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
        let mut taken = match self.stream.try_write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return false,
        };
        for frame in frames {
            if taken >= frame.len() {
                taken -= frame.len();
            } else {
                q.push_back(frame.slice(taken..));
                taken = 0;
            }
        }
        if !q.is_empty() {
            drop(q);
            self.wake.notify_one();
        }
        true
    }

    /// Writes as much of the queue as the kernel takes. Ok(true) when it is empty.
    fn flush(&self) -> io::Result<bool> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while !q.is_empty() {
            let slices: Vec<IoSlice<'_>> = q.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            let mut n = match self.stream.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            drop(slices);
            while n > 0 {
                let Some(front) = q.front_mut() else { break };
                if n >= front.len() {
                    n -= front.len();
                    q.pop_front();
                } else {
                    *front = front.slice(n..);
                    n = 0;
                }
            }
        }
        if q.capacity() > 64 {
            q.shrink_to_fit();
        }
        Ok(true)
    }
}

/// One subscription of one connection.
struct Sub {
    conn: Arc<Conn>,
    version: Version,
    qos: QoS,
}

/// One routed message's bytes, encoded on first need for each (version, delivered QoS).
#[derive(Default)]
struct Encodings {
    /// index: version (0 = 3.1.1, 1 = 5.0) * 2 + delivered QoS (0 or 1)
    bytes: [Option<Bytes>; 4],
    /// The packet identifier every QoS 1 copy carries (0 until one is needed).
    pid: u16,
}

impl Encodings {
    /// `p` as `sub` gets it; None if it cannot be encoded.
    fn for_sub(&mut self, p: &Publish, sub: &Sub, shared: &Shared) -> Option<Bytes> {
        let qos1 = p.qos != QoS::AtMostOnce && sub.qos != QoS::AtMostOnce;
        let slot = usize::from(sub.version == Version::V5) * 2 + usize::from(qos1);
        if let Some(b) = &self.bytes[slot] {
            return Some(b.clone());
        }
        let mut out = Vec::with_capacity(p.payload.len() + p.topic.len() + 16);
        if qos1 {
            if self.pid == 0 {
                self.pid = shared.packet_id();
            }
            encode_publish_qos1(sub.version, false, &p.topic, self.pid, None, &p.payload, &mut out);
        } else {
            let copy = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: p.topic.clone(),
                packet_id: None,
                properties: Properties::default(),
                payload: p.payload.clone(),
            };
            encode(&Packet::Publish(copy), sub.version, &mut out).ok()?;
        }
        let b = Bytes::from(out);
        self.bytes[slot] = Some(b.clone());
        Some(b)
    }
}

/// What all connections share: the exact-match subscription table.
struct Shared {
    subs: RwLock<HashMap<String, HashMap<u64, Sub>>>,
    next_conn: AtomicU64,
    next_pid: AtomicU32,
    max_packet: usize,
}

impl Shared {
    /// A packet identifier for one routed QoS 1 message (1..=65535, cycling).
    fn packet_id(&self) -> u16 {
        let n = self.next_pid.fetch_add(1, Ordering::Relaxed);
        (n % 65_535) as u16 + 1
    }

    /// Delivers `batch` (the PUBLISHes of one read, in order) to the subscribers of
    /// exactly each one's topic: each message encoded once per (version, delivered QoS),
    /// the same bytes written to each socket, and a subscriber of several consecutive
    /// messages' topic gets them in one vectored write.
    fn route(&self, batch: &[Publish]) {
        let map = self.subs.read().unwrap_or_else(|e| e.into_inner());
        let mut rest = batch;
        while let Some(first) = rest.first() {
            let same_topic = rest.iter().take_while(|p| p.topic == first.topic).count();
            let (run, after) = rest.split_at(same_topic);
            rest = after;
            let Some(subs) = map.get(&first.topic) else { continue };
            let mut encoded: Vec<Encodings> = run.iter().map(|_| Encodings::default()).collect();
            let mut frames: Vec<Bytes> = Vec::with_capacity(run.len());
            for sub in subs.values() {
                frames.clear();
                for (p, enc) in run.iter().zip(&mut encoded) {
                    if let Some(bytes) = enc.for_sub(p, sub, self) {
                        frames.push(bytes);
                    }
                }
                sub.conn.send_all(&frames);
            }
        }
    }

    fn subscribe(&self, topic: &str, id: u64, sub: Sub) {
        let mut map = self.subs.write().unwrap_or_else(|e| e.into_inner());
        map.entry(topic.to_owned()).or_default().insert(id, sub);
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut map = self.subs.write().unwrap_or_else(|e| e.into_inner());
        if let Some(subs) = map.get_mut(topic) {
            subs.remove(&id);
            if subs.is_empty() {
                map.remove(topic);
            }
        }
    }
}

pub fn run(args: BareArgs) -> anyhow::Result<()> {
    raise_nofile();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = rt.build()?;
    rt.block_on(serve(args))
}

/// Raises the soft open-files limit to the hard one (best effort).
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn bind(addr: SocketAddr, backlog: i32) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into()).with_context(|| format!("bind {addr}"))?;
    sock.listen(backlog)?;
    Ok(TcpListener::from_std(sock.into())?)
}

async fn serve(args: BareArgs) -> anyhow::Result<()> {
    let listener = bind(args.listen, args.backlog)?;
    let shared = Arc::new(Shared {
        subs: RwLock::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        next_pid: AtomicU32::new(0),
        max_packet: args.max_packet_bytes,
    });
    eprintln!("bench bare-server ready mqtt={}", listener.local_addr()?);
    let accept = async {
        let mut accept_errors = 0u64;
        let mut next_report = 1u64;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, shared.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: report the 1st, 10th, 100th..., back off briefly.
                    accept_errors += 1;
                    if accept_errors == next_report {
                        next_report = next_report.saturating_mul(10);
                        eprintln!("bare-server: accept failed ({accept_errors}): {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = accept => {}
        _ = tokio::signal::ctrl_c() => eprintln!("bare-server: interrupted"),
        _ = term.recv() => eprintln!("bare-server: terminated"),
        () = tokio::time::sleep(Duration::from_secs(args.max_secs)) => {
            eprintln!("bare-server: --max-secs reached, exiting");
        }
    }
    // Do not wait for connection tasks: the process ends here.
    std::process::exit(0);
}

/// Per-connection protocol state.
struct Session {
    id: u64,
    version: Version,
    connected: bool,
    topics: Vec<String>,
}

/// What handling one packet asks of the connection.
enum Next {
    Continue,
    Close,
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let conn = Arc::new(Conn { stream, queue: Mutex::new(VecDeque::new()), wake: Notify::new() });
    let mut s = Session {
        id: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        version: Version::V311,
        connected: false,
        topics: Vec::new(),
    };
    let mut carry: Vec<u8> = Vec::new();
    'conn: loop {
        let backlog = !conn.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        tokio::select! {
            r = conn.stream.readable() => {
                if r.is_err() {
                    break 'conn;
                }
                let mut chunk = [0u8; READ_CHUNK];
                let n = match conn.stream.try_read(&mut chunk) {
                    Ok(0) => break 'conn,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue 'conn,
                    Err(_) => break 'conn,
                };
                let data: &[u8] = if carry.is_empty() {
                    &chunk[..n]
                } else {
                    carry.extend_from_slice(&chunk[..n]);
                    &carry
                };
                let mut used = 0;
                let mut publishes = Vec::new();
                loop {
                    match decode(&data[used..], s.version, shared.max_packet) {
                        Ok(Some((packet, len))) => {
                            used += len;
                            if let Next::Close = handle(packet, &mut s, &conn, &shared, &mut publishes) {
                                break 'conn;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => break 'conn,
                    }
                }
                shared.route(&publishes);
                let rest = data[used..].to_vec();
                carry = rest;
            }
            () = conn.wake.notified() => {}
            w = conn.stream.writable(), if backlog => {
                if w.is_err() {
                    break 'conn;
                }
            }
        }
        if conn.flush().is_err() {
            break 'conn;
        }
    }
    for topic in &s.topics {
        shared.unsubscribe(topic, s.id);
    }
}

fn reply(conn: &Conn, packet: &Packet, version: Version) -> bool {
    let mut out = Vec::with_capacity(16);
    if encode(packet, version, &mut out).is_err() {
        return false;
    }
    conn.send(Bytes::from(out))
}

/// Answers `packet`; a PUBLISH is acknowledged and joins `publishes`, routed once the
/// whole read is decoded.
fn handle(packet: Packet, s: &mut Session, conn: &Arc<Conn>, shared: &Shared, publishes: &mut Vec<Publish>) -> Next {
    if !s.connected && !matches!(packet, Packet::Connect(_)) {
        return Next::Close;
    }
    let ok = match packet {
        Packet::Connect(c) => {
            if s.connected {
                return Next::Close;
            }
            s.connected = true;
            s.version = c.version;
            let mut properties = Properties::default();
            if c.version == Version::V5 && c.client_id.is_empty() {
                properties.assigned_client_identifier = Some(format!("bare-{}", s.id));
                properties.user_properties.push(("token".to_owned(), "bare".to_owned()));
            }
            let ack = Connack { session_present: false, code: 0, properties };
            reply(conn, &Packet::Connack(ack), s.version)
        }
        Packet::Subscribe(sub) => {
            let mut codes = Vec::with_capacity(sub.filters.len());
            for f in &sub.filters {
                let qos = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                codes.push(qos as u8);
                shared.subscribe(&f.filter, s.id, Sub { conn: conn.clone(), version: s.version, qos });
                if !s.topics.contains(&f.filter) {
                    s.topics.push(f.filter.clone());
                }
            }
            let ack = Suback { packet_id: sub.packet_id, codes, properties: Properties::default() };
            reply(conn, &Packet::Suback(ack), s.version)
        }
        Packet::Unsubscribe(u) => {
            for f in &u.filters {
                shared.unsubscribe(f, s.id);
                s.topics.retain(|t| t != f);
            }
            let codes = match s.version {
                Version::V5 => vec![0; u.filters.len()],
                Version::V311 => Vec::new(),
            };
            let ack = Unsuback { packet_id: u.packet_id, codes, properties: Properties::default() };
            reply(conn, &Packet::Unsuback(ack), s.version)
        }
        Packet::Pingreq => reply(conn, &Packet::Pingresp, s.version),
        Packet::Publish(p) => {
            let ack = p.packet_id.map(|packet_id| Ack { packet_id, code: 0, properties: Properties::default() });
            let ok = match (p.qos, ack) {
                (QoS::AtLeastOnce, Some(a)) => reply(conn, &Packet::Puback(a), s.version),
                (QoS::ExactlyOnce, Some(a)) => reply(conn, &Packet::Pubrec(a), s.version),
                _ => true,
            };
            publishes.push(p);
            ok
        }
        Packet::Pubrel(a) => reply(conn, &Packet::Pubcomp(a), s.version),
        Packet::Disconnect(_) => return Next::Close,
        // Acknowledgements of what we delivered, and anything else: nothing to do.
        _ => true,
    };
    if ok {
        Next::Continue
    } else {
        Next::Close
    }
}
