//! Acknowledgements gathered over one pass of the shard's event loop and written as one
//! store job: each group message's delivered count once, and every acknowledgement of a
//! device's own message. A fan-out's acknowledgements arrive together (a device that got ten
//! messages in one read answers with ten PUBACKs in one write), and each was a store job of
//! its own, with, for a device's own message, a completion sent back to the shard.
//!
//! A device's group cursor (the last group message it acknowledged) is kept in memory by the
//! shard and written at most once per [`CURSOR_FLUSH_MS`], its highest only: a topic stream
//! acknowledged by every member made one cursor row write per member per message, the bulk
//! of the writer's work. The row only matters after a restart, where a crash can make the
//! device get again what it acknowledged in the last interval: at least once, each with its
//! id, as promised for every message.

use crate::ids::{MessageId, RegId};
use crate::store::WriteOp;
use foldhash::HashMap;

/// Most time a device's acknowledged group cursor waits in memory before it is written.
pub(super) const CURSOR_FLUSH_MS: u64 = 1000;

#[derive(Debug, Default)]
pub(super) struct PassAcks {
    /// The highest acknowledged group seq of each device, not written yet.
    cursors: HashMap<RegId, u64>,
    /// When cursors were last written (unix ms).
    cursors_written_ms: u64,
    /// Deliveries of each group message.
    delivered: HashMap<MessageId, u32>,
    /// Acknowledged messages of the devices' own queues: device, seq, message.
    own: Vec<(RegId, u64, MessageId)>,
}

/// What one pass's acknowledgements become.
pub(super) struct AckWrites {
    pub ops: Vec<WriteOp>,
    /// The own messages among them (device, seq): the shard hears when they are committed.
    pub own: Vec<(RegId, u64)>,
}

impl PassAcks {
    /// `regid` acknowledged group message `id`, sent at `seq`.
    pub fn note_group(&mut self, regid: RegId, seq: u64, id: MessageId) {
        let cursor = self.cursors.entry(regid).or_insert(seq);
        *cursor = (*cursor).max(seq);
        *self.delivered.entry(id).or_insert(0) += 1;
    }

    /// `regid` acknowledged its own message `id` at `seq`.
    pub fn note_own(&mut self, regid: RegId, seq: u64, id: MessageId) {
        self.own.push((regid, seq, id));
    }

    /// The writes for what was noted since the last call (None if nothing was), group
    /// counts kept in the shard's group `partition`; the cursors only once
    /// [`CURSOR_FLUSH_MS`] has passed since they were last written at `now_ms`, or when
    /// `all` (the shard stops).
    pub fn take(&mut self, partition: u16, now_ms: u64, all: bool) -> Option<AckWrites> {
        let cursors_due =
            !self.cursors.is_empty() && (all || now_ms.saturating_sub(self.cursors_written_ms) >= CURSOR_FLUSH_MS);
        if !cursors_due && self.delivered.is_empty() && self.own.is_empty() {
            return None;
        }
        let cursors = if cursors_due { self.cursors.len() } else { 0 };
        let mut ops = Vec::with_capacity(cursors + self.delivered.len() + self.own.len());
        if cursors_due {
            self.cursors_written_ms = now_ms;
            ops.extend(self.cursors.drain().map(|(regid, seq)| WriteOp::GroupCursor { regid, seq }));
        }
        ops.extend(self.delivered.drain().map(|(id, count)| WriteOp::GroupDelivered { partition, id, count }));
        let mut own = Vec::with_capacity(self.own.len());
        for (regid, seq, id) in self.own.drain(..) {
            ops.push(WriteOp::Acked { regid, seq, id });
            own.push((regid, seq));
        }
        Some(AckWrites { ops, own })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_keeps_its_highest_seq_a_message_its_count_and_own_acks_all() {
        let mut acks = PassAcks::default();
        assert!(acks.take(3, 5_000, false).is_none(), "nothing noted, nothing to write");
        let (a, b) = (RegId::generate(0), RegId::generate(0));
        acks.note_group(a, 7, 70);
        acks.note_group(a, 5, 50);
        acks.note_group(b, 5, 50);
        acks.note_own(b, 9, 90);
        acks.note_own(b, 8, 80);
        let writes = acks.take(3, 5_000, false).expect("noted");
        let mut cursors: Vec<(RegId, u64)> = Vec::new();
        let mut counts: Vec<(u16, MessageId, u32)> = Vec::new();
        let mut own: Vec<(RegId, u64, MessageId)> = Vec::new();
        for op in writes.ops {
            match op {
                WriteOp::GroupCursor { regid, seq } => cursors.push((regid, seq)),
                WriteOp::GroupDelivered { partition, id, count } => counts.push((partition, id, count)),
                WriteOp::Acked { regid, seq, id } => own.push((regid, seq, id)),
                other => panic!("unexpected {other:?}"),
            }
        }
        cursors.sort();
        counts.sort();
        let mut want = vec![(a, 7), (b, 5)];
        want.sort();
        assert_eq!(cursors, want);
        assert_eq!(counts, vec![(3, 50, 2), (3, 70, 1)]);
        assert_eq!(own, vec![(b, 9, 90), (b, 8, 80)], "every own ack, in order");
        assert_eq!(writes.own, vec![(b, 9), (b, 8)]);
        assert!(acks.take(3, 5_000, false).is_none(), "taken once");
    }

    #[test]
    fn cursors_wait_for_the_flush_interval_or_the_end() {
        let mut acks = PassAcks::default();
        let (a, b) = (RegId::generate(0), RegId::generate(0));
        acks.note_group(a, 5, 50);
        let first = acks.take(3, 10_000, false).expect("noted");
        assert_eq!(first.ops.len(), 2, "the cursor and the count: {:?}", first.ops);
        acks.note_group(a, 7, 70);
        acks.note_group(b, 7, 70);
        let next = acks.take(3, 10_000 + CURSOR_FLUSH_MS - 1, false).expect("a count");
        assert!(
            next.ops.iter().all(|op| matches!(op, WriteOp::GroupDelivered { id: 70, count: 2, .. })),
            "only the count within the interval: {:?}",
            next.ops
        );
        acks.note_group(a, 9, 90);
        assert!(acks.take(3, 10_000 + CURSOR_FLUSH_MS - 1, false).is_some_and(|w| w.ops.len() == 1));
        let due = acks.take(3, 10_000 + CURSOR_FLUSH_MS, false).expect("cursors due");
        let mut cursors: Vec<(RegId, u64)> = due
            .ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::GroupCursor { regid, seq } => Some((*regid, *seq)),
                _ => None,
            })
            .collect();
        cursors.sort();
        let mut want = vec![(a, 9), (b, 7)];
        want.sort();
        assert_eq!(cursors, want, "each device's highest, once");
        acks.note_group(b, 11, 110);
        let _ = acks.take(3, 10_000 + CURSOR_FLUSH_MS + 1, false);
        let end = acks.take(3, 10_000 + CURSOR_FLUSH_MS + 2, true).expect("the stopping shard writes them");
        assert!(matches!(end.ops.as_slice(), [WriteOp::GroupCursor { seq: 11, .. }]), "{:?}", end.ops);
    }
}
