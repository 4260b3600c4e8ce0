//! One store database: the partitions of the shards its writer serves (one shard, or
//! several when shards outnumber the store writers), kept in one file, so the writer commits
//! all of them in one transaction (one transaction per partition, eight a commit on a
//! 2-shard node of 16 partitions, cost the writer twice the CPU). Which file holds which
//! partitions, and moving them when the file count changes, is `layout.rs`.

use super::partition::{self, PartitionStore, StoreError, StoreEvent, StoreLimits, WriteOp};
use redb::Database;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A store database and its partitions.
pub struct StoreDb {
    db: Arc<Database>,
    partitions: Vec<Arc<PartitionStore>>,
}

impl StoreDb {
    /// Opens (or creates) the database at `path` holding `partitions`.
    pub fn open(path: &Path, partitions: &[u16], cache_bytes: usize, limits: StoreLimits) -> Result<Self, StoreError> {
        let db = Arc::new(redb::Builder::new().set_cache_size(cache_bytes).create(path)?);
        let txn = db.begin_write()?;
        partition::create_tables(&txn)?;
        txn.commit()?;
        let partitions = PartitionStore::open_all(&db, partitions, limits)?.into_iter().map(Arc::new).collect();
        Ok(StoreDb { db, partitions })
    }

    /// Its partitions, ascending.
    pub fn partitions(&self) -> &[Arc<PartitionStore>] {
        &self.partitions
    }

    /// Applies each partition's ops in one transaction (no fsync); with `lsn`, each
    /// partition written records that it holds that write-ahead log record. Every
    /// partition in `ops` must be one of this database's.
    pub fn commit(
        &self,
        ops: &BTreeMap<u16, Vec<&WriteOp>>,
        lsn: Option<u64>,
        events: &mut Vec<StoreEvent>,
    ) -> Result<(), StoreError> {
        let work: Vec<(&PartitionStore, Vec<&WriteOp>)> = ops
            .iter()
            .map(|(partition, ops)| {
                let store = self.partitions.iter().find(|s| s.partition == *partition);
                let store = store.expect("the writer commits only the partitions of its database");
                (&**store, ops.clone())
            })
            .collect();
        partition::apply_together(&self.db, &work, redb::Durability::None, lsn, events)
    }

    /// Makes every commit so far durable (fsync).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        partition::apply_together(&self.db, &[], redb::Durability::Immediate, None, &mut Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RegId;
    use crate::push::Envelope;
    use partition::DeviceRecord;

    const LIMITS: StoreLimits =
        StoreLimits { max_pending_per_device: 10, stats_kept_secs: crate::store::partition::DEFAULT_STATS_KEPT_SECS };

    fn envelope(id: u64, expires_at: u64) -> Arc<Envelope> {
        Arc::new(Envelope { id, app_id: 9, expires_at, json: format!("{{\"n\":{id}}}").into_bytes().into() })
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pushnode-store-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ids(store: &PartitionStore, regid: &RegId) -> Vec<u64> {
        store.pending_for(regid, 0, 50, 10).unwrap().iter().map(|m| m.id).collect()
    }

    #[test]
    fn partitions_sharing_a_database_keep_their_rows_apart() {
        let dir = temp_dir("apart");
        let path = dir.join("db.redb");
        let (a, b) = (RegId::generate(1), RegId::generate(3));
        {
            let db = StoreDb::open(&path, &[1, 3], 1 << 20, LIMITS).unwrap();
            let [one, three] = db.partitions() else { panic!("two partitions") };
            let record = DeviceRecord { app_id: 9, token_hash: [1; 16], created_at: 5 };
            // The same message stored in both partitions, in one commit.
            let ops_1 = [
                WriteOp::RegisterDevice { regid: a, record },
                WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a] },
            ];
            let ops_3 = [WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![b] }];
            let grouped = BTreeMap::from([(1, ops_1.iter().collect()), (3, ops_3.iter().collect())]);
            let mut events = Vec::new();
            db.commit(&grouped, Some(7), &mut events).unwrap();
            assert_eq!(events, vec![StoreEvent::PendingRows(1), StoreEvent::PendingRows(1)]);
            assert_eq!((one.applied_lsn().unwrap(), three.applied_lsn().unwrap()), (7, 7));
            // a's ack finishes the message in partition 1 only: b still gets it.
            let acked = [WriteOp::Acked { regid: a, seq: 1, id: 10 }];
            db.commit(&BTreeMap::from([(1, acked.iter().collect())]), Some(8), &mut Vec::new()).unwrap();
            assert!(ids(one, &a).is_empty());
            assert_eq!(ids(three, &b), vec![10]);
            assert_eq!(one.message_stats(9, 10).unwrap().map(|s| (s.targets, s.delivered)), Some((1, 1)));
            assert_eq!(three.message_stats(9, 10).unwrap().map(|s| (s.targets, s.delivered)), Some((1, 0)));
            assert_eq!((one.applied_lsn().unwrap(), three.applied_lsn().unwrap()), (8, 7));
            db.checkpoint().unwrap();
        }
        // Reopened: each partition finds its own devices and queues.
        let db = StoreDb::open(&path, &[1, 3], 1 << 20, LIMITS).unwrap();
        let [one, three] = db.partitions() else { panic!("two partitions") };
        assert_eq!(one.load_devices().unwrap().len(), 1);
        assert!(three.load_devices().unwrap().is_empty());
        assert_eq!((one.pending_rows(), three.pending_rows()), (0, 1));
        assert_eq!(ids(three, &b), vec![10]);
        // Partition 1's sweep leaves partition 3's message alone.
        let mut events = Vec::new();
        assert!(!one.expire(100, 100, &mut events).unwrap());
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(ids(three, &b), vec![10]);
        assert!(!three.expire(100, 100, &mut events).unwrap());
        assert_eq!(events, vec![StoreEvent::Expired { app_id: 9, count: 1 }, StoreEvent::PendingRows(-1)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sweeps_of_small_bites_expire_every_partitions_pushes() {
        let dir = temp_dir("bites");
        let db = StoreDb::open(&dir.join("db.redb"), &[1, 3], 1 << 20, LIMITS).unwrap();
        // 100 pushes for partition 1 due before partition 3's 5 (the expiry rows sort by time):
        // a sweep of partition 3 reads past partition 1's rows to find its own.
        let (a, b) = (RegId::generate(1), RegId::generate(3));
        let mut ops_1 = Vec::new();
        for seq in 1..=100u64 {
            ops_1.push(WriteOp::StorePush { envelope: envelope(seq, 50), seq, regids: vec![a] });
        }
        let ops_3: Vec<_> = (101..=105u64)
            .map(|seq| WriteOp::StorePush { envelope: envelope(seq, 60), seq, regids: vec![b] })
            .collect();
        let grouped = BTreeMap::from([(1, ops_1.iter().collect()), (3, ops_3.iter().collect())]);
        db.commit(&grouped, None, &mut Vec::new()).unwrap();
        let [one, three] = db.partitions() else { panic!("two partitions") };
        assert_eq!((one.pending_rows(), three.pending_rows()), (10, 5), "a device keeps its newest 10");
        let mut expired = BTreeMap::new();
        let mut sweeps = 0;
        loop {
            sweeps += 1;
            assert!(sweeps <= 120, "sweeps of one row each must finish");
            let mut events = Vec::new();
            let more = one.expire(100, 1, &mut events).unwrap() | three.expire(100, 1, &mut events).unwrap();
            for e in events {
                if let StoreEvent::Expired { count, .. } = e {
                    *expired.entry(sweeps).or_insert(0) += count;
                }
            }
            if !more {
                break;
            }
        }
        assert_eq!((one.pending_rows(), three.pending_rows()), (0, 0));
        assert_eq!(expired.values().sum::<u64>(), 15, "each pending push counted once");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
