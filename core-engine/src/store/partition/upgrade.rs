//! Moving a database's pushes from the tables files had before push rows (`PUSH_ROWS`):
//! a pending row held only the message id, the push's body was a row of its own in
//! `BODIES`, and its expiry row (keyed partition first) held only its targets. Runs when a
//! file opens (`create_tables`); files copied between layouts carry the old tables as they
//! were and are moved here when they open.

use super::{push_row_key, PushRow, StoreError, BODIES, PENDING, PUSH_ROWS};
use crate::ids::RegId;
use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use std::collections::BTreeSet;

/// (seq, regid) -> message id: the pending table before push rows.
pub(in crate::store) const OLD_PENDING: TableDefinition<&[u8], u64> = TableDefinition::new("pending_by_seq");
/// partition (BE) ++ expires_at (BE) ++ seq (BE) ++ message id (BE) -> the RegIDs the push
/// was queued for: the expiry index before push rows (a file of one partition: without the
/// partition).
pub(in crate::store) const OLD_PUSH_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("push_expiry");

/// Moves the old tables' rows, if the file has them, to `PENDING` and `PUSH_ROWS`, removes
/// the push bodies they used from `BODIES`, and drops the old tables. A pending row whose
/// body is gone (nothing to deliver) is dropped.
pub(super) fn move_old_push_rows(txn: &WriteTransaction) -> Result<(), StoreError> {
    let has = |def: &str| -> Result<bool, StoreError> { Ok(txn.list_tables()?.any(|t| t.name() == def)) };
    // (Opening a table in a write transaction would make it, hence the look first.)
    if has(OLD_PENDING.name())? {
        let (mut moved, mut dropped) = (0u64, 0u64);
        {
            let old = txn.open_table(OLD_PENDING)?;
            let bodies = txn.open_table(BODIES)?;
            let mut new = txn.open_table(PENDING)?;
            for row in old.iter()? {
                let (k, v) = row?;
                let (key, id) = (k.value(), v.value());
                let partition = key.get(8..10).map(|p| u16::from_be_bytes([p[0], p[1]]));
                let body = match partition {
                    Some(p) => bodies.get((id, p))?,
                    None => None,
                };
                let Some(expires_at) =
                    body.and_then(|b| Some(u64::from_le_bytes(b.value().get(..8)?.try_into().ok()?)))
                else {
                    dropped += 1;
                    continue;
                };
                new.insert(key, (id, expires_at))?;
                moved += 1;
            }
        }
        txn.delete_table(OLD_PENDING)?;
        tracing::info!(moved, dropped, "pending rows moved to the table of push rows");
    }
    if has(OLD_PUSH_EXPIRY.name())? {
        let (mut moved, mut dropped) = (0u64, 0u64);
        {
            let old = txn.open_table(OLD_PUSH_EXPIRY)?;
            let mut bodies = txn.open_table(BODIES)?;
            let mut new = txn.open_table(PUSH_ROWS)?;
            let mut used = BTreeSet::new();
            for row in old.iter()? {
                let (k, v) = row?;
                let (Some((partition, expires_at, seq, id)), targets) = (split_old_key(k.value()), v.value()) else {
                    dropped += 1;
                    continue;
                };
                let json = bodies.get((id, partition))?.and_then(|b| b.value().get(8..).map(<[u8]>::to_vec));
                let Some(json) = json.filter(|_| targets.len() % 12 == 0) else {
                    dropped += 1;
                    continue;
                };
                let mut push = PushRow::with_capacity(targets.len() / 12, json.len());
                for regid in targets.chunks_exact(12) {
                    push.add_target(&RegId(regid.try_into().expect("chunks of 12 bytes")));
                }
                new.insert(&push_row_key(partition, expires_at, seq, id)[..], &push.finish(&json)[..])?;
                used.insert((id, partition));
                moved += 1;
            }
            for key in used {
                bodies.remove(key)?;
            }
        }
        txn.delete_table(OLD_PUSH_EXPIRY)?;
        tracing::info!(moved, dropped, "push expiry rows and bodies moved to push rows");
    }
    Ok(())
}

/// The parts of an [`OLD_PUSH_EXPIRY`] key: (partition, expires_at, seq, id).
fn split_old_key(key: &[u8]) -> Option<(u16, u64, u64, u64)> {
    if key.len() != 26 {
        return None;
    }
    let u64_at = |at: usize| u64::from_be_bytes(key[at..at + 8].try_into().expect("8 bytes"));
    Some((u16::from_be_bytes([key[0], key[1]]), u64_at(2), u64_at(10), u64_at(18)))
}
