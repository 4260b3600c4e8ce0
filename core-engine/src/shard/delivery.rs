//! Storing pushes and delivering them in order: a device's own messages (RegID and
//! alias sends) wait in its pending queue; group messages (topics, broadcast) are kept
//! once per shard and merged into each device's stream by sequence number.

use super::inbox::{AfterStore, PushPart, Reply, ShardMsg};
use super::{Device, Shard};
use crate::ids::{AppId, RegId};
use crate::push::{Envelope, GroupFilter, TopicOp};
use crate::session::{PushRef, PushTopic, TOPIC_PREFIX};
use crate::store::{GroupMessage, PendingMessage, StoreError, StoreJob, WriteOp};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most messages read from the store at once for one device, per stream.
const PENDING_BATCH: usize = 64;

/// A group message's topics resolved to this shard's topic ids once per message, not once
/// per target device.
struct ResolvedFilter<'a> {
    filter: &'a GroupFilter,
    /// The id here of each of `filter.topics()`, if that topic has members here.
    ids: Vec<Option<u32>>,
    /// The topic every target gets the message on, where it does not depend on the device:
    /// the inbox for a broadcast, else the first topic, unless the expression is a union of
    /// several (a target is in the first topic of any other). One name shared by them all.
    fixed_topic: Option<PushTopic>,
}

impl ResolvedFilter<'_> {
    fn member(&self, device: &Device, seq: u64) -> bool {
        self.filter.matches(|i| self.ids[i].is_some_and(|id| device.joined_before(id, seq)))
    }

    /// The topic a target gets the message on: the first topic of the expression it is
    /// in, or the inbox for a broadcast.
    fn topic_for(&self, device: &Device, seq: u64) -> PushTopic {
        if let Some(topic) = &self.fixed_topic {
            return topic.clone();
        }
        let topics = self.filter.topics();
        let first_in = (0..topics.len()).find(|&i| self.ids[i].is_some_and(|id| device.joined_before(id, seq)));
        let name = first_in.or((!topics.is_empty()).then_some(0)).map_or("", |i| topics[i].as_str());
        PushTopic::Named(format!("{TOPIC_PREFIX}{name}").into())
    }
}

fn expiry_s(expires_at: u64, now_s: u64) -> Option<u32> {
    Some(u32::try_from(expires_at.saturating_sub(now_s)).unwrap_or(u32::MAX))
}

/// One item of a device's merged stream.
enum Next {
    Own(PendingMessage),
    Group(GroupMessage),
}

impl Next {
    fn seq(&self) -> u64 {
        match self {
            Next::Own(m) => m.seq,
            Next::Group(m) => m.seq,
        }
    }
}

impl Shard {
    /// Whether `device` is a target of a group message sent at `seq`.
    fn group_member(&self, device: &Device, filter: &GroupFilter, seq: u64) -> bool {
        let topics = filter.topics();
        filter.matches(|i| {
            self.topics.id(device.record.app_id, &topics[i]).is_some_and(|id| device.joined_before(id, seq))
        })
    }

    fn resolve<'a>(&self, app_id: AppId, filter: &'a GroupFilter) -> ResolvedFilter<'a> {
        let ids = filter.topics().iter().map(|t| self.topics.id(app_id, t)).collect();
        let fixed_topic = match filter {
            GroupFilter::All => Some(PushTopic::Inbox),
            GroupFilter::Topics { topics, op } if topics.len() == 1 || *op != TopicOp::Union => {
                topics.first().map(|t| PushTopic::Named(format!("{TOPIC_PREFIX}{t}").into()))
            }
            GroupFilter::Topics { .. } => None,
        };
        ResolvedFilter { filter, ids, fixed_topic }
    }

    /// How many devices of this shard a group message sent now is for. For one topic, its
    /// member count: every member joined before a message sent now (a topic's members are
    /// the devices that list it). Walking the members to count them cost as much as the
    /// delivery's own walk does (~1 ms per message at 9,500 members, in a profile), before
    /// the message could even go to the store writer.
    fn group_target_count(&self, app_id: AppId, resolved: &ResolvedFilter<'_>) -> u64 {
        if let (GroupFilter::Topics { topics, .. }, [id]) = (resolved.filter, resolved.ids.as_slice()) {
            debug_assert_eq!(topics.len(), 1);
            let members = id.and_then(|id| self.topics.get(id)).map_or(0, |t| t.members.len());
            debug_assert_eq!(members, self.group_targets(app_id, resolved, u64::MAX).len());
            return members as u64;
        }
        self.group_targets(app_id, resolved, u64::MAX).len() as u64
    }

    /// The devices of this shard a group message sent at `seq` is for.
    fn group_targets(&self, app_id: AppId, resolved: &ResolvedFilter<'_>, seq: u64) -> Vec<RegId> {
        let selected = |regid: &RegId| {
            self.devices.get(regid).is_some_and(|d| d.record.app_id == app_id && resolved.member(d, seq))
        };
        match resolved.filter {
            GroupFilter::All => {
                self.devices.iter().filter(|(_, d)| d.record.app_id == app_id).map(|(r, _)| *r).collect()
            }
            GroupFilter::Topics { .. } => {
                // A device in several of the topics is listed once.
                let several = resolved.ids.iter().flatten().count() > 1;
                let mut seen = foldhash::HashSet::default();
                let mut out = Vec::new();
                for &id in resolved.ids.iter().flatten() {
                    let Some(topic) = self.topics.get(id) else { continue };
                    for regid in &topic.members {
                        if (!several || seen.insert(*regid)) && selected(regid) {
                            out.push(*regid);
                        }
                    }
                }
                out
            }
        }
    }

    pub(super) fn on_acked(&mut self, key: u32, push: PushRef) {
        let conn = &self.conns[key as usize];
        let Some(regid) = conn.device else { return };
        let backlog = conn.backlog;
        if let Some(app_id) = self.devices.get(&regid).map(|d| d.record.app_id) {
            self.count_delivered(app_id, push.id);
            self.receipt(app_id, push.id, regid, false);
        }
        if push.group {
            if let Some(device) = self.devices.get_mut(&regid) {
                device.group_cursor = device.group_cursor.max(push.seq);
            }
            self.pass_acks.note_group(regid, push.seq, push.id);
        } else {
            // Until the ack is committed, a reconnect must not read the message back as pending.
            self.unsynced_acks.entry(regid).or_default().push(push.seq);
            self.pass_acks.note_own(regid, push.seq, push.id);
        }
        // Written with the rest of this pass's acknowledgements (`write_pass_acks`).
        if backlog {
            self.pump(key);
        }
    }

    /// Hands the acknowledgements of this pass of the event loop to the store writer, in one
    /// job, whose completion tells the shard that those of devices' own messages are committed;
    /// the group cursors once a second, or all that wait when `stopping`.
    pub(super) fn write_pass_acks(&mut self, stopping: bool) {
        let Some(writes) = self.pass_acks.take(self.group_partition, self.pass_ms, stopping) else { return };
        let own = writes.own;
        let done: Option<crate::store::Completion> = (!own.is_empty()).then(|| {
            let inbox = self.shared.inboxes[self.index].clone();
            Box::new(move |_| {
                inbox.send_quiet(ShardMsg::AcksCommitted(own));
            }) as crate::store::Completion
        });
        self.writer.submit(StoreJob { ops: writes.ops, done, awaited: false });
    }

    /// Fills the session's window from the store: the device's own queue and the shard's
    /// group messages, merged in sequence order, as far as the send budget allows.
    pub(super) fn pump(&mut self, key: u32) {
        self.pump_batches(key);
        self.recharge(key);
    }

    fn pump_batches(&mut self, key: u32) {
        let now = self.now_unix_s();
        loop {
            self.recharge(key);
            let conn = &self.conns[key as usize];
            let Some(regid) = conn.device else { return };
            if !conn.backlog || !conn.session.can_push() {
                return;
            }
            let Some(device) = self.devices.get(&regid) else { return };
            if device.is_quiet(now) {
                return; // backlog stays set; the tick pumps when the quiet hours end
            }
            if self.send_budget.is_spent() {
                self.starve(key); // backlog stays set; fed when the sends have drained
                return;
            }
            let (Some(own_store), Some(group_store)) =
                (self.stores.get(&regid.partition()), self.stores.get(&self.group_partition))
            else {
                return;
            };
            let own = own_store.pending_for(&regid, conn.cursor, now, PENDING_BATCH).map(|mut own| {
                if let Some(acked) = self.unsynced_acks.get(&regid) {
                    own.retain(|m| !acked.contains(&m.seq));
                }
                own
            });
            let app_id = device.record.app_id;
            let after = conn.cursor.max(device.group_cursor);
            let wanted = |m: &GroupMessage| m.app_id == app_id && self.group_member(device, &m.filter, m.seq);
            // From memory only while no group message is on its way through the writer: one
            // committed but not yet handed back is in the store, not in memory, and an own
            // message committed after it (read from the store) would move the cursor past it.
            let recent = if self.unstored_groups == 0 {
                self.recent_groups.after(after, now, PENDING_BATCH, wanted)
            } else {
                None
            };
            let group = match recent {
                Some(recent) => Ok(recent),
                None => group_store.group_after(after, now, PENDING_BATCH, wanted),
            };
            let (own, group) = match (own, group) {
                (Ok(own), Ok(group)) => (own, group),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(shard = self.index, error = %e, "reading pending messages failed");
                    return;
                }
            };
            // A full batch may hide later items: merge only up to the smaller of the full batches' ends.
            let own_full = own.len() == PENDING_BATCH;
            let group_full = group.len() == PENDING_BATCH;
            let limit = [own_full.then(|| own.last().map(|m| m.seq)), group_full.then(|| group.last().map(|m| m.seq))]
                .into_iter()
                .flatten()
                .flatten()
                .min()
                .unwrap_or(u64::MAX);
            let mut merged: Vec<Next> =
                own.into_iter().map(Next::Own).chain(group.into_iter().map(Next::Group)).collect();
            merged.sort_by_key(Next::seq);
            let device = self.devices.get(&regid).expect("checked above");
            let topics: Vec<PushTopic> = merged
                .iter()
                .map(|n| match n {
                    Next::Own(_) => PushTopic::Inbox,
                    Next::Group(m) => self.resolve(app_id, &m.filter).topic_for(device, m.seq),
                })
                .collect();
            let device = self.devices.get_mut(&regid).expect("checked above");
            let conn = &mut self.conns[key as usize];
            for (next, topic) in merged.into_iter().zip(topics) {
                if next.seq() > limit {
                    break;
                }
                if !conn.session.can_push() {
                    return; // backlog stays set: the rest waits for acknowledgements
                }
                let (push, expires_at, json) = match &next {
                    Next::Own(m) => (PushRef { seq: m.seq, id: m.id, group: false }, m.expires_at, &m.json),
                    Next::Group(m) => (PushRef { seq: m.seq, id: m.id, group: true }, m.expires_at, &m.json),
                };
                let dup = push.seq <= device.last_sent;
                conn.session.push(push, dup, expiry_s(expires_at, now), topic, json);
                conn.cursor = push.seq;
                device.last_sent = device.last_sent.max(push.seq);
            }
            if !own_full && !group_full {
                conn.backlog = false;
                return;
            }
        }
    }

    pub(super) fn on_message(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Push { envelope, regids, reply } => {
                let (valid, invalid): (Vec<RegId>, Vec<RegId>) = regids
                    .into_iter()
                    .partition(|r| self.devices.get(r).is_some_and(|d| d.record.app_id == envelope.app_id));
                self.store_push(envelope, valid, PushPart { invalid, ..PushPart::default() }, reply);
            }
            ShardMsg::PushAliases { envelope, aliases, reply } => {
                let mut found = Vec::new();
                let mut targets = std::collections::BTreeSet::new();
                for alias in aliases.iter() {
                    let devices = self.aliases.get(envelope.app_id, alias);
                    if !devices.is_empty() {
                        found.push(alias.clone());
                        targets.extend(devices.iter().copied());
                    }
                }
                let part = PushPart { found_aliases: found, ..PushPart::default() };
                self.store_push(envelope, targets.into_iter().collect(), part, reply);
            }
            ShardMsg::PushGroup { envelope, filter, reply } => self.store_group(envelope, filter, reply),
            ShardMsg::Register { app_id, reply } => {
                let (regid, token, device, ops) = self.new_device(app_id);
                let inbox = self.shared.inboxes[self.index].clone();
                self.writer.submit(StoreJob {
                    ops,
                    done: Some(Box::new(move |result| {
                        inbox.send_quiet(ShardMsg::Stored {
                            result,
                            then: AfterStore::RegisteredHttp { regid, token, reply },
                        });
                    })),
                    awaited: true,
                });
                // Indexed now: its record is in the job, and a failed commit removes it.
                self.devices.insert(regid, device);
            }
            ShardMsg::MessageStatus { app_id, id, reply } => {
                let mut total: Option<crate::store::MessageStats> = None;
                for store in self.stores.values() {
                    match store.message_stats(app_id, id) {
                        Ok(Some(counts)) => total.get_or_insert_with(Default::default).merge(&counts),
                        Ok(None) => {}
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = reply.send(Ok(total));
            }
            ShardMsg::SetQuiet { app_id, regid, hours, reply } => {
                let _ = reply.send(self.set_quiet(app_id, regid, hours));
            }
            ShardMsg::RotateToken { app_id, regid, reply } => {
                let _ = reply.send(self.rotate_token(app_id, regid));
            }
            ShardMsg::DeviceAlias { app_id, regid, alias, set, reply } => {
                let _ = reply.send(self.change_alias(app_id, regid, &alias, set));
            }
            ShardMsg::TopicMembers { app_id, topic, regids, join, reply } => {
                let _ = reply.send(Ok(self.change_topic_members(app_id, &topic, regids, join)));
            }
            ShardMsg::LookupAlias { app_id, alias, reply } => {
                let _ = reply.send(self.aliases.get(app_id, &alias).to_vec());
            }
            ShardMsg::Handoff { handoff_id, connect, unprocessed, tls } => {
                self.handoffs.insert(handoff_id, (connect, unprocessed, tls));
            }
            ShardMsg::Stored { result, then } => self.on_stored(result, then),
            ShardMsg::StoreEvents(events) => self.on_store_events(events),
            ShardMsg::AcksCommitted(acks) => {
                for (regid, seq) in acks {
                    if let Some(acked) = self.unsynced_acks.get_mut(&regid) {
                        acked.retain(|&s| s != seq);
                        if acked.is_empty() {
                            self.unsynced_acks.remove(&regid);
                        }
                    }
                }
            }
            ShardMsg::DayStats { app_id, from, to, reply } => {
                let result =
                    self.stores.get(&self.group_partition).map_or(Ok(Vec::new()), |s| s.day_stats(app_id, from, to));
                let today = self.day_stats.day;
                let live = self.day_stats.apps.get(&app_id).copied();
                let _ = reply.send(result.map(|mut rows| {
                    // Today's counts in memory are newer than the last flush.
                    rows.retain(|(day, _)| *day != today);
                    if let Some(stats) = live.filter(|_| (from..=to).contains(&today)) {
                        rows.push((today, stats));
                    }
                    rows
                }));
            }
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    /// Queues `envelope` for each of `targets` (devices homed here, already checked).
    fn store_push(&mut self, envelope: Arc<Envelope>, targets: Vec<RegId>, part: PushPart, reply: Reply<PushPart>) {
        if targets.is_empty() {
            let _ = reply.send(Ok(part));
            return;
        }
        let seq = self.seq.next(self.now_unix_ms());
        let mut by_partition: BTreeMap<u16, Vec<RegId>> = BTreeMap::new();
        for regid in &targets {
            by_partition.entry(regid.partition()).or_default().push(*regid);
        }
        let ops = by_partition
            .into_values()
            .map(|regids| WriteOp::StorePush { envelope: envelope.clone(), seq, regids })
            .collect();
        // Out now to online devices; any acknowledgement is handled after this returns, so
        // its job reaches the writer after the push's.
        let now = self.now_unix_s();
        for regid in &targets {
            let unstored = self.unstored.entry(*regid).or_default();
            unstored.pushes += 1;
            let overtakes = unstored.unsent > 0 || self.unstored_groups > 0;
            if overtakes || !self.deliver_live(regid, &envelope, seq, false, PushTopic::Inbox, now) {
                self.unstored.get_mut(regid).expect("inserted above").unsent += 1;
            }
        }
        let inbox = self.shared.inboxes[self.index].clone();
        self.writer.submit(StoreJob {
            ops,
            done: Some(Box::new(move |result| {
                let then = AfterStore::Pushed { envelope, seq, regids: targets, part, reply };
                inbox.send_quiet(ShardMsg::Stored { result, then });
            })),
            awaited: true,
        });
    }

    /// Keeps a group message once for this shard, counting its targets here.
    fn store_group(&mut self, envelope: Arc<Envelope>, filter: Arc<GroupFilter>, reply: Reply<PushPart>) {
        let targets = self.group_target_count(envelope.app_id, &self.resolve(envelope.app_id, &filter));
        if targets == 0 && matches!(*filter, GroupFilter::Topics { .. }) {
            // No member here now: nobody here can catch up on it later either.
            let _ = reply.send(Ok(PushPart::default()));
            return;
        }
        let seq = self.seq.next(self.now_unix_ms());
        let op = WriteOp::StoreGroup {
            partition: self.group_partition,
            envelope: envelope.clone(),
            seq,
            filter: (*filter).clone(),
            targets,
        };
        let inbox = self.shared.inboxes[self.index].clone();
        self.unstored_groups += 1;
        self.writer.submit(StoreJob {
            ops: vec![op],
            done: Some(Box::new(move |result| {
                let then = AfterStore::GroupStored { envelope, seq, filter, targets, reply };
                inbox.send_quiet(ShardMsg::Stored { result, then });
            })),
            awaited: true,
        });
    }

    fn on_stored(&mut self, result: Result<(), StoreError>, then: AfterStore) {
        match then {
            AfterStore::Registered { conn: key, gen, regid, token, record } => {
                if result.is_ok() {
                    self.devices.insert(regid, *record);
                }
                self.registered_over_mqtt(key, gen, regid, token, result);
            }
            AfterStore::RegisteredHttp { regid, token, reply } => {
                if result.is_err() {
                    self.devices.remove(&regid);
                } else if let Some(app_id) = self.devices.get(&regid).map(|d| d.record.app_id) {
                    self.count(app_id, |s| s.new += 1);
                }
                let _ = reply.send(result.map(|()| (regid, token)));
            }
            AfterStore::Pushed { envelope, seq, regids, mut part, reply } => {
                let now = self.now_unix_s();
                for regid in &regids {
                    self.push_stored(regid, &envelope, seq, now);
                }
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                    return;
                }
                part.targets = regids.len() as u64;
                self.count_accepted(envelope.app_id, part.targets, false);
                let _ = reply.send(Ok(part));
            }
            AfterStore::GroupStored { envelope, seq, filter, targets, reply } => {
                self.unstored_groups -= 1;
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                    return;
                }
                self.count_accepted(envelope.app_id, targets, true);
                self.recent_groups.push(GroupMessage {
                    seq,
                    id: envelope.id,
                    app_id: envelope.app_id,
                    expires_at: envelope.expires_at,
                    filter: filter.clone(),
                    json: envelope.json.clone(),
                });
                let now = self.now_unix_s();
                let resolved = self.resolve(envelope.app_id, &filter);
                for regid in self.group_targets(envelope.app_id, &resolved, seq) {
                    let Some(device) = self.devices.get(&regid) else { continue };
                    if device.conn.is_none() {
                        continue;
                    }
                    let topic = resolved.topic_for(device, seq);
                    self.deliver_live(&regid, &envelope, seq, true, topic, now);
                }
                let _ = reply.send(Ok(PushPart { targets, ..PushPart::default() }));
            }
        }
    }

    /// A push to `regid` is committed (or failed): if the device's connection has not sent
    /// it, it goes now (its sends of newer pushes waited for it).
    fn push_stored(&mut self, regid: &RegId, envelope: &Envelope, seq: u64, now: u64) {
        let Some(unstored) = self.unstored.get_mut(regid) else { return };
        debug_assert!(unstored.pushes > 0 && unstored.unsent <= unstored.pushes);
        unstored.pushes -= 1;
        let conn = self.devices.get(regid).and_then(|d| d.conn).map(|key| &self.conns[key as usize]);
        if conn.is_some_and(|c| c.cursor < seq) {
            unstored.unsent = unstored.unsent.saturating_sub(1);
        }
        unstored.unsent = unstored.unsent.min(unstored.pushes);
        if unstored.pushes == 0 {
            self.unstored.remove(regid);
        }
        // Sent before its commit and already acknowledged (on a connection the device has
        // since replaced: the new one's cursor is behind it): not again.
        if self.unsynced_acks.get(regid).is_some_and(|acked| acked.contains(&seq)) {
            return;
        }
        self.deliver_live(regid, envelope, seq, false, PushTopic::Inbox, now);
    }

    /// Sends a message to `regid` if it is online and caught up, and says whether it did;
    /// otherwise the device reads it from the store when its window opens.
    fn deliver_live(
        &mut self,
        regid: &RegId,
        envelope: &Envelope,
        seq: u64,
        group: bool,
        topic: PushTopic,
        now: u64,
    ) -> bool {
        let Some(device) = self.devices.get_mut(regid) else { return false };
        let Some(key) = device.conn else { return false };
        let conn = &mut self.conns[key as usize];
        if conn.closing || !conn.session.is_connected() || seq <= conn.cursor {
            return false; // already read from the store
        }
        if conn.backlog || !conn.session.can_push() || device.is_quiet(now) {
            conn.backlog = true;
            return false;
        }
        if self.send_budget.is_spent() {
            conn.backlog = true;
            self.starve(key);
            return false;
        }
        let push = PushRef { seq, id: envelope.id, group };
        conn.session.push(push, seq <= device.last_sent, expiry_s(envelope.expires_at, now), topic, &envelope.json);
        conn.cursor = seq;
        device.last_sent = device.last_sent.max(seq);
        self.recharge(key);
        debug_assert!(self.draining, "live deliveries come from inbox messages, flushed when the drain ends");
        self.flush_after_drain.push(key);
        true
    }
}
