//! Pushes queued for a connection's next send and encoded only when that send's buffer is
//! built. A fan-out gives every device one message after another while its last send is
//! still in flight; encoding each at once grew the device's buffer by doubling (copying
//! what it held, touching about three times the bytes it needed). Queued, a push is a few
//! pointers (its body and topic are shared with every other device's copy), and the buffer
//! is allocated once, at its final size.

use super::INBOX_TOPIC;
use crate::proto::{self, Version};
use std::sync::Arc;

/// The topic a push goes out on: the device's inbox, or a name shared by the targets of
/// one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushTopic {
    Inbox,
    Named(Arc<str>),
}

impl PushTopic {
    pub fn as_str(&self) -> &str {
        match self {
            PushTopic::Inbox => INBOX_TOPIC,
            PushTopic::Named(name) => name,
        }
    }
}

/// A QoS 1 PUBLISH not yet encoded: everything its bytes depend on.
#[derive(Debug)]
pub(super) struct QueuedPush {
    pub packet_id: u16,
    pub dup: bool,
    pub expiry_s: Option<u32>,
    pub topic: PushTopic,
    pub body: Arc<[u8]>,
}

impl QueuedPush {
    fn encoded_len(&self, version: Version) -> usize {
        proto::publish_qos1_len(version, self.topic.as_str(), self.expiry_s, &self.body)
    }

    fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let topic = self.topic.as_str();
        proto::encode_publish_qos1(version, self.dup, topic, self.packet_id, self.expiry_s, &self.body, out);
    }
}

/// Appends `queued` to `out` in order, growing `out` once to exactly what they take.
pub(super) fn encode_all(queued: &[QueuedPush], version: Version, out: &mut Vec<u8>) {
    let extra: usize = queued.iter().map(|q| q.encoded_len(version)).sum();
    out.reserve_exact(extra);
    let before = out.len();
    for push in queued {
        push.encode(version, out);
    }
    debug_assert_eq!(out.len() - before, extra, "a push encoded to another length than computed");
}
