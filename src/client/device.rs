//! `pushnode device`: a command-line MQTT device. It registers (MQTT 5 CONNECT with the
//! app key, or `POST /v1/devices` for MQTT 3.1.1) or reconnects with the RegID/token
//! kept in its state file, subscribes to `inbox`, prints each push's JSON envelope as
//! one line on stdout, acknowledges it with PUBACK, pings every keep-alive/2, and exits
//! after `--count` pushes if given.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use core_engine::proto::{Packet, QoS, Version};
use loadgen::http_client::HttpClient;
use loadgen::mqtt_client::{
    device_connect, packet_name, reason_name, resolve, tcp_connect, with_timeout, ClientError, MqttConn, Registration,
};
use tokio::time::Instant;

use super::{runtime, DEFAULT_HTTP, HTTP_TIMEOUT};

/// Keep-alive announced in CONNECT, seconds.
pub const KEEP_ALIVE: u16 = 60;
/// Time limit of the TCP connect and of the CONNECT/CONNACK exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// App id (MQTT user name).
    #[arg(long)]
    pub app_id: String,
    /// App key, used to register when there is no state file.
    #[arg(long)]
    pub app_key: String,
    /// Node MQTT address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// File keeping this device's RegID and token between runs.
    #[arg(long, default_value = "./device.json")]
    pub state: PathBuf,
    /// Exit after this many pushes.
    #[arg(long)]
    pub count: Option<u64>,
    /// MQTT version: 5 or 3 (3.1.1).
    #[arg(long, default_value = "5", value_parser = parse_mqtt_version)]
    pub mqtt_version: u8,
    /// Base URL of the node's HTTP API (only used to register over MQTT 3.1.1).
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: String,
}

/// Accepts `5` / `5.0` and `3` / `3.1.1` / `311` / `4` (3.1.1's protocol level).
pub fn parse_mqtt_version(s: &str) -> Result<u8, String> {
    match s.trim() {
        "5" | "5.0" => Ok(5),
        "3" | "3.1.1" | "311" | "4" => Ok(3),
        other => Err(format!("unsupported MQTT version {other:?} (use 5 or 3)")),
    }
}

fn version_of(v: u8) -> Version {
    if v == 3 {
        Version::V311
    } else {
        Version::V5
    }
}

/// Loads the state file; `None` if it does not exist.
pub fn load_state(path: &Path) -> anyhow::Result<Option<Registration>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let reg: Registration = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a device state file {{\"regid\",\"token\"}}", path.display()))?;
            Ok(Some(reg))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the state file (through a temporary file and a rename).
pub fn save_state(path: &Path, reg: &Registration) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec(reg)?;
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn run_device(args: DeviceArgs) -> anyhow::Result<()> {
    runtime()?.block_on(device(args))
}

async fn open(addr: std::net::SocketAddr, version: Version) -> anyhow::Result<MqttConn> {
    let stream = with_timeout("TCP connect", HANDSHAKE_TIMEOUT, tcp_connect(addr, None))
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(MqttConn::new(stream, version))
}

fn refused_context(e: &ClientError, what: &str) -> String {
    match e {
        ClientError::Refused { .. } => format!("{what} refused by the node"),
        _ => format!("{what} failed"),
    }
}

async fn device(args: DeviceArgs) -> anyhow::Result<()> {
    let version = version_of(args.mqtt_version);
    let addr = resolve(&args.mqtt, HANDSHAKE_TIMEOUT).await?;
    let mut conn = match load_state(&args.state)? {
        Some(reg) => {
            let mut conn = open(addr, version).await?;
            let connect = device_connect(version, &args.app_id, &reg, KEEP_ALIVE, false);
            let connack = with_timeout("CONNACK", HANDSHAKE_TIMEOUT, conn.handshake(connect)).await.map_err(|e| {
                let ctx = refused_context(&e, &format!("reconnect as {}", reg.regid));
                anyhow::Error::new(e).context(ctx)
            })?;
            if !connack.session_present {
                eprintln!("note: the node reported no session present for {}", reg.regid);
            }
            conn
        }
        None if matches!(version, Version::V5) => {
            let mut conn = open(addr, version).await?;
            let reg =
                with_timeout("CONNACK", HANDSHAKE_TIMEOUT, conn.register(&args.app_id, &args.app_key, KEEP_ALIVE))
                    .await
                    .map_err(|e| {
                        let ctx = refused_context(&e, "registration");
                        anyhow::Error::new(e).context(ctx)
                    })?;
            save_state(&args.state, &reg)?;
            eprintln!("registered regid={}", reg.regid);
            conn
        }
        None => {
            // MQTT 3.1.1 cannot assign a client id: register over HTTP, then connect.
            let http = HttpClient::new(&args.http, HTTP_TIMEOUT)?;
            let resp = http.register_device(&args.app_id, &args.app_key).await?.error_for_status()?;
            let reg: Registration =
                resp.json().with_context(|| format!("unexpected answer to POST /v1/devices: {}", resp.text()))?;
            save_state(&args.state, &reg)?;
            eprintln!("registered regid={}", reg.regid);
            let mut conn = open(addr, version).await?;
            let connect = device_connect(version, &args.app_id, &reg, KEEP_ALIVE, false);
            with_timeout("CONNACK", HANDSHAKE_TIMEOUT, conn.handshake(connect)).await.map_err(|e| {
                let ctx = refused_context(&e, &format!("connect as {}", reg.regid));
                anyhow::Error::new(e).context(ctx)
            })?;
            conn
        }
    };
    if args.count == Some(0) {
        let _ = with_timeout("DISCONNECT", HANDSHAKE_TIMEOUT, conn.disconnect()).await;
        return Ok(());
    }
    conn.subscribe_inbox(1).await?;
    receive_loop(&mut conn, version, args.count).await
}

/// Prints and acknowledges pushes until `count` (if any) have arrived; pings every
/// keep-alive/2 and gives up when the node is silent for 1.5 x keep-alive.
async fn receive_loop(conn: &mut MqttConn, version: Version, count: Option<u64>) -> anyhow::Result<()> {
    let keep_alive = Duration::from_secs(u64::from(KEEP_ALIVE));
    let ping_every = keep_alive / 2;
    let silence_limit = keep_alive * 3 / 2;
    let mut next_ping = Instant::now() + ping_every;
    let mut last_rx = Instant::now();
    let mut received: u64 = 0;
    let mut tray = super::tray::Tray::default();
    loop {
        let dead_at = last_rx + silence_limit;
        let packet = match tokio::time::timeout_at(next_ping.min(dead_at), conn.read_packet()).await {
            Ok(p) => p.context("reading from the node")?,
            Err(_) => {
                let now = Instant::now();
                if now >= dead_at {
                    bail!("the node was silent for {}s", silence_limit.as_secs());
                }
                conn.pingreq().await?;
                next_ping = now + ping_every;
                continue;
            }
        };
        last_rx = Instant::now();
        match packet {
            Packet::Publish(p) => {
                {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&p.payload)?;
                    out.write_all(b"\n")?;
                    out.flush()?;
                }
                show_in_tray(&mut tray, &p.payload);
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => conn.puback(id).await?,
                    (QoS::AtMostOnce, _) => {}
                    (qos, _) => {
                        eprintln!("warning: push with unexpected QoS {qos:?} not acknowledged")
                    }
                }
                received += 1;
                if count == Some(received) {
                    let _ = with_timeout("DISCONNECT", HANDSHAKE_TIMEOUT, conn.disconnect()).await;
                    return Ok(());
                }
            }
            Packet::Suback(s) => {
                if let Some(code) = s.codes.iter().find(|c| **c >= 0x80) {
                    eprintln!(
                        "warning: SUBSCRIBE inbox refused: code {code:#04x} ({})",
                        reason_name(matches!(version, Version::V5), *code)
                    );
                }
            }
            Packet::Pingresp | Packet::Unsuback(_) => {}
            Packet::Disconnect(d) => {
                let v5 = matches!(version, Version::V5);
                bail!("the node disconnected: reason code {:#04x} ({})", d.code, reason_name(v5, d.code));
            }
            other => eprintln!("warning: ignoring unexpected {}", packet_name(&other)),
        }
    }
}

/// Shows a notification in the tray and says on stderr what changed; pass-through
/// messages go to the app, not the tray.
fn show_in_tray(tray: &mut super::tray::Tray, payload: &[u8]) {
    let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(payload) else { return };
    if envelope["type"] != "notification" {
        return;
    }
    let id = envelope["id"].as_str().unwrap_or_default().to_owned();
    let notify_id = envelope["notify_id"].as_i64().unwrap_or(0);
    let change = tray.show(notify_id, id);
    eprintln!("tray: {change:?} categories={:?}", tray.categories());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        device: DeviceArgs,
    }

    #[test]
    fn defaults_and_versions() {
        let cli = Cli::try_parse_from(["x", "--app-id", "a", "--app-key", "k"]).unwrap();
        assert_eq!(cli.device.mqtt, "127.0.0.1:1883");
        assert_eq!(cli.device.state, PathBuf::from("./device.json"));
        assert_eq!(cli.device.mqtt_version, 5);
        assert_eq!(cli.device.count, None);
        let cli = Cli::try_parse_from(["x", "--app-id", "a", "--app-key", "k", "--mqtt-version", "3", "--count", "2"])
            .unwrap();
        assert_eq!(cli.device.mqtt_version, 3);
        assert_eq!(cli.device.count, Some(2));
        assert!(Cli::try_parse_from(["x", "--app-id", "a", "--app-key", "k", "--mqtt-version", "4.5"]).is_err());
    }

    #[test]
    fn state_file_round_trip() {
        let path = std::env::temp_dir().join(format!("pushnode-device-test-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        assert!(load_state(&path).unwrap().is_none());
        let reg = Registration { regid: "r".into(), token: "t".into() };
        save_state(&path, &reg).unwrap();
        assert_eq!(load_state(&path).unwrap(), Some(reg));
        std::fs::write(&path, b"{}").unwrap();
        assert!(load_state(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
