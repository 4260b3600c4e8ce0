//! Scheduled messages (`send_at`): the send body is kept as JSON under the message id that
//! was handed out when it was scheduled, with a due index ordered by send time that the
//! scheduler scans. A row stays after it fires or is canceled, so the message's state can be
//! answered, until [`ApiStore::prune_schedules`] drops it.
//!
//! Cancel and fire exclude each other: the scheduler claims a message before sending it
//! ([`ApiStore::begin_fire`]) and cancel refuses a claimed one ([`CancelOutcome::Sending`]).
//! A crash between the send and [`ApiStore::end_fire`] sends it again after restart under the
//! same id (at least once).

use super::{decode, encode, ApiStore, ApiStoreError};
use crate::ids::{AppId, MessageId};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// message id -> [`ScheduledMessage`] as JSON.
const SCHEDULES: TableDefinition<u64, &[u8]> = TableDefinition::new("schedules");
/// (send_at, message id) -> (): messages still to send, in send order.
const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("schedules_due");

/// Farthest ahead a message may be scheduled: 7 days.
pub const MAX_SCHEDULE_AHEAD_SECS: u64 = 7 * 24 * 3600;

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), ApiStoreError> {
    txn.open_table(SCHEDULES)?;
    txn.open_table(DUE)?;
    Ok(())
}

/// Where a scheduled message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleState {
    /// Waiting for its time.
    Scheduled,
    /// Canceled before its time; never sent.
    Canceled,
    /// Handed to the node; its counts come from the node's message status.
    Sent,
    /// Its time to live ran out before it could be sent (the node was down); never sent.
    Expired,
    /// The node refused it at send time; `error` says why.
    Failed,
}

impl ScheduleState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleState::Scheduled => "scheduled",
            ScheduleState::Canceled => "canceled",
            ScheduleState::Sent => "sent",
            ScheduleState::Expired => "expired",
            ScheduleState::Failed => "failed",
        }
    }
}

/// One scheduled message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    pub id: MessageId,
    pub app_id: AppId,
    /// Unix seconds at which it is sent.
    pub send_at: u64,
    /// Its time to live once sent, in seconds.
    pub ttl_secs: u64,
    pub created_at: u64,
    pub state: ScheduleState,
    /// The send body (target and message fields, templates already rendered) as JSON.
    pub body: String,
    /// Unix seconds at which it was sent, canceled, expired or failed.
    #[serde(default)]
    pub done_at: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What a cancel did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It is canceled now (or was already).
    Canceled,
    /// Too late: it was sent, expired or failed.
    AlreadyDone(ScheduleState),
    /// The scheduler is sending it right now.
    Sending,
    /// No scheduled message of this app has this id.
    Unknown,
}

impl ApiStore {
    /// Stores a message to send at `msg.send_at`; durable when this returns.
    pub fn schedule(&self, msg: &ScheduledMessage) -> Result<(), ApiStoreError> {
        let raw = encode(msg)?;
        let txn = self.db.begin_write()?;
        {
            txn.open_table(SCHEDULES)?.insert(msg.id, &raw[..])?;
            if msg.state == ScheduleState::Scheduled {
                txn.open_table(DUE)?.insert((msg.send_at, msg.id), ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn read_schedule(&self, id: MessageId) -> Result<Option<ScheduledMessage>, ApiStoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(SCHEDULES)?;
        let row = table.get(id)?;
        row.map(|v| decode(v.value())).transpose()
    }

    /// The app's scheduled message `id` (in any state); `None` if unknown or another app's.
    pub fn scheduled_message(&self, app_id: AppId, id: MessageId) -> Result<Option<ScheduledMessage>, ApiStoreError> {
        Ok(self.read_schedule(id)?.filter(|m| m.app_id == app_id))
    }

    /// Cancels the app's scheduled message `id` unless it is sent or being sent.
    pub fn cancel(&self, app_id: AppId, id: MessageId, now_s: u64) -> Result<CancelOutcome, ApiStoreError> {
        let firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
        if firing.contains(&id) {
            return Ok(CancelOutcome::Sending);
        }
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut table = txn.open_table(SCHEDULES)?;
            let current: Option<ScheduledMessage> = table.get(id)?.map(|v| decode(v.value())).transpose()?;
            match current {
                Some(msg) if msg.app_id == app_id => match msg.state {
                    ScheduleState::Scheduled => {
                        let canceled = ScheduledMessage { state: ScheduleState::Canceled, done_at: Some(now_s), ..msg };
                        table.insert(id, &encode(&canceled)?[..])?;
                        txn.open_table(DUE)?.remove((canceled.send_at, id))?;
                        CancelOutcome::Canceled
                    }
                    ScheduleState::Canceled => CancelOutcome::Canceled,
                    done => CancelOutcome::AlreadyDone(done),
                },
                _ => CancelOutcome::Unknown,
            }
        };
        txn.commit()?;
        drop(firing);
        Ok(outcome)
    }

    /// Up to `limit` (send_at, id) of messages due at `now_s`, earliest first.
    pub fn due(&self, now_s: u64, limit: usize) -> Result<Vec<(u64, MessageId)>, ApiStoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(DUE)?;
        let mut out = Vec::new();
        for row in table.range((0, 0)..=(now_s, u64::MAX))?.take(limit) {
            out.push(row?.0.value());
        }
        Ok(out)
    }

    /// The send time of the earliest message still to send.
    pub fn next_due(&self) -> Result<Option<u64>, ApiStoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(DUE)?;
        let first = table.first()?;
        Ok(first.map(|(k, _)| k.value().0))
    }

    /// How many messages wait to be sent.
    pub fn pending_schedules(&self) -> Result<u64, ApiStoreError> {
        let read = self.db.begin_read()?;
        Ok(read.open_table(DUE)?.len()?)
    }

    /// Claims message `id` for sending: `None` if it is not waiting any more (canceled, sent)
    /// or already claimed. Every claim must end with [`ApiStore::end_fire`].
    pub fn begin_fire(&self, id: MessageId) -> Result<Option<ScheduledMessage>, ApiStoreError> {
        let mut firing = self.firing.lock().unwrap_or_else(|p| p.into_inner());
        if firing.contains(&id) {
            return Ok(None);
        }
        match self.read_schedule(id)? {
            Some(msg) if msg.state == ScheduleState::Scheduled => {
                firing.insert(id);
                Ok(Some(msg))
            }
            _ => Ok(None),
        }
    }

    /// Ends a claim. With a final state (sent, expired, failed) the message leaves the due
    /// index; without one it stays scheduled and is tried again later.
    pub fn end_fire(
        &self,
        id: MessageId,
        done: Option<(ScheduleState, Option<String>)>,
        now_s: u64,
    ) -> Result<(), ApiStoreError> {
        let result = (|| {
            let Some((state, error)) = done else {
                return Ok(());
            };
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(SCHEDULES)?;
                let current: Option<ScheduledMessage> = table.get(id)?.map(|v| decode(v.value())).transpose()?;
                if let Some(msg) = current {
                    let send_at = msg.send_at;
                    let next = ScheduledMessage { state, error, done_at: Some(now_s), ..msg };
                    table.insert(id, &encode(&next)?[..])?;
                    txn.open_table(DUE)?.remove((send_at, id))?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        self.firing.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        result
    }

    /// Drops rows of messages that are no longer waiting and were done before `before_s`;
    /// answers how many.
    pub fn prune_schedules(&self, before_s: u64) -> Result<usize, ApiStoreError> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(SCHEDULES)?;
            let mut old = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                let msg: ScheduledMessage = decode(v.value())?;
                if msg.state != ScheduleState::Scheduled && msg.done_at.unwrap_or(msg.send_at) < before_s {
                    old.push(k.value());
                }
            }
            for id in &old {
                table.remove(*id)?;
            }
            old.len()
        };
        txn.commit()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_dir::TempDir;

    fn msg(id: MessageId, app_id: AppId, send_at: u64) -> ScheduledMessage {
        ScheduledMessage {
            id,
            app_id,
            send_at,
            ttl_secs: 60,
            created_at: 1,
            state: ScheduleState::Scheduled,
            body: r#"{"target":{"all":true},"title":"t"}"#.into(),
            done_at: None,
            error: None,
        }
    }

    #[test]
    fn schedules_survive_reopen_and_come_due_in_order() {
        let dir = TempDir::new("sched");
        {
            let store = ApiStore::open(&dir.0).unwrap();
            store.schedule(&msg(3, 7, 300)).unwrap();
            store.schedule(&msg(1, 7, 100)).unwrap();
            store.schedule(&msg(2, 8, 200)).unwrap();
        }
        let store = ApiStore::open(&dir.0).unwrap();
        assert_eq!(store.next_due().unwrap(), Some(100));
        assert_eq!(store.due(99, 10).unwrap(), vec![]);
        assert_eq!(store.due(200, 10).unwrap(), vec![(100, 1), (200, 2)]);
        assert_eq!(store.due(1000, 1).unwrap(), vec![(100, 1)]);
        assert_eq!(store.pending_schedules().unwrap(), 3);
        assert_eq!(store.scheduled_message(7, 3).unwrap().unwrap().send_at, 300);
        assert_eq!(store.scheduled_message(8, 3).unwrap(), None, "another app's message is invisible");
    }

    #[test]
    fn cancel_and_fire_exclude_each_other() {
        let dir = TempDir::new("cancel");
        let store = ApiStore::open(&dir.0).unwrap();
        store.schedule(&msg(1, 7, 100)).unwrap();
        store.schedule(&msg(2, 7, 100)).unwrap();

        assert_eq!(store.cancel(8, 1, 50).unwrap(), CancelOutcome::Unknown);
        assert_eq!(store.cancel(7, 99, 50).unwrap(), CancelOutcome::Unknown);
        assert_eq!(store.cancel(7, 1, 50).unwrap(), CancelOutcome::Canceled);
        assert_eq!(store.cancel(7, 1, 51).unwrap(), CancelOutcome::Canceled, "cancel twice is fine");
        assert_eq!(store.begin_fire(1).unwrap(), None, "a canceled message never fires");
        assert_eq!(store.scheduled_message(7, 1).unwrap().unwrap().state, ScheduleState::Canceled);
        assert_eq!(store.due(1000, 10).unwrap(), vec![(100, 2)]);

        let claimed = store.begin_fire(2).unwrap().unwrap();
        assert_eq!(claimed.id, 2);
        assert_eq!(store.begin_fire(2).unwrap(), None, "claimed once");
        assert_eq!(store.cancel(7, 2, 100).unwrap(), CancelOutcome::Sending);
        // A failed attempt leaves it scheduled.
        store.end_fire(2, None, 100).unwrap();
        assert_eq!(store.due(1000, 10).unwrap(), vec![(100, 2)]);
        store.begin_fire(2).unwrap().unwrap();
        store.end_fire(2, Some((ScheduleState::Sent, None)), 101).unwrap();
        assert_eq!(store.due(1000, 10).unwrap(), vec![]);
        assert_eq!(store.next_due().unwrap(), None);
        assert_eq!(store.cancel(7, 2, 102).unwrap(), CancelOutcome::AlreadyDone(ScheduleState::Sent));
        let sent = store.scheduled_message(7, 2).unwrap().unwrap();
        assert_eq!((sent.state, sent.done_at), (ScheduleState::Sent, Some(101)));
    }

    #[test]
    fn prune_keeps_waiting_messages() {
        let dir = TempDir::new("prune");
        let store = ApiStore::open(&dir.0).unwrap();
        store.schedule(&msg(1, 7, 100)).unwrap();
        store.schedule(&msg(2, 7, 100)).unwrap();
        store.cancel(7, 1, 50).unwrap();
        assert_eq!(store.prune_schedules(40).unwrap(), 0);
        assert_eq!(store.prune_schedules(1000).unwrap(), 1);
        assert!(store.scheduled_message(7, 1).unwrap().is_none());
        assert!(store.scheduled_message(7, 2).unwrap().is_some());
    }
}
