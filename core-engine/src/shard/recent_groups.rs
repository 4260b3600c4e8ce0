//! The group messages this shard sent last, kept in memory. A device that reads its group
//! messages back (one the send budget held back during a burst, one that reconnects after a
//! broadcast) gets them from here instead of from a read transaction that decodes each row's
//! filter and copies its body, as long as it is not further behind than the oldest message
//! kept. Group rows leave the store only when they expire, and expired messages are skipped
//! here as there, so the two agree.
//!
//! A group message goes out to its online targets as soon as the shard has it, before its
//! commit (as a device's own messages do), so a device that reads back while it is on its way
//! through the writer must read it too: every message sent to the writer and not handed back
//! yet is kept here (`unstored`) until its commit is, whatever the limits, and a read from the
//! store is followed by those newer than what the store answered. The writer commits in
//! order, so what it has committed is always an older prefix of what was sent.

use crate::store::GroupMessage;
use std::collections::VecDeque;

/// Most messages kept.
const MAX_MESSAGES: usize = 256;
/// Most body bytes kept.
const MAX_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub(super) struct RecentGroups {
    /// Committed and handed back, in seq order.
    messages: VecDeque<GroupMessage>,
    /// Every group message of this shard with a higher seq than this is in `messages`
    /// (unless expired); `u64::MAX` while that is not known.
    complete_after: u64,
    bytes: usize,
    /// Sent to the writer and not handed back yet, in seq order: all newer than `messages`.
    unstored: VecDeque<GroupMessage>,
}

impl RecentGroups {
    /// Kept messages start after `stored_up_to`, the highest group seq in the store.
    pub fn new(stored_up_to: u64) -> Self {
        RecentGroups { messages: VecDeque::new(), complete_after: stored_up_to, bytes: 0, unstored: VecDeque::new() }
    }

    /// A group message given to the writer (and to its online targets): kept until its
    /// commit is handed back.
    pub fn sent(&mut self, message: GroupMessage) {
        debug_assert!(self.unstored.back().is_none_or(|m| m.seq < message.seq), "the shard's seqs only grow");
        self.unstored.push_back(message);
    }

    /// The commit of the oldest message on its way through the writer is handed back: kept
    /// on if it succeeded, dropped if it failed.
    pub fn stored(&mut self, seq: u64, committed: bool) {
        let message = self.unstored.pop_front();
        assert!(message.as_ref().is_some_and(|m| m.seq == seq), "commits are handed back in the order they were sent");
        if let Some(message) = message.filter(|_| committed) {
            self.push(message);
        }
    }

    /// A group message committed: newer than every one before it, since the writer
    /// commits in order.
    fn push(&mut self, message: GroupMessage) {
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
    /// committed or on their way; `None` when some may be older than those kept (read the
    /// store, then [`Self::unstored_after`]).
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
        let kept = self.messages.range(start..).chain(self.unstored.iter().filter(|m| m.seq > after));
        Some(kept.filter(|m| m.expires_at > now_s && wanted(m)).take(limit).cloned().collect())
    }

    /// What follows a read of the store that answered up to seq `after` (and not a full
    /// batch): up to `limit` messages on their way through the writer after it, unexpired at
    /// `now_s`, that `wanted` takes. Those committed meanwhile the store read may have
    /// answered already; they are not newer than `after`.
    pub fn unstored_after(
        &self,
        after: u64,
        now_s: u64,
        limit: usize,
        mut wanted: impl FnMut(&GroupMessage) -> bool,
    ) -> Vec<GroupMessage> {
        let newer = self.unstored.iter().filter(|m| m.seq > after);
        newer.filter(|m| m.expires_at > now_s && wanted(m)).take(limit).cloned().collect()
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
    fn messages_on_their_way_are_answered_after_the_committed_ones_until_handed_back() {
        let mut recent = RecentGroups::new(100);
        recent.sent(message(101, 50));
        recent.stored(101, true);
        recent.sent(message(105, 50));
        recent.sent(message(110, 50));
        recent.sent(message(115, 10)); // expired at 10
        assert_eq!(seqs(recent.after(100, 20, 64, |_| true)), Some(vec![101, 105, 110]));
        assert_eq!(seqs(recent.after(105, 20, 64, |_| true)), Some(vec![110]));
        assert_eq!(seqs(recent.after(100, 20, 2, |_| true)), Some(vec![101, 105]));
        recent.stored(105, false); // its commit failed: gone
        recent.stored(110, true);
        assert_eq!(seqs(recent.after(100, 20, 64, |_| true)), Some(vec![101, 110]));
    }

    #[test]
    fn a_read_of_the_store_is_followed_by_what_is_on_its_way() {
        let mut recent = RecentGroups::new(0);
        for seq in 1..=(MAX_MESSAGES as u64 + 3) {
            recent.sent(message(seq, u64::MAX));
            recent.stored(seq, true);
        }
        // Not evicted while on their way, however many.
        let on_the_way = (MAX_MESSAGES as u64 + 4)..=(2 * MAX_MESSAGES as u64 + 10);
        for seq in on_the_way.clone() {
            recent.sent(message(seq, u64::MAX));
        }
        assert_eq!(seqs(recent.after(1, 0, 1, |_| true)), None, "the oldest committed ones are in the store only");
        // The store answered up to the last committed one: every message on its way follows.
        let after = recent.unstored_after(MAX_MESSAGES as u64 + 3, 0, usize::MAX, |_| true);
        assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), on_the_way.clone().collect::<Vec<_>>());
        // A store read that already saw some committed meanwhile: only newer ones follow.
        let after = recent.unstored_after(MAX_MESSAGES as u64 + 5, 0, 2, |m| m.seq % 2 == 0);
        assert_eq!(seqs(Some(after)), Some(vec![MAX_MESSAGES as u64 + 6, MAX_MESSAGES as u64 + 8]));
    }

    #[test]
    #[should_panic(expected = "handed back in the order")]
    fn a_commit_handed_back_out_of_order_is_a_bug() {
        let mut recent = RecentGroups::new(0);
        recent.sent(message(1, u64::MAX));
        recent.sent(message(2, u64::MAX));
        recent.stored(2, true);
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
