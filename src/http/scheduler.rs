//! The scheduler: one thread with a current-thread tokio runtime that sends scheduled
//! messages when they are due (under the id handed out when they were scheduled) and
//! forgets old request ids and finished schedules.
//!
//! It sleeps until the next due time (at most a second; a new schedule wakes it), sends at
//! most [`DUE_PER_ROUND`] due messages per round, [`SEND_CONCURRENCY`] at a time. A message
//! the node cannot take (shutting down, store failure) stays scheduled and is tried again
//! [`RETRY_SECS`] later; a message whose TTL ran out while the node was down expires unsent.

use super::api_routes::{join_all, now_ms, now_s, ApiState, SEND_CONCURRENCY};
use core_engine::api::{ScheduleState, REQUEST_ID_WINDOW_MS};
use core_engine::ids::{message_id_text, MessageId};
use core_engine::push::{SendRequest, Target};
use core_engine::{ApiError, NodeHandle};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most due messages taken per round.
const DUE_PER_ROUND: usize = 256;
/// Seconds before a message the node could not take is tried again.
const RETRY_SECS: u64 = 5;
/// Longest sleep between rounds.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often old request ids and finished schedules are dropped.
const PRUNE_EVERY_SECS: u64 = 60;
/// Finished schedules are kept this long for `GET /v1/messages/{id}`: the longest TTL.
const KEEP_FINISHED_SECS: u64 = core_engine::push::MAX_TTL_SECS;

/// Starts the scheduler thread; it runs until the process exits.
pub fn start(node: NodeHandle, api: Arc<ApiState>) -> std::io::Result<()> {
    std::thread::Builder::new().name("scheduler".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "starting the scheduler runtime failed");
                return;
            }
        };
        runtime.block_on(run(node, api));
    })?;
    Ok(())
}

async fn run(node: NodeHandle, api: Arc<ApiState>) {
    match api.store.pending_schedules() {
        Ok(n) if n > 0 => tracing::info!(scheduled = n, "scheduled messages waiting"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "reading scheduled messages failed"),
    }
    let mut retry_at: HashMap<MessageId, u64> = HashMap::new();
    let mut next_prune = 0;
    loop {
        let now = now_s();
        if now >= next_prune {
            prune(&api, now);
            next_prune = now + PRUNE_EVERY_SECS;
        }
        let due = match api.store.due(now, DUE_PER_ROUND) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading due messages failed");
                Vec::new()
            }
        };
        let full_round = due.len() == DUE_PER_ROUND;
        let ready: Vec<MessageId> =
            due.into_iter().map(|(_, id)| id).filter(|id| retry_at.get(id).is_none_or(|&t| t <= now)).collect();
        let fired_any = !ready.is_empty();
        for chunk in ready.chunks(SEND_CONCURRENCY) {
            let done = join_all(chunk.iter().map(|&id| fire(&node, &api, id)).collect()).await;
            for (&id, finished) in chunk.iter().zip(done) {
                if finished {
                    retry_at.remove(&id);
                } else {
                    retry_at.insert(id, now_s() + RETRY_SECS);
                }
            }
        }
        if fired_any && full_round {
            continue;
        }
        let wait = match api.store.next_due() {
            Ok(Some(at)) => Duration::from_millis((at * 1000).saturating_sub(now_ms())).min(MAX_SLEEP),
            _ => MAX_SLEEP,
        };
        // A due message waiting for its retry must not spin the loop.
        let wait = if wait.is_zero() { MAX_SLEEP } else { wait };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = api.wake.notified() => {}
        }
    }
}

fn prune(api: &ApiState, now: u64) {
    match api.store.forget_requests_before(now_ms().saturating_sub(REQUEST_ID_WINDOW_MS)) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(forgotten = n, "old request ids dropped"),
        Err(e) => tracing::warn!(error = %e, "dropping old request ids failed"),
    }
    match api.store.prune_schedules(now.saturating_sub(KEEP_FINISHED_SECS)) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(dropped = n, "finished schedules dropped"),
        Err(e) => tracing::warn!(error = %e, "dropping finished schedules failed"),
    }
}

/// Sends one due message; false if it must be tried again later.
async fn fire(node: &NodeHandle, api: &ApiState, id: MessageId) -> bool {
    let msg = match api.store.begin_fire(id) {
        Ok(Some(msg)) => msg,
        Ok(None) => return true,
        Err(e) => {
            tracing::error!(id = %message_id_text(id), error = %e, "reading a scheduled message failed");
            return false;
        }
    };
    let id_text = message_id_text(id);
    let done = if now_s() >= msg.send_at.saturating_add(msg.ttl_secs) {
        tracing::warn!(id = %id_text, send_at = msg.send_at, "scheduled message expired before it could be sent");
        Some((ScheduleState::Expired, None))
    } else {
        match SendRequest::from_json(msg.body.as_bytes()) {
            Err(e) => Some((ScheduleState::Failed, Some(e.to_string()))),
            Ok(request) => {
                if request.target == Target::All {
                    let wait = api.limiter.reserve(msg.app_id, Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                match node.send_as(msg.app_id, id, request).await {
                    Ok(outcome) => {
                        tracing::info!(app_id = msg.app_id, id = %id_text, targets = outcome.targets, "scheduled message sent");
                        Some((ScheduleState::Sent, None))
                    }
                    Err(ApiError::Invalid(e)) => {
                        tracing::warn!(id = %id_text, error = %e, "scheduled message refused at send time");
                        Some((ScheduleState::Failed, Some(e.to_string())))
                    }
                    Err(e) => {
                        tracing::warn!(id = %id_text, error = %e, "scheduled message not sent; will retry");
                        None
                    }
                }
            }
        }
    };
    let finished = done.is_some();
    if let Err(e) = api.store.end_fire(id, done, now_s()) {
        tracing::error!(id = %id_text, error = %e, "recording a sent scheduled message failed");
    }
    finished
}
