//! A shard database's write transactions: applying one commit's ops to each of its
//! partitions in one transaction, and sweeping what expired in a partition.
//!
//! Kept cheap per row: a table is opened only when an op first needs it (a commit touches a
//! few of the fifteen, and opening and closing one costs about what writing a row does), a
//! message's counts are read and written once per transaction however many acks it gets,
//! a push acknowledged within the same transaction writes no pending row or push row at
//! all, each push keeps one push row per partition (its body and targets, keyed by its
//! expiry: not one per target), pending and push rows append in seq order, and each
//! device's queue lives in memory (`pending_index.rs`; a failed transaction drops its
//! changes to it unpublished).

use super::pending_index::PendingTxn;
use super::{
    day_stats_key, decode_group, encode_group, expiry_key, pending_key, push_row_key, split_push_row,
    split_push_row_key, suffixed_key, MessageStats, PartitionStore, PushRow, StoreError, StoreEvent, WriteOp,
    ACTIVE_DAYS, ALIASES, BODIES, CLICKS, DAY_STATS, DEVICES, EXPIRY, EXPIRY_BODY, EXPIRY_GROUP, GROUP, GROUP_CURSORS,
    META, MSG_STATS, PENDING, PUSH_ROWS, QUIET, SUBSCRIPTIONS,
};
use crate::ids::{AppId, MessageId, RegId};
use foldhash::{HashMap, HashSet};
use redb::{Database, ReadableTable, Table, WriteTransaction};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! lazy_tables {
    ($($name:ident: $def:ident => <$k:ty, $v:ty>,)*) => {
        /// The tables of one write transaction, each opened on first use.
        struct Tables<'t> {
            txn: &'t WriteTransaction,
            $($name: Option<Table<'t, $k, $v>>,)*
        }

        impl<'t> Tables<'t> {
            fn new(txn: &'t WriteTransaction) -> Self {
                Tables { txn, $($name: None,)* }
            }

            $(fn $name(&mut self) -> Result<&mut Table<'t, $k, $v>, StoreError> {
                let table = match self.$name.take() {
                    Some(table) => table,
                    None => self.txn.open_table($def)?,
                };
                Ok(self.$name.insert(table))
            })*
        }
    };
}

lazy_tables! {
    devices: DEVICES => <&'static [u8], &'static [u8]>,
    pending: PENDING => <&'static [u8], (u64, u64)>,
    bodies: BODIES => <(u64, u16), &'static [u8]>,
    msg_stats: MSG_STATS => <(u64, u16), &'static [u8]>,
    clicks: CLICKS => <&'static [u8], ()>,
    aliases: ALIASES => <&'static [u8], ()>,
    subscriptions: SUBSCRIPTIONS => <&'static [u8], u64>,
    group: GROUP => <(u64, u16), &'static [u8]>,
    cursors: GROUP_CURSORS => <&'static [u8], u64>,
    expiry: EXPIRY => <&'static [u8], ()>,
    push_rows: PUSH_ROWS => <&'static [u8], &'static [u8]>,
    day_stats: DAY_STATS => <&'static [u8], &'static [u8]>,
    active_days: ACTIVE_DAYS => <&'static [u8], u32>,
    quiet: QUIET => <&'static [u8], &'static [u8]>,
    meta: META => <&'static str, u64>,
}

/// A partition's message counts read and changed within one transaction, written back once
/// at its end: the acknowledgements of one message by many devices in one commit cost one write.
struct StatsCache<'a> {
    partition: u16,
    /// The partition's [`PartitionStore::stats_id_bound`].
    id_bound: &'a AtomicU64,
    changed: HashMap<MessageId, MessageStats>,
}

impl StatsCache<'_> {
    fn get(&self, t: &mut Tables<'_>, id: MessageId) -> Result<Option<MessageStats>, StoreError> {
        if let Some(stats) = self.changed.get(&id) {
            return Ok(Some(*stats));
        }
        if id > self.id_bound.load(Ordering::Relaxed) {
            return Ok(None); // a message newer than every stored count: a new one
        }
        Ok(t.msg_stats()?.get((id, self.partition))?.and_then(|v| MessageStats::from_bytes(v.value())))
    }

    fn put(&mut self, id: MessageId, stats: MessageStats) {
        self.changed.insert(id, stats);
    }

    fn write_back(&mut self, t: &mut Tables<'_>) -> Result<(), StoreError> {
        if let Some(&max) = self.changed.keys().max() {
            self.id_bound.fetch_max(max, Ordering::Relaxed);
        }
        for (id, stats) in self.changed.drain() {
            t.msg_stats()?.insert((id, self.partition), &stats.to_bytes()[..])?;
        }
        Ok(())
    }
}

/// The keys (made owned by `owned`) of the first `limit` rows of `rows`, and whether a row
/// follows them: a sweep takes a bounded bite and says if it should come back.
fn keys_up_to<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    rows: redb::Range<'_, K, V>,
    limit: usize,
    owned: impl Fn(&redb::AccessGuard<'_, K>) -> T,
) -> Result<(Vec<T>, bool), StoreError> {
    let mut keys = Vec::new();
    for row in rows {
        if keys.len() >= limit {
            return Ok((keys, true));
        }
        keys.push(owned(&row?.0));
    }
    Ok((keys, false))
}

/// What one transaction changes besides its tables.
struct TxnEffects<'a> {
    pending: PendingTxn<'a>,
    stats: StatsCache<'a>,
    events: Vec<StoreEvent>,
    rows_delta: i64,
    /// (device, seq) of pushes acknowledged later in the same transaction: their pending
    /// rows are neither written nor removed.
    settled: HashSet<([u8; 12], u64)>,
    /// Messages whose every target in this transaction was settled: no push row was written.
    bodiless: HashSet<MessageId>,
}

impl<'a> TxnEffects<'a> {
    fn new(store: &'a PartitionStore, ops: &[&WriteOp]) -> Self {
        TxnEffects {
            pending: PendingTxn::new(&store.pending_index),
            stats: StatsCache {
                partition: store.partition,
                id_bound: &store.stats_id_bound,
                changed: HashMap::default(),
            },
            events: Vec::new(),
            rows_delta: 0,
            settled: settled_in(ops),
            bodiless: HashSet::default(),
        }
    }

    /// After the commit: the partition's queues change and its events are told.
    fn publish(mut self, events: &mut Vec<StoreEvent>) {
        self.pending.publish();
        events.append(&mut self.events);
        if self.rows_delta != 0 {
            events.push(StoreEvent::PendingRows(self.rows_delta));
        }
    }
}

/// Applies each partition's ops in one transaction of their store database `db`,
/// committed with `durability`; with `lsn`, each partition records that it holds the
/// write-ahead log record `lsn`. Nothing is published unless the transaction commits.
pub(in crate::store) fn apply_together(
    db: &Database,
    work: &[(&PartitionStore, Vec<&WriteOp>)],
    durability: redb::Durability,
    lsn: Option<u64>,
    events: &mut Vec<StoreEvent>,
) -> Result<(), StoreError> {
    let mut effects = Vec::with_capacity(work.len());
    let result = (|| -> Result<(), StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut t = Tables::new(&txn);
            for (store, ops) in work {
                assert!(std::ptr::eq(&*store.db, db), "partition {} is not in this database", store.partition);
                effects.push(store.apply_in(&mut t, ops, lsn)?);
            }
        }
        txn.commit()?;
        Ok(())
    })();
    result?;
    for fx in effects {
        fx.publish(events);
    }
    Ok(())
}

/// The pushes in `ops` that a later op of `ops` acknowledges. A device on loopback or a
/// good network acknowledges within a commit window, so most pushes never reach a table.
fn settled_in(ops: &[&WriteOp]) -> HashSet<([u8; 12], u64)> {
    let mut settled = HashSet::default();
    if !ops.iter().any(|op| matches!(op, WriteOp::Acked { .. })) {
        return settled;
    }
    let mut pushed = HashSet::default();
    for op in ops {
        match op {
            WriteOp::StorePush { seq, regids, .. } => pushed.extend(regids.iter().map(|r| (r.0, *seq))),
            WriteOp::Acked { regid, seq, .. } if pushed.remove(&(regid.0, *seq)) => {
                settled.insert((regid.0, *seq));
            }
            _ => {}
        }
    }
    settled
}

impl PartitionStore {
    /// Applies `ops` to this partition alone in one transaction (see [`apply_together`]).
    pub fn apply(
        &self,
        ops: &[&WriteOp],
        durability: redb::Durability,
        lsn: Option<u64>,
        events: &mut Vec<StoreEvent>,
    ) -> Result<(), StoreError> {
        apply_together(&self.db, &[(self, ops.to_vec())], durability, lsn, events)
    }

    /// This partition's share of a transaction: its ops, and its log record.
    fn apply_in(&self, t: &mut Tables<'_>, ops: &[&WriteOp], lsn: Option<u64>) -> Result<TxnEffects<'_>, StoreError> {
        let mut fx = TxnEffects::new(self, ops);
        if let Some(lsn) = lsn {
            let meta = t.meta()?;
            let before = meta.get(self.lsn_key.as_str())?.map_or(0, |v| v.value());
            assert!(lsn > before, "partition {}: log record {lsn} after {before}", self.partition);
            meta.insert(self.lsn_key.as_str(), lsn)?;
        }
        for op in ops {
            self.apply_op(t, &mut fx, op)?;
        }
        fx.stats.write_back(t)?;
        Ok(fx)
    }

    fn apply_op(&self, t: &mut Tables<'_>, fx: &mut TxnEffects<'_>, op: &WriteOp) -> Result<(), StoreError> {
        match op {
            WriteOp::RegisterDevice { regid, record } => {
                debug_assert_eq!(regid.partition(), self.partition);
                t.devices()?.insert(&regid.0[..], &record.to_bytes()[..])?;
            }
            WriteOp::StorePush { envelope, seq, regids } => {
                let mut push = PushRow::with_capacity(regids.len(), envelope.json.len());
                for regid in regids {
                    debug_assert_eq!(regid.partition(), self.partition);
                    if fx.settled.contains(&(regid.0, *seq)) {
                        continue;
                    }
                    if fx.pending.len(regid.0) >= self.limits.max_pending_per_device as usize {
                        self.drop_oldest(t, fx, regid, envelope.app_id)?;
                    }
                    if fx.pending.insert(regid.0, *seq) {
                        let row = (envelope.id, envelope.expires_at);
                        let before = t.pending()?.insert(&pending_key(regid, *seq)[..], row)?;
                        assert!(before.is_none(), "a pending row the index did not know: seq {seq}");
                        fx.rows_delta += 1;
                    }
                    push.add_target(regid);
                }
                if push.targets() == 0 {
                    fx.bodiless.insert(envelope.id);
                } else {
                    let key = push_row_key(self.partition, envelope.expires_at, *seq, envelope.id);
                    t.push_rows()?.insert(&key[..], &push.finish(&envelope.json)[..])?;
                }
                let mut counts = fx.stats.get(t, envelope.id)?.unwrap_or(MessageStats {
                    app_id: envelope.app_id,
                    expires_at: envelope.expires_at,
                    ..MessageStats::default()
                });
                counts.targets += regids.len() as u64;
                fx.stats.put(envelope.id, counts);
            }
            WriteOp::SetAlias { regid, alias } => {
                t.aliases()?.insert(&suffixed_key(regid, alias)[..], ())?;
            }
            WriteOp::UnsetAlias { regid, alias } => {
                t.aliases()?.remove(&suffixed_key(regid, alias)[..])?;
            }
            WriteOp::Subscribe { regid, topic, seq } => {
                t.subscriptions()?.insert(&suffixed_key(regid, topic)[..], *seq)?;
            }
            WriteOp::Unsubscribe { regid, topic } => {
                t.subscriptions()?.remove(&suffixed_key(regid, topic)[..])?;
            }
            WriteOp::StoreGroup { envelope, seq, filter, targets, .. } => {
                let mut body = Vec::with_capacity(8 + envelope.json.len());
                body.extend_from_slice(&envelope.expires_at.to_le_bytes());
                body.extend_from_slice(&envelope.json);
                let p = self.partition;
                t.bodies()?.insert((envelope.id, p), &body[..])?;
                t.group()?.insert((*seq, p), &encode_group(envelope, filter)[..])?;
                let expiry = t.expiry()?;
                expiry.insert(&expiry_key(p, envelope.expires_at, EXPIRY_BODY, &envelope.id.to_be_bytes())[..], ())?;
                expiry.insert(&expiry_key(p, envelope.expires_at, EXPIRY_GROUP, &seq.to_be_bytes())[..], ())?;
                let mut counts = fx.stats.get(t, envelope.id)?.unwrap_or(MessageStats {
                    app_id: envelope.app_id,
                    expires_at: envelope.expires_at,
                    ..MessageStats::default()
                });
                counts.targets += targets;
                fx.stats.put(envelope.id, counts);
            }
            WriteOp::GroupCursor { regid, seq } => {
                let cursors = t.cursors()?;
                let current = cursors.get(&regid.0[..])?.map_or(0, |v| v.value());
                if *seq > current {
                    cursors.insert(&regid.0[..], *seq)?;
                }
            }
            WriteOp::GroupDelivered { id, count, .. } => {
                if let Some(mut counts) = fx.stats.get(t, *id)? {
                    counts.delivered += u64::from(*count);
                    fx.stats.put(*id, counts);
                }
            }
            WriteOp::DayStats { app_id, day, stats, .. } => {
                t.day_stats()?.insert(&day_stats_key(self.partition, *app_id, *day)[..], &stats.to_bytes()[..])?;
            }
            WriteOp::Quiet { regid, hours } => match hours {
                Some(hours) => {
                    t.quiet()?.insert(&regid.0[..], &hours.to_bytes()[..])?;
                }
                None => {
                    t.quiet()?.remove(&regid.0[..])?;
                }
            },
            WriteOp::ActiveDay { regid, day } => {
                t.active_days()?.insert(&regid.0[..], *day)?;
            }
            WriteOp::Clicked { regid, id, .. } => {
                let Some(mut counts) = fx.stats.get(t, *id)? else {
                    return Ok(()); // an unknown message, or one whose counts are forgotten
                };
                let mut key = id.to_be_bytes().to_vec();
                key.extend_from_slice(&regid.0);
                if t.clicks()?.insert(&key[..], ())?.is_some() {
                    return Ok(()); // this device's click was counted already
                }
                counts.clicked += 1;
                fx.stats.put(*id, counts);
                fx.events.push(StoreEvent::Clicked { app_id: counts.app_id, regid: *regid, id: *id });
            }
            WriteOp::Acked { regid, seq, id } => {
                let settled = fx.settled.remove(&(regid.0, *seq));
                if !settled {
                    if !fx.pending.remove(regid.0, *seq) {
                        return Ok(()); // a duplicate PUBACK: counted once
                    }
                    let removed = t.pending()?.remove(&pending_key(regid, *seq)[..])?;
                    assert!(removed.is_some(), "the index held seq {seq} without its pending row");
                    fx.rows_delta -= 1;
                }
                let Some(mut counts) = fx.stats.get(t, *id)? else {
                    return Ok(());
                };
                counts.delivered += 1;
                fx.stats.put(*id, counts);
                if counts.delivered >= counts.targets && !fx.bodiless.contains(id) {
                    // Delivered everywhere in this partition: nothing is left to expire.
                    let key = push_row_key(self.partition, counts.expires_at, *seq, *id);
                    t.push_rows()?.remove(&key[..])?;
                }
            }
        }
        Ok(())
    }

    /// A full queue: the oldest message of `regid` goes, and is counted.
    fn drop_oldest(
        &self,
        t: &mut Tables<'_>,
        fx: &mut TxnEffects<'_>,
        regid: &RegId,
        app_id: AppId,
    ) -> Result<(), StoreError> {
        if let Some(oldest) = fx.pending.oldest(regid.0) {
            fx.pending.remove(regid.0, oldest);
            let removed = t.pending()?.remove(&pending_key(regid, oldest)[..])?;
            assert!(removed.is_some(), "the index held seq {oldest} without its pending row");
            fx.rows_delta -= 1;
            fx.events.push(StoreEvent::Dropped { app_id });
        }
        Ok(())
    }

    /// Removes what expired at or before `now_s`, at most `limit` expiry rows; answers what
    /// it removed that statistics count, and whether more may be left.
    pub fn expire(&self, now_s: u64, limit: usize, events: &mut Vec<StoreEvent>) -> Result<bool, StoreError> {
        let mut fx = TxnEffects::new(self, &[]);
        let result = (|| -> Result<bool, StoreError> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(redb::Durability::None)?;
            let more = {
                let mut t = Tables::new(&txn);
                let mut expired_by_app: BTreeMap<AppId, u64> = BTreeMap::new();
                let (pushes, more) = self.expire_pushes(&mut t, &mut fx, now_s, limit, &mut expired_by_app)?;
                let more = more || self.expire_groups(&mut t, now_s, limit - pushes, &mut expired_by_app)?;
                let more = more || Self::forget_stats(&mut t, now_s, self.limits.stats_kept_secs, limit)?;
                fx.events.extend(
                    expired_by_app
                        .into_iter()
                        .filter(|&(_, n)| n > 0)
                        .map(|(app_id, count)| StoreEvent::Expired { app_id, count }),
                );
                more
            };
            txn.commit()?;
            Ok(more)
        })();
        let more = result?;
        fx.publish(events);
        Ok(more)
    }

    /// Removes the pending rows and push rows of pushes due by `now_s`, at most `limit` pushes;
    /// answers how many it took and whether more are due.
    fn expire_pushes(
        &self,
        t: &mut Tables<'_>,
        fx: &mut TxnEffects<'_>,
        now_s: u64,
        limit: usize,
        expired_by_app: &mut BTreeMap<AppId, u64>,
    ) -> Result<(usize, bool), StoreError> {
        // The rows due are every partition's of this database, time first: this one's are
        // picked out, and a sweep reads at most `SCAN_PER_ROW` rows for each it may take.
        const SCAN_PER_ROW: usize = 32;
        let end = push_row_key(u16::MAX, now_s, u64::MAX, u64::MAX);
        let mut due = Vec::new();
        let mut more = false;
        for (scanned, row) in t.push_rows()?.range(..=&end[..])?.enumerate() {
            if due.len() >= limit || scanned >= limit.saturating_mul(SCAN_PER_ROW) {
                more = true;
                break;
            }
            let (key, row) = row?;
            match split_push_row_key(key.value()) {
                Some((p, _, seq, id)) if p == self.partition => {
                    let targets = split_push_row(row.value()).map_or_else(Vec::new, |(targets, _)| targets.to_vec());
                    due.push((key.value().to_vec(), seq, id, targets));
                }
                Some(_) => {}
                None => tracing::warn!(partition = self.partition, "skipping a malformed push row key"),
            }
        }
        for (key, seq, id, targets) in &due {
            let (seq, id) = (*seq, *id);
            t.push_rows()?.remove(&key[..])?;
            let stats = t.msg_stats()?.get((id, self.partition))?.and_then(|v| MessageStats::from_bytes(v.value()));
            let app_id = stats.map(|s| s.app_id);
            for regid in targets.chunks_exact(12) {
                let regid = RegId(regid.try_into().expect("chunks of 12 bytes"));
                if fx.pending.remove(regid.0, seq) {
                    let removed = t.pending()?.remove(&pending_key(&regid, seq)[..])?;
                    assert!(removed.is_some(), "the index held seq {seq} without its pending row");
                    fx.rows_delta -= 1;
                    if let Some(app_id) = app_id {
                        *expired_by_app.entry(app_id).or_default() += 1;
                    }
                }
            }
        }
        Ok((due.len(), more))
    }

    /// Removes the counts and click rows of messages older than `kept_secs`, at most `limit`
    /// of each, of every partition of the database (they are keyed by id first); answers
    /// whether more are due.
    fn forget_stats(t: &mut Tables<'_>, now_s: u64, kept_secs: u64, limit: usize) -> Result<bool, StoreError> {
        let first_kept = super::first_kept_stats_id(now_s, kept_secs);
        let (due, more_stats) = keys_up_to(t.msg_stats()?.range(..(first_kept, 0))?, limit, |k| k.value())?;
        for key in due {
            debug_assert!(key.0 < first_kept);
            t.msg_stats()?.remove(key)?;
        }
        let end = first_kept.to_be_bytes();
        let (clicks, more_clicks) = keys_up_to(t.clicks()?.range(..&end[..])?, limit, |k| k.value().to_vec())?;
        for key in clicks {
            t.clicks()?.remove(&key[..])?;
        }
        Ok(more_stats || more_clicks)
    }

    /// Removes group messages and their bodies due by `now_s`, at most `limit` index rows;
    /// answers whether more are due.
    fn expire_groups(
        &self,
        t: &mut Tables<'_>,
        now_s: u64,
        limit: usize,
        expired_by_app: &mut BTreeMap<AppId, u64>,
    ) -> Result<bool, StoreError> {
        let p = self.partition;
        let (start, end) = (p.to_be_bytes(), expiry_key(p, now_s, u8::MAX, &[0xff; 20]));
        let (due, more) = keys_up_to(t.expiry()?.range(&start[..]..=&end[..])?, limit, |k| k.value().to_vec())?;
        for key in due {
            t.expiry()?.remove(&key[..])?;
            let (Some(&kind), Some(raw)) = (key.get(10), key.get(11..19)) else { continue };
            let Ok(raw) = <[u8; 8]>::try_from(raw) else { continue };
            match kind {
                EXPIRY_BODY => {
                    t.bodies()?.remove((u64::from_be_bytes(raw), p))?;
                }
                EXPIRY_GROUP => {
                    let removed =
                        t.group()?.remove((u64::from_be_bytes(raw), p))?.and_then(|e| decode_group(e.value()));
                    let Some((id, _, _, _)) = removed else { continue };
                    let stats = t.msg_stats()?.get((id, p))?.and_then(|v| MessageStats::from_bytes(v.value()));
                    if let Some(s) = stats {
                        *expired_by_app.entry(s.app_id).or_default() += s.targets.saturating_sub(s.delivered);
                    }
                }
                _ => {}
            }
        }
        Ok(more)
    }
}
