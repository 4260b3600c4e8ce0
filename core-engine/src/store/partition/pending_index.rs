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
use redb::{Database, ReadableDatabase, ReadableTable};
use std::collections::{HashMap, VecDeque};
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

/// One transaction's changes to the index: each device's queue is copied on first touch and
/// the copies replace the shared ones at [`PendingTxn::publish`]. Dropped unpublished (the
/// transaction failed), the index stays as it was.
pub(super) struct PendingTxn<'a> {
    shared: &'a Mutex<PendingIndex>,
    changed: HashMap<[u8; 12], Queue>,
}

impl<'a> PendingTxn<'a> {
    pub(super) fn new(shared: &'a Mutex<PendingIndex>) -> Self {
        PendingTxn { shared, changed: HashMap::new() }
    }

    fn queue(&mut self, regid: [u8; 12]) -> &mut Queue {
        let shared = self.shared;
        self.changed.entry(regid).or_insert_with(|| {
            let index = shared.lock().unwrap_or_else(PoisonError::into_inner);
            index.per_device.get(&regid).cloned().unwrap_or_default()
        })
    }

    pub(super) fn len(&mut self, regid: [u8; 12]) -> usize {
        self.queue(regid).len()
    }

    pub(super) fn oldest(&mut self, regid: [u8; 12]) -> Option<u64> {
        self.queue(regid).front().copied()
    }

    /// Adds `seq` to the device's queue; false if it was there.
    pub(super) fn insert(&mut self, regid: [u8; 12], seq: u64) -> bool {
        let queue = self.queue(regid);
        match queue.back() {
            Some(&last) if last >= seq => match queue.binary_search(&seq) {
                Ok(_) => false,
                Err(at) => {
                    queue.insert(at, seq);
                    true
                }
            },
            _ => {
                queue.push_back(seq);
                true
            }
        }
    }

    /// Takes `seq` out of the device's queue; false if it was not there.
    pub(super) fn remove(&mut self, regid: [u8; 12], seq: u64) -> bool {
        let queue = self.queue(regid);
        if queue.front() == Some(&seq) {
            queue.pop_front();
            return true;
        }
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
        for (regid, queue) in self.changed {
            let added = queue.len() as u64;
            let before =
                if queue.is_empty() { index.per_device.remove(&regid) } else { index.per_device.insert(regid, queue) };
            let removed = before.map_or(0, |q| q.len() as u64);
            assert!(index.total >= removed, "pending total {} below a device's {removed}", index.total);
            index.total = index.total - removed + added;
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

    #[test]
    fn keys_sort_by_seq_then_device() {
        let (a, b) = (crate::ids::RegId([9u8; 12]), crate::ids::RegId([1u8; 12]));
        assert!(pending_key(&a, 1) < pending_key(&b, 2));
        assert_eq!(split_key(&pending_key(&a, 300)), Some((300, a.0)));
    }
}
