//! Small async MQTT client for pushnode's device profile (docs/protocol.md, "Device
//! side"), built on the engine's sans-IO codec (`core_engine::proto`).
//!
//! It owns: opening a TCP connection (optionally bound to a source address), the
//! CONNECT/CONNACK handshake (register with app id/key, or reconnect with RegID/token),
//! reading packets through a small reusable read buffer that grows only for packets
//! that do not fit (and shrinks back afterwards), and the few packets a device sends
//! (SUBSCRIBE `inbox`, PUBACK, PINGREQ, DISCONNECT).
//!
//! Nothing here waits forever on its own: callers bound each await with
//! [`with_timeout`] / `tokio::time::timeout_at`. [`MqttConn::read_packet`] is
//! cancel-safe, so it can sit inside a timeout or `select!` without losing bytes.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use core_engine::proto::{
    self, Ack, Connack, Connect, Disconnect, Packet, Properties, QoS, Subscribe, SubscribeFilter, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial (and resting) capacity of a connection's read buffer.
pub const DEFAULT_READ_BUF: usize = 256;
/// Largest packet accepted from the node.
pub const MAX_PACKET_SIZE: usize = 1 << 20;
/// A read buffer that grew beyond this is given back once it is empty.
const SHRINK_ABOVE: usize = 4096;
/// The push topic.
pub const INBOX: &str = "inbox";

/// Why an MQTT client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed; `context` names the step (`socket`, `bind`,
    /// `connect`, `read`, `write`, `resolve`).
    #[error("{context}: {error}")]
    Io { context: &'static str, error: io::Error },
    /// The named step did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The node closed the connection.
    #[error("connection closed by the node")]
    Closed,
    /// CONNACK with a non-zero reason / return code.
    #[error("CONNACK refused: reason code {code:#04x} ({name})", name = reason_name(*v5, *code))]
    Refused { v5: bool, code: u8 },
    /// The node sent DISCONNECT (MQTT 5).
    #[error("DISCONNECT from the node: reason code {code:#04x} ({name})", name = reason_name(true, *code))]
    Disconnected { code: u8 },
    /// Unexpected or malformed packet, or an encode failure.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The TLS layer failed (handshake, certificate, record).
    #[error("TLS: {0}")]
    Tls(rustls::Error),
}

impl ClientError {
    /// A short label suitable for counting failures by reason, e.g. `connack 0x87`,
    /// `timeout connect`, `connect: Connection refused (os error 111)`.
    pub fn reason_label(&self) -> String {
        match self {
            ClientError::Io { context, error } => format!("{context}: {error}"),
            ClientError::Timeout(what) => format!("timeout {what}"),
            ClientError::Closed => "closed".to_string(),
            ClientError::Refused { code, .. } => format!("connack {code:#04x}"),
            ClientError::Disconnected { code } => format!("disconnect {code:#04x}"),
            ClientError::Protocol(_) => "protocol error".to_string(),
            ClientError::Tls(error) => format!("tls: {error}"),
        }
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> ClientError {
    move |error| ClientError::Io { context, error }
}

/// Runs `fut` for at most `limit`; on expiry fails with [`ClientError::Timeout`]`(what)`.
pub async fn with_timeout<T>(
    what: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(what)),
    }
}

/// Human name of a CONNACK / DISCONNECT reason code (MQTT 5) or a 3.1.1 CONNACK
/// return code.
pub fn reason_name(v5: bool, code: u8) -> &'static str {
    if !v5 {
        return match code {
            0 => "accepted",
            1 => "unacceptable protocol version",
            2 => "identifier rejected",
            3 => "server unavailable",
            4 => "bad user name or password",
            5 => "not authorized",
            _ => "unknown return code",
        };
    }
    match code {
        0x00 => "success",
        0x04 => "disconnect with will message",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "unknown reason code",
    }
}

/// Resolves `host:port` to its first socket address, within `limit`.
pub async fn resolve(addr: &str, limit: Duration) -> Result<SocketAddr, ClientError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let mut addrs =
        with_timeout("resolve", limit, async { tokio::net::lookup_host(addr).await.map_err(io_err("resolve")) })
            .await?;
    addrs.next().ok_or_else(|| ClientError::Io {
        context: "resolve",
        error: io::Error::new(io::ErrorKind::NotFound, format!("no address for {addr}")),
    })
}

/// Opens a TCP connection to `addr`, bound first to `source` (port 0) if given.
/// Not bounded in time by itself: wrap it in a timeout.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ClientError> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(io_err("socket"))?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(io_err("bind"))?;
    }
    let stream = socket.connect(addr).await.map_err(io_err("connect"))?;
    stream.set_nodelay(true).map_err(io_err("connect"))?;
    Ok(stream)
}

/// Hands out explicit local ports on one source address. Binding many sockets to
/// port 0 makes Linux search its (odd-port-first) ephemeral range on every bind, which
/// turns quadratic past ~14k sockets per address; an explicit port is a hash lookup.
/// Ports are taken in order from `first..=last`, wrapping around.
#[derive(Debug)]
pub struct SourcePorts {
    ip: IpAddr,
    first: u16,
    span: u32,
    next: AtomicU32,
}

impl SourcePorts {
    /// Ports `first..=last` of `ip` (swapped if given in reverse order).
    pub fn new(ip: IpAddr, first: u16, last: u16) -> Self {
        let (first, last) = if first <= last { (first, last) } else { (last, first) };
        SourcePorts { ip, first, span: u32::from(last - first) + 1, next: AtomicU32::new(0) }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        self.span
    }

    pub fn is_empty(&self) -> bool {
        self.span == 0
    }

    fn take(&self) -> u16 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.span;
        // n < span <= 65536 and first + n <= last, so this fits.
        u16::try_from(u32::from(self.first) + n).unwrap_or(self.first)
    }
}

/// Opens a TCP connection to `addr` from the next free port of `ports`: ports in use
/// (bind fails with "address in use") or whose 4-tuple is taken are skipped, up to one
/// pass over the range. Other errors fail at once. Not bounded in time by itself: wrap it
/// in a timeout.
pub async fn tcp_connect_from(addr: SocketAddr, ports: &SourcePorts) -> Result<TcpStream, ClientError> {
    for _ in 0..ports.len() {
        let port = ports.take();
        let socket =
            if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(io_err("socket"))?;
        // A port an earlier run left in TIME_WAIT (it set this too) binds again: without it,
        // every run after the first walked past the previous run's ports one failed bind at
        // a time, and a target's connect rate depended on which ran before it.
        socket.set_reuseaddr(true).map_err(io_err("socket"))?;
        match socket.bind(SocketAddr::new(ports.ip, port)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(io_err("bind")(e)),
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(io_err("connect"))?;
                return Ok(stream);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable) => continue,
            Err(e) => return Err(io_err("connect")(e)),
        }
    }
    Err(ClientError::Io {
        context: "bind",
        error: io::Error::new(io::ErrorKind::AddrInUse, format!("no free local port on {}", ports.ip)),
    })
}

/// What a device keeps between runs: its RegID and token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    pub regid: String,
    pub token: String,
}

/// CONNECT that registers a new device (MQTT 5 only): empty client id, username =
/// app id, password = app key.
pub fn register_connect(app_id: &str, app_key: &str, keep_alive: u16) -> Connect {
    Connect {
        version: Version::V5,
        client_id: String::new(),
        clean_start: true,
        keep_alive,
        username: Some(app_id.to_string()),
        password: Some(app_key.as_bytes().to_vec()),
        will: None,
        properties: Properties::default(),
    }
}

/// CONNECT of a registered device: client id = RegID, username = app id,
/// password = token.
pub fn device_connect(
    version: Version,
    app_id: &str,
    reg: &Registration,
    keep_alive: u16,
    clean_start: bool,
) -> Connect {
    Connect {
        version,
        client_id: reg.regid.clone(),
        clean_start,
        keep_alive,
        username: Some(app_id.to_string()),
        password: Some(reg.token.as_bytes().to_vec()),
        will: None,
        properties: Properties::default(),
    }
}

/// Reads the RegID and token out of a registration CONNACK.
pub fn registration_from_connack(connack: &Connack) -> Result<Registration, ClientError> {
    let regid = connack
        .properties
        .assigned_client_identifier
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ClientError::Protocol("CONNACK without an Assigned Client Identifier".into()))?;
    let token = connack
        .properties
        .user_properties
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ClientError::Protocol("CONNACK without a `token` user property".into()))?;
    Ok(Registration { regid, token })
}

/// One MQTT connection: a TCP stream plus a small, reusable read buffer.
pub struct MqttConn {
    stream: TcpStream,
    version: Version,
    buf: Vec<u8>,
}

impl MqttConn {
    pub fn new(stream: TcpStream, version: Version) -> Self {
        MqttConn { stream, version, buf: Vec::with_capacity(DEFAULT_READ_BUF) }
    }

    fn is_v5(&self) -> bool {
        matches!(self.version, Version::V5)
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(64);
        proto::encode(packet, self.version, &mut out).map_err(|e| ClientError::Protocol(format!("encode: {e}")))?;
        self.stream.write_all(&out).await.map_err(io_err("write"))
    }

    /// Reads the next packet. Cancel-safe: bytes already read stay in the buffer.
    pub async fn read_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if !self.buf.is_empty() {
                match proto::decode(&self.buf, self.version, MAX_PACKET_SIZE) {
                    Ok(Some((packet, used))) => {
                        let used = used.min(self.buf.len());
                        self.buf.drain(..used);
                        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
                            self.buf = Vec::with_capacity(DEFAULT_READ_BUF);
                        }
                        return Ok(packet);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ClientError::Protocol(format!("malformed packet from the node: {e}"))),
                }
            }
            if self.buf.len() == self.buf.capacity() {
                // Grow only when a packet does not fit; doubling keeps it amortised.
                self.buf.reserve(self.buf.capacity().max(DEFAULT_READ_BUF));
            }
            let n = self.stream.read_buf(&mut self.buf).await.map_err(io_err("read"))?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Sends CONNECT and reads CONNACK. A non-zero code is [`ClientError::Refused`].
    /// Not bounded in time by itself.
    pub async fn handshake(&mut self, connect: Connect) -> Result<Connack, ClientError> {
        self.send(&Packet::Connect(connect)).await?;
        match self.read_packet().await? {
            Packet::Connack(c) if c.code == 0 => Ok(c),
            Packet::Connack(c) => Err(ClientError::Refused { v5: self.is_v5(), code: c.code }),
            Packet::Disconnect(d) => Err(ClientError::Disconnected { code: d.code }),
            other => Err(ClientError::Protocol(format!("expected CONNACK, got {}", packet_name(&other)))),
        }
    }

    /// Registers a new device over this (MQTT 5) connection; the connection stays
    /// open as the device's session.
    pub async fn register(
        &mut self,
        app_id: &str,
        app_key: &str,
        keep_alive: u16,
    ) -> Result<Registration, ClientError> {
        let connack = self.handshake(register_connect(app_id, app_key, keep_alive)).await?;
        registration_from_connack(&connack)
    }

    /// SUBSCRIBE `inbox` at QoS 1.
    pub async fn subscribe_inbox(&mut self, packet_id: u16) -> Result<(), ClientError> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: INBOX.to_string(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            properties: Properties::default(),
        }))
        .await
    }

    /// PUBACK (success) for `packet_id`.
    pub async fn puback(&mut self, packet_id: u16) -> Result<(), ClientError> {
        self.send(&Packet::Puback(Ack { packet_id, code: 0, properties: Properties::default() })).await
    }

    pub async fn pingreq(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::Pingreq).await
    }

    /// Normal DISCONNECT, then close the write side.
    pub async fn disconnect(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() })).await?;
        self.stream.shutdown().await.map_err(io_err("write"))
    }
}

/// Name of a packet's type, for messages.
pub fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::Connack(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::Puback(_) => "PUBACK",
        Packet::Pubrec(_) => "PUBREC",
        Packet::Pubrel(_) => "PUBREL",
        Packet::Pubcomp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::Suback(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::Unsuback(_) => "UNSUBACK",
        Packet::Pingreq => "PINGREQ",
        Packet::Pingresp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_and_names() {
        assert_eq!(reason_name(true, 0x87), "not authorized");
        assert_eq!(reason_name(false, 4), "bad user name or password");
        let e = ClientError::Refused { v5: true, code: 0x86 };
        assert_eq!(e.reason_label(), "connack 0x86");
        assert!(e.to_string().contains("bad user name or password"));
        assert_eq!(ClientError::Timeout("connack").reason_label(), "timeout connack");
    }

    #[test]
    fn source_ports_wrap_within_range() {
        let p = SourcePorts::new(IpAddr::from([127, 0, 0, 2]), 65534, 65535);
        assert_eq!(p.len(), 2);
        assert_eq!([p.take(), p.take(), p.take()], [65534, 65535, 65534]);
        let all = SourcePorts::new(IpAddr::from([127, 0, 0, 2]), 0, 65535);
        assert_eq!(all.len(), 65536);
    }

    #[tokio::test]
    async fn connect_from_skips_busy_ports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        // Occupy one port of a two-port range; the connection must use the other.
        let busy = std::net::TcpListener::bind("127.0.0.5:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let ports = SourcePorts::new(IpAddr::from([127, 0, 0, 5]), busy_port, busy_port.wrapping_add(1));
        let s = tcp_connect_from(target, &ports).await.unwrap();
        assert_eq!(s.local_addr().unwrap().port(), busy_port.wrapping_add(1));
    }

    #[test]
    fn registration_needs_regid_and_token() {
        let mut c = Connack { session_present: false, code: 0, properties: Properties::default() };
        assert!(registration_from_connack(&c).is_err());
        c.properties.assigned_client_identifier = Some("r1".into());
        assert!(registration_from_connack(&c).is_err());
        c.properties.user_properties.push(("token".into(), "t1".into()));
        assert_eq!(registration_from_connack(&c).ok(), Some(Registration { regid: "r1".into(), token: "t1".into() }));
    }
}
