//! The group messages this shard committed last, kept in memory as the store has them. A
//! device that reads its group messages back (one the send budget held back during a burst,
//! one that reconnects after a broadcast) gets them from here instead of from a read
//! transaction that decodes each row's filter and copies its body, as long as it is not
//! further behind than the oldest message kept. Group rows leave the store only when they
//! expire, and expired messages are skipped here as there, so the two agree. A message enters
//! when its commit is handed back to the shard, so the shard reads from here only while no
//! group message is on its way through the writer (`Shard::unstored_groups` is 0).

use crate::store::GroupMessage;
use std::collections::VecDeque;

/// Most messages kept.
const MAX_MESSAGES: usize = 256;
/// Most body bytes kept.
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub(super) struct RecentGroups {
    /// In seq order.
    messages: VecDeque<GroupMessage>,
    /// Every group message of this shard with a higher seq than this is in `messages`
    /// (unless expired); `u64::MAX` while that is not known.
    complete_after: u64,
    bytes: usize,
}

impl RecentGroups {
    /// Kept messages start after `stored_up_to`, the highest group seq in the store.
    pub fn new(stored_up_to: u64) -> Self {
        RecentGroups { messages: VecDeque::new(), complete_after: stored_up_to, bytes: 0 }
    }

    /// A group message just committed: newer than every one before it, since the writer
    /// commits in order.
    pub fn push(&mut self, message: GroupMessage) {
        let newest = self.messages.back().map_or(self.complete_after, |m| m.seq);
        if message.seq <= newest {
            // Not newer than the store's last at start (a clock set back across a restart):
            // what is kept could no longer tell whether the store holds more; off until restart.
            debug_assert!(self.messages.is_empty(), "commits complete in seq order");
            self.messages.clear();
            self.bytes = 0;
            self.complete_after = u64::MAX;
            return;
        }
        self.bytes += message.json.len();
        self.messages.push_back(message);
        while self.messages.len() > MAX_MESSAGES || self.bytes > MAX_BYTES {
            let oldest = self.messages.pop_front().expect("over a limit, so not empty");
            self.bytes -= oldest.json.len();
            self.complete_after = oldest.seq;
        }
    }

    /// Up to `limit` messages after seq `after`, unexpired at `now_s`, that `wanted` takes,
    /// as the store would read them; `None` when some may be older than those kept.
    pub fn after(
        &self,
        after: u64,
        now_s: u64,
        limit: usize,
        mut wanted: impl FnMut(&GroupMessage) -> bool,
    ) -> Option<Vec<GroupMessage>> {
        if after < self.complete_after {
            return None;
        }
        let start = self.messages.partition_point(|m| m.seq <= after);
        let found = self.messages.range(start..).filter(|m| m.expires_at > now_s && wanted(m)).take(limit).cloned();
        Some(found.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::GroupFilter;
    use std::sync::Arc;

    fn message(seq: u64, expires_at: u64) -> GroupMessage {
        GroupMessage {
            seq,
            id: seq * 2,
            app_id: 1,
            expires_at,
            filter: Arc::new(GroupFilter::All),
            json: Arc::from(&b"{}"[..]),
        }
    }

    fn seqs(found: Option<Vec<GroupMessage>>) -> Option<Vec<u64>> {
        found.map(|f| f.iter().map(|m| m.seq).collect())
    }

    #[test]
    fn answers_only_for_cursors_at_or_after_what_it_keeps_all_of() {
        let mut recent = RecentGroups::new(100);
        assert_eq!(seqs(recent.after(99, 0, 64, |_| true)), None, "the store may hold seq 100");
        assert_eq!(seqs(recent.after(100, 0, 64, |_| true)), Some(vec![]));
        for seq in [101, 105, 110] {
            recent.push(message(seq, 50));
        }
        recent.push(message(120, 10)); // expired at 10
        assert_eq!(seqs(recent.after(100, 20, 64, |_| true)), Some(vec![101, 105, 110]));
        assert_eq!(seqs(recent.after(101, 20, 64, |_| true)), Some(vec![105, 110]));
        assert_eq!(seqs(recent.after(100, 20, 2, |m| m.seq != 105)), Some(vec![101, 110]));
    }

    #[test]
    fn evicting_the_oldest_moves_what_it_answers_for() {
        let mut recent = RecentGroups::new(0);
        for seq in 1..=(MAX_MESSAGES as u64 + 3) {
            recent.push(message(seq, u64::MAX));
        }
        assert_eq!(seqs(recent.after(2, 0, 1, |_| true)), None);
        assert_eq!(seqs(recent.after(3, 0, 1, |_| true)), Some(vec![4]));
    }

    #[test]
    fn a_seq_not_newer_than_the_last_turns_it_off() {
        let mut recent = RecentGroups::new(50);
        recent.push(message(40, u64::MAX)); // the store's last was 50
        assert_eq!(seqs(recent.after(1000, 0, 64, |_| true)), None);
        recent.push(message(2000, u64::MAX));
        assert_eq!(seqs(recent.after(1000, 0, 64, |_| true)), None, "off until restart");
    }
}
