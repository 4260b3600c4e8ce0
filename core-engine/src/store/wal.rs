//! The write-ahead log of one shard's store writer under `durability = "fsync"`.
//!
//! Each group commit appends one record holding the commit's writes and fdatasyncs this
//! single file (at once if any write needs it, else within a second: see [`needs_sync`]),
//! instead of fsyncing every partition database it touched.
//! The partitions commit without fsync and keep, in the same transaction, the log
//! sequence number (LSN) of the last record they hold. The log is two files written in
//! turn: a checkpoint switches to the other file, from its start, and then fsyncs the
//! partitions; the file it left is written over only after that checkpoint has finished,
//! when every record in it is durable in its partitions. After a crash, [`recover`]
//! replays into each partition the records newer than its LSN, from both files.
//!
//! File layout: [`MAGIC`], then records of `len: u32 LE | crc32: u32 LE | lsn: u64 LE |
//! payload` where the payload is the postcard encoding of the record's `LoggedOp`s and
//! the checksum covers the LSN and the payload. A file is filled with zeros when it is
//! made, so a commit overwrites allocated blocks and fdatasync flushes data only.
//!
//! Records from an earlier use of a file may follow the live ones. Reading stops at the
//! first record that is torn, fails its checksum, or does not continue the LSN sequence;
//! a stale record that is read anyway is harmless, because every partition it touches
//! was checkpointed holding an LSN at least as new.

use super::partition::{DeviceRecord, PartitionStore, StoreError, WriteOp};
use crate::ids::RegId;
use crate::push::{Envelope, GroupFilter, QuietHours};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file's first bytes; a different format gets a different magic.
pub const MAGIC: &[u8; 8] = b"PNWAL001";
const RECORD_HEADER: usize = 16;
/// Largest record payload read back; a length above it is garbage, not a record.
const MAX_RECORD: usize = 1 << 30;

/// A write as the log keeps it, in a form that is independent of the in-memory [`WriteOp`].
/// New variants go last, so older logs' records keep their variant numbers: `GroupDelivered`
/// (one delivery) is how logs before `GroupDeliveries` (a count of them) recorded deliveries.
#[derive(Debug, Serialize, Deserialize)]
enum LoggedOp {
    RegisterDevice { regid: [u8; 12], record: [u8; DeviceRecord::LEN] },
    StorePush { envelope: LoggedEnvelope, seq: u64, regids: Vec<[u8; 12]> },
    SetAlias { regid: [u8; 12], alias: String },
    UnsetAlias { regid: [u8; 12], alias: String },
    Subscribe { regid: [u8; 12], topic: String, seq: u64 },
    Unsubscribe { regid: [u8; 12], topic: String },
    StoreGroup { partition: u16, envelope: LoggedEnvelope, seq: u64, filter: GroupFilter, targets: u64 },
    Quiet { regid: [u8; 12], hours: Option<[u8; 6]> },
    GroupCursor { regid: [u8; 12], seq: u64 },
    GroupDelivered { partition: u16, id: u64 },
    Clicked { partition: u16, regid: [u8; 12], id: u64 },
    Acked { regid: [u8; 12], seq: u64, id: u64 },
    DayStats { partition: u16, app_id: u32, day: u32, stats: Vec<u8> },
    ActiveDay { regid: [u8; 12], day: u32 },
    GroupDeliveries { partition: u16, id: u64, count: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
struct LoggedEnvelope {
    id: u64,
    app_id: u32,
    expires_at: u64,
    json: Vec<u8>,
}

impl LoggedEnvelope {
    fn of(envelope: &Envelope) -> Self {
        LoggedEnvelope {
            id: envelope.id,
            app_id: envelope.app_id,
            expires_at: envelope.expires_at,
            json: envelope.json.to_vec(),
        }
    }

    fn into_envelope(self) -> Arc<Envelope> {
        Arc::new(Envelope { id: self.id, app_id: self.app_id, expires_at: self.expires_at, json: self.json.into() })
    }
}

/// Whether a commit with this write must fdatasync the log before it completes. The others
/// (acknowledgements, counts, cursors) are logged too but ride on the next fdatasync, at
/// most a second later: losing one means a resend or a count off by one.
pub fn needs_sync(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::RegisterDevice { .. }
            | WriteOp::StorePush { .. }
            | WriteOp::SetAlias { .. }
            | WriteOp::UnsetAlias { .. }
            | WriteOp::Subscribe { .. }
            | WriteOp::Unsubscribe { .. }
            | WriteOp::StoreGroup { .. }
            | WriteOp::Quiet { .. }
    )
}

fn logged(op: &WriteOp) -> LoggedOp {
    match op {
        WriteOp::RegisterDevice { regid, record } => {
            LoggedOp::RegisterDevice { regid: regid.0, record: record.to_bytes() }
        }
        WriteOp::StorePush { envelope, seq, regids } => LoggedOp::StorePush {
            envelope: LoggedEnvelope::of(envelope),
            seq: *seq,
            regids: regids.iter().map(|r| r.0).collect(),
        },
        WriteOp::SetAlias { regid, alias } => LoggedOp::SetAlias { regid: regid.0, alias: alias.clone() },
        WriteOp::UnsetAlias { regid, alias } => LoggedOp::UnsetAlias { regid: regid.0, alias: alias.clone() },
        WriteOp::Subscribe { regid, topic, seq } => {
            LoggedOp::Subscribe { regid: regid.0, topic: topic.clone(), seq: *seq }
        }
        WriteOp::Unsubscribe { regid, topic } => LoggedOp::Unsubscribe { regid: regid.0, topic: topic.clone() },
        WriteOp::StoreGroup { partition, envelope, seq, filter, targets } => LoggedOp::StoreGroup {
            partition: *partition,
            envelope: LoggedEnvelope::of(envelope),
            seq: *seq,
            filter: filter.clone(),
            targets: *targets,
        },
        WriteOp::Quiet { regid, hours } => LoggedOp::Quiet { regid: regid.0, hours: hours.map(QuietHours::to_bytes) },
        WriteOp::GroupCursor { regid, seq } => LoggedOp::GroupCursor { regid: regid.0, seq: *seq },
        WriteOp::GroupDelivered { partition, id, count } => {
            LoggedOp::GroupDeliveries { partition: *partition, id: *id, count: *count }
        }
        WriteOp::Clicked { partition, regid, id } => {
            LoggedOp::Clicked { partition: *partition, regid: regid.0, id: *id }
        }
        WriteOp::Acked { regid, seq, id } => LoggedOp::Acked { regid: regid.0, seq: *seq, id: *id },
        WriteOp::DayStats { partition, app_id, day, stats } => {
            LoggedOp::DayStats { partition: *partition, app_id: *app_id, day: *day, stats: stats.to_bytes().to_vec() }
        }
        WriteOp::ActiveDay { regid, day } => LoggedOp::ActiveDay { regid: regid.0, day: *day },
    }
}

impl LoggedOp {
    fn into_write(self) -> Option<WriteOp> {
        Some(match self {
            LoggedOp::RegisterDevice { regid, record } => {
                WriteOp::RegisterDevice { regid: RegId(regid), record: DeviceRecord::from_bytes(&record)? }
            }
            LoggedOp::StorePush { envelope, seq, regids } => WriteOp::StorePush {
                envelope: envelope.into_envelope(),
                seq,
                regids: regids.into_iter().map(RegId).collect(),
            },
            LoggedOp::SetAlias { regid, alias } => WriteOp::SetAlias { regid: RegId(regid), alias },
            LoggedOp::UnsetAlias { regid, alias } => WriteOp::UnsetAlias { regid: RegId(regid), alias },
            LoggedOp::Subscribe { regid, topic, seq } => WriteOp::Subscribe { regid: RegId(regid), topic, seq },
            LoggedOp::Unsubscribe { regid, topic } => WriteOp::Unsubscribe { regid: RegId(regid), topic },
            LoggedOp::StoreGroup { partition, envelope, seq, filter, targets } => {
                WriteOp::StoreGroup { partition, envelope: envelope.into_envelope(), seq, filter, targets }
            }
            LoggedOp::Quiet { regid, hours } => WriteOp::Quiet {
                regid: RegId(regid),
                hours: match hours {
                    Some(raw) => Some(QuietHours::from_bytes(&raw)?),
                    None => None,
                },
            },
            LoggedOp::GroupCursor { regid, seq } => WriteOp::GroupCursor { regid: RegId(regid), seq },
            LoggedOp::GroupDelivered { partition, id } => WriteOp::GroupDelivered { partition, id, count: 1 },
            LoggedOp::GroupDeliveries { partition, id, count } => WriteOp::GroupDelivered { partition, id, count },
            LoggedOp::Clicked { partition, regid, id } => WriteOp::Clicked { partition, regid: RegId(regid), id },
            LoggedOp::Acked { regid, seq, id } => WriteOp::Acked { regid: RegId(regid), seq, id },
            LoggedOp::DayStats { partition, app_id, day, stats } => {
                WriteOp::DayStats { partition, app_id, day, stats: crate::stats::DayStats::from_bytes(&stats)? }
            }
            LoggedOp::ActiveDay { regid, day } => WriteOp::ActiveDay { regid: RegId(regid), day },
        })
    }
}

/// One record read back: its LSN and its writes.
#[derive(Debug)]
pub struct Record {
    pub lsn: u64,
    pub ops: Vec<WriteOp>,
}

/// Appends the record of `ops` at `lsn` to `out`.
pub fn encode_record(lsn: u64, ops: &[&WriteOp], out: &mut Vec<u8>) {
    let logged: Vec<LoggedOp> = ops.iter().map(|op| logged(op)).collect();
    let payload = postcard::to_allocvec(&logged).expect("postcard encodes plain data into a Vec");
    assert!(payload.len() <= MAX_RECORD, "a record of {} bytes is past the log's limit", payload.len());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Reads the records after the magic: consecutive LSNs, each whole and with a good
/// checksum; stops at the first that is not.
pub fn decode_records(mut bytes: &[u8]) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    while bytes.len() >= RECORD_HEADER {
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let (len, crc) = (word(0) as usize, word(4));
        let lsn = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if lsn == 0 || len > MAX_RECORD || bytes.len() - RECORD_HEADER < len {
            break;
        }
        if records.last().is_some_and(|last| last.lsn + 1 != lsn) {
            break;
        }
        let payload = &bytes[RECORD_HEADER..RECORD_HEADER + len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&lsn.to_le_bytes());
        hasher.update(payload);
        if hasher.finalize() != crc {
            break;
        }
        let Ok(logged) = postcard::from_bytes::<Vec<LoggedOp>>(payload) else { break };
        let Some(ops) = logged.into_iter().map(LoggedOp::into_write).collect::<Option<Vec<_>>>() else { break };
        records.push(Record { lsn, ops });
        bytes = &bytes[RECORD_HEADER + len..];
    }
    records
}

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("write-ahead log {path}: not a log of this version (bad magic)")]
    Format { path: PathBuf },
}

/// The open log of one writer: two files, one written at a time.
pub struct Wal {
    files: [File; 2],
    paths: [PathBuf; 2],
    /// The file being written.
    active: usize,
    /// Where the next record goes in it.
    pos: u64,
    /// Bytes of each file filled with zeros when it was made.
    capacity: u64,
    next_lsn: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (or makes, zero-filled to `capacity` bytes each) the log's two files, writing the
    /// first from its start with LSNs from `next_lsn`. Call [`recover`] first: what the
    /// files held is written over.
    pub fn open(paths: &[PathBuf; 2], capacity: u64, next_lsn: u64) -> Result<Wal, WalError> {
        assert!(next_lsn > 0, "LSN 0 means no record");
        let files = [open_file(&paths[0], capacity)?, open_file(&paths[1], capacity)?];
        Ok(Wal { files, paths: paths.clone(), active: 0, pos: MAGIC.len() as u64, capacity, next_lsn, buf: Vec::new() })
    }

    /// Writes a record of `ops` and returns its LSN; durable once
    /// [`Wal::sync`] returns. A file that fills up grows.
    pub fn append(&mut self, ops: &[&WriteOp]) -> Result<u64, WalError> {
        let lsn = self.next_lsn;
        self.buf.clear();
        encode_record(lsn, ops, &mut self.buf);
        self.files[self.active]
            .write_all_at(&self.buf, self.pos)
            .map_err(|source| WalError::Io { path: self.paths[self.active].clone(), source })?;
        self.pos += self.buf.len() as u64;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// fdatasync: every appended record is on disk.
    pub fn sync(&self) -> Result<(), WalError> {
        self.files[self.active]
            .sync_data()
            .map_err(|source| WalError::Io { path: self.paths[self.active].clone(), source })
    }

    /// Whether enough of the file is written that a checkpoint should switch files.
    pub fn wants_checkpoint(&self) -> bool {
        self.pos >= self.capacity / 2
    }

    /// Writes the other file from its start. Only when the checkpoint that began at the
    /// previous switch has finished: the other file's records must all be durable elsewhere.
    pub fn switch(&mut self) {
        self.active = 1 - self.active;
        self.pos = MAGIC.len() as u64;
    }
}

/// Opens a log file, making it (zero-filled to `capacity`) if it is missing or short.
fn open_file(path: &Path, capacity: u64) -> Result<File, WalError> {
    let io = |source| WalError::Io { path: path.to_owned(), source };
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < capacity {
        file.write_all_at(MAGIC, 0).map_err(io)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = len.max(MAGIC.len() as u64);
        while at < capacity {
            let n = zeros.len().min((capacity - at) as usize);
            file.write_all_at(&zeros[..n], at).map_err(io)?;
            at += n as u64;
        }
        file.flush().map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok(file)
}

/// The two log files of writer `writer` (one writer per store database).
pub fn paths_of(dir: &Path, writer: usize) -> [PathBuf; 2] {
    [dir.join(format!("wal-{writer:03}-a.log")), dir.join(format!("wal-{writer:03}-b.log"))]
}

/// What [`recover`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records whose writes some partition did not hold yet.
    pub records: usize,
    /// Writes applied again.
    pub writes: usize,
    /// The first LSN a new log may use: above every LSN a partition or log holds.
    pub next_lsn: u64,
}

/// Replays every shard's log in `dir` into the partitions that lack its records, makes them
/// durable, removes the logs not in `keep`, and says where LSNs continue. Runs before any
/// shard starts.
pub fn recover(
    dir: &Path,
    stores: &BTreeMap<u16, Arc<PartitionStore>>,
    keep: &[PathBuf],
) -> Result<Recovered, StoreError> {
    let mut applied = BTreeMap::new();
    for (&partition, store) in stores {
        applied.insert(partition, store.applied_lsn()?);
    }
    let mut found = Recovered { next_lsn: applied.values().copied().max().unwrap_or(0) + 1, ..Default::default() };
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| StoreError(format!("listing {}: {e}", dir.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort();
    // Both files of a writer, in LSN order; records of different writers never touch the
    // same partition in one run, and older runs' records are behind every partition's LSN.
    let mut records: Vec<(Record, &PathBuf)> = Vec::new();
    for path in &logs {
        let bytes = std::fs::read(path).map_err(|e| StoreError(format!("reading {}: {e}", path.display())))?;
        if bytes.len() < MAGIC.len() {
            continue;
        }
        if bytes[..MAGIC.len()] == [0; 8] {
            continue; // made, but the magic never reached the disk: nothing was written to it
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(StoreError(WalError::Format { path: path.clone() }.to_string()));
        }
        records.extend(decode_records(&bytes[MAGIC.len()..]).into_iter().map(|r| (r, path)));
    }
    records.sort_by_key(|(record, _)| record.lsn);
    let mut touched = BTreeMap::new();
    for (record, path) in records {
        found.next_lsn = found.next_lsn.max(record.lsn + 1);
        let mut by_partition: BTreeMap<u16, Vec<&WriteOp>> = BTreeMap::new();
        for op in &record.ops {
            by_partition.entry(super::writer::partition_of(op)).or_default().push(op);
        }
        let mut replayed = false;
        for (partition, ops) in by_partition {
            let Some(store) = stores.get(&partition) else {
                return Err(StoreError(format!("{} holds writes for unknown partition {partition}", path.display())));
            };
            if applied[&partition] >= record.lsn {
                continue;
            }
            store.apply(&ops, redb::Durability::None, Some(record.lsn), &mut Vec::new())?;
            applied.insert(partition, record.lsn);
            touched.insert(partition, store.clone());
            found.writes += ops.len();
            replayed = true;
        }
        found.records += usize::from(replayed);
    }
    for store in touched.values() {
        store.apply(&[], redb::Durability::Immediate, None, &mut Vec::new())?;
    }
    for path in logs.iter().filter(|p| !keep.contains(p)) {
        std::fs::remove_file(path).map_err(|e| StoreError(format!("removing {}: {e}", path.display())))?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
