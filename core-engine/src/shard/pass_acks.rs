//! Acknowledgements of group messages gathered over one pass of the shard's event loop and
//! written as one store job: each device's cursor once (its highest), each message's
//! delivered count once. A fan-out's acknowledgements arrive together (a device that got
//! ten messages in one read answers with ten PUBACKs in one write), and each was two
//! store writes of its own.

use crate::ids::{MessageId, RegId};
use crate::store::WriteOp;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub(super) struct GroupAcks {
    /// The highest acknowledged group seq of each device.
    cursors: HashMap<RegId, u64>,
    /// Deliveries of each group message.
    delivered: HashMap<MessageId, u32>,
}

impl GroupAcks {
    /// `regid` acknowledged group message `id`, sent at `seq`.
    pub fn note(&mut self, regid: RegId, seq: u64, id: MessageId) {
        let cursor = self.cursors.entry(regid).or_insert(seq);
        *cursor = (*cursor).max(seq);
        *self.delivered.entry(id).or_insert(0) += 1;
    }

    /// The writes for what was noted since the last call (none if nothing was), counts kept
    /// in the shard's group `partition`.
    pub fn take_ops(&mut self, partition: u16) -> Vec<WriteOp> {
        let mut ops = Vec::with_capacity(self.cursors.len() + self.delivered.len());
        ops.extend(self.cursors.drain().map(|(regid, seq)| WriteOp::GroupCursor { regid, seq }));
        ops.extend(self.delivered.drain().map(|(id, count)| WriteOp::GroupDelivered { partition, id, count }));
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_keeps_its_highest_seq_and_a_message_its_count() {
        let mut acks = GroupAcks::default();
        let (a, b) = (RegId::generate(0), RegId::generate(0));
        acks.note(a, 7, 70);
        acks.note(a, 5, 50);
        acks.note(b, 5, 50);
        let ops = acks.take_ops(3);
        let mut cursors: Vec<(RegId, u64)> = Vec::new();
        let mut counts: Vec<(u16, MessageId, u32)> = Vec::new();
        for op in ops {
            match op {
                WriteOp::GroupCursor { regid, seq } => cursors.push((regid, seq)),
                WriteOp::GroupDelivered { partition, id, count } => counts.push((partition, id, count)),
                other => panic!("unexpected {other:?}"),
            }
        }
        cursors.sort();
        counts.sort();
        let mut want = vec![(a, 7), (b, 5)];
        want.sort();
        assert_eq!(cursors, want);
        assert_eq!(counts, vec![(3, 50, 2), (3, 70, 1)]);
        assert!(acks.take_ops(3).is_empty(), "taken once");
    }
}
