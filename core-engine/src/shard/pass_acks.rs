//! Acknowledgements gathered over one pass of the shard's event loop and written as one
//! store job: each device's group cursor once (its highest), each group message's delivered
//! count once, and every acknowledgement of a device's own message. A fan-out's
//! acknowledgements arrive together (a device that got ten messages in one read answers with
//! ten PUBACKs in one write), and each was a store job of its own, with, for a device's own
//! message, a completion sent back to the shard.

use crate::ids::{MessageId, RegId};
use crate::store::WriteOp;
use foldhash::HashMap;

#[derive(Debug, Default)]
pub(super) struct PassAcks {
    /// The highest acknowledged group seq of each device.
    cursors: HashMap<RegId, u64>,
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
    /// counts kept in the shard's group `partition`.
    pub fn take(&mut self, partition: u16) -> Option<AckWrites> {
        if self.cursors.is_empty() && self.delivered.is_empty() && self.own.is_empty() {
            return None;
        }
        let mut ops = Vec::with_capacity(self.cursors.len() + self.delivered.len() + self.own.len());
        ops.extend(self.cursors.drain().map(|(regid, seq)| WriteOp::GroupCursor { regid, seq }));
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
        assert!(acks.take(3).is_none(), "nothing noted, nothing to write");
        let (a, b) = (RegId::generate(0), RegId::generate(0));
        acks.note_group(a, 7, 70);
        acks.note_group(a, 5, 50);
        acks.note_group(b, 5, 50);
        acks.note_own(b, 9, 90);
        acks.note_own(b, 8, 80);
        let writes = acks.take(3).expect("noted");
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
        assert!(acks.take(3).is_none(), "taken once");
    }
}
