//! One partition's redb database and the operations on it.

use crate::ids::{AppId, MessageId, RegId};
use crate::push::Envelope;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices");
/// (regid, seq) -> message id: the device's queue, in its home shard's order.
const PENDING: TableDefinition<&[u8], u64> = TableDefinition::new("pending");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// message id -> (app id, targets, delivered) in this partition.
const MSG_STATS: TableDefinition<u64, (u32, u64, u64)> = TableDefinition::new("msg_stats");

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
    const LEN: usize = 28;

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.app_id.to_le_bytes());
        out[4..20].copy_from_slice(&self.token_hash);
        out[20..].copy_from_slice(&self.created_at.to_le_bytes());
        out
    }

    fn from_bytes(raw: &[u8]) -> Option<Self> {
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

/// One write, applied inside a grouped transaction.
#[derive(Debug)]
pub enum WriteOp {
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
}

fn pending_key(regid: &RegId, seq: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..12].copy_from_slice(&regid.0);
    key[12..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// One partition's database.
pub struct PartitionStore {
    pub partition: u16,
    db: Database,
}

impl PartitionStore {
    /// Opens (or creates) `dir/partition-NNNN.redb` and its tables.
    pub fn open(dir: &Path, partition: u16, cache_bytes: usize) -> Result<Self, StoreError> {
        let path = dir.join(format!("partition-{partition:04}.redb"));
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(DEVICES)?;
        txn.open_table(PENDING)?;
        txn.open_table(BODIES)?;
        txn.open_table(MSG_STATS)?;
        txn.commit()?;
        Ok(PartitionStore { partition, db })
    }

    /// Every registered device of this partition.
    pub fn load_devices(&self) -> Result<Vec<(RegId, DeviceRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEVICES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (Ok(key), Some(record)) = (
                <[u8; 12]>::try_from(k.value()),
                DeviceRecord::from_bytes(v.value()),
            ) else {
                tracing::warn!(
                    partition = self.partition,
                    "skipping a malformed device row"
                );
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
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        let bodies = txn.open_table(BODIES)?;
        let start = pending_key(regid, after.saturating_add(1));
        let end = pending_key(regid, u64::MAX);
        let mut out = Vec::new();
        for row in pending.range(&start[..]..=&end[..])? {
            let (k, v) = row?;
            let seq = u64::from_be_bytes(
                k.value()[12..20]
                    .try_into()
                    .map_err(|_| StoreError("bad key".into()))?,
            );
            let id = v.value();
            let Some(body) = bodies.get(id)? else {
                continue;
            };
            let raw = body.value();
            if raw.len() < 8 {
                continue;
            }
            let expires_at = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
            if expires_at <= now_s {
                continue;
            }
            out.push(PendingMessage {
                seq,
                id,
                expires_at,
                json: raw[8..].into(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// (targets, delivered) of a message in this partition, if it belongs to `app_id`.
    pub fn message_stats(
        &self,
        app_id: AppId,
        id: MessageId,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let stats = txn.open_table(MSG_STATS)?;
        Ok(stats.get(id)?.and_then(|v| {
            let (owner, targets, delivered) = v.value();
            (owner == app_id).then_some((targets, delivered))
        }))
    }

    /// Applies `ops` in one transaction.
    pub fn apply(&self, ops: &[&WriteOp], durability: redb::Durability) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut devices = txn.open_table(DEVICES)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut stats = txn.open_table(MSG_STATS)?;
            for op in ops {
                match op {
                    WriteOp::RegisterDevice { regid, record } => {
                        debug_assert_eq!(regid.partition(), self.partition);
                        devices.insert(&regid.0[..], &record.to_bytes()[..])?;
                    }
                    WriteOp::StorePush {
                        envelope,
                        seq,
                        regids,
                    } => {
                        let mut body = Vec::with_capacity(8 + envelope.json.len());
                        body.extend_from_slice(&envelope.expires_at.to_le_bytes());
                        body.extend_from_slice(&envelope.json);
                        bodies.insert(envelope.id, &body[..])?;
                        for regid in regids {
                            debug_assert_eq!(regid.partition(), self.partition);
                            pending.insert(&pending_key(regid, *seq)[..], envelope.id)?;
                        }
                        let (owner, targets, delivered) = stats
                            .get(envelope.id)?
                            .map(|v| v.value())
                            .unwrap_or((envelope.app_id, 0, 0));
                        stats.insert(
                            envelope.id,
                            (owner, targets + regids.len() as u64, delivered),
                        )?;
                    }
                    WriteOp::Acked { regid, seq, id } => {
                        if pending.remove(&pending_key(regid, *seq)[..])?.is_none() {
                            continue; // a duplicate PUBACK: counted once
                        }
                        let Some((owner, targets, delivered)) = stats.get(*id)?.map(|v| v.value())
                        else {
                            continue;
                        };
                        let delivered = delivered + 1;
                        stats.insert(*id, (owner, targets, delivered))?;
                        if delivered >= targets {
                            bodies.remove(*id)?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: MessageId, expires_at: u64) -> Arc<Envelope> {
        Arc::new(Envelope {
            id,
            app_id: 9,
            expires_at,
            json: format!("{{\"n\":{id}}}").into_bytes().into(),
        })
    }

    #[test]
    fn pending_survives_reopen_and_ack_counts_once() {
        let dir = std::env::temp_dir().join(format!("pushnode-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = RegId::generate(3);
        let b = RegId::generate(3);
        {
            let store = PartitionStore::open(&dir, 3, 1 << 20).unwrap();
            let record = DeviceRecord {
                app_id: 9,
                token_hash: [1; 16],
                created_at: 5,
            };
            let reg = WriteOp::RegisterDevice { regid: a, record };
            let p1 = WriteOp::StorePush {
                envelope: envelope(10, 100),
                seq: 1,
                regids: vec![a, b],
            };
            let p2 = WriteOp::StorePush {
                envelope: envelope(11, 100),
                seq: 2,
                regids: vec![a],
            };
            store
                .apply(&[&reg, &p1, &p2], redb::Durability::Immediate)
                .unwrap();
        }
        let store = PartitionStore::open(&dir, 3, 1 << 20).unwrap();
        assert_eq!(store.load_devices().unwrap().len(), 1);
        let got = store.pending_for(&a, 0, 50, 10).unwrap();
        assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(store.pending_for(&a, 1, 50, 10).unwrap().len(), 1);
        assert!(
            store.pending_for(&a, 0, 100, 10).unwrap().is_empty(),
            "expired messages are not pending"
        );
        let ack = WriteOp::Acked {
            regid: a,
            seq: 1,
            id: 10,
        };
        store
            .apply(&[&ack, &ack], redb::Durability::Immediate)
            .unwrap();
        assert_eq!(store.message_stats(9, 10).unwrap(), Some((2, 1)));
        assert_eq!(
            store.message_stats(8, 10).unwrap(),
            None,
            "another app sees nothing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
