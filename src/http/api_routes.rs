//! The app-server features around a send (docs/protocol.md, "Sending"): `send_at`
//! scheduling, cancel and status of scheduled messages, `request_id` retries, templates,
//! batches and the broadcast rate limit. State lives in `data/api.redb`
//! ([`core_engine::api::ApiStore`]); the scheduler thread (`scheduler.rs`) sends what is due.
//!
//! A send body is a JSON object: `target`, the message fields, and the fields handled here
//! (`send_at`, `request_id`, `template`, `vars`), which are taken out before the rest goes
//! to [`SendRequest::from_map`] (strict: an unknown field is a 400 that names it).

use super::error::{json_response, HttpError};
use super::routes::{app_of, json_body, read_body};
use super::HttpState;
use bytes::Bytes;
use core_engine::api::{
    ApiStore, ApiStoreError, CancelOutcome, RememberedAnswer, ScheduleState, ScheduledMessage, Template, TemplateError,
    MAX_REQUEST_ID_BYTES, MAX_SCHEDULE_AHEAD_SECS,
};
use core_engine::ids::{message_id_text, parse_message_id, AppId, MessageId};
use core_engine::push::{PushRequest, SendRequest, Target, MAX_TTL_SECS};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HttpResult = Result<Response<Full<Bytes>>, HttpError>;

/// Most items in one `POST /v1/messages/batch`.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Batch items (and due scheduled messages) sent at once.
pub const SEND_CONCURRENCY: usize = 64;

/// What the API features share: the store, the broadcast limiter and the scheduler's bell.
pub struct ApiState {
    pub store: ApiStore,
    pub limiter: BroadcastLimiter,
    /// Rung when a message is scheduled, so the scheduler re-reads its next due time.
    pub wake: tokio::sync::Notify,
}

impl ApiState {
    /// Opens `data_dir/api.redb`.
    pub fn open(data_dir: &Path, broadcast_interval: Duration) -> anyhow::Result<ApiState> {
        Ok(ApiState {
            store: ApiStore::open(data_dir)?,
            limiter: BroadcastLimiter::new(broadcast_interval),
            wake: tokio::sync::Notify::new(),
        })
    }
}

/// At most one broadcast (`{"all":true}`) per app per interval; in memory (a restart
/// forgets it, which at worst allows one early broadcast).
pub struct BroadcastLimiter {
    interval: Duration,
    next_allowed: Mutex<HashMap<AppId, Instant>>,
}

impl BroadcastLimiter {
    pub fn new(interval: Duration) -> BroadcastLimiter {
        BroadcastLimiter { interval, next_allowed: Mutex::new(HashMap::new()) }
    }

    /// Takes the app's broadcast slot now, or answers how long until it is free.
    pub fn try_acquire(&self, app_id: AppId, now: Instant) -> Result<(), Duration> {
        if self.interval.is_zero() {
            return Ok(());
        }
        let mut next = self.next_allowed.lock().unwrap_or_else(|p| p.into_inner());
        match next.get(&app_id) {
            Some(&at) if at > now => Err(at - now),
            _ => {
                next.insert(app_id, now + self.interval);
                Ok(())
            }
        }
    }

    /// Reserves the app's next free slot (for the scheduler, which waits instead of
    /// failing); answers how long to wait for it.
    pub fn reserve(&self, app_id: AppId, now: Instant) -> Duration {
        if self.interval.is_zero() {
            return Duration::ZERO;
        }
        let mut next = self.next_allowed.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.get(&app_id).copied().filter(|&at| at > now).unwrap_or(now);
        next.insert(app_id, slot + self.interval);
        slot - now
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn now_s() -> u64 {
    now_ms() / 1000
}

fn store_failed(e: ApiStoreError) -> HttpError {
    match e {
        ApiStoreError::Template(TemplateError::TooMany) => {
            HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", e.to_string())
        }
        ApiStoreError::Template(t) => HttpError::bad_request(t.to_string()),
        other => {
            tracing::error!(error = %other, "api store failed");
            HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", "the store failed; nothing was changed")
        }
    }
}

/// Runs a store write (an fsync) off the HTTP thread.
async fn blocking<T: Send + 'static>(
    api: &Arc<ApiState>,
    f: impl FnOnce(&ApiState) -> Result<T, ApiStoreError> + Send + 'static,
) -> Result<T, HttpError> {
    let api = api.clone();
    match tokio::task::spawn_blocking(move || f(&api)).await {
        Ok(result) => result.map_err(store_failed),
        Err(e) => {
            tracing::error!(error = %e, "api store task failed");
            Err(HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", "the store task failed"))
        }
    }
}

/// Polls every future until all are done; answers their outputs in order.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future is done")).collect()
}

// ------------------------------------------------------------------------------------
// send_at
// ------------------------------------------------------------------------------------

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of an RFC 3339 date-time (`2026-05-01T08:00:00Z`, `...+08:00`, fractions
/// round up so a message is never sent early).
pub(super) fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut fraction = false;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        fraction = b[start..i].iter().any(|&c| c != b'0');
    }
    let offset = match *b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let t = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s.min(59) - offset + i64::from(fraction);
    u64::try_from(t).ok()
}

/// `send_at`: unix seconds (a number or a string of digits) or an RFC 3339 string.
fn parse_send_at(value: &Value) -> Result<u64, HttpError> {
    let bad = || {
        HttpError::bad_request(format!(
            "send_at must be unix seconds or an RFC 3339 date-time like \"2026-05-01T08:00:00Z\", got {value}"
        ))
    };
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(s), _) => Ok(s),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(f.ceil() as u64),
            _ => Err(bad()),
        },
        Value::String(s) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => s.parse().map_err(|_| bad()),
        Value::String(s) => parse_rfc3339(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

// ------------------------------------------------------------------------------------
// preparing and executing one send
// ------------------------------------------------------------------------------------

/// A checked send, ready to go now or to be scheduled.
enum Prepared {
    Now { request: SendRequest, callback: Option<String> },
    Later { send_at: u64, ttl_secs: u64, body: String, callback: Option<String> },
}

/// Templates looked up once per request.
#[derive(Default)]
struct TemplateCache(HashMap<String, Option<Template>>);

impl TemplateCache {
    fn get(&mut self, store: &ApiStore, app_id: AppId, id: &str) -> Result<Option<Template>, HttpError> {
        if let Some(t) = self.0.get(id) {
            return Ok(t.clone());
        }
        let t = store.template(app_id, id).map_err(store_failed)?;
        self.0.insert(id.to_owned(), t.clone());
        Ok(t)
    }
}

/// Fills `title`, `description` and `payload` from `template` with `vars` (fields the body
/// gives itself win), and takes `send_at` out: the rest must be a strict send body.
fn prepare(
    api: &ApiState,
    app_id: AppId,
    mut map: Map<String, Value>,
    templates: &mut TemplateCache,
    now: u64,
) -> Result<Prepared, HttpError> {
    let send_at = map.remove("send_at").map(|v| parse_send_at(&v)).transpose()?;
    let callback = match map.remove("callback") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => {
            super::callbacks::check_url(&url).map_err(HttpError::bad_request)?;
            Some(url)
        }
        Some(other) => return Err(HttpError::bad_request(format!("callback must be a URL string, got {other}"))),
    };
    if let Some(at) = send_at {
        if at > now + MAX_SCHEDULE_AHEAD_SECS {
            return Err(HttpError::bad_request(format!(
                "send_at is more than 7 days ahead ({at} > {})",
                now + MAX_SCHEDULE_AHEAD_SECS
            )));
        }
    }
    let vars = match map.remove("vars") {
        None | Some(Value::Null) => None,
        Some(Value::Object(vars)) => Some(vars),
        Some(other) => return Err(HttpError::bad_request(format!("vars must be an object, got {other}"))),
    };
    match map.remove("template") {
        None | Some(Value::Null) => {
            if vars.is_some() {
                return Err(HttpError::bad_request("vars goes with template"));
            }
        }
        Some(Value::String(id)) => {
            let template = templates
                .get(&api.store, app_id, &id)?
                .ok_or_else(|| HttpError::bad_request(format!("unknown template {id:?}")))?;
            let rendered = template
                .render(&vars.unwrap_or_default())
                .map_err(|e| HttpError::bad_request(format!("template {id}: {e}")))?;
            for (field, text) in
                [("title", rendered.title), ("description", rendered.description), ("payload", rendered.payload)]
            {
                if !text.is_empty() && !map.contains_key(field) {
                    map.insert(field.to_owned(), Value::String(text));
                }
            }
        }
        Some(other) => return Err(HttpError::bad_request(format!("template must be a template id, got {other}"))),
    }
    match send_at {
        Some(at) if at > now => {
            let body = serde_json::to_string(&map).map_err(|e| HttpError::bad_request(e.to_string()))?;
            let request = SendRequest::from_map(map).map_err(|e| HttpError::bad_request(e.to_string()))?;
            let ttl_secs = request.message.ttl.unwrap_or(MAX_TTL_SECS);
            // Check every message limit now, not when it is due.
            request.message.into_envelope(0, app_id, at).map_err(|e| HttpError::bad_request(e.to_string()))?;
            Ok(Prepared::Later { send_at: at, ttl_secs, body, callback })
        }
        _ => {
            let request = SendRequest::from_map(map).map_err(|e| HttpError::bad_request(e.to_string()))?;
            Ok(Prepared::Now { request, callback })
        }
    }
}

fn rate_limited(wait: Duration) -> HttpError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HttpError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("a broadcast to all is allowed once per interval per app; retry in {secs} s"),
    )
    .with_retry_after(secs.max(1))
}

/// Sends now (answer `{"id","targets","invalid"}`) or schedules (answer
/// `{"id","state":"scheduled","send_at"}`, once the schedule is durable).
async fn execute(state: &HttpState, app_id: AppId, prepared: Prepared) -> Result<Value, HttpError> {
    match prepared {
        Prepared::Now { request, callback } => {
            if request.target == Target::All {
                state.api.limiter.try_acquire(app_id, Instant::now()).map_err(rate_limited)?;
            }
            let id = state.node.new_message_id(callback.is_some());
            if let Some(url) = callback {
                // Registered first: a device may acknowledge before the answer is written.
                let ttl = request.message.ttl.unwrap_or(MAX_TTL_SECS);
                state.callbacks.register(id, url, now_s() + ttl);
            }
            let outcome = state.node.send_as(app_id, id, request).await?;
            Ok(serde_json::to_value(&outcome).unwrap_or_default())
        }
        Prepared::Later { send_at, ttl_secs, body, callback } => {
            let id = state.node.new_message_id(callback.is_some());
            if let Some(url) = callback {
                state.callbacks.register(id, url, send_at + ttl_secs);
            }
            let msg = ScheduledMessage {
                id,
                app_id,
                send_at,
                ttl_secs,
                created_at: now_s(),
                state: ScheduleState::Scheduled,
                body,
                done_at: None,
                error: None,
            };
            blocking(&state.api, move |api| api.store.schedule(&msg)).await?;
            state.api.wake.notify_one();
            tracing::debug!(app_id, id = %message_id_text(id), send_at, "message scheduled");
            Ok(json!({ "id": message_id_text(id), "state": "scheduled", "send_at": send_at }))
        }
    }
}

// ------------------------------------------------------------------------------------
// request_id
// ------------------------------------------------------------------------------------

fn object_of(body: &[u8]) -> Result<Map<String, Value>, HttpError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(HttpError::bad_request("the body must be a JSON object")),
        Err(e) => Err(HttpError::bad_request(format!("invalid JSON: {e}"))),
    }
}

fn take_request_id(map: &mut Map<String, Value>) -> Result<Option<String>, HttpError> {
    match map.remove("request_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES => Ok(Some(id)),
        Some(_) => {
            Err(HttpError::bad_request(format!("request_id must be a string of 1..={MAX_REQUEST_ID_BYTES} bytes")))
        }
    }
}

fn replay(answer: RememberedAnswer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    headers.insert("idempotent-replayed", hyper::header::HeaderValue::from_static("true"));
    response
}

/// Whether an answer is the request's final word (worth replaying to a retry): not an
/// outage, not a rate limit, not a conflict.
fn final_answer(status: StatusCode) -> bool {
    !status.is_server_error()
        && !matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::CONFLICT | StatusCode::UNAUTHORIZED)
}

/// Answers with `answer`, or, for a `request_id` answered within 10 minutes, with the first
/// answer (nothing is sent again).
async fn idempotent(
    state: &HttpState,
    app_id: AppId,
    request_id: Option<String>,
    answer: impl Future<Output = Result<Value, HttpError>>,
) -> HttpResult {
    let Some(request_id) = request_id else {
        return Ok(json_response(StatusCode::OK, &answer.await?));
    };
    let store = &state.api.store;
    if let Some(first) = store.remembered(app_id, &request_id, now_ms()).map_err(store_failed)? {
        return Ok(replay(first));
    }
    let Some(claim) = store.claim_request(app_id, &request_id) else {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "request_in_progress",
            format!("a request with request_id {request_id:?} is being answered; retry"),
        )
        .with_retry_after(1));
    };
    // The first request may have finished between the look-up and the claim.
    if let Some(first) = store.remembered(app_id, &request_id, now_ms()).map_err(store_failed)? {
        return Ok(replay(first));
    }
    let (status, body) = match answer.await {
        Ok(body) => (StatusCode::OK, body),
        Err(e) if !final_answer(e.status) => return Err(e),
        Err(e) => (e.status, e.body()),
    };
    let remembered = RememberedAnswer { status: status.as_u16(), body: body.to_string(), remembered_at: now_ms() };
    let rid = request_id.clone();
    if let Err(e) = blocking(&state.api, move |api| api.store.remember(app_id, &rid, &remembered)).await {
        tracing::warn!(app_id, request_id, error = e.message, "remembering a request id failed");
    }
    drop(claim);
    Ok(json_response(status, &body))
}

// ------------------------------------------------------------------------------------
// handlers
// ------------------------------------------------------------------------------------

/// `POST /v1/messages`.
pub(super) async fn send_message(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let app_id = app_of(state, &req)?;
    let body = read_body(state, req).await?;
    let mut map = object_of(&body)?;
    let request_id = take_request_id(&mut map)?;
    idempotent(state, app_id, request_id, async move {
        let prepared = prepare(&state.api, app_id, map, &mut TemplateCache::default(), now_s())?;
        execute(state, app_id, prepared).await
    })
    .await
}

/// An item's send body: the batch defaults with the item's fields on top (`vars` merge,
/// the item's winning).
fn merged(defaults: &Map<String, Value>, item: Map<String, Value>) -> Map<String, Value> {
    let mut out = defaults.clone();
    for (key, value) in item {
        match (key.as_str(), out.get_mut(&key), value) {
            ("vars", Some(Value::Object(base)), Value::Object(more)) => base.extend(more),
            (_, _, value) => {
                out.insert(key, value);
            }
        }
    }
    out
}

/// `POST /v1/messages/batch`: `{...defaults, "items":[{"target":{...}, ...}]}` ->
/// `200 {"results":[{"id","targets","invalid"} | {"error":{"code","message"}}]}`.
pub(super) async fn send_batch(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let app_id = app_of(state, &req)?;
    let body = read_body(state, req).await?;
    let mut map = object_of(&body)?;
    let request_id = take_request_id(&mut map)?;
    idempotent(state, app_id, request_id, async move {
        let items = match map.remove("items") {
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_BATCH_ITEMS => items,
            Some(Value::Array(items)) => {
                return Err(HttpError::bad_request(format!(
                    "items must hold 1..={MAX_BATCH_ITEMS} entries, got {}",
                    items.len()
                )))
            }
            _ => return Err(HttpError::bad_request("items must be an array of sends")),
        };
        // The defaults must be message fields (or target, send_at, template, vars).
        let mut fields = map.clone();
        for key in ["target", "send_at", "template", "vars"] {
            fields.remove(key);
        }
        PushRequest::from_map(fields).map_err(|e| HttpError::bad_request(format!("batch defaults: {e}")))?;
        let mut templates = TemplateCache::default();
        if let Some(Value::String(id)) = map.get("template") {
            if templates.get(&state.api.store, app_id, id)?.is_none() {
                return Err(HttpError::bad_request(format!("unknown template {id:?}")));
            }
        }
        let now = now_s();
        let prepared: Vec<Result<Prepared, HttpError>> = items
            .into_iter()
            .map(|item| match item {
                Value::Object(item) => prepare(&state.api, app_id, merged(&map, item), &mut templates, now),
                _ => Err(HttpError::bad_request("an item must be an object")),
            })
            .collect();
        let mut results = Vec::with_capacity(prepared.len());
        let mut prepared = prepared.into_iter();
        loop {
            let chunk: Vec<_> = prepared
                .by_ref()
                .take(SEND_CONCURRENCY)
                .map(|p| async move {
                    match p {
                        Ok(p) => execute(state, app_id, p).await,
                        Err(e) => Err(e),
                    }
                })
                .collect();
            if chunk.is_empty() {
                break;
            }
            for result in join_all(chunk).await {
                results.push(match result {
                    Ok(v) => v,
                    Err(e) => json!({ "error": e.body() }),
                });
            }
        }
        Ok(json!({ "results": results }))
    })
    .await
}

/// `DELETE /v1/messages/{id}`: cancels a scheduled message.
pub(super) async fn cancel_message(state: &HttpState, req: &Request<Incoming>, id_text: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    let Some(id) = parse_message_id(id_text) else {
        return Err(HttpError::not_found(format!("no message {id_text}")));
    };
    let outcome = blocking(&state.api, move |api| api.store.cancel(app_id, id, now_s())).await?;
    let too_late = |what: &str| {
        HttpError::new(
            StatusCode::CONFLICT,
            "already_sent",
            format!("message {id_text} is {what}; it cannot be canceled"),
        )
    };
    match outcome {
        CancelOutcome::Canceled => {
            tracing::info!(app_id, id = id_text, "scheduled message canceled");
            Ok(json_response(StatusCode::OK, &json!({ "id": id_text, "state": "canceled" })))
        }
        CancelOutcome::AlreadyDone(done) => Err(too_late(&format!("already {}", done.as_str()))),
        CancelOutcome::Sending => Err(too_late("being sent")),
        CancelOutcome::Unknown => match state.node.message_status(app_id, id).await? {
            Some(_) => Err(too_late("already sent")),
            None => Err(HttpError::not_found(format!("no message {id_text}"))),
        },
    }
}

/// `GET /v1/messages/{id}` for a message that was scheduled; `None` for any other (the
/// node's status answers those).
pub(super) async fn scheduled_status(
    state: &HttpState,
    app_id: AppId,
    id: MessageId,
    id_text: &str,
) -> Result<Option<Response<Full<Bytes>>>, HttpError> {
    let Some(msg) = state.api.store.scheduled_message(app_id, id).map_err(store_failed)? else {
        return Ok(None);
    };
    let mut answer = json!({
        "id": id_text,
        "state": msg.state.as_str(),
        "send_at": msg.send_at,
        "targets": 0,
        "delivered": 0,
        "clicked": 0,
    });
    if let Some(error) = &msg.error {
        answer["error"] = error.clone().into();
    }
    if msg.state == ScheduleState::Sent {
        let sent_at = msg.done_at.unwrap_or(msg.send_at);
        let mut expires_at = sent_at + msg.ttl_secs;
        if let Some(counts) = state.node.message_status(app_id, id).await? {
            answer["targets"] = counts.targets.into();
            answer["delivered"] = counts.delivered.into();
            answer["clicked"] = counts.clicked.into();
            expires_at = counts.expires_at;
        }
        answer["expires_at"] = expires_at.into();
        if expires_at <= now_s() {
            answer["state"] = "expired".into();
        }
    }
    Ok(Some(json_response(StatusCode::OK, &answer)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTemplate {
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    payload: String,
}

fn template_json(t: &Template) -> Value {
    json!({
        "template_id": t.template_id,
        "name": t.name,
        "title": t.title,
        "description": t.description,
        "payload": t.payload,
        "variables": t.variables(),
        "created_at": t.created_at,
    })
}

/// `POST /v1/templates` -> `201 {"template_id", ...}`.
pub(super) async fn create_template(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let app_id = app_of(state, &req)?;
    let body: CreateTemplate = json_body(state, req).await?;
    let template = blocking(&state.api, move |api| {
        api.store.create_template(app_id, &body.name, &body.title, &body.description, &body.payload, now_s())
    })
    .await?;
    tracing::info!(app_id, template_id = %template.template_id, "template created");
    Ok(json_response(StatusCode::CREATED, &template_json(&template)))
}

/// `GET /v1/templates/{id}`.
pub(super) async fn get_template(state: &HttpState, req: &Request<Incoming>, id: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    match state.api.store.template(app_id, id).map_err(store_failed)? {
        Some(t) => Ok(json_response(StatusCode::OK, &template_json(&t))),
        None => Err(HttpError::not_found(format!("no template {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_unix_seconds_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-05-01T08:00:00Z"), Some(1_777_622_400));
        assert_eq!(parse_rfc3339("2026-05-01T16:00:00+08:00"), Some(1_777_622_400));
        assert_eq!(parse_rfc3339("2026-05-01T07:30:00-00:30"), Some(1_777_622_400));
        assert_eq!(parse_rfc3339("2026-05-01T08:00:00.000Z"), Some(1_777_622_400));
        assert_eq!(parse_rfc3339("2026-05-01T08:00:00.25Z"), Some(1_777_622_401), "fractions round up");
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for bad in ["2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-05-01", "2026-05-01T08:00:00", "x"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_send_at(&json!(1_777_622_400)).unwrap(), 1_777_622_400);
        assert_eq!(parse_send_at(&json!(10.5)).unwrap(), 11);
        assert_eq!(parse_send_at(&json!("1777622400")).unwrap(), 1_777_622_400);
        assert!(parse_send_at(&json!(-1)).is_err());
        assert!(parse_send_at(&json!(true)).is_err());
    }

    #[test]
    fn broadcast_limiter_spaces_broadcasts() {
        let limiter = BroadcastLimiter::new(Duration::from_secs(3));
        let t0 = Instant::now();
        assert!(limiter.try_acquire(1, t0).is_ok());
        assert_eq!(limiter.try_acquire(1, t0 + Duration::from_secs(1)), Err(Duration::from_secs(2)));
        assert!(limiter.try_acquire(2, t0).is_ok(), "per app");
        assert!(limiter.try_acquire(1, t0 + Duration::from_secs(3)).is_ok());
        // The scheduler queues behind the last slot instead of failing.
        assert_eq!(limiter.reserve(1, t0 + Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(limiter.reserve(1, t0 + Duration::from_secs(4)), Duration::from_secs(5));
        let off = BroadcastLimiter::new(Duration::ZERO);
        assert!(off.try_acquire(1, t0).is_ok() && off.try_acquire(1, t0).is_ok());
        assert_eq!(rate_limited(Duration::from_millis(2100)).retry_after, Some(3));
    }

    #[test]
    fn batch_items_override_defaults_and_merge_vars() {
        let defaults = json!({"template": "t", "type": "notification", "vars": {"a": "1", "b": "2"}});
        let item = json!({"target": {"regids": ["r"]}, "vars": {"b": "3"}, "type": "passthrough"});
        let out = merged(defaults.as_object().unwrap(), item.as_object().unwrap().clone());
        assert_eq!(
            Value::Object(out),
            json!({"template": "t", "type": "passthrough", "target": {"regids": ["r"]}, "vars": {"a": "1", "b": "3"}})
        );
    }
}
