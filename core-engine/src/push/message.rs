//! A push message: validation of the app server's fields and the JSON envelope that is
//! encoded once and sent to every target device.

use crate::ids::{message_id_text, AppId, MessageId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most RegIDs one request may target.
pub const MAX_REGIDS: usize = 1000;
/// Default and maximum time to live: 14 days.
pub const MAX_TTL_SECS: u64 = 14 * 24 * 3600;
/// Largest payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
const MAX_TITLE_CHARS: usize = 50;
const MAX_DESCRIPTION_CHARS: usize = 128;
const MAX_EXTRA_KEYS: usize = 10;
const MAX_EXTRA_VALUE_CHARS: usize = 1024;

/// How the device shows the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// Shown in the notification bar.
    #[default]
    Notification,
    /// Handed to the app only.
    Passthrough,
}

/// A send request's message fields, as the app server wrote them. Unknown fields are
/// refused (a typo must not silently drop a setting).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    #[serde(rename = "type", default)]
    pub kind: MessageKind,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub notify_id: i64,
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Seconds; default and maximum 14 days.
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Why a push request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// A field is over its limit or malformed; the text names it.
    #[error("{0}")]
    Invalid(String),
}

/// A validated message and its envelope bytes, shared by every target.
#[derive(Debug)]
pub struct Envelope {
    pub id: MessageId,
    pub app_id: AppId,
    /// Unix seconds after which the message is never delivered.
    pub expires_at: u64,
    /// The JSON the device receives.
    pub json: Arc<[u8]>,
}

#[derive(Serialize)]
struct EnvelopeJson<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: MessageKind,
    title: &'a str,
    description: &'a str,
    payload: &'a str,
    notify_id: i64,
    extra: &'a serde_json::Map<String, serde_json::Value>,
    sent_at: u64,
    expires_at: u64,
}

impl PushRequest {
    /// The message fields of a send body (everything but `target`), strictly: an unknown
    /// field is an error that names it.
    pub fn from_map(map: serde_json::Map<String, serde_json::Value>) -> Result<PushRequest, PushError> {
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| PushError::Invalid(e.to_string()))
    }

    /// Checks every limit and builds the envelope.
    pub fn into_envelope(self, id: MessageId, app_id: AppId, now_s: u64) -> Result<Envelope, PushError> {
        let invalid = |what: String| Err(PushError::Invalid(what));
        if self.title.chars().count() > MAX_TITLE_CHARS {
            return invalid(format!("title is over {MAX_TITLE_CHARS} characters"));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return invalid(format!("description is over {MAX_DESCRIPTION_CHARS} characters"));
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return invalid(format!("payload is over {MAX_PAYLOAD_BYTES} bytes"));
        }
        if self.extra.len() > MAX_EXTRA_KEYS {
            return invalid(format!("extra has more than {MAX_EXTRA_KEYS} keys"));
        }
        for (key, value) in &self.extra {
            let len = match value {
                serde_json::Value::String(s) => s.chars().count(),
                other => other.to_string().len(),
            };
            if len > MAX_EXTRA_VALUE_CHARS || key.chars().count() > MAX_EXTRA_VALUE_CHARS {
                return invalid(format!("extra.{key} is over {MAX_EXTRA_VALUE_CHARS} characters"));
            }
        }
        if self.kind == MessageKind::Notification && self.title.is_empty() && self.description.is_empty() {
            return invalid("a notification needs a title or a description".into());
        }
        let ttl = match self.ttl {
            None => MAX_TTL_SECS,
            Some(0) => return invalid("ttl must be at least 1 second".into()),
            Some(t) if t > MAX_TTL_SECS => return invalid(format!("ttl is over {MAX_TTL_SECS} seconds (14 days)")),
            Some(t) => t,
        };
        let expires_at = now_s + ttl;
        let json = serde_json::to_vec(&EnvelopeJson {
            id: message_id_text(id),
            kind: self.kind,
            title: &self.title,
            description: &self.description,
            payload: &self.payload,
            notify_id: self.notify_id,
            extra: &self.extra,
            sent_at: now_s,
            expires_at,
        })
        .map_err(|e| PushError::Invalid(e.to_string()))?;
        Ok(Envelope { id, app_id, expires_at, json: json.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_fields() {
        let req = PushRequest { title: "hi".into(), payload: "p".into(), ttl: Some(60), ..Default::default() };
        let env = req.into_envelope(7, 1, 1000).unwrap();
        assert_eq!(env.expires_at, 1060);
        let v: serde_json::Value = serde_json::from_slice(&env.json).unwrap();
        assert_eq!(v["id"], "0000000000000007");
        assert_eq!(v["type"], "notification");
        assert_eq!(v["title"], "hi");
        assert_eq!(v["expires_at"], 1060);
    }

    #[test]
    fn limits_are_refused() {
        let long = PushRequest { title: "x".repeat(51), ..Default::default() };
        assert!(long.into_envelope(1, 1, 0).is_err());
        let ttl = PushRequest { title: "t".into(), ttl: Some(MAX_TTL_SECS + 1), ..Default::default() };
        assert!(ttl.into_envelope(1, 1, 0).is_err());
        let payload = PushRequest { kind: MessageKind::Passthrough, payload: "x".repeat(4097), ..Default::default() };
        assert!(payload.into_envelope(1, 1, 0).is_err());
    }
}
