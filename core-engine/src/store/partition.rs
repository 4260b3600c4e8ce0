//! One partition's rows in its shard's redb database (`store_db.rs`), and the operations
//! on them. Rows keyed by RegID carry the partition in the RegID's first two bytes; rows
//! keyed by a message id or a seq carry it after the id (`(id, partition)`), and push rows
//! after their expiry time and seq, so a commit that writes several partitions still
//! appends to one place in each table; the group expiry index and daily counts are keyed
//! partition first, so a partition sweeps its own range.

use crate::ids::{AppId, MessageId, RegId};
use crate::push::{Envelope, GroupFilter};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::sync::Arc;

mod pending_index;
mod upgrade;
mod write;

pub(super) use upgrade::{OLD_PENDING, OLD_PUSH_EXPIRY};

pub(super) use write::apply_together;

pub(super) const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices");
/// (seq, regid) -> (message id, expires_at): every device's queue, in its home shard's
/// order; a device's rows are found through [`pending_index`], each row's push in
/// [`PUSH_ROWS`] (whose key the row gives).
pub(super) const PENDING: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("pending_rows");
/// (message id, partition) -> expires_at (LE) ++ the envelope's JSON: a group message's body.
pub(super) const BODIES: TableDefinition<(u64, u16), &[u8]> = TableDefinition::new("bodies");
/// regid ++ alias -> (): a device's aliases.
pub(super) const ALIASES: TableDefinition<&[u8], ()> = TableDefinition::new("aliases");
/// regid ++ topic -> seq at which the device joined the topic.
pub(super) const SUBSCRIPTIONS: TableDefinition<&[u8], u64> = TableDefinition::new("subscriptions");
/// (seq, partition) -> group message (topic expression or broadcast) kept once for the shard.
pub(super) const GROUP: TableDefinition<(u64, u16), &[u8]> = TableDefinition::new("group");
/// regid -> highest group seq the device acknowledged (or the seq it registered at).
pub(super) const GROUP_CURSORS: TableDefinition<&[u8], u64> = TableDefinition::new("group_cursors");
/// (message id, partition) -> (app id, targets, delivered) in the partition; kept
/// [`StoreLimits::stats_kept_secs`] (a row per message and partition: ~85 bytes of file
/// each, so the retention bounds the file under a steady push rate).
pub(super) const MSG_STATS: TableDefinition<(u64, u16), &[u8]> = TableDefinition::new("msg_stats");

/// How long a message's counts answer status queries by default, from its id's time: a
/// week past the latest it can expire (sent as late as it may be scheduled, with the
/// longest TTL), 28 days.
pub const DEFAULT_STATS_KEPT_SECS: u64 =
    crate::api::MAX_SCHEDULE_AHEAD_SECS + crate::push::MAX_TTL_SECS + 7 * 24 * 3600;

/// The first message id whose counts are still kept at `now_s` (ids begin with their
/// creation time in milliseconds, see `MessageIdSource`).
fn first_kept_stats_id(now_s: u64, kept_secs: u64) -> MessageId {
    (now_s.saturating_sub(kept_secs).saturating_mul(1000)) << 20
}
/// partition (BE) ++ app (BE) ++ day (BE) -> DayStats: a shard's daily counts, in its group
/// partition.
pub(super) const DAY_STATS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("day_stats");
/// regid -> the last day (since the epoch) the device connected.
pub(super) const ACTIVE_DAYS: TableDefinition<&[u8], u32> = TableDefinition::new("active_days");

fn day_stats_key(partition: u16, app_id: AppId, day: u32) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(&partition.to_be_bytes());
    key[2..6].copy_from_slice(&app_id.to_be_bytes());
    key[6..].copy_from_slice(&day.to_be_bytes());
    key
}

/// regid -> quiet hours (6 bytes).
pub(super) const QUIET: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quiet");

/// "applied_lsn/NNNN" -> the newest write-ahead log record partition NNNN holds (`wal.rs`).
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) fn applied_lsn_key(partition: u16) -> String {
    format!("applied_lsn/{partition:04}")
}

/// partition (BE) ++ expires_at (BE) ++ kind ++ key -> (): when a group message and its
/// body go; kinds below.
pub(super) const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
const EXPIRY_BODY: u8 = 1;
const EXPIRY_GROUP: u8 = 2;
/// expires_at (BE) ++ seq (BE) ++ partition (BE) ++ message id (BE) -> a push row: the
/// number of RegIDs the push was queued for in the partition (u32 LE), those RegIDs, and the
/// envelope's JSON. One row per push and partition, not per target: what its pending rows
/// deliver, and when they and it go. Time first, so that a database's new rows (one TTL,
/// rising seqs) go to one leaf whichever of its partitions they are for (keyed partition
/// first, each of a 2-shard node's 8 partitions per file dirtied a leaf of its own in every
/// commit: ~10% of the writer's CPU in an HTTP send run); the body in the row, not in a
/// row of its own, saves a B-tree insert and a remove per push (~13% more).
pub(super) const PUSH_ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("push_rows");

/// The [`PUSH_ROWS`] key of a push.
pub(super) fn push_row_key(partition: u16, expires_at: u64, seq: u64, id: MessageId) -> [u8; 26] {
    let mut key = [0u8; 26];
    key[..8].copy_from_slice(&expires_at.to_be_bytes());
    key[8..16].copy_from_slice(&seq.to_be_bytes());
    key[16..18].copy_from_slice(&partition.to_be_bytes());
    key[18..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The parts of a [`PUSH_ROWS`] key: (partition, expires_at, seq, id).
pub(super) fn split_push_row_key(key: &[u8]) -> Option<(u16, u64, u64, MessageId)> {
    if key.len() != 26 {
        return None;
    }
    let u64_at = |at: usize| u64::from_be_bytes(key[at..at + 8].try_into().expect("8 bytes"));
    Some((u16::from_be_bytes([key[16], key[17]]), u64_at(0), u64_at(8), u64_at(18)))
}

/// A [`PUSH_ROWS`] value under construction: RegIDs are added, then the JSON.
pub(super) struct PushRow(Vec<u8>);

impl PushRow {
    pub(super) fn with_capacity(targets: usize, json: usize) -> Self {
        let mut raw = Vec::with_capacity(4 + 12 * targets + json);
        raw.extend_from_slice(&[0; 4]);
        PushRow(raw)
    }

    pub(super) fn add_target(&mut self, regid: &RegId) {
        self.0.extend_from_slice(&regid.0);
    }

    pub(super) fn targets(&self) -> usize {
        (self.0.len() - 4) / 12
    }

    /// The row's bytes, with `json` behind the targets.
    pub(super) fn finish(mut self, json: &[u8]) -> Vec<u8> {
        let count = u32::try_from(self.targets()).expect("a push's targets in one partition fit a u32");
        self.0[..4].copy_from_slice(&count.to_le_bytes());
        self.0.extend_from_slice(json);
        self.0
    }
}

/// A [`PUSH_ROWS`] value's (RegIDs, 12 bytes each; the envelope's JSON).
pub(super) fn split_push_row(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let count = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let end = count.checked_mul(12)?.checked_add(4)?;
    Some((raw.get(4..end)?, raw.get(end..)?))
}

fn expiry_key(partition: u16, expires_at: u64, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(11 + rest.len());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&expires_at.to_be_bytes());
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

/// Something the store decided that statistics count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// A device's pending queue was full: its oldest message was dropped.
    Dropped { app_id: AppId },
    /// `count` deliveries of an app's message did not happen before it expired.
    Expired { app_id: AppId, count: u64 },
    /// Pending rows added (positive) or removed (negative).
    PendingRows(i64),
    /// A device's first click on one of the app's messages.
    Clicked { app_id: AppId, regid: RegId, id: MessageId },
}

/// Limits the store enforces inside its transactions.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Most messages waiting for one device; the oldest goes when a new one comes.
    pub max_pending_per_device: u32,
    /// How long a message's counts (and its click rows) are kept after its id's time, in
    /// seconds; then the expiry sweep forgets them and its status answers 404. Below a
    /// message's schedule delay plus TTL, its later deliveries and expiries go uncounted.
    pub stats_kept_secs: u64,
}

/// message id (BE) ++ regid -> (): clicks already counted, so a device counts once per
/// message; forgotten with the message's counts.
pub(super) const CLICKS: TableDefinition<&[u8], ()> = TableDefinition::new("clicks_by_message");

/// What a partition knows about one message: its app, and its counts here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageStats {
    pub app_id: AppId,
    pub targets: u64,
    pub delivered: u64,
    pub clicked: u64,
    pub expires_at: u64,
}

impl MessageStats {
    const LEN: usize = 36;

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.app_id.to_le_bytes());
        for (i, v) in [self.targets, self.delivered, self.clicked, self.expires_at].into_iter().enumerate() {
            out[4 + 8 * i..12 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn from_bytes(raw: &[u8]) -> Option<Self> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(raw.get(4 + 8 * i..12 + 8 * i)?.try_into().ok()?));
        Some(MessageStats {
            app_id: u32::from_le_bytes(raw.get(..4)?.try_into().ok()?),
            targets: u64_at(0)?,
            delivered: u64_at(1)?,
            clicked: u64_at(2)?,
            expires_at: u64_at(3)?,
        })
    }

    /// Adds another partition's counts of the same message.
    pub fn merge(&mut self, other: &MessageStats) {
        self.targets += other.targets;
        self.delivered += other.delivered;
        self.clicked += other.clicked;
        self.expires_at = self.expires_at.max(other.expires_at);
    }
}

/// Why the store failed; the text comes from redb.
#[derive(Debug, thiserror::Error, Clone)]
#[error("store: {0}")]
pub struct StoreError(pub String);

macro_rules! impl_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError(e.to_string()) }
        }
    )*};
}
impl_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A registered device as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub app_id: AppId,
    pub token_hash: [u8; 16],
    pub created_at: u64,
}

impl DeviceRecord {
    pub(super) const LEN: usize = 28;

    pub(super) fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.app_id.to_le_bytes());
        out[4..20].copy_from_slice(&self.token_hash);
        out[20..].copy_from_slice(&self.created_at.to_le_bytes());
        out
    }

    pub(super) fn from_bytes(raw: &[u8]) -> Option<Self> {
        if raw.len() != Self::LEN {
            return None;
        }
        Some(DeviceRecord {
            app_id: u32::from_le_bytes(raw[..4].try_into().ok()?),
            token_hash: raw[4..20].try_into().ok()?,
            created_at: u64::from_le_bytes(raw[20..].try_into().ok()?),
        })
    }
}

/// A message waiting for one device.
#[derive(Clone, Debug)]
pub struct PendingMessage {
    pub seq: u64,
    pub id: MessageId,
    pub expires_at: u64,
    pub json: Arc<[u8]>,
}

/// A group message as kept for a shard.
#[derive(Clone, Debug)]
pub struct GroupMessage {
    pub seq: u64,
    pub id: MessageId,
    pub app_id: AppId,
    pub expires_at: u64,
    pub filter: Arc<GroupFilter>,
    pub json: Arc<[u8]>,
}

/// One write, applied inside a grouped transaction.
#[derive(Debug)]
pub enum WriteOp {
    SetAlias {
        regid: RegId,
        alias: String,
    },
    UnsetAlias {
        regid: RegId,
        alias: String,
    },
    Subscribe {
        regid: RegId,
        topic: String,
        seq: u64,
    },
    Unsubscribe {
        regid: RegId,
        topic: String,
    },
    /// Keeps a group message once, in the shard's group partition, for `targets` devices.
    StoreGroup {
        partition: u16,
        envelope: Arc<Envelope>,
        seq: u64,
        filter: GroupFilter,
        targets: u64,
    },
    /// The device acknowledged group messages up to `seq`.
    GroupCursor {
        regid: RegId,
        seq: u64,
    },
    /// `count` more deliveries of a group message kept in `partition`.
    GroupDelivered {
        partition: u16,
        id: MessageId,
        count: u32,
    },
    /// The device reported a click on the message, whose counts are in `partition`.
    Clicked {
        partition: u16,
        regid: RegId,
        id: MessageId,
    },
    RegisterDevice {
        regid: RegId,
        record: DeviceRecord,
    },
    /// Queues `envelope` at `seq` for each of `regids` (all in this partition) until acknowledged.
    StorePush {
        envelope: Arc<Envelope>,
        seq: u64,
        regids: Vec<RegId>,
    },
    /// The device acknowledged the message queued at `seq`.
    Acked {
        regid: RegId,
        seq: u64,
        id: MessageId,
    },
    /// A shard's counts of one app for one day (replacing what was there).
    DayStats {
        partition: u16,
        app_id: AppId,
        day: u32,
        stats: crate::stats::DayStats,
    },
    /// The device connected on `day`.
    ActiveDay {
        regid: RegId,
        day: u32,
    },
    /// Sets (or with `None` clears) the device's quiet hours.
    Quiet {
        regid: RegId,
        hours: Option<crate::push::QuietHours>,
    },
}

fn pending_key(regid: &RegId, seq: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&regid.0);
    key
}

fn suffixed_key(regid: &RegId, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + name.len());
    key.extend_from_slice(&regid.0);
    key.extend_from_slice(name.as_bytes());
    key
}

fn encode_group(envelope: &Envelope, filter: &GroupFilter) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + 32);
    out.extend_from_slice(&envelope.id.to_le_bytes());
    out.extend_from_slice(&envelope.app_id.to_le_bytes());
    out.extend_from_slice(&envelope.expires_at.to_le_bytes());
    out.extend_from_slice(&serde_json::to_vec(filter).unwrap_or_default());
    out
}

fn decode_group(raw: &[u8]) -> Option<(MessageId, AppId, u64, GroupFilter)> {
    let id = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    let app_id = u32::from_le_bytes(raw.get(8..12)?.try_into().ok()?);
    let expires_at = u64::from_le_bytes(raw.get(12..20)?.try_into().ok()?);
    let filter = serde_json::from_slice(raw.get(20..)?).ok()?;
    Some((id, app_id, expires_at, filter))
}

/// Every table a store database holds; `StoreDb::open` creates them.
pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(DEVICES)?;
    txn.open_table(PENDING)?;
    txn.open_table(BODIES)?;
    txn.open_table(MSG_STATS)?;
    txn.open_table(CLICKS)?;
    txn.open_table(EXPIRY)?;
    txn.open_table(PUSH_ROWS)?;
    txn.open_table(DAY_STATS)?;
    txn.open_table(ACTIVE_DAYS)?;
    txn.open_table(QUIET)?;
    txn.open_table(ALIASES)?;
    txn.open_table(SUBSCRIPTIONS)?;
    txn.open_table(GROUP)?;
    txn.open_table(GROUP_CURSORS)?;
    txn.open_table(META)?;
    upgrade::move_old_push_rows(txn)
}

/// The keys of a table keyed by RegID that belong to `partition`: those that begin with it.
fn partition_range(partition: u16) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = partition.to_be_bytes().to_vec();
    let end = partition.checked_add(1).map(|next| next.to_be_bytes().to_vec());
    (start, end)
}

/// One partition of a store database.
pub struct PartitionStore {
    pub partition: u16,
    db: Arc<Database>,
    limits: StoreLimits,
    /// Its key in [`META`].
    lsn_key: String,
    /// Which seqs wait for each device that has any; kept by the writer's transactions,
    /// read by the shard to find a device's rows.
    pending_index: std::sync::Mutex<pending_index::PendingIndex>,
    /// No [`MSG_STATS`] row of this partition has a larger message id: a new message's
    /// counts (ids grow with time) are known to be absent without a look-up. Raised
    /// before a row is written, so it never understates.
    stats_id_bound: std::sync::atomic::AtomicU64,
}

impl PartitionStore {
    /// Each of `partitions` of `db` (whose tables exist), their pending indexes read in one pass.
    pub(super) fn open_all(
        db: &Arc<Database>,
        partitions: &[u16],
        limits: StoreLimits,
    ) -> Result<Vec<PartitionStore>, StoreError> {
        let mut indexes = pending_index::PendingIndex::load(db, partitions)?;
        let stats_id_bound = {
            let txn = db.begin_read()?;
            let table = txn.open_table(MSG_STATS)?;
            let last = redb::ReadableTable::last(&table)?;
            last.map_or(0, |(key, _)| key.value().0)
        };
        Ok(partitions
            .iter()
            .map(|&partition| PartitionStore {
                partition,
                db: db.clone(),
                limits,
                lsn_key: applied_lsn_key(partition),
                pending_index: std::sync::Mutex::new(indexes.remove(&partition).unwrap_or_default()),
                stats_id_bound: std::sync::atomic::AtomicU64::new(stats_id_bound),
            })
            .collect())
    }

    /// Opens (or creates) `dir/alone-NNNN.redb` holding this partition alone.
    #[cfg(test)]
    pub fn open_alone(
        dir: &std::path::Path,
        partition: u16,
        cache_bytes: usize,
        limits: StoreLimits,
    ) -> Result<Self, StoreError> {
        let path = dir.join(format!("alone-{partition:04}.redb"));
        let db = redb::Builder::new().set_cache_size(cache_bytes).create(&path)?;
        let txn = db.begin_write()?;
        create_tables(&txn)?;
        txn.commit()?;
        Ok(PartitionStore::open_all(&Arc::new(db), &[partition], limits)?.remove(0))
    }

    /// The rows of a table keyed by RegID that belong to this partition.
    fn own_rows<'t, V: redb::Value + 'static>(
        &self,
        table: &'t redb::ReadOnlyTable<&'static [u8], V>,
    ) -> Result<redb::Range<'t, &'static [u8], V>, StoreError> {
        let (start, end) = partition_range(self.partition);
        Ok(match end {
            Some(end) => table.range(&start[..]..&end[..])?,
            None => table.range(&start[..]..)?,
        })
    }

    /// Every registered device of this partition.
    pub fn load_devices(&self) -> Result<Vec<(RegId, DeviceRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let mut out = Vec::new();
        for row in self.own_rows(&table)? {
            let (k, v) = row?;
            let (Ok(key), Some(record)) = (<[u8; 12]>::try_from(k.value()), DeviceRecord::from_bytes(v.value())) else {
                tracing::warn!(partition = self.partition, "skipping a malformed device row");
                continue;
            };
            out.push((RegId(key), record));
        }
        Ok(out)
    }

    /// Up to `limit` unexpired messages pending for `regid` queued after `after` (a seq), in order.
    pub fn pending_for(
        &self,
        regid: &RegId,
        after: MessageId,
        now_s: u64,
        limit: usize,
    ) -> Result<Vec<PendingMessage>, StoreError> {
        // Seqs first, then the rows: a seq published after this read is found by the next one.
        let seqs = self.pending_index.lock().unwrap_or_else(std::sync::PoisonError::into_inner).after(
            &regid.0,
            after,
            self.limits.max_pending_per_device as usize,
        );
        if seqs.is_empty() {
            return Ok(Vec::new()); // no read transaction for an empty queue
        }
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        let pushes = txn.open_table(PUSH_ROWS)?;
        let mut out = Vec::new();
        for seq in seqs {
            let Some((id, expires_at)) = pending.get(&pending_key(regid, seq)[..])?.map(|v| v.value()) else {
                continue; // acknowledged since the seqs were read
            };
            if expires_at <= now_s {
                continue;
            }
            let Some(row) = pushes.get(&push_row_key(self.partition, expires_at, seq, id)[..])? else {
                continue;
            };
            let Some((_, json)) = split_push_row(row.value()) else {
                tracing::warn!(partition = self.partition, "skipping a malformed push row");
                continue;
            };
            out.push(PendingMessage { seq, id, expires_at, json: json.into() });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every (device, alias) of this partition.
    pub fn load_aliases(&self) -> Result<Vec<(RegId, String)>, StoreError> {
        self.load_suffixed(ALIASES, |_| ()).map(|rows| rows.into_iter().map(|(r, name, ())| (r, name)).collect())
    }

    /// Every (device, topic, seq joined) of this partition.
    pub fn load_subscriptions(&self) -> Result<Vec<(RegId, String, u64)>, StoreError> {
        self.load_suffixed(SUBSCRIPTIONS, |v| v)
    }

    /// The highest seq of a group message kept in this partition's database (any partition's:
    /// a database may hold several), 0 if none.
    pub fn last_group_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let group = txn.open_table(GROUP)?;
        let last = redb::ReadableTable::last(&group)?.map_or(0, |(k, _)| k.value().0);
        Ok(last)
    }

    /// Every device's group cursor in this partition.
    pub fn load_group_cursors(&self) -> Result<Vec<(RegId, u64)>, StoreError> {
        self.load_by_regid(GROUP_CURSORS, Some)
    }

    fn load_suffixed<V: redb::Value + 'static, T>(
        &self,
        definition: TableDefinition<&[u8], V>,
        value: impl Fn(V::SelfType<'_>) -> T,
    ) -> Result<Vec<(RegId, String, T)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(definition)?;
        let mut out = Vec::new();
        for row in self.own_rows(&table)? {
            let (k, v) = row?;
            let raw = k.value();
            let (Some(regid), Some(name)) = (
                raw.get(..12).and_then(|r| <[u8; 12]>::try_from(r).ok()),
                raw.get(12..).and_then(|n| std::str::from_utf8(n).ok()),
            ) else {
                continue;
            };
            out.push((RegId(regid), name.to_owned(), value(v.value())));
        }
        Ok(out)
    }

    /// Every device's last active day in this partition.
    pub fn load_active_days(&self) -> Result<Vec<(RegId, u32)>, StoreError> {
        self.load_by_regid(ACTIVE_DAYS, Some)
    }

    /// Every device's quiet hours in this partition.
    pub fn load_quiet(&self) -> Result<Vec<(RegId, crate::push::QuietHours)>, StoreError> {
        self.load_by_regid(QUIET, crate::push::QuietHours::from_bytes)
    }

    /// Every row of a table keyed by RegID, its value mapped (rows that don't map are skipped).
    fn load_by_regid<V: redb::Value + 'static, T>(
        &self,
        definition: TableDefinition<&[u8], V>,
        value: impl Fn(V::SelfType<'_>) -> Option<T>,
    ) -> Result<Vec<(RegId, T)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(definition)?;
        let mut out = Vec::new();
        for row in self.own_rows(&table)? {
            let (k, v) = row?;
            if let (Ok(key), Some(value)) = (<[u8; 12]>::try_from(k.value()), value(v.value())) {
                out.push((RegId(key), value));
            }
        }
        Ok(out)
    }

    /// Rows waiting in this partition's pending queues.
    pub fn pending_rows(&self) -> u64 {
        self.pending_index.lock().unwrap_or_else(std::sync::PoisonError::into_inner).total()
    }

    /// The newest write-ahead log record this partition holds (0: none).
    pub fn applied_lsn(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(self.lsn_key.as_str())?.map_or(0, |v| v.value()))
    }

    /// Daily counts kept in this partition for `app_id`, days `from..=to`.
    pub fn day_stats(
        &self,
        app_id: AppId,
        from: u32,
        to: u32,
    ) -> Result<Vec<(u32, crate::stats::DayStats)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DAY_STATS)?;
        let (start, end) = (day_stats_key(self.partition, app_id, from), day_stats_key(self.partition, app_id, to));
        let mut out = Vec::new();
        for row in table.range(&start[..]..=&end[..])? {
            let (k, v) = row?;
            let day = u32::from_be_bytes(k.value()[6..10].try_into().map_err(|_| StoreError("bad key".into()))?);
            if let Some(stats) = crate::stats::DayStats::from_bytes(v.value()) {
                out.push((day, stats));
            }
        }
        Ok(out)
    }

    /// Every app's counts for `day` kept in this partition.
    pub fn load_day(&self, day: u32) -> Result<Vec<(AppId, crate::stats::DayStats)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DAY_STATS)?;
        let mut out = Vec::new();
        for row in self.own_rows(&table)? {
            let (k, v) = row?;
            let raw = k.value();
            let (Some(app), Some(row_day)) = (
                raw.get(2..6).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
                raw.get(6..10).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes),
            ) else {
                continue;
            };
            if row_day == day {
                if let Some(stats) = crate::stats::DayStats::from_bytes(v.value()) {
                    out.push((app, stats));
                }
            }
        }
        Ok(out)
    }

    /// Unexpired group messages after `after` (a seq) that `wanted` accepts, in order, at most `limit`.
    pub fn group_after(
        &self,
        after: u64,
        now_s: u64,
        limit: usize,
        mut wanted: impl FnMut(&GroupMessage) -> bool,
    ) -> Result<Vec<GroupMessage>, StoreError> {
        let txn = self.db.begin_read()?;
        let group = txn.open_table(GROUP)?;
        let bodies = txn.open_table(BODIES)?;
        let mut out = Vec::new();
        for row in group.range((after.saturating_add(1), 0)..)? {
            let (k, v) = row?;
            let (seq, partition) = k.value();
            if partition != self.partition {
                continue; // another partition's, kept in the same database
            }
            let Some((id, app_id, expires_at, filter)) = decode_group(v.value()) else { continue };
            if expires_at <= now_s {
                continue;
            }
            let Some(body) = bodies.get((id, self.partition))? else { continue };
            let json: Arc<[u8]> = body.value().get(8..).unwrap_or_default().into();
            let message = GroupMessage { seq, id, app_id, expires_at, filter: Arc::new(filter), json };
            if wanted(&message) {
                out.push(message);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A message's counts in this partition, if it belongs to `app_id`.
    pub fn message_stats(&self, app_id: AppId, id: MessageId) -> Result<Option<MessageStats>, StoreError> {
        let txn = self.db.begin_read()?;
        let stats = txn.open_table(MSG_STATS)?;
        Ok(stats
            .get((id, self.partition))?
            .and_then(|v| MessageStats::from_bytes(v.value()))
            .filter(|s| s.app_id == app_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: MessageId, expires_at: u64) -> Arc<Envelope> {
        Arc::new(Envelope { id, app_id: 9, expires_at, json: format!("{{\"n\":{id}}}").into_bytes().into() })
    }

    const LIMITS: StoreLimits = StoreLimits { max_pending_per_device: 2, stats_kept_secs: DEFAULT_STATS_KEPT_SECS };

    /// Rows in one of the store's tables.
    fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
        store: &PartitionStore,
        table: TableDefinition<K, V>,
    ) -> u64 {
        let txn = store.db.begin_read().unwrap();
        redb::ReadableTableMetadata::len(&txn.open_table(table).unwrap()).unwrap()
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pushnode-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_says_so() {
        let dir = temp_dir("bound");
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        let a = RegId::generate(3);
        let mut events = Vec::new();
        for (seq, id) in [(1, 10), (2, 11), (3, 12)] {
            let op = WriteOp::StorePush { envelope: envelope(id, 100), seq, regids: vec![a] };
            store.apply(&[&op], redb::Durability::None, None, &mut events).unwrap();
        }
        events.retain(|e| !matches!(e, StoreEvent::PendingRows(_)));
        assert_eq!(events, vec![StoreEvent::Dropped { app_id: 9 }]);
        let left: Vec<_> = store.pending_for(&a, 0, 50, 10).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(left, vec![11, 12], "the oldest went");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn queue_lengths_are_rebuilt_at_open() {
        let dir = temp_dir("queued");
        let a = RegId::generate(3);
        let b = RegId::generate(3);
        {
            let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
            let p1 = WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a, b] };
            let p2 = WriteOp::StorePush { envelope: envelope(11, 100), seq: 2, regids: vec![a] };
            let acked = WriteOp::Acked { regid: b, seq: 1, id: 10 };
            store.apply(&[&p1, &p2, &acked], redb::Durability::Immediate, None, &mut Vec::new()).unwrap();
            assert_eq!(store.pending_rows(), 2);
        }
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        assert_eq!(store.pending_rows(), 2, "a's two messages, counted again from the pending table");
        let mut events = Vec::new();
        let p3 = WriteOp::StorePush { envelope: envelope(12, 100), seq: 3, regids: vec![a, b] };
        store.apply(&[&p3], redb::Durability::None, None, &mut events).unwrap();
        assert_eq!(
            events,
            vec![StoreEvent::Dropped { app_id: 9 }, StoreEvent::PendingRows(1)],
            "a's queue was full after the reopen; b's was empty"
        );
        assert_eq!(store.pending_rows(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_push_delivered_everywhere_leaves_nothing_to_expire() {
        let dir = temp_dir("delivered");
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        let a = RegId::generate(3);
        let push = WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a] };
        let acked = WriteOp::Acked { regid: a, seq: 1, id: 10 };
        store.apply(&[&push], redb::Durability::None, None, &mut Vec::new()).unwrap();
        store.apply(&[&acked], redb::Durability::None, None, &mut Vec::new()).unwrap();
        assert_eq!(rows(&store, PUSH_ROWS), 0);
        let mut events = Vec::new();
        assert!(!store.expire(100, 100, &mut events).unwrap());
        assert!(events.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_push_acknowledged_in_its_own_commit_writes_no_rows() {
        let dir = temp_dir("settled");
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        let (a, b) = (RegId::generate(3), RegId::generate(3));
        let push = WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a, b] };
        let acked = WriteOp::Acked { regid: a, seq: 1, id: 10 };
        let mut events = Vec::new();
        store.apply(&[&push, &acked, &acked], redb::Durability::None, None, &mut events).unwrap();
        assert_eq!(events, vec![StoreEvent::PendingRows(1)], "only b's row");
        assert_eq!(store.pending_rows(), 1);
        assert!(store.pending_for(&a, 0, 50, 10).unwrap().is_empty());
        assert_eq!(store.pending_for(&b, 0, 50, 10).unwrap().iter().map(|m| m.id).collect::<Vec<_>>(), vec![10]);
        let counts = store.message_stats(9, 10).unwrap().unwrap();
        assert_eq!((counts.targets, counts.delivered), (2, 1), "the duplicate ack counted once");
        // b's ack in a later commit finishes the message: its push row goes.
        let acked_b = WriteOp::Acked { regid: b, seq: 1, id: 10 };
        store.apply(&[&acked_b], redb::Durability::None, None, &mut Vec::new()).unwrap();
        assert_eq!(store.message_stats(9, 10).unwrap().map(|s| s.delivered), Some(2));
        assert_eq!((rows(&store, PUSH_ROWS), rows(&store, PENDING)), (0, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expired_messages_are_removed_and_counted() {
        let dir = temp_dir("expire");
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        let (a, b) = (RegId::generate(3), RegId::generate(3));
        let mut events = Vec::new();
        let short = WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a, b] };
        let long = WriteOp::StorePush { envelope: envelope(11, 1000), seq: 2, regids: vec![a] };
        let acked = WriteOp::Acked { regid: b, seq: 1, id: 10 };
        store.apply(&[&short, &long, &acked], redb::Durability::None, None, &mut events).unwrap();
        events.clear();
        assert!(!store.expire(99, 100, &mut events).unwrap());
        assert!(events.is_empty(), "nothing is due before its time");
        assert!(!store.expire(100, 100, &mut events).unwrap());
        assert_eq!(
            events,
            vec![StoreEvent::Expired { app_id: 9, count: 1 }, StoreEvent::PendingRows(-1)],
            "b had acknowledged it"
        );
        assert_eq!(store.pending_for(&a, 0, 0, 10).unwrap().iter().map(|m| m.id).collect::<Vec<_>>(), vec![11]);
        // The expired message's push row is gone; its counts stay for status queries.
        assert_eq!(store.message_stats(9, 10).unwrap().map(|s| s.delivered), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_and_clicks_are_forgotten_once_kept_long_enough() {
        for kept_secs in [DEFAULT_STATS_KEPT_SECS, 86_400] {
            counts_and_clicks_are_forgotten_after(kept_secs);
        }
    }

    fn counts_and_clicks_are_forgotten_after(kept_secs: u64) {
        let dir = temp_dir("forget");
        let limits = StoreLimits { stats_kept_secs: kept_secs, ..LIMITS };
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, limits).unwrap();
        let a = RegId::generate(3);
        let now_s = 2_000_000_000;
        let id_at = |unix_s: u64| (unix_s * 1000) << 20;
        let (old, kept) = (id_at(now_s - kept_secs - 1), id_at(now_s - kept_secs + 1));
        let click = |id| WriteOp::Clicked { partition: 3, regid: a, id };
        for (seq, id) in [(1, old), (2, kept)] {
            let push = WriteOp::StorePush { envelope: envelope(id, now_s - 3_600), seq, regids: vec![a] };
            let acked = WriteOp::Acked { regid: a, seq, id };
            store.apply(&[&push, &acked], redb::Durability::None, None, &mut Vec::new()).unwrap();
            store.apply(&[&click(id)], redb::Durability::None, None, &mut Vec::new()).unwrap();
        }
        assert_eq!((rows(&store, MSG_STATS), rows(&store, CLICKS)), (2, 2));
        assert!(!store.expire(now_s, 100, &mut Vec::new()).unwrap());
        assert_eq!(store.message_stats(9, old).unwrap(), None, "older than {kept_secs} s");
        assert_eq!(store.message_stats(9, kept).unwrap().map(|s| (s.delivered, s.clicked)), Some((1, 1)));
        assert_eq!(rows(&store, CLICKS), 1);
        // A late click on the forgotten message counts nothing and leaves no row.
        store.apply(&[&click(old)], redb::Durability::None, None, &mut Vec::new()).unwrap();
        assert_eq!((rows(&store, MSG_STATS), rows(&store, CLICKS)), (1, 1));
        // A sweep with a small limit says more are due.
        let newer = id_at(now_s);
        let push = WriteOp::StorePush { envelope: envelope(newer, now_s + 60), seq: 3, regids: vec![a] };
        store.apply(&[&push], redb::Durability::None, None, &mut Vec::new()).unwrap();
        assert!(store.expire(now_s + kept_secs + 60, 1, &mut Vec::new()).unwrap());
        assert!(!store.expire(now_s + kept_secs + 60, 1, &mut Vec::new()).unwrap());
        assert_eq!((rows(&store, MSG_STATS), rows(&store, CLICKS)), (0, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_message_stored_again_adds_to_its_counts_even_after_a_reopen() {
        let dir = temp_dir("counts-again");
        let (a, b, c) = (RegId::generate(3), RegId::generate(3), RegId::generate(3));
        {
            let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
            let first = WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a] };
            store.apply(&[&first], redb::Durability::Immediate, None, &mut Vec::new()).unwrap();
            let newer = WriteOp::StorePush { envelope: envelope(20, 100), seq: 2, regids: vec![a] };
            let again = WriteOp::StorePush { envelope: envelope(10, 100), seq: 3, regids: vec![b] };
            store.apply(&[&newer, &again], redb::Durability::Immediate, None, &mut Vec::new()).unwrap();
            assert_eq!(store.message_stats(9, 10).unwrap().unwrap().targets, 2, "an older id is looked up");
        }
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        let again = WriteOp::StorePush { envelope: envelope(20, 100), seq: 4, regids: vec![c] };
        store.apply(&[&again], redb::Durability::Immediate, None, &mut Vec::new()).unwrap();
        assert_eq!(store.message_stats(9, 20).unwrap().unwrap().targets, 2, "the newest id, after a reopen");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pending_survives_reopen_and_ack_counts_once() {
        let dir = std::env::temp_dir().join(format!("pushnode-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = RegId::generate(3);
        let b = RegId::generate(3);
        {
            let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
            let record = DeviceRecord { app_id: 9, token_hash: [1; 16], created_at: 5 };
            let reg = WriteOp::RegisterDevice { regid: a, record };
            let p1 = WriteOp::StorePush { envelope: envelope(10, 100), seq: 1, regids: vec![a, b] };
            let p2 = WriteOp::StorePush { envelope: envelope(11, 100), seq: 2, regids: vec![a] };
            store.apply(&[&reg, &p1, &p2], redb::Durability::Immediate, None, &mut Vec::new()).unwrap();
        }
        let store = PartitionStore::open_alone(&dir, 3, 1 << 20, LIMITS).unwrap();
        assert_eq!(store.load_devices().unwrap().len(), 1);
        let got = store.pending_for(&a, 0, 50, 10).unwrap();
        assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(store.pending_for(&a, 1, 50, 10).unwrap().len(), 1);
        assert!(store.pending_for(&a, 0, 100, 10).unwrap().is_empty(), "expired messages are not pending");
        let ack = WriteOp::Acked { regid: a, seq: 1, id: 10 };
        store.apply(&[&ack, &ack], redb::Durability::Immediate, None, &mut Vec::new()).unwrap();
        let counts = store.message_stats(9, 10).unwrap().unwrap();
        assert_eq!((counts.targets, counts.delivered, counts.expires_at), (2, 1, 100));
        assert_eq!(store.message_stats(8, 10).unwrap(), None, "another app sees nothing");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
