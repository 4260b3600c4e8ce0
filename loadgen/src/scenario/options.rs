//! Options shared by the multi-process scenarios (`connect`, `idle`, `fanout`,
//! `unicast`, `churn`): where the load goes (`--target`, `--mqtt`, `--http`), the app
//! credentials, the MQTT version, TLS (`--tls-ca`), the loopback source addresses, the
//! worker count, the report file and the run's hard time bound.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What kind of server the load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A Pushnode node: devices register, sends go over HTTP.
    Pushnode,
    /// Any MQTT broker: plain clients, sends are MQTT PUBLISHes from loadgen.
    Mqtt,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Pushnode => "pushnode",
            Target::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Kind of server under load.
    #[arg(long, value_enum, default_value = "pushnode")]
    pub target: Target,
    /// MQTT address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: String,
    /// Base URL of the node's HTTP API (pushnode only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// App id (pushnode); or use --admin-token-file.
    #[arg(long)]
    pub app_id: Option<String>,
    /// App key (pushnode).
    #[arg(long)]
    pub app_key: Option<String>,
    /// App secret (pushnode).
    #[arg(long)]
    pub app_secret: Option<String>,
    /// Create an app via POST /v1/apps with the Bearer token in this file (pushnode).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Speak MQTT over TLS to --mqtt, trusting the CA certificates in this PEM file.
    /// With --target mqtt only the connect and idle scenarios (their publisher is plain).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (with --tls-ca): a DNS name or an IP.
    #[arg(long, default_value = "localhost")]
    pub tls_server_name: String,
    /// MQTT version, 3 (3.1.1) or 5; default 5 for pushnode, 3 for mqtt.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=5))]
    pub mqtt_version: Option<u8>,
    /// Loopback source addresses, e.g. 127.0.0.2-127.0.0.9 or 127.0.0.2,127.0.0.3.
    #[arg(long, default_value = "127.0.0.2-127.0.0.17", value_parser = parse_source_ips)]
    pub source_ips: SourceIps,
    /// Worker processes; default ceil(connections / 15000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub workers: Option<u32>,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Most TCP connect + CONNECT + SUBSCRIBE handshakes in flight per worker.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Time limit of one connection's handshake (TCP, CONNACK, SUBACK), seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub handshake_timeout_secs: u64,
    /// Keep-alive announced in CONNECT, seconds (PINGREQ every keep-alive/2).
    #[arg(long, default_value_t = 300)]
    pub keep_alive: u16,
    /// HTTP requests in flight per worker (pushnode sends).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http_concurrency: u32,
    /// Send pushnode messages over this many HTTP/2 connections per worker (h2c, prior
    /// knowledge), each carrying many requests at once; 0 = HTTP/1.1, one keep-alive
    /// connection per request in flight.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub http2_connections: u32,
    /// After the load, how long to wait for late deliveries, seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub straggler_secs: u64,
}

impl CommonArgs {
    /// The MQTT version to speak: 5 for `--mqtt-version 5`, 3.1.1 for 3 (4 is
    /// accepted as the protocol level of 3.1.1).
    pub fn mqtt_v5(&self) -> bool {
        match self.mqtt_version {
            Some(v) => v == 5,
            None => self.target == Target::Pushnode,
        }
    }
}

/// A rate in events per second, or 0 for "as fast as possible".
pub fn parse_rate_or_zero(s: &str) -> Result<f64, String> {
    match s.trim() {
        "0" | "0/s" => Ok(0.0),
        other => super::common::parse_rate(other),
    }
}

/// Loopback source addresses connections are spread over, round robin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIps(pub Vec<Ipv4Addr>);

/// Most source addresses in one list.
const MAX_SOURCE_IPS: usize = 65_536;

/// Parses `A-B` (inclusive range) or `A,B,C` (each item may itself be a range);
/// only 127.0.0.0/8 addresses are accepted: load goes to loopback only.
pub fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (parse_loopback(a)?, parse_loopback(b)?),
            None => {
                let ip = parse_loopback(item)?;
                (ip, ip)
            }
        };
        let (a, b) = (u32::from(first), u32::from(last));
        if a > b {
            return Err(format!("bad range {item:?}: first address after last"));
        }
        if (b - a) as usize + out.len() >= MAX_SOURCE_IPS {
            return Err(format!("too many source addresses (at most {MAX_SOURCE_IPS})"));
        }
        out.extend((a..=b).map(Ipv4Addr::from));
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(SourceIps(out))
}

fn parse_loopback(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s.trim().parse().map_err(|_| format!("bad IPv4 address {s:?}"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address (127.0.0.0/8 only)"));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_lists_and_ranges() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4").unwrap().0;
        assert_eq!(ips, vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 4)]);
        let ips = parse_source_ips("127.0.0.2, 127.0.0.9").unwrap().0;
        assert_eq!(ips.len(), 2);
        // A range crossing an octet boundary.
        let ips = parse_source_ips("127.0.0.255-127.0.1.1").unwrap().0;
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[1], Ipv4Addr::new(127, 0, 1, 0));
        let ips = parse_source_ips("127.0.0.2-127.0.0.17").unwrap().0;
        assert_eq!(ips.len(), 16);
    }

    #[test]
    fn source_ips_refuse_non_loopback_and_nonsense() {
        assert!(parse_source_ips("10.0.0.1").is_err());
        assert!(parse_source_ips("127.0.0.1-128.0.0.1").is_err());
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("localhost").is_err());
        assert!(parse_source_ips("127.0.0.0-127.255.255.255").is_err());
    }
}
