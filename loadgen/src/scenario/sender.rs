//! How a worker sends load: [`HttpSender`] posts pushnode messages (`POST
//! /v1/messages`, a bounded number in flight), [`MqttPublisher`] PUBLISHes to a plain
//! broker over its own connection (QoS 1 ids and an in-flight window released by the
//! PUBACKs a reader task drains).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use core_engine::proto::{self, Connect, Packet, Properties, Publish, QoS, Version};
use loadgen::frame_reader::FrameReader;
use loadgen::http_client::HttpClient;
use loadgen::mqtt_client::{tcp_connect_from, ClientError, SourcePorts};
use loadgen::packet_ids::PacketIds;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use super::h2_poster::H2Poster;
use super::keepalive::{Answer, KeepAlivePoster, PostError};

/// What `POST /v1/messages` answered.
#[derive(Debug, Default)]
pub struct SendOutcome {
    /// The message id (200 only).
    pub id: Option<String>,
    /// RegIDs the node listed as invalid.
    pub invalid: Vec<String>,
}

/// Posts messages to a pushnode node with at most `concurrency` requests in flight.
#[derive(Clone)]
pub struct HttpSender {
    poster: Poster,
    slots: Arc<Semaphore>,
    concurrency: u32,
}

/// A passthrough push's body, serialized straight from borrowed parts: no `serde_json::Value`
/// tree (maps, vectors and strings allocated per request) on the load sender's hot path.
#[derive(serde::Serialize)]
pub struct PushBody<'a> {
    pub target: PushTarget<'a>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub payload: String,
}

/// Who a [`PushBody`] goes to: `{"regids": [...]}` or `{"topic": "..."}`.
#[derive(serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushTarget<'a> {
    Regids(Vec<&'a str>),
    Topic(&'a str),
}

impl<'a> PushBody<'a> {
    /// A passthrough message carrying `payload` to `target`.
    pub fn passthrough(target: PushTarget<'a>, payload: String) -> Self {
        PushBody { target, kind: "passthrough", payload }
    }

    /// The JSON bytes of the body; `Err` is a reason label.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| format!("encode: {e}"))
    }
}

/// The part of `POST /v1/messages`'s answer the senders read.
#[derive(serde::Deserialize)]
struct SendAnswer {
    id: Option<serde_json::Value>,
    #[serde(default)]
    invalid: Vec<String>,
}

/// The connections requests go on: HTTP/1.1 keep-alive ones (one request at a time each), or
/// a fixed number of HTTP/2 ones that carry many at once.
#[derive(Clone)]
enum Poster {
    Http1(KeepAlivePoster),
    Http2(H2Poster),
}

impl Poster {
    async fn post(&self, body: &[u8], limit: Duration) -> Result<Answer, PostError> {
        match self {
            Poster::Http1(poster) => poster.post(body, limit).await,
            Poster::Http2(poster) => poster.post(body, limit).await,
        }
    }
}

impl HttpSender {
    /// `http2_connections` 0: HTTP/1.1 keep-alive connections, one per request in flight;
    /// otherwise that many HTTP/2 connections share the requests.
    pub fn new(http: &HttpClient, secret: &str, concurrency: u32, http2_connections: u32) -> Result<Self, String> {
        let (base, path, auth) = (http.base(), "/v1/messages", format!("key={secret}"));
        let poster = match http2_connections {
            0 => Poster::Http1(KeepAlivePoster::new(base, path, &auth)?),
            n => Poster::Http2(H2Poster::new(base, path, &auth, n)?),
        };
        Ok(HttpSender { poster, slots: Arc::new(Semaphore::new(concurrency as usize)), concurrency })
    }

    /// Waits for a free request slot.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Waits (until `deadline`) for every request in flight to finish.
    pub async fn drain(&self, deadline: Instant) {
        let _ = timeout_at(deadline, self.slots.acquire_many(self.concurrency)).await;
    }

    /// One `POST /v1/messages` with `body`; `Err` is a reason label.
    pub async fn post(&self, body: &[u8], limit: Duration) -> Result<SendOutcome, String> {
        let answer = self.poster.post(body, limit).await.map_err(|e| e.label())?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("http {}", answer.status));
        }
        let v: SendAnswer = serde_json::from_slice(&answer.body).map_err(|_| "bad answer".to_string())?;
        let id = v.id.map(|id| match id {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        Ok(SendOutcome { id, invalid: v.invalid })
    }
}

/// In-flight window of QoS 1 publishes when the broker does not announce one.
const DEFAULT_WINDOW: u16 = 1000;

/// A PUBLISHing connection to a plain MQTT broker.
pub struct MqttPublisher {
    write: OwnedWriteHalf,
    version: Version,
    ids: Rc<RefCell<PacketIds>>,
    window: Rc<Semaphore>,
    closed: Rc<Cell<bool>>,
}

/// The publisher's keep-alive: the longest MQTT allows (~18 h), so no bounded run idles
/// past it. Not 0 ("no keep-alive"): rumqttd refuses that CONNECT (`ZeroKeepAlive`), which
/// left its fan-out and unicast rows at 0 in every run until 2026-12-06.
const PUBLISHER_KEEP_ALIVE_S: u16 = u16::MAX;

impl MqttPublisher {
    /// Connects as `client_id` (clean session) and starts the PUBACK reader task on
    /// the current `LocalSet`.
    pub async fn connect(
        server: SocketAddr,
        ports: &SourcePorts,
        version: Version,
        client_id: String,
        deadline: Instant,
    ) -> Result<MqttPublisher, ClientError> {
        let stream = timeout_at(deadline, tcp_connect_from(server, ports))
            .await
            .map_err(|_| ClientError::Timeout("connect"))??;
        let (mut read, mut write) = stream.into_split();
        let mut out = Vec::new();
        let connect = Packet::Connect(Connect {
            version,
            client_id,
            clean_start: true,
            keep_alive: PUBLISHER_KEEP_ALIVE_S,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
        });
        proto::encode(&connect, version, &mut out).map_err(|e| ClientError::Protocol(format!("encode: {e}")))?;
        let io = |context| move |error| ClientError::Io { context, error };
        timeout_at(deadline, write.write_all(&out))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(io("write"))?;
        let mut frames = FrameReader::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut packets = Vec::new();
        while packets.is_empty() {
            let n = timeout_at(deadline, read.read(&mut buf))
                .await
                .map_err(|_| ClientError::Timeout("connack"))?
                .map_err(io("read"))?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            frames
                .feed(buf.get(..n).unwrap_or(&[]), version, &mut packets)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
        let window = match packets.first() {
            Some(Packet::Connack(c)) if c.code == 0 => c.properties.receive_maximum.unwrap_or(DEFAULT_WINDOW),
            Some(Packet::Connack(c)) => return Err(ClientError::Refused { v5: version == Version::V5, code: c.code }),
            _ => return Err(ClientError::Protocol("expected CONNACK".into())),
        };
        let ids = Rc::new(RefCell::new(PacketIds::new()));
        let window = Rc::new(Semaphore::new(usize::from(window.max(1))));
        let closed = Rc::new(Cell::new(false));
        let (r_ids, r_window, r_closed) = (ids.clone(), window.clone(), closed.clone());
        tokio::task::spawn_local(async move {
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut packets = Vec::new();
                if frames.feed(buf.get(..n).unwrap_or(&[]), version, &mut packets).is_err() {
                    break;
                }
                for p in packets {
                    if let Packet::Puback(a) = p {
                        if r_ids.borrow_mut().release(a.packet_id) {
                            r_window.add_permits(1);
                        }
                    }
                }
            }
            r_closed.set(true);
            r_window.close();
        });
        Ok(MqttPublisher { write, version, ids, window, closed })
    }

    /// PUBLISHes `payloads` (topic, payload) in one write; QoS 1 waits for window
    /// room (until `deadline`). Returns how many were written.
    pub async fn publish(
        &mut self,
        messages: &[(String, Vec<u8>)],
        qos: QoS,
        deadline: Instant,
    ) -> Result<u64, ClientError> {
        if self.closed.get() {
            return Err(ClientError::Closed);
        }
        let mut out = Vec::with_capacity(messages.len() * 64);
        for (topic, payload) in messages {
            if qos == QoS::AtMostOnce {
                let p = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: None,
                    properties: Properties::default(),
                    payload: bytes::Bytes::copy_from_slice(payload),
                });
                proto::encode(&p, self.version, &mut out).map_err(|e| ClientError::Protocol(format!("encode: {e}")))?;
                continue;
            }
            let room = self.window.try_acquire().map(|p| p.forget()).is_ok();
            {
                if !room {
                    // The window is full: what is encoded so far must go out first,
                    // or its PUBACKs (which free the window) could never come.
                    self.write_out(&mut out, deadline).await?;
                    let permit = timeout_at(deadline, self.window.acquire())
                        .await
                        .map_err(|_| ClientError::Timeout("puback window"))?
                        .map_err(|_| ClientError::Closed)?;
                    permit.forget();
                }
            }
            let Some(id) = self.ids.borrow_mut().allocate() else {
                return Err(ClientError::Protocol("no free packet id".into()));
            };
            proto::encode_publish_qos1(self.version, false, topic, id, None, payload, &mut out);
        }
        self.write_out(&mut out, deadline).await?;
        Ok(messages.len() as u64)
    }

    async fn write_out(&mut self, out: &mut Vec<u8>, deadline: Instant) -> Result<(), ClientError> {
        if out.is_empty() {
            return Ok(());
        }
        timeout_at(deadline, self.write.write_all(out))
            .await
            .map_err(|_| ClientError::Timeout("write"))?
            .map_err(|error| ClientError::Io { context: "write", error })?;
        out.clear();
        Ok(())
    }
}

/// MQTT QoS from the CLI's 0 / 1.
pub fn qos_of(n: u8) -> QoS {
    if n == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_bodies_are_what_the_node_reads() {
        let to_regids = PushBody::passthrough(PushTarget::Regids(vec!["a1", "b\"2"]), "17".into());
        let v: serde_json::Value = serde_json::from_slice(&to_regids.to_bytes().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"target": {"regids": ["a1", "b\"2"]}, "type": "passthrough", "payload": "17"})
        );
        let to_topic = PushBody::passthrough(PushTarget::Topic("news"), "x".into());
        let v: serde_json::Value = serde_json::from_slice(&to_topic.to_bytes().unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"target": {"topic": "news"}, "type": "passthrough", "payload": "x"}));
    }
}
