//! Which database file holds which partitions, and moving rows when that changes.
//!
//! File `i` of `n` (one per store writer) keeps the partitions `p` with `p % n == i` in
//! `store-{i}-of-{n}.redb` (`store_db.rs`); `n` divides the shard count, so a shard's
//! partitions are all in one file. The file count the files were made for is recorded in
//! `node.json` (files from before store writers were shared are one per shard); a node
//! started with another count (or on a data folder from before, with one
//! `partition-NNNN.redb` per partition) first copies every row into new files of its own
//! layout, in one durable transaction per file, then records the new count, then removes
//! the old files. Files of the new layout found before the count is recorded are what an
//! interrupted move left: they are made again from the old ones.

use super::partition::split_push_row_key;
use super::partition::{
    self, StoreError, StoreLimits, ACTIVE_DAYS, ALIASES, BODIES, CLICKS, DAY_STATS, DEVICES, EXPIRY, GROUP,
    GROUP_CURSORS, META, MSG_STATS, OLD_PENDING, OLD_PUSH_EXPIRY, PENDING, PUSH_ROWS, QUIET, SUBSCRIPTIONS,
};
use super::store_db::StoreDb;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};
use std::path::{Path, PathBuf};

/// Tables of the one-file-per-partition layout whose keys did not name the partition.
const LEGACY_BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const LEGACY_MSG_STATS: TableDefinition<u64, &[u8]> = TableDefinition::new("msg_stats");
const LEGACY_GROUP: TableDefinition<u64, &[u8]> = TableDefinition::new("group");
/// (regid, seq) -> message id: the pending table before it was keyed by seq.
const LEGACY_PENDING_BY_DEVICE: TableDefinition<&[u8], u64> = TableDefinition::new("pending");
const LEGACY_APPLIED_LSN: &str = "applied_lsn";

/// Database file `index` of `files`.
pub fn db_path(dir: &Path, index: usize, files: usize) -> PathBuf {
    dir.join(format!("store-{index}-of-{files}.redb"))
}

fn legacy_path(dir: &Path, partition: u16) -> PathBuf {
    dir.join(format!("partition-{partition:04}.redb"))
}

/// The partitions shard `index` of `shards` owns; with files for shards, the partitions
/// file `index` of `shards` files holds.
pub fn partitions_of(index: usize, shards: usize, partitions: u16) -> Vec<u16> {
    (0..partitions).filter(|&p| usize::from(p) % shards == index).collect()
}

/// Opens `files` databases over `partitions` partitions. `found` is the file count the
/// folder's files were made for (`None`: one file per partition, or a new folder); if it
/// differs, the rows move first and `record(files)` must make the new count durable before
/// the old files go.
pub fn open(
    dir: &Path,
    partitions: u16,
    files: usize,
    found: Option<usize>,
    cache_bytes: usize,
    limits: StoreLimits,
    record: impl FnOnce(usize) -> Result<(), StoreError>,
) -> Result<Vec<StoreDb>, StoreError> {
    assert!(files >= 1 && usize::from(partitions) >= files, "every file holds a partition");
    if found != Some(files) {
        let old = old_files(dir, partitions, found);
        if !old.is_empty() {
            tracing::info!(files = old.len(), from = ?found, to = files, "moving the store's rows into files for the new file count");
            move_rows(dir, files, &old)?;
        }
        record(files)?;
        for OldFile { path, .. } in &old {
            std::fs::remove_file(path).map_err(|e| StoreError(format!("removing {}: {e}", path.display())))?;
        }
    }
    (0..files)
        .map(|i| StoreDb::open(&db_path(dir, i, files), &partitions_of(i, files, partitions), cache_bytes, limits))
        .collect()
}

/// A file of the layout the rows move from.
struct OldFile {
    path: PathBuf,
    /// The partition of a file of one partition (the layout before shard databases);
    /// `None` for a shard database, whose keys name their partitions.
    legacy_partition: Option<u16>,
}

/// The files of the layout `found` that exist.
fn old_files(dir: &Path, partitions: u16, found: Option<usize>) -> Vec<OldFile> {
    let files: Vec<OldFile> = match found {
        None => (0..partitions).map(|p| OldFile { path: legacy_path(dir, p), legacy_partition: Some(p) }).collect(),
        Some(n) => (0..n).map(|i| OldFile { path: db_path(dir, i, n), legacy_partition: None }).collect(),
    };
    files.into_iter().filter(|f| f.path.exists()).collect()
}

/// Copies every row of `old` into new files for `shards`.
fn move_rows(dir: &Path, files: usize, old: &[OldFile]) -> Result<(), StoreError> {
    let mut targets = Vec::with_capacity(files);
    for i in 0..files {
        let path = db_path(dir, i, files);
        if path.exists() {
            // Left by a move that did not finish: made again from the old files.
            std::fs::remove_file(&path).map_err(|e| StoreError(format!("removing {}: {e}", path.display())))?;
        }
        let db = Database::create(&path)?;
        let txn = db.begin_write()?;
        partition::create_tables(&txn)?;
        txn.commit()?;
        targets.push(db);
    }
    let txns = targets.iter().map(|db| db.begin_write()).collect::<Result<Vec<_>, _>>()?;
    let mut rows = 0u64;
    for file in old {
        let db = Database::open(&file.path)?;
        let src = db.begin_read()?;
        rows += match file.legacy_partition {
            Some(p) => copy_legacy(&src, p, &txns[usize::from(p) % files])?,
            None => copy_routed(&src, &txns, files)?,
        };
    }
    for txn in txns {
        txn.commit()?;
    }
    tracing::info!(rows, "store rows moved");
    Ok(())
}

/// The partition in the first two bytes of a key (a RegID, or a key made partition first).
fn leading_partition(key: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(key.get(..2)?.try_into().ok()?))
}

/// The RegID's partition in a key made (8-byte seq or id, RegID).
fn partition_after_u64(key: &[u8]) -> Option<u16> {
    leading_partition(key.get(8..)?)
}

/// Opens `def` in `src`; `None` if the file never had it.
fn source_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match src.open_table(def) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Copies a table keyed by bytes into `dst[i]` under the key `route` gives (skipping rows
/// it cannot place); answers how many rows it copied.
fn copy_bytes_keyed<V: redb::Value + 'static>(
    src: &ReadTransaction,
    from: TableDefinition<&[u8], V>,
    dst: &[&WriteTransaction],
    to: TableDefinition<&[u8], V>,
    route: impl Fn(&[u8]) -> Option<(usize, Vec<u8>)>,
) -> Result<u64, StoreError> {
    let Some(table) = source_table(src, from)? else { return Ok(0) };
    let mut outs = dst.iter().map(|txn| txn.open_table(to)).collect::<Result<Vec<_>, _>>()?;
    let mut copied = 0;
    for row in table.iter()? {
        let (k, v) = row?;
        let Some((i, key)) = route(k.value()).filter(|(i, _)| *i < outs.len()) else {
            tracing::warn!(table = %to, "skipping a row whose partition is unknown");
            continue;
        };
        outs[i].insert(&key[..], v.value())?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies the tables keyed by RegID (a device's registration, aliases, topics, group
/// cursor, last active day, quiet hours) with `route`.
fn copy_device_tables(
    src: &ReadTransaction,
    dst: &[&WriteTransaction],
    route: impl Fn(&[u8]) -> Option<(usize, Vec<u8>)> + Copy,
) -> Result<u64, StoreError> {
    Ok(copy_bytes_keyed(src, DEVICES, dst, DEVICES, route)?
        + copy_bytes_keyed(src, ALIASES, dst, ALIASES, route)?
        + copy_bytes_keyed(src, SUBSCRIPTIONS, dst, SUBSCRIPTIONS, route)?
        + copy_bytes_keyed(src, GROUP_CURSORS, dst, GROUP_CURSORS, route)?
        + copy_bytes_keyed(src, ACTIVE_DAYS, dst, ACTIVE_DAYS, route)?
        + copy_bytes_keyed(src, QUIET, dst, QUIET, route)?)
}

/// Copies the tables keyed partition first (daily counts, the expiry indexes; the pushes'
/// as files before push rows had it, moved when the new file opens) with `route`.
fn copy_partition_first_tables(
    src: &ReadTransaction,
    dst: &[&WriteTransaction],
    route: impl Fn(&[u8]) -> Option<(usize, Vec<u8>)> + Copy,
) -> Result<u64, StoreError> {
    Ok(copy_bytes_keyed(src, DAY_STATS, dst, DAY_STATS, route)?
        + copy_bytes_keyed(src, EXPIRY, dst, EXPIRY, route)?
        + copy_bytes_keyed(src, OLD_PUSH_EXPIRY, dst, OLD_PUSH_EXPIRY, route)?)
}

/// Copies the rows of a database of another file count, each to the file of its partition.
fn copy_routed(src: &ReadTransaction, txns: &[WriteTransaction], files: usize) -> Result<u64, StoreError> {
    let dst: Vec<&WriteTransaction> = txns.iter().collect();
    let to = |p: Option<u16>, key: &[u8]| p.map(|p| (usize::from(p) % files, key.to_vec()));
    let lead = |key: &[u8]| to(leading_partition(key), key);
    let after = |key: &[u8]| to(partition_after_u64(key), key);
    let mut rows = 0;
    rows += copy_device_tables(src, &dst, lead)?;
    rows += copy_partition_first_tables(src, &dst, lead)?;
    rows += copy_bytes_keyed(src, PUSH_ROWS, &dst, PUSH_ROWS, |key| {
        split_push_row_key(key).map(|(p, ..)| (usize::from(p) % files, key.to_vec()))
    })?;
    rows += copy_bytes_keyed(src, PENDING, &dst, PENDING, after)?;
    rows += copy_bytes_keyed(src, OLD_PENDING, &dst, OLD_PENDING, after)?;
    rows += copy_bytes_keyed(src, CLICKS, &dst, CLICKS, after)?;
    for def in [BODIES, MSG_STATS, GROUP] {
        let Some(table) = source_table(src, def)? else { continue };
        let mut outs = txns.iter().map(|txn| txn.open_table(def)).collect::<Result<Vec<_>, _>>()?;
        for row in table.iter()? {
            let (k, v) = row?;
            let key = k.value();
            outs[usize::from(key.1) % files].insert(key, v.value())?;
            rows += 1;
        }
    }
    if let Some(meta) = source_table(src, META)? {
        let mut outs = txns.iter().map(|txn| txn.open_table(META)).collect::<Result<Vec<_>, _>>()?;
        for row in meta.iter()? {
            let (k, v) = row?;
            let Some(p) = k.value().strip_prefix("applied_lsn/").and_then(|p| p.parse::<u16>().ok()) else { continue };
            outs[usize::from(p) % files].insert(k.value(), v.value())?;
        }
    }
    Ok(rows)
}

/// Copies the rows of partition `p`'s own file (the layout before shard databases) into
/// `dst`, giving the partition to the keys that lacked it.
fn copy_legacy(src: &ReadTransaction, p: u16, dst: &WriteTransaction) -> Result<u64, StoreError> {
    let dst = [dst];
    let same = |key: &[u8]| Some((0, key.to_vec()));
    let prefixed = |key: &[u8]| Some((0, [&p.to_be_bytes()[..], key].concat()));
    let mut rows = 0;
    rows += copy_device_tables(src, &dst, same)?;
    rows += copy_bytes_keyed(src, OLD_PENDING, &dst, OLD_PENDING, same)?;
    rows += copy_bytes_keyed(src, CLICKS, &dst, CLICKS, same)?;
    rows += copy_partition_first_tables(src, &dst, prefixed)?;
    // (regid, seq) -> (seq, regid).
    rows += copy_bytes_keyed(src, LEGACY_PENDING_BY_DEVICE, &dst, OLD_PENDING, |key| {
        let (regid, seq) = (key.get(..12)?, key.get(12..20)?);
        Some((0, [seq, regid].concat()))
    })?;
    for (from, to) in [(LEGACY_BODIES, BODIES), (LEGACY_MSG_STATS, MSG_STATS), (LEGACY_GROUP, GROUP)] {
        let Some(table) = source_table(src, from)? else { continue };
        let mut out = dst[0].open_table(to)?;
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert((k.value(), p), v.value())?;
            rows += 1;
        }
    }
    if let Some(meta) = source_table(src, META)? {
        if let Some(lsn) = meta.get(LEGACY_APPLIED_LSN)? {
            dst[0].open_table(META)?.insert(partition::applied_lsn_key(p).as_str(), lsn.value())?;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests;
