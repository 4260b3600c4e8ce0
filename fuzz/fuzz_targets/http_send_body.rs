//! Arbitrary bytes as the body of `POST /v1/messages`: `SendRequest::from_json`, then for
//! accepted bodies the message validation and envelope (`PushRequest::into_envelope`).
//! Invariants: no panic; an accepted target respects its limits; an envelope is JSON that
//! parses back with serde_json and carries the same type, title, description, payload,
//! notify_id and extra keys, within the documented limits, with expires_at = sent_at + ttl.
#![no_main]

use core_engine::push::{
    valid_name, MessageKind, SendRequest, Target, MAX_ALIASES, MAX_EXPRESSION_TOPICS, MAX_REGIDS,
    MAX_TTL_SECS,
};
use libfuzzer_sys::fuzz_target;

const NOW_S: u64 = 1_750_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = SendRequest::from_json(data) else {
        return;
    };
    match &req.target {
        Target::RegIds(r) => assert!(!r.is_empty() && r.len() <= MAX_REGIDS),
        Target::Aliases(a) => {
            assert!(!a.is_empty() && a.len() <= MAX_ALIASES);
            assert!(a.iter().all(|n| valid_name(n)));
        }
        Target::Topics { topics, .. } => {
            assert!(!topics.is_empty() && topics.len() <= MAX_EXPRESSION_TOPICS);
            assert!(topics.iter().all(|n| valid_name(n)));
        }
        Target::All => {}
    }
    let msg = req.message;
    let (kind, title, description, payload, notify_id, extra, ttl) = (
        msg.kind,
        msg.title.clone(),
        msg.description.clone(),
        msg.payload.clone(),
        msg.notify_id,
        msg.extra.clone(),
        msg.ttl,
    );
    let Ok(env) = msg.into_envelope(0x0123_4567_89AB_CDEF, 7, NOW_S) else {
        return;
    };
    let v: serde_json::Value =
        serde_json::from_slice(&env.json).expect("the envelope is valid JSON");
    let kind_text = match kind {
        MessageKind::Notification => "notification",
        MessageKind::Passthrough => "passthrough",
    };
    assert_eq!(v["id"], "0123456789abcdef");
    assert_eq!(v["type"], kind_text);
    assert_eq!(v["title"].as_str(), Some(title.as_str()));
    assert_eq!(v["description"].as_str(), Some(description.as_str()));
    assert_eq!(v["payload"].as_str(), Some(payload.as_str()));
    assert_eq!(v["notify_id"].as_i64(), Some(notify_id));
    assert!(title.chars().count() <= 50 && description.chars().count() <= 128);
    assert!(payload.len() <= 4096);
    if kind == MessageKind::Notification {
        assert!(!title.is_empty() || !description.is_empty());
    }
    let got_extra = v["extra"].as_object().expect("extra is an object");
    assert_eq!(got_extra.len(), extra.len());
    assert!(extra.keys().all(|k| got_extra.contains_key(k)));
    assert_eq!(v["sent_at"].as_u64(), Some(NOW_S));
    let ttl = ttl.unwrap_or(MAX_TTL_SECS);
    assert!((1..=MAX_TTL_SECS).contains(&ttl));
    assert_eq!(v["expires_at"].as_u64(), Some(NOW_S + ttl));
    assert_eq!(env.expires_at, NOW_S + ttl);
    assert_eq!(env.app_id, 7);
});
