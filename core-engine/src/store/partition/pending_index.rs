//! Which pushes wait for each device of a partition, in memory.
//!
//! The pending table is keyed by (seq, RegID), so a new push appends to the table's last
//! leaf instead of copying a random one (keyed by RegID first, each stored push cost the
//! writer a 4 KiB leaf copy and write of its own: half of its time in an HTTP send run).
//! This index is what finds a device's rows: a sorted list of seqs per device that has any,
//! rebuilt from the table at open. Only the writer changes it, through a [`PendingTxn`]
//! that publishes its changes once its transaction has committed, so a reader never sees a
//! seq whose row is not committed yet and never waits for a transaction.

use super::{StoreError, PENDING};
use foldhash::HashMap;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

type Queue = VecDeque<u64>;

/// The seqs waiting for each device that has any, ascending, and their total.
#[derive(Debug, Default)]
pub(super) struct PendingIndex {
    per_device: HashMap<[u8; 12], Queue>,
    total: u64,
}

impl PendingIndex {
    /// Reads the database's pending table into one index per partition: each of
    /// `partitions` gets one (empty if it has no rows); rows of other partitions are skipped.
    pub(super) fn load(db: &Database, partitions: &[u16]) -> Result<HashMap<u16, Self>, StoreError> {
        let txn = db.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        let mut indexes: HashMap<u16, PendingIndex> = partitions.iter().map(|&p| (p, Self::default())).collect();
        for row in pending.iter()? {
            let (key, _) = row?;
            let Some((seq, regid)) = split_key(key.value()) else {
                tracing::warn!("skipping a malformed pending row");
                continue;
            };
            let Some(index) = indexes.get_mut(&u16::from_be_bytes([regid[0], regid[1]])) else {
                tracing::warn!("skipping a pending row of a partition this database does not hold");
                continue;
            };
            // The table is in seq order, so each queue grows at its back.
            index.per_device.entry(regid).or_default().push_back(seq);
            index.total += 1;
        }
        Ok(indexes)
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Up to `limit` seqs waiting for `regid` after `after`, ascending.
    pub(super) fn after(&self, regid: &[u8; 12], after: u64, limit: usize) -> Vec<u64> {
        let Some(queue) = self.per_device.get(regid) else { return Vec::new() };
        let start = queue.partition_point(|&s| s <= after);
        queue.range(start..).take(limit).copied().collect()
    }
}

/// (seq, RegID) of a pending row's key (see [`pending_key`]).
pub(super) fn split_key(key: &[u8]) -> Option<(u64, [u8; 12])> {
    let seq = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let regid = key.get(8..20)?.try_into().ok()?;
    Some((seq, regid))
}

/// One transaction's changes to the index, published once its transaction has committed
/// ([`PendingTxn::publish`]); dropped unpublished (the transaction failed), the index stays
/// as it was. The common changes, a push behind a device's newest and the acknowledgement
/// of its oldest, are kept as changes at the queue's two ends; a queue is copied only for
/// anything else (a push that sorts before the newest, an acknowledgement out of order). A
/// push to a device holding its full 1,000 pushes so costs no copy of them.
pub(super) struct PendingTxn<'a> {
    shared: &'a Mutex<PendingIndex>,
    changed: HashMap<[u8; 12], Change>,
}

/// How one transaction changed one device's queue.
enum Change {
    /// The shared queue (`base_len` long when first touched) without its `taken` oldest,
    /// with `added` (ascending, all newer than the rest) behind it.
    Ends { base_len: usize, taken: usize, added: Vec<u64> },
    /// The whole queue as it will be.
    Copy(Queue),
}

impl<'a> PendingTxn<'a> {
    pub(super) fn new(shared: &'a Mutex<PendingIndex>) -> Self {
        PendingTxn { shared, changed: HashMap::default() }
    }

    fn shared(&self) -> std::sync::MutexGuard<'a, PendingIndex> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The seq at `at` of the device's shared queue.
    fn shared_at(&self, regid: &[u8; 12], at: usize) -> u64 {
        let index = self.shared();
        let queue = index.per_device.get(regid).expect("a device whose queue was measured has one");
        *queue.get(at).expect("only the writer changes the shared queues")
    }

    fn change(&mut self, regid: [u8; 12]) -> &mut Change {
        let shared = self.shared;
        self.changed.entry(regid).or_insert_with(|| {
            let index = shared.lock().unwrap_or_else(PoisonError::into_inner);
            Change::Ends { base_len: index.per_device.get(&regid).map_or(0, Queue::len), taken: 0, added: Vec::new() }
        })
    }

    /// The device's queue as a copy, for a change that is not at its ends.
    fn copy(&mut self, regid: [u8; 12]) -> &mut Queue {
        if let Change::Ends { taken, added, .. } = self.change(regid) {
            let (taken, added) = (*taken, std::mem::take(added));
            let mut queue = self.shared().per_device.get(&regid).cloned().unwrap_or_default();
            queue.drain(..taken);
            queue.extend(added);
            self.changed.insert(regid, Change::Copy(queue));
        }
        match self.changed.get_mut(&regid) {
            Some(Change::Copy(queue)) => queue,
            _ => unreachable!("made a copy above"),
        }
    }

    pub(super) fn len(&mut self, regid: [u8; 12]) -> usize {
        match self.change(regid) {
            Change::Ends { base_len, taken, added } => *base_len - *taken + added.len(),
            Change::Copy(queue) => queue.len(),
        }
    }

    pub(super) fn oldest(&mut self, regid: [u8; 12]) -> Option<u64> {
        match *self.change(regid) {
            Change::Ends { base_len, taken, .. } if taken < base_len => Some(self.shared_at(&regid, taken)),
            Change::Ends { ref added, .. } => added.first().copied(),
            Change::Copy(ref queue) => queue.front().copied(),
        }
    }

    fn newest(&mut self, regid: [u8; 12]) -> Option<u64> {
        match *self.change(regid) {
            Change::Ends { ref added, .. } if !added.is_empty() => added.last().copied(),
            Change::Ends { base_len, taken, .. } if taken < base_len => Some(self.shared_at(&regid, base_len - 1)),
            Change::Ends { .. } => None,
            Change::Copy(ref queue) => queue.back().copied(),
        }
    }

    /// Adds `seq` to the device's queue; false if it was there.
    pub(super) fn insert(&mut self, regid: [u8; 12], seq: u64) -> bool {
        let newest = self.newest(regid);
        if newest == Some(seq) {
            return false;
        }
        if newest.is_none_or(|last| seq > last) {
            match self.change(regid) {
                Change::Ends { added, .. } => added.push(seq),
                Change::Copy(queue) => queue.push_back(seq),
            }
            return true;
        }
        let queue = self.copy(regid);
        match queue.binary_search(&seq) {
            Ok(_) => false,
            Err(at) => {
                queue.insert(at, seq);
                true
            }
        }
    }

    /// Takes `seq` out of the device's queue; false if it was not there.
    pub(super) fn remove(&mut self, regid: [u8; 12], seq: u64) -> bool {
        if self.oldest(regid) == Some(seq) {
            match self.change(regid) {
                Change::Ends { base_len, taken, .. } if *taken < *base_len => *taken += 1,
                Change::Ends { added, .. } => {
                    added.remove(0);
                }
                Change::Copy(queue) => {
                    queue.pop_front();
                }
            }
            return true;
        }
        let queue = self.copy(regid);
        match queue.binary_search(&seq) {
            Ok(at) => {
                queue.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the changes visible: call once the transaction has committed.
    pub(super) fn publish(self) {
        let mut index = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        for (regid, change) in self.changed {
            match change {
                Change::Ends { base_len, taken, added } => {
                    let queue = index.per_device.entry(regid).or_default();
                    assert_eq!(queue.len(), base_len, "a device's queue changed under its transaction");
                    queue.drain(..taken);
                    queue.extend(&added);
                    if queue.is_empty() {
                        index.per_device.remove(&regid);
                    }
                    assert!(index.total >= taken as u64, "pending total {} below a device's {taken}", index.total);
                    index.total = index.total - taken as u64 + added.len() as u64;
                }
                Change::Copy(queue) => {
                    let added = queue.len() as u64;
                    let before = if queue.is_empty() {
                        index.per_device.remove(&regid)
                    } else {
                        index.per_device.insert(regid, queue)
                    };
                    let removed = before.map_or(0, |q| q.len() as u64);
                    assert!(index.total >= removed, "pending total {} below a device's {removed}", index.total);
                    index.total = index.total - removed + added;
                }
            }
        }
        debug_assert_eq!(index.total, index.per_device.values().map(|q| q.len() as u64).sum::<u64>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::partition::pending_key;

    fn index_of(rows: &[([u8; 12], u64)]) -> Mutex<PendingIndex> {
        let shared = Mutex::new(PendingIndex::default());
        let mut txn = PendingTxn::new(&shared);
        for &(regid, seq) in rows {
            assert!(txn.insert(regid, seq));
        }
        txn.publish();
        shared
    }

    #[test]
    fn queues_stay_sorted_and_totals_follow() {
        let (a, b) = ([1u8; 12], [2u8; 12]);
        let shared = index_of(&[(a, 5), (a, 9), (b, 6), (a, 7)]);
        assert_eq!(shared.lock().unwrap().after(&a, 0, 10), vec![5, 7, 9]);
        assert_eq!(shared.lock().unwrap().after(&a, 5, 1), vec![7]);
        assert_eq!(shared.lock().unwrap().total(), 4);
        let mut txn = PendingTxn::new(&shared);
        assert!(!txn.insert(a, 7), "a seq is queued once");
        assert!(txn.remove(a, 5) && txn.remove(a, 9) && txn.remove(b, 6));
        assert!(!txn.remove(b, 6), "a seq is taken once");
        assert_eq!(txn.oldest(a), Some(7));
        assert_eq!(shared.lock().unwrap().total(), 4, "nothing shows before publish");
        txn.publish();
        let index = shared.lock().unwrap();
        assert_eq!((index.after(&a, 0, 10), index.after(&b, 0, 10), index.total()), (vec![7], vec![], 1));
        assert!(!index.per_device.contains_key(&b), "an empty queue is forgotten");
    }

    #[test]
    fn an_unpublished_transaction_changes_nothing() {
        let a = [1u8; 12];
        let shared = index_of(&[(a, 1)]);
        let mut txn = PendingTxn::new(&shared);
        txn.insert(a, 2);
        txn.remove(a, 1);
        drop(txn);
        assert_eq!(shared.lock().unwrap().after(&a, 0, 10), vec![1]);
    }

    /// One step of a transaction: (device, op, seq); ops 0-1 push, 2 acknowledges the
    /// given seq, 3 the oldest, 4 reads the length.
    type Step = (usize, u8, u64);

    proptest::proptest! {
        #[test]
        fn transactions_agree_with_a_plain_model(
            txns in proptest::collection::vec(
                (proptest::collection::vec((0usize..3, 0u8..5, 1u64..40), 0..30), proptest::bool::ANY),
                1..12,
            ),
        ) {
            let devices = [[1u8; 12], [2u8; 12], [3u8; 12]];
            let shared = Mutex::new(PendingIndex::default());
            let mut model: Vec<std::collections::BTreeSet<u64>> = vec![Default::default(); 3];
            for (steps, commit) in txns {
                let steps: Vec<Step> = steps;
                let mut txn = PendingTxn::new(&shared);
                let mut after = model.clone();
                for (d, op, seq) in steps {
                    let (regid, queue) = (devices[d], &mut after[d]);
                    match op {
                        0 | 1 => proptest::prop_assert_eq!(txn.insert(regid, seq), queue.insert(seq)),
                        2 => proptest::prop_assert_eq!(txn.remove(regid, seq), queue.remove(&seq)),
                        3 => {
                            let oldest = queue.first().copied();
                            proptest::prop_assert_eq!(txn.oldest(regid), oldest);
                            if let Some(seq) = oldest {
                                proptest::prop_assert!(txn.remove(regid, seq));
                                queue.remove(&seq);
                            }
                        }
                        _ => proptest::prop_assert_eq!(txn.len(regid), queue.len()),
                    }
                }
                if commit {
                    txn.publish();
                    model = after;
                } else {
                    drop(txn);
                }
                let index = shared.lock().unwrap();
                for (d, regid) in devices.iter().enumerate() {
                    proptest::prop_assert_eq!(index.after(regid, 0, usize::MAX), model[d].iter().copied().collect::<Vec<_>>());
                    proptest::prop_assert_eq!(index.per_device.contains_key(regid), !model[d].is_empty());
                }
                proptest::prop_assert_eq!(index.total(), model.iter().map(|q| q.len() as u64).sum::<u64>());
            }
        }
    }

    #[test]
    fn a_push_behind_a_long_queue_and_its_oldest_acknowledged_copy_nothing() {
        let a = [1u8; 12];
        let shared = index_of(&(1..=1000).map(|seq| (a, seq)).collect::<Vec<_>>());
        let mut txn = PendingTxn::new(&shared);
        assert_eq!(txn.len(a), 1000);
        assert_eq!(txn.oldest(a), Some(1));
        assert!(txn.remove(a, 1) && txn.insert(a, 1001) && !txn.insert(a, 1001));
        assert!(
            matches!(txn.changed.get(&a), Some(Change::Ends { base_len: 1000, taken: 1, added }) if added == &[1001])
        );
        txn.publish();
        let index = shared.lock().unwrap();
        assert_eq!((index.after(&a, 998, 10), index.total()), (vec![999, 1000, 1001], 1000));
    }

    #[test]
    fn keys_sort_by_seq_then_device() {
        let (a, b) = (crate::ids::RegId([9u8; 12]), crate::ids::RegId([1u8; 12]));
        assert!(pending_key(&a, 1) < pending_key(&b, 2));
        assert_eq!(split_key(&pending_key(&a, 300)), Some((300, a.0)));
    }
}
