//! Moving a data folder's rows between layouts: from one file per partition, and between
//! shard counts, with an interrupted move made again.

use super::*;
use crate::ids::RegId;
use crate::stats::DayStats;
use crate::store::PartitionStore;
use redb::TableHandle;
use std::cell::Cell;

const LIMITS: StoreLimits =
    StoreLimits { max_pending_per_device: 10, stats_kept_secs: crate::store::partition::DEFAULT_STATS_KEPT_SECS };

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pushnode-layout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A message's counts as partition files stored them: app, targets, delivered, clicked, expiry.
fn stats_bytes(targets: u64, delivered: u64) -> Vec<u8> {
    let mut out = 9u32.to_le_bytes().to_vec();
    for v in [targets, delivered, 0, 100] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn body(id: u64) -> Vec<u8> {
    let mut out = 100u64.to_le_bytes().to_vec();
    out.extend_from_slice(format!("{{\"n\":{id}}}").as_bytes());
    out
}

/// Writes `partition-NNNN.redb` as a node from before shard databases did: `regid` registered
/// with message `id` pending at `seq` (in the table keyed by device when `by_device`).
fn write_legacy(dir: &Path, regid: RegId, seq: u64, id: u64, by_device: bool) {
    let db = Database::create(legacy_path(dir, regid.partition())).unwrap();
    let txn = db.begin_write().unwrap();
    {
        txn.open_table(DEVICES).unwrap().insert(&regid.0[..], &[7u8; 28][..]).unwrap();
        if by_device {
            let key = [&regid.0[..], &seq.to_be_bytes()[..]].concat();
            txn.open_table(LEGACY_PENDING_BY_DEVICE).unwrap().insert(&key[..], id).unwrap();
        } else {
            let key = [&seq.to_be_bytes()[..], &regid.0[..]].concat();
            txn.open_table(OLD_PENDING).unwrap().insert(&key[..], id).unwrap();
        }
        txn.open_table(LEGACY_BODIES).unwrap().insert(id, &body(id)[..]).unwrap();
        txn.open_table(LEGACY_MSG_STATS).unwrap().insert(id, &stats_bytes(1, 0)[..]).unwrap();
        // expires_at ++ seq ++ id, without the partition, as a partition's own file had it.
        let due = [100u64.to_be_bytes(), seq.to_be_bytes(), id.to_be_bytes()].concat();
        txn.open_table(OLD_PUSH_EXPIRY).unwrap().insert(&due[..], &regid.0[..]).unwrap();
        let day_key = [&9u32.to_be_bytes()[..], &20_000u32.to_be_bytes()[..]].concat();
        let stats = DayStats { total: 3, ..Default::default() };
        txn.open_table(DAY_STATS).unwrap().insert(&day_key[..], &stats.to_bytes()[..]).unwrap();
        txn.open_table(META).unwrap().insert(LEGACY_APPLIED_LSN, 40 + u64::from(regid.partition())).unwrap();
    }
    txn.commit().unwrap();
}

/// Opens `dir` for `shards` shards from the layout `found`; answers the databases and the
/// shard count recorded (if one was).
fn open_as(dir: &Path, shards: usize, found: Option<usize>) -> (Vec<StoreDb>, Option<usize>) {
    let recorded = Cell::new(None);
    let dbs = open(dir, 2, shards, found, 1 << 20, LIMITS, |n| {
        recorded.set(Some(n));
        Ok(())
    })
    .unwrap();
    (dbs, recorded.get())
}

/// Every partition of `dbs` by number.
fn partition(dbs: &[StoreDb], p: u16) -> &PartitionStore {
    dbs.iter().flat_map(|db| db.partitions()).find(|s| s.partition == p).expect("partition held")
}

/// What the two devices of the test folder should find, whatever the layout.
fn check_rows(dbs: &[StoreDb], a: &RegId, b: &RegId) {
    for (regid, id) in [(a, 10u64), (b, 11)] {
        let store = partition(dbs, regid.partition());
        let devices = store.load_devices().unwrap();
        assert_eq!(devices.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![*regid]);
        let pending = store.pending_for(regid, 0, 50, 10).unwrap();
        assert_eq!(
            pending.iter().map(|m| (m.seq, m.id)).collect::<Vec<_>>(),
            vec![(u64::from(regid.partition()) + 1, id)]
        );
        assert_eq!(&pending[0].json[..], format!("{{\"n\":{id}}}").as_bytes());
        assert_eq!(store.message_stats(9, id).unwrap().map(|s| (s.targets, s.delivered)), Some((1, 0)));
        assert_eq!(
            store.day_stats(9, 20_000, 20_000).unwrap().iter().map(|(_, s)| s.total).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(store.applied_lsn().unwrap(), 40 + u64::from(regid.partition()));
        assert_eq!(store.pending_rows(), 1);
    }
}

/// Expires what is due at 100 s in every partition of `dbs`: each device's one pending push
/// goes, found through its expiry row.
fn expire_both(dbs: &[StoreDb], a: &RegId, b: &RegId) {
    for regid in [a, b] {
        let store = partition(dbs, regid.partition());
        let mut events = Vec::new();
        assert!(!store.expire(100, 100, &mut events).unwrap());
        assert_eq!(store.pending_rows(), 0, "the push expired through its expiry row");
        assert!(
            events.iter().any(|e| matches!(e, crate::store::StoreEvent::Expired { app_id: 9, count: 1 })),
            "counted as expired: {events:?}"
        );
    }
}

/// Puts the pushes of the one-shard database in `dir` back in the tables a node from before
/// push rows kept them in: pending rows of message ids, bodies of their own, expiry rows
/// keyed partition first.
fn make_push_tables_old(dir: &Path) {
    let db = Database::open(db_path(dir, 0, 1)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let pending = txn.open_table(PENDING).unwrap();
        let mut old_pending = txn.open_table(OLD_PENDING).unwrap();
        for row in pending.iter().unwrap() {
            let (k, v) = row.unwrap();
            old_pending.insert(k.value(), v.value().0).unwrap();
        }
        let pushes = txn.open_table(PUSH_ROWS).unwrap();
        let mut old_expiry = txn.open_table(OLD_PUSH_EXPIRY).unwrap();
        let mut bodies = txn.open_table(BODIES).unwrap();
        for row in pushes.iter().unwrap() {
            let (k, v) = row.unwrap();
            let (p, expires_at, seq, id) = split_push_row_key(k.value()).unwrap();
            let (targets, json) = partition::split_push_row(v.value()).unwrap();
            let key = [&p.to_be_bytes()[..], &expires_at.to_be_bytes(), &seq.to_be_bytes(), &id.to_be_bytes()].concat();
            old_expiry.insert(&key[..], targets).unwrap();
            bodies.insert((id, p), &[&expires_at.to_le_bytes()[..], json].concat()[..]).unwrap();
        }
    }
    txn.delete_table(PENDING).unwrap();
    txn.delete_table(PUSH_ROWS).unwrap();
    txn.commit().unwrap();
}

#[test]
fn pushes_in_the_tables_before_push_rows_move_to_push_rows_on_open_and_on_a_move() {
    for (name, shards) in [("old-pushes-same", 1), ("old-pushes-move", 2)] {
        let (dir, a, b) = legacy_folder(name, false);
        drop(open_as(&dir, 1, None));
        make_push_tables_old(&dir);
        let (dbs, _) = open_as(&dir, shards, Some(1));
        check_rows(&dbs, &a, &b);
        expire_both(&dbs, &a, &b);
        drop(dbs);
        for i in 0..shards {
            let db = Database::open(db_path(&dir, i, shards)).unwrap();
            let txn = db.begin_read().unwrap();
            for old in [OLD_PENDING.name(), OLD_PUSH_EXPIRY.name()] {
                assert!(!txn.list_tables().unwrap().any(|t| t.name() == old), "{old} is gone");
            }
            let bodies = txn.open_table(BODIES).unwrap();
            assert_eq!(redb::ReadableTableMetadata::len(&bodies).unwrap(), 0, "the push bodies moved");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A folder of two partition files: device a in partition 0 (its pending row in the table
/// keyed by device when `a_by_device`), b in partition 1.
fn legacy_folder(name: &str, a_by_device: bool) -> (PathBuf, RegId, RegId) {
    let dir = temp_dir(name);
    let (a, b) = (RegId::generate(0), RegId::generate(1));
    write_legacy(&dir, a, 1, 10, a_by_device);
    write_legacy(&dir, b, 2, 11, false);
    (dir, a, b)
}

#[test]
fn a_folder_of_partition_files_moves_into_shard_databases_and_between_shard_counts() {
    let (dir, a, b) = legacy_folder("legacy", true);

    let (dbs, recorded) = open_as(&dir, 1, None);
    assert_eq!(recorded, Some(1));
    assert!(!legacy_path(&dir, 0).exists() && !legacy_path(&dir, 1).exists(), "the partition files are gone");
    check_rows(&dbs, &a, &b);
    drop(dbs);

    // Two shards now: each partition goes to its own file, the one file goes.
    let (dbs, recorded) = open_as(&dir, 2, Some(1));
    assert_eq!(recorded, Some(2));
    assert_eq!(dbs.iter().map(|db| db.partitions().len()).collect::<Vec<_>>(), vec![1, 1]);
    assert!(!db_path(&dir, 0, 1).exists());
    check_rows(&dbs, &a, &b);
    drop(dbs);

    // Same count again: nothing moves.
    let (dbs, recorded) = open_as(&dir, 2, Some(2));
    assert_eq!(recorded, None);
    check_rows(&dbs, &a, &b);
    expire_both(&dbs, &a, &b);
    drop(dbs);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_move_that_did_not_finish_is_made_again() {
    let (dir, a, b) = legacy_folder("interrupted", false);
    drop(open_as(&dir, 2, None));
    // A move to one shard stopped after writing part of its file (here: a device only).
    {
        let db = Database::create(db_path(&dir, 0, 1)).unwrap();
        let txn = db.begin_write().unwrap();
        partition::create_tables(&txn).unwrap();
        txn.open_table(DEVICES).unwrap().insert(&RegId::generate(0).0[..], &[1u8; 28][..]).unwrap();
        txn.commit().unwrap();
    }
    let (dbs, recorded) = open_as(&dir, 1, Some(2));
    assert_eq!(recorded, Some(1));
    check_rows(&dbs, &a, &b);
    std::fs::remove_dir_all(&dir).unwrap();
}
