//! The log's record format (torn tails, checksums, stale records) and replay.

use super::*;
use crate::push::TopicOp;
use crate::store::StoreLimits;

fn envelope(id: u64) -> Arc<Envelope> {
    Arc::new(Envelope { id, app_id: 7, expires_at: u64::MAX / 2, json: format!("{{\"n\":{id}}}").into_bytes().into() })
}

fn every_op(regid: RegId) -> Vec<WriteOp> {
    let partition = regid.partition();
    let record = DeviceRecord { app_id: 7, token_hash: [3; 16], created_at: 11 };
    let filter = GroupFilter::Topics { topics: vec!["a".into(), "b".into()], op: TopicOp::Union };
    vec![
        WriteOp::RegisterDevice { regid, record },
        WriteOp::StorePush { envelope: envelope(1), seq: 1, regids: vec![regid] },
        WriteOp::SetAlias { regid, alias: "alice".into() },
        WriteOp::UnsetAlias { regid, alias: "bob".into() },
        WriteOp::Subscribe { regid, topic: "news".into(), seq: 2 },
        WriteOp::Unsubscribe { regid, topic: "old".into() },
        WriteOp::StoreGroup { partition, envelope: envelope(2), seq: 3, filter, targets: 9 },
        WriteOp::Quiet { regid, hours: QuietHours::from_bytes(&[0, 0, 0, 1, 0, 0]) },
        WriteOp::Quiet { regid, hours: None },
        WriteOp::GroupCursor { regid, seq: 3 },
        WriteOp::GroupDelivered { partition, id: 2, count: 3 },
        WriteOp::Clicked { partition, regid, id: 1 },
        WriteOp::Acked { regid, seq: 1, id: 1 },
        WriteOp::DayStats { partition, app_id: 7, day: 5, stats: Default::default() },
        WriteOp::ActiveDay { regid, day: 5 },
    ]
}

fn debug(ops: &[WriteOp]) -> Vec<String> {
    ops.iter().map(|op| format!("{op:?}")).collect()
}

#[test]
fn every_write_survives_its_record() {
    let ops = every_op(RegId::generate(1));
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let mut bytes = Vec::new();
    encode_record(1, &refs, &mut bytes);
    let records = decode_records(&bytes);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].lsn, 1);
    assert_eq!(debug(&records[0].ops), debug(&ops));
    assert_eq!(ops.iter().filter(|op| needs_sync(op)).count(), 9, "acks, cursors and counts wait for the next sync");
}

fn three_records() -> (Vec<u8>, [usize; 3]) {
    let ops = every_op(RegId::generate(1));
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let mut bytes = Vec::new();
    let mut ends = [0; 3];
    for (i, lsn) in [5u64, 6, 7].into_iter().enumerate() {
        encode_record(lsn, &refs[i..i + 2], &mut bytes);
        ends[i] = bytes.len();
    }
    (bytes, ends)
}

#[test]
fn a_torn_tail_ends_the_log_at_the_last_whole_record() {
    let (bytes, ends) = three_records();
    assert_eq!(decode_records(&bytes).iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![5, 6, 7]);
    for cut in 0..bytes.len() {
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(decode_records(&bytes[..cut]).len(), whole, "cut at {cut}");
    }
}

#[test]
fn a_flipped_byte_ends_the_log_before_its_record() {
    let (bytes, ends) = three_records();
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        let intact = ends.iter().filter(|&&end| end <= at).count();
        // A CRC catches every single-bit flip: the records before the flipped one are read,
        // the flipped one and those after it are not.
        assert_eq!(decode_records(&bad).len(), intact, "flip at {at}");
    }
}

#[test]
fn stale_records_after_the_live_ones_are_not_read() {
    let ops = every_op(RegId::generate(1));
    let refs: Vec<&WriteOp> = ops.iter().collect();
    let mut bytes = Vec::new();
    encode_record(20, &refs[..1], &mut bytes);
    encode_record(21, &refs[..1], &mut bytes);
    // What the log held before its last checkpoint: older LSNs.
    encode_record(9, &refs[..1], &mut bytes);
    encode_record(10, &refs[..1], &mut bytes);
    assert_eq!(decode_records(&bytes).iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![20, 21]);
    assert!(decode_records(&[0u8; 64]).is_empty(), "zeros are no record");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pushnode-wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A partition (1) in a fresh folder, one device of it, and pushes to that device.
struct Fixture {
    dir: PathBuf,
    store: Arc<PartitionStore>,
    stores: BTreeMap<u16, Arc<PartitionStore>>,
    device: RegId,
    push: Box<dyn Fn(u64, u64) -> WriteOp>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        let limits = StoreLimits {
            max_pending_per_device: 100,
            stats_kept_secs: crate::store::partition::DEFAULT_STATS_KEPT_SECS,
        };
        let store = Arc::new(PartitionStore::open_alone(&dir, 1, 1 << 20, limits).unwrap());
        let stores = [(1, store.clone())].into();
        let device = RegId::generate(1);
        let push = Box::new(move |id, seq| WriteOp::StorePush { envelope: envelope(id), seq, regids: vec![device] });
        Fixture { dir, store, stores, device, push }
    }
}

#[test]
fn recovery_replays_only_what_a_partition_lacks() {
    let Fixture { dir, store, stores, device, push } = Fixture::new("recover");
    let (first, second, third) = (push(10, 1), push(11, 2), push(12, 3));
    let paths = paths_of(&dir, 0);
    {
        let mut wal = Wal::open(&paths, 1 << 16, 1).unwrap();
        assert_eq!(wal.append(&[&first]).unwrap(), 1);
        assert_eq!(wal.append(&[&second]).unwrap(), 2);
        // A checkpoint began: record 3 goes to the other file.
        wal.switch();
        assert_eq!(wal.append(&[&third]).unwrap(), 3);
        wal.sync().unwrap();
    }
    // The partition made record 1 durable; records 2 and 3 never reached it (the crash).
    store.apply(&[&first], redb::Durability::Immediate, Some(1), &mut Vec::new()).unwrap();
    let found = recover(&dir, &stores, &paths).unwrap();
    assert_eq!(found, Recovered { records: 2, writes: 2, next_lsn: 4 });
    assert_eq!(store.applied_lsn().unwrap(), 3);
    let pending: Vec<u64> = store.pending_for(&device, 0, 0, 10).unwrap().iter().map(|m| m.id).collect();
    assert_eq!(pending, vec![10, 11, 12], "both files, in order");
    assert_eq!(store.message_stats(7, 10).unwrap().unwrap().targets, 1, "record 1 was not applied twice");

    // A second recovery finds nothing new; logs not kept are removed.
    assert_eq!(recover(&dir, &stores, &[]).unwrap(), Recovered { records: 0, writes: 0, next_lsn: 4 });
    assert!(!paths[0].exists() && !paths[1].exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_written_over_keeps_no_stale_record_in_play() {
    let Fixture { dir, store, stores, device, push } = Fixture::new("reuse");
    let paths = paths_of(&dir, 0);
    let mut wal = Wal::open(&paths, 1 << 16, 1).unwrap();
    // File a: records 1-3, all checkpointed into the partition.
    for lsn in 1..=3 {
        let op = push(lsn, lsn);
        assert_eq!(wal.append(&[&op]).unwrap(), lsn);
        store.apply(&[&op], redb::Durability::Immediate, Some(lsn), &mut Vec::new()).unwrap();
    }
    wal.switch(); // to b
    let b = push(4, 4);
    wal.append(&[&b]).unwrap();
    store.apply(&[&b], redb::Durability::Immediate, Some(4), &mut Vec::new()).unwrap();
    wal.switch(); // back to a, written over from its start: record 5 lands on record 1
    let over = push(5, 5);
    assert_eq!(wal.append(&[&over]).unwrap(), 5);
    wal.sync().unwrap();
    drop(wal);
    let bytes = std::fs::read(&paths[0]).unwrap();
    let read: Vec<u64> = decode_records(&bytes[MAGIC.len()..]).iter().map(|r| r.lsn).collect();
    assert_eq!(read, vec![5], "records 2 and 3 behind record 5 are stale and not read");
    let found = recover(&dir, &stores, &paths).unwrap();
    assert_eq!(found, Recovered { records: 1, writes: 1, next_lsn: 6 });
    assert_eq!(store.pending_for(&device, 0, 0, 10).unwrap().len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_log_of_another_format_is_refused() {
    let dir = temp_dir("magic");
    std::fs::write(&paths_of(&dir, 0)[0], b"NOTALOG!and more").unwrap();
    let err = recover(&dir, &BTreeMap::new(), &[]).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_delivery_logged_before_counts_were_grouped_reads_as_one() {
    let old = vec![LoggedOp::GroupDelivered { partition: 4, id: 9 }];
    let payload = postcard::to_allocvec(&old).expect("plain data");
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&1u64.to_le_bytes());
    hasher.update(&payload);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&hasher.finalize().to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&payload);
    let records = decode_records(&bytes);
    assert_eq!(records.len(), 1);
    assert_eq!(debug(&records[0].ops), debug(&[WriteOp::GroupDelivered { partition: 4, id: 9, count: 1 }]));
}
