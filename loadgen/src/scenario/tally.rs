//! A worker's shared bookkeeping, filled by its connection tasks and senders on one
//! thread (`Rc<RefCell<Tally>>`): connects and failures by reason, the addresses of
//! connected devices, deliveries with their latency, and, for churn, which message
//! ids every device received (to count duplicates and losses).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::histogram::LatencyHist;
use super::plan::Progress;

/// Per-worker counters.
#[derive(Default)]
pub struct Tally {
    pub connected: u64,
    pub settled: u64,
    pub failed: BTreeMap<String, u64>,
    /// Per connection: its address (pushnode RegID, or mqtt topic suffix) once connected.
    pub addresses: Vec<Option<Box<str>>>,
    /// Indices of connected devices, in connect order.
    pub live: Vec<u32>,
    pub connect_start_us: u64,
    pub connect_end_us: u64,
    pub sent: u64,
    /// Accepted targets by the worker holding them (a spread run).
    pub sent_to: Vec<u64>,
    pub deliveries: u64,
    pub first_send_us: u64,
    pub last_delivery_us: u64,
    pub latency: LatencyHist,
    /// Deliveries whose payload held no timestamp.
    pub unparsed: u64,
    /// Track (device, message id) pairs (churn).
    pub track_ids: bool,
    pub received_ids: HashSet<(u32, Box<str>)>,
    pub duplicates: u64,
    pub reconnects: u64,
    /// First connections tried again after a timeout, a broken socket or an early
    /// DISCONNECT.
    pub connect_retries: u64,
    /// Devices that disconnected for good when told to (`unicast --offline`).
    pub left: u64,
    pub send_start_us: u64,
    pub send_end_us: u64,
    pub lost: u64,
}

/// What a delivery carried: its message id (pushnode envelope) and send time.
#[derive(Debug, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub id: Option<String>,
    pub sent_us: Option<u64>,
}

/// Reads a delivery payload: a pushnode envelope `{"id","payload":"<micros>",...}`,
/// or a bare decimal timestamp (plain MQTT). The id is read only if `want_id`. Nothing is
/// allocated unless the id is wanted or a string holds escapes: it runs for every delivery,
/// and loadgen's share of the machine is the servers' loss.
pub fn parse_delivery(payload: &[u8], want_id: bool) -> DeliveryInfo {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        payload: Option<Cow<'a, str>>,
    }
    if payload.first() == Some(&b'{') {
        return match serde_json::from_slice::<Envelope>(payload) {
            Ok(env) => DeliveryInfo {
                id: env
                    .id
                    .filter(|_| want_id)
                    .map(|raw| serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned())),
                sent_us: env.payload.and_then(|p| p.trim().parse().ok()),
            },
            Err(_) => DeliveryInfo { id: None, sent_us: None },
        };
    }
    DeliveryInfo { id: None, sent_us: std::str::from_utf8(payload).ok().and_then(|s| s.trim().parse().ok()) }
}

impl Tally {
    pub fn new(connections: u32) -> Self {
        Tally { addresses: vec![None; connections as usize], ..Tally::default() }
    }

    pub fn on_connected(&mut self, idx: u32, address: Box<str>, now_us: u64) {
        self.connected += 1;
        self.settled += 1;
        self.connect_end_us = now_us;
        if let Some(slot) = self.addresses.get_mut(idx as usize) {
            *slot = Some(address);
        }
        self.live.push(idx);
    }

    pub fn on_failed(&mut self, reason: String, now_us: u64) {
        self.settled += 1;
        self.connect_end_us = now_us;
        *self.failed.entry(reason).or_default() += 1;
    }

    /// A failure after the connect phase (a lost connection, a failed send...).
    pub fn count_failure(&mut self, reason: String) {
        *self.failed.entry(reason).or_default() += 1;
    }

    pub fn on_delivery(&mut self, idx: u32, payload: &[u8], recv_us: u64) {
        let info = parse_delivery(payload, self.track_ids);
        if self.track_ids {
            if let Some(id) = info.id {
                if !self.received_ids.insert((idx, id.into_boxed_str())) {
                    self.duplicates += 1;
                    return;
                }
            }
        }
        self.deliveries += 1;
        self.last_delivery_us = self.last_delivery_us.max(recv_us);
        match info.sent_us {
            Some(sent) => self.latency.record(recv_us.saturating_sub(sent)),
            None => self.unparsed += 1,
        }
    }

    /// An HTTP send to offline devices answered at `answer_us`: its latency is the
    /// answer's, and it counts as delivered (stored) for every accepted target.
    pub fn on_answered(&mut self, accepted: u64, send_us: u64, answer_us: u64) {
        self.latency.record(answer_us.saturating_sub(send_us));
        self.deliveries += accepted;
        self.last_delivery_us = self.last_delivery_us.max(answer_us);
    }

    pub fn note_send(&mut self, accepted: u64, send_us: u64) {
        self.sent += accepted;
        if self.first_send_us == 0 || send_us < self.first_send_us {
            self.first_send_us = send_us;
        }
    }

    /// One accepted target held by worker `owner`.
    pub fn note_sent_to(&mut self, owner: u32) {
        let owner = owner as usize;
        if self.sent_to.len() <= owner {
            self.sent_to.resize(owner + 1, 0);
        }
        self.sent_to[owner] += 1;
    }

    /// Of `expected` (device, message id) pairs, how many never arrived.
    pub fn count_lost(&self, expected: &[(u32, Box<str>)]) -> u64 {
        expected.iter().filter(|(idx, id)| !self.received_ids.contains(&(*idx, id.clone()))).count() as u64
    }

    pub fn progress(&self) -> Progress {
        Progress {
            connected: self.connected,
            failed: self.failed.values().sum(),
            sent: self.sent,
            deliveries: self.deliveries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            parse_delivery(br#"{"id":"m7","type":"passthrough","payload":"1700000000000123"}"#, true),
            DeliveryInfo { id: Some("m7".into()), sent_us: Some(1_700_000_000_000_123) }
        );
        assert_eq!(parse_delivery(br#"{"id":12,"payload":"x"}"#, true).id.as_deref(), Some("12"));
        assert_eq!(parse_delivery(br#"{"id":"a\"b","payload":" 5"}"#, true).id.as_deref(), Some("a\"b"));
        assert_eq!(
            parse_delivery(br#"{"id":"m7","payload":"\u0037"}"#, false),
            DeliveryInfo { id: None, sent_us: Some(7) },
            "an escaped payload still reads; the id only when wanted"
        );
        assert_eq!(parse_delivery(b"42", true).sent_us, Some(42));
        assert_eq!(parse_delivery(b"{broken", true).sent_us, None);
        assert_eq!(parse_delivery(b"", true).sent_us, None);
    }

    #[test]
    fn duplicates_and_losses() {
        let mut t = Tally::new(2);
        t.track_ids = true;
        t.on_connected(0, "r0".into(), 1);
        t.on_connected(1, "r1".into(), 2);
        let m = |id: &str| format!(r#"{{"id":"{id}","payload":"100"}}"#).into_bytes();
        t.on_delivery(0, &m("a"), 300);
        t.on_delivery(0, &m("a"), 400); // re-sent after a reconnect
        t.on_delivery(1, &m("a"), 350); // same message, other device: not a duplicate
        t.on_delivery(1, &m("b"), 360);
        assert_eq!((t.deliveries, t.duplicates), (3, 1));
        assert_eq!(t.latency.count(), 3);
        assert_eq!(t.last_delivery_us, 360);
        let expected: Vec<(u32, Box<str>)> = vec![(0, "a".into()), (1, "a".into()), (1, "b".into()), (0, "c".into())];
        assert_eq!(t.count_lost(&expected), 1);
        t.on_failed("timeout connect".into(), 5);
        assert_eq!(t.progress().failed, 1);
        assert_eq!(t.settled, 3);
    }
}
