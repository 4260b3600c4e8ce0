//! One simulated client, as a small task on the worker's thread: connect (TCP from
//! the worker's source ports, TLS with `--tls-ca`, CONNECT, CONNACK), subscribe, then hold the connection:
//! count deliveries (PUBACKing QoS 1), ping every keep-alive/2, and on a churn signal
//! disconnect cleanly and reconnect as the same device (pushnode: same RegID/token,
//! clean session false). The handshake future is boxed, so only the small holding
//! loop stays allocated while a connection idles.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use core_engine::proto::{self, Ack, Connect, Packet, Properties, QoS, Subscribe, SubscribeFilter, Version};
use loadgen::http_client::HttpClient;
use loadgen::mqtt_client::{
    device_connect, register_connect, registration_from_connack, tcp_connect_from, ClientError, Registration,
    SourcePorts,
};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::{sleep, sleep_until, timeout_at, Instant};

use super::common::unix_micros;
use super::lean_conn::LeanConn;
use super::options::Target;
use super::plan::AppCreds;
use super::tally::Tally;

/// Reconnect attempts after a churn disconnect or a lost connection.
const RECONNECT_ATTEMPTS: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Further attempts at a first connection that timed out, broke or was disconnected by the
/// server before it was up, when the scenario holds its connections
/// (`DeviceCfg::retry_first_connect`), as a device's client would.
const FIRST_CONNECT_RETRIES: u32 = 3;
const FIRST_CONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Which topic a client subscribes to.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// `inbox` (pushnode unicast; delivery happens without it too).
    Inbox,
    /// One topic shared by every client (fan-out).
    Shared(String),
    /// `lg/<worker>-<index>` (plain MQTT unicast).
    PerClient,
}

/// What every client of a worker shares.
pub struct DeviceCfg {
    pub target: Target,
    /// Set for MQTT over TLS.
    pub tls: Option<loadgen::tls::TlsClient>,
    pub version: Version,
    pub server: SocketAddr,
    pub app: Option<AppCreds>,
    pub keep_alive: u16,
    pub handshake_timeout: Duration,
    pub subscription: Subscription,
    pub sub_qos: QoS,
    pub worker: u32,
    /// For MQTT 3.1.1 pushnode devices, which register over HTTP.
    pub http: Option<HttpClient>,
    /// Try a first connection again after a timeout, a broken socket or a DISCONNECT
    /// before it was up (scenarios that hold connections; `connect` measures single
    /// attempts).
    pub retry_first_connect: bool,
    /// The signal (`churn`) means disconnect and stay away (`unicast --offline`), not
    /// reconnect.
    pub leave_when_signalled: bool,
}

impl DeviceCfg {
    /// The plain-MQTT identity of client `idx`: `<worker>-<idx>`.
    pub fn client_suffix(&self, idx: u32) -> String {
        format!("{}-{}", self.worker, idx)
    }

    fn filter(&self, idx: u32) -> String {
        match &self.subscription {
            Subscription::Inbox => loadgen::mqtt_client::INBOX.to_string(),
            Subscription::Shared(t) => t.clone(),
            Subscription::PerClient => format!("lg/{}", self.client_suffix(idx)),
        }
    }
}

/// Why holding a connection ended.
enum HoldEnd {
    Churn,
    Lost(ClientError),
}

/// Runs client `idx` until the process ends: connect (reported to the tally), hold,
/// and reconnect when churned (`churn` notified) or, with churn on, when lost.
pub async fn run_device(
    idx: u32,
    cfg: Rc<DeviceCfg>,
    ports: Rc<SourcePorts>,
    tally: Rc<RefCell<Tally>>,
    permit: OwnedSemaphorePermit,
    churn: Option<Rc<Notify>>,
) {
    let mut established = Box::pin(establish(&cfg, &ports, idx, None, 0, &tally)).await;
    let mut retries = 0;
    while let Err(e) = &established {
        let transient = matches!(
            e,
            ClientError::Timeout(_) | ClientError::Io { .. } | ClientError::Closed | ClientError::Disconnected { .. }
        );
        if !cfg.retry_first_connect || !transient || retries == FIRST_CONNECT_RETRIES {
            break;
        }
        retries += 1;
        tally.borrow_mut().connect_retries += 1;
        sleep(FIRST_CONNECT_PAUSE).await;
        established = Box::pin(establish(&cfg, &ports, idx, None, retries, &tally)).await;
    }
    drop(permit);
    let (mut conn, reg) = match established {
        Ok(ok) => ok,
        Err(e) => {
            tally.borrow_mut().on_failed(e.reason_label(), unix_micros());
            return;
        }
    };
    let address = match &reg {
        Some(r) => r.regid.clone(),
        None => cfg.client_suffix(idx),
    };
    tally.borrow_mut().on_connected(idx, address.into_boxed_str(), unix_micros());
    loop {
        match hold(&mut conn, idx, &cfg, &tally, churn.as_deref()).await {
            HoldEnd::Churn => {
                let _ = Box::pin(conn.disconnect()).await;
                if cfg.leave_when_signalled {
                    tally.borrow_mut().left += 1;
                    return;
                }
            }
            HoldEnd::Lost(e) => {
                tally.borrow_mut().count_failure(format!("lost: {}", e.reason_label()));
                if churn.is_none() {
                    return;
                }
            }
        }
        match Box::pin(reconnect(&cfg, &ports, idx, reg.as_ref(), &tally)).await {
            Some(c) => conn = c,
            None => return,
        }
    }
}

async fn reconnect(
    cfg: &DeviceCfg,
    ports: &SourcePorts,
    idx: u32,
    reg: Option<&Registration>,
    tally: &RefCell<Tally>,
) -> Option<LeanConn> {
    let mut last = String::new();
    for attempt in 0..RECONNECT_ATTEMPTS {
        match establish(cfg, ports, idx, reg, attempt, tally).await {
            Ok((conn, _)) => {
                tally.borrow_mut().reconnects += 1;
                return Some(conn);
            }
            Err(e) => last = e.reason_label(),
        }
        sleep(RECONNECT_PAUSE).await;
    }
    tally.borrow_mut().count_failure(format!("reconnect: {last}"));
    None
}

/// The MQTT client id of plain-MQTT client `idx` on its `attempt`th try in a row (0 the
/// first). A try after a failed one takes an id of its own: the failed try's CONNECT may
/// still be queued at a slow broker (rumqttd), which would then take over the id and close
/// the later, live connection as a duplicate. Sessions are clean, so nothing is lost.
fn mqtt_client_id(suffix: &str, attempt: u32) -> String {
    if attempt == 0 {
        format!("lg-{suffix}")
    } else {
        format!("lg-{suffix}-try{attempt}")
    }
}

/// The CONNECT for this client, registering first over HTTP if it must.
async fn connect_packet(
    cfg: &DeviceCfg,
    idx: u32,
    reg: Option<&Registration>,
    attempt: u32,
    deadline: Instant,
) -> Result<(Connect, Option<Registration>), ClientError> {
    let app = match (cfg.target, &cfg.app) {
        (Target::Mqtt, _) => {
            return Ok((
                Connect {
                    version: cfg.version,
                    client_id: mqtt_client_id(&cfg.client_suffix(idx), attempt),
                    clean_start: true,
                    keep_alive: cfg.keep_alive,
                    username: None,
                    password: None,
                    will: None,
                    properties: Properties::default(),
                },
                None,
            ))
        }
        (Target::Pushnode, Some(app)) => app,
        (Target::Pushnode, None) => {
            return Err(ClientError::Protocol("no app credentials".into()));
        }
    };
    if let Some(reg) = reg {
        let c = device_connect(cfg.version, &app.app_id, reg, cfg.keep_alive, false);
        return Ok((c, Some(reg.clone())));
    }
    if cfg.version == Version::V5 {
        return Ok((register_connect(&app.app_id, &app.app_key, cfg.keep_alive), None));
    }
    // MQTT 3.1.1 cannot register in CONNECT: POST /v1/devices first.
    let Some(http) = &cfg.http else {
        return Err(ClientError::Protocol("no HTTP client to register".into()));
    };
    let limit = deadline.saturating_duration_since(Instant::now());
    let resp = tokio::time::timeout(limit, http.register_device(&app.app_id, &app.app_key))
        .await
        .map_err(|_| ClientError::Timeout("register"))?
        .and_then(|r| r.error_for_status())
        .map_err(|e| ClientError::Protocol(format!("register: {}", e.reason_label())))?;
    let reg: Registration = resp.json().map_err(|e| ClientError::Protocol(format!("register answer: {e}")))?;
    let c = device_connect(cfg.version, &app.app_id, &reg, cfg.keep_alive, false);
    Ok((c, Some(reg)))
}

/// TCP connect, (TLS handshake,) CONNECT/CONNACK, SUBSCRIBE/SUBACK, all within the
/// handshake timeout.
/// Returns the connection and, for pushnode, the device's registration. `attempt` counts
/// the tries in a row before this one.
async fn establish(
    cfg: &DeviceCfg,
    ports: &SourcePorts,
    idx: u32,
    reg: Option<&Registration>,
    attempt: u32,
    tally: &RefCell<Tally>,
) -> Result<(LeanConn, Option<Registration>), ClientError> {
    let deadline = Instant::now() + cfg.handshake_timeout;
    let (connect, mut reg) = connect_packet(cfg, idx, reg, attempt, deadline).await?;
    let registering = reg.is_none() && cfg.target == Target::Pushnode;
    let stream = timeout_at(deadline, tcp_connect_from(cfg.server, ports))
        .await
        .map_err(|_| ClientError::Timeout("connect"))??;
    let mut conn = match &cfg.tls {
        None => LeanConn::new(stream, cfg.version),
        Some(tls) => LeanConn::new_tls(stream, cfg.version, tls.connection().map_err(ClientError::Tls)?),
    };
    let handshake = async {
        conn.handshake().await?;
        conn.send(&Packet::Connect(connect)).await?;
        let connack = loop {
            let mut packets = Vec::new();
            conn.read_some(&mut packets).await?;
            let mut it = packets.into_iter();
            match it.next() {
                None => continue,
                Some(Packet::Connack(c)) if c.code == 0 => {
                    let rest: Vec<Packet> = it.collect();
                    absorb(&mut conn, idx, rest, tally).await?;
                    break c;
                }
                Some(Packet::Connack(c)) => {
                    return Err(ClientError::Refused { v5: cfg.version == Version::V5, code: c.code })
                }
                Some(Packet::Disconnect(d)) => return Err(ClientError::Disconnected { code: d.code }),
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "expected CONNACK, got {}",
                        loadgen::mqtt_client::packet_name(&other)
                    )))
                }
            }
        };
        if registering {
            reg = Some(registration_from_connack(&connack)?);
        }
        conn.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: cfg.filter(idx),
                qos: cfg.sub_qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            }],
            properties: Properties::default(),
        }))
        .await?;
        loop {
            let mut packets = Vec::new();
            conn.read_some(&mut packets).await?;
            for p in absorb(&mut conn, idx, packets, tally).await? {
                match p {
                    Packet::Suback(s) => {
                        return match s.codes.first() {
                            Some(&code) if code < 0x80 => Ok(()),
                            Some(&code) => Err(ClientError::Protocol(format!("suback {code:#04x}"))),
                            None => Err(ClientError::Protocol("empty SUBACK".into())),
                        };
                    }
                    Packet::Disconnect(d) => return Err(ClientError::Disconnected { code: d.code }),
                    _ => {}
                }
            }
        }
    };
    timeout_at(deadline, handshake).await.map_err(|_| ClientError::Timeout("handshake"))??;
    Ok((conn, reg))
}

/// Counts the PUBLISHes among `packets` as deliveries and PUBACKs the QoS 1 ones (one
/// write); returns the other packets.
async fn absorb(
    conn: &mut LeanConn,
    idx: u32,
    packets: Vec<Packet>,
    tally: &RefCell<Tally>,
) -> Result<Vec<Packet>, ClientError> {
    let mut acks = Vec::new();
    let mut others = Vec::new();
    let version = conn.version();
    for p in packets {
        match p {
            Packet::Publish(publish) => {
                let now = unix_micros();
                tally.borrow_mut().on_delivery(idx, &publish.payload, now);
                if let (QoS::AtLeastOnce, Some(id)) = (publish.qos, publish.packet_id) {
                    let ack = Packet::Puback(Ack { packet_id: id, code: 0, properties: Properties::default() });
                    proto::encode(&ack, version, &mut acks)
                        .map_err(|e| ClientError::Protocol(format!("encode: {e}")))?;
                }
            }
            other => others.push(other),
        }
    }
    if !acks.is_empty() {
        conn.send_bytes(&acks).await?;
    }
    Ok(others)
}

/// Holds an established connection until it is lost or churned.
async fn hold(
    conn: &mut LeanConn,
    idx: u32,
    cfg: &DeviceCfg,
    tally: &RefCell<Tally>,
    churn: Option<&Notify>,
) -> HoldEnd {
    let ping_every = Duration::from_secs(u64::from(cfg.keep_alive.max(2) / 2));
    let mut next_ping = Instant::now() + ping_every;
    loop {
        let mut packets = Vec::new();
        tokio::select! {
            read = conn.read_some(&mut packets) => {
                if let Err(e) = read {
                    return HoldEnd::Lost(e);
                }
                // Boxed: its state is only needed while packets are handled, not
                // while the connection idles in this loop.
                match Box::pin(absorb(conn, idx, packets, tally)).await {
                    Err(e) => return HoldEnd::Lost(e),
                    Ok(others) => {
                        for p in others {
                            if let Packet::Disconnect(d) = p {
                                return HoldEnd::Lost(ClientError::Disconnected { code: d.code });
                            }
                        }
                    }
                }
            }
            _ = sleep_until(next_ping) => {
                if let Err(e) = Box::pin(conn.send(&Packet::Pingreq)).await {
                    return HoldEnd::Lost(e);
                }
                next_ping = Instant::now() + ping_every;
            }
            _ = async {
                match churn {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            } => return HoldEnd::Churn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{mqtt_client_id, FIRST_CONNECT_RETRIES};

    #[test]
    fn a_retry_never_reuses_an_earlier_tries_client_id() {
        let ids: Vec<String> = (0..=FIRST_CONNECT_RETRIES).map(|a| mqtt_client_id("1-7", a)).collect();
        assert_eq!(ids[0], "lg-1-7", "the first try keeps the plain id");
        for (i, id) in ids.iter().enumerate() {
            assert!(ids[i + 1..].iter().all(|later| later != id), "{id} reused");
        }
        assert_ne!(mqtt_client_id("1-7", 1), mqtt_client_id("1-71", 0));
    }
}
