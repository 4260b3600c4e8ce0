//! The routes of the HTTP API (see docs/protocol.md): parsing, authentication, and
//! the call into the node.

use super::api_routes;
use super::error::{json_response, HttpError};
use super::{admin_routes, auth};
use super::{stats_routes, HttpState};
use bytes::Bytes;
use core_engine::ids::{hash_eq, parse_message_id, secret_hash, AppId};
use core_engine::push::{valid_name, MAX_REGIDS};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

type HttpResult = Result<Response<Full<Bytes>>, HttpError>;

/// A path segment with %XX escapes decoded (aliases and topics may hold any UTF-8).
fn percent_decoded(segment: &str) -> Result<String, HttpError> {
    let bad = || HttpError::bad_request(format!("bad percent-encoding in {segment:?}"));
    let raw = segment.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Answers one request.
pub async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        (&Method::GET, ["metrics"]) => {
            let token = authorization(&req, "Bearer ").unwrap_or("");
            let admin = hash_eq(&secret_hash(token), &secret_hash(&state.admin_token));
            Ok(super::metrics::metrics(state, admin))
        }
        (&Method::GET, ["v1", "stats", "push"]) => stats_routes::stats(state, &req, stats_routes::Kind::Push).await,
        (&Method::GET, ["v1", "stats", "users"]) => stats_routes::stats(state, &req, stats_routes::Kind::Users).await,
        (&Method::POST, ["v1", "apps"]) => create_app(state, req).await,
        (&Method::GET, ["v1", "apps"]) => admin_routes::list_apps(state, &req).await,
        (&Method::POST, ["v1", "apps", app_id, "secret"]) => admin_routes::rotate_app_secret(state, &req, app_id).await,
        (&Method::POST, ["v1", "devices", regid, "token"]) => {
            admin_routes::rotate_device_token(state, req, regid).await
        }
        (&Method::POST, ["v1", "devices"]) => register_device(state, req).await,
        (&Method::POST, ["v1", "messages"]) => send_message(state, req).await,
        (&Method::POST, ["v1", "messages", "batch"]) => api_routes::send_batch(state, req).await,
        (&Method::GET, ["v1", "messages", id]) => message_status(state, &req, id).await,
        (&Method::DELETE, ["v1", "messages", id]) => api_routes::cancel_message(state, &req, id).await,
        (&Method::POST, ["v1", "templates"]) => api_routes::create_template(state, req).await,
        (&Method::GET, ["v1", "templates", id]) => api_routes::get_template(state, &req, id).await,
        (&Method::GET, ["v1", "aliases", alias]) => match percent_decoded(alias) {
            Ok(alias) => lookup_alias(state, &req, &alias).await,
            Err(e) => Err(e),
        },
        (&Method::POST, ["v1", "devices", regid, "aliases"]) => set_alias(state, req, regid).await,
        (&Method::PUT, ["v1", "devices", regid, "quiet"]) => set_quiet(state, req, regid).await,
        (&Method::DELETE, ["v1", "devices", regid, "quiet"]) => clear_quiet(state, &req, regid).await,
        (&Method::DELETE, ["v1", "devices", regid, "aliases", alias]) => match percent_decoded(alias) {
            Ok(alias) => unset_alias(state, &req, regid, &alias).await,
            Err(e) => Err(e),
        },
        (&Method::POST, ["v1", "topics", topic, action @ ("subscribe" | "unsubscribe")]) => {
            match percent_decoded(topic) {
                Ok(topic) => topic_members(state, req, &topic, *action == "subscribe").await,
                Err(e) => Err(e),
            }
        }
        (
            _,
            ["healthz"]
            | ["metrics"]
            | ["v1", "stats", "push" | "users"]
            | ["v1", "apps"]
            | ["v1", "apps", _, "secret"]
            | ["v1", "devices", _, "token"]
            | ["v1", "devices"]
            | ["v1", "messages"]
            | ["v1", "messages", _]
            | ["v1", "templates"]
            | ["v1", "templates", _]
            | ["v1", "aliases", _]
            | ["v1", "devices", _, "aliases"]
            | ["v1", "devices", _, "quiet"]
            | ["v1", "devices", _, "aliases", _]
            | ["v1", "topics", _, "subscribe" | "unsubscribe"],
        ) => Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(HttpError::not_found(format!("no route {path}"))),
    };
    let response = result.unwrap_or_else(HttpError::into_response);
    super::metrics::count_response(response.status());
    tracing::debug!(%method, %path, status = response.status().as_u16(), "http");
    response
}

/// Reads a body of at most `max_body_bytes`.
pub(super) async fn read_body(state: &HttpState, req: Request<Incoming>) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is over {} bytes", state.max_body_bytes),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(too_large());
    }
    // A signed app request is verified once its body is read (see auth.rs).
    let pending = auth::pending_signature(state, &req)?;
    let body = Limited::new(req.into_body(), state.max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                HttpError::bad_request(format!("reading the body failed: {e}"))
            }
        })?
        .to_bytes();
    if let Some(pending) = pending {
        pending.verify(state, &body)?;
    }
    Ok(body)
}

/// Reads a JSON body of at most `max_body_bytes`.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<T, HttpError> {
    let body = read_body(state, req).await?;
    serde_json::from_slice(&body).map_err(|e| HttpError::bad_request(format!("invalid JSON: {e}")))
}

fn authorization<'a>(req: &'a Request<Incoming>, scheme: &str) -> Option<&'a str> {
    let value = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix(scheme).map(str::trim)
}

/// The app whose secret authorizes the request; checks its signature if it has no body,
/// else `read_body` does (auth.rs).
pub(super) fn app_of(state: &HttpState, req: &Request<Incoming>) -> Result<AppId, HttpError> {
    auth::app_of(state, req)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApp {
    name: String,
    #[serde(default)]
    package: String,
}

async fn create_app(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let token = authorization(&req, "Bearer ").unwrap_or("");
    if !hash_eq(&secret_hash(token), &secret_hash(&state.admin_token)) {
        return Err(HttpError::unauthorized("missing or wrong `Authorization: Bearer <admin token>`"));
    }
    let body: CreateApp = json_body(state, req).await?;
    if body.name.is_empty() || body.name.len() > 128 || body.package.len() > 256 {
        return Err(HttpError::bad_request("name must be 1..=128 bytes and package at most 256"));
    }
    let created = state.node.apps().create(&body.name, &body.package).map_err(core_engine::ApiError::from)?;
    tracing::info!(app_id = %created.app_id, name = %body.name, "app created");
    Ok(json_response(StatusCode::CREATED, &created))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterDevice {
    app_id: String,
    app_key: String,
}

async fn register_device(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let body: RegisterDevice = json_body(state, req).await?;
    let app_id: Option<AppId> = body.app_id.parse().ok();
    let Some(app_id) = app_id.filter(|&id| state.node.apps().check_device_key(id, body.app_key.as_bytes())) else {
        return Err(HttpError::unauthorized("unknown app id or wrong app key"));
    };
    let (regid, token) = state.node.register(app_id).await?;
    Ok(json_response(StatusCode::CREATED, &serde_json::json!({ "regid": regid.to_string(), "token": token })))
}

/// `send_at`, `request_id`, templates and the broadcast limit live in `api_routes.rs`.
async fn send_message(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    api_routes::send_message(state, req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    alias: String,
}

const BAD_NAME: &str = "must be 1..=128 bytes without '/', '+', '#' or control characters";

async fn set_alias(state: &HttpState, req: Request<Incoming>, regid: &str) -> HttpResult {
    let app_id = app_of(state, &req)?;
    let body: AliasBody = json_body(state, req).await?;
    if !valid_name(&body.alias) {
        return Err(HttpError::bad_request(format!("alias {BAD_NAME}")));
    }
    state.node.set_alias(app_id, regid, body.alias, true).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "regid": regid, "ok": true })))
}

async fn set_quiet(state: &HttpState, req: Request<Incoming>, regid: &str) -> HttpResult {
    let app_id = app_of(state, &req)?;
    let body = read_body(state, req).await?;
    let hours = core_engine::push::QuietHours::from_json(&body).map_err(HttpError::bad_request)?;
    state.node.set_quiet(app_id, regid, Some(hours)).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "regid": regid, "ok": true })))
}

async fn clear_quiet(state: &HttpState, req: &Request<Incoming>, regid: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    state.node.set_quiet(app_id, regid, None).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "regid": regid, "ok": true })))
}

async fn unset_alias(state: &HttpState, req: &Request<Incoming>, regid: &str, alias: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    state.node.set_alias(app_id, regid, alias.to_owned(), false).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "regid": regid, "ok": true })))
}

async fn lookup_alias(state: &HttpState, req: &Request<Incoming>, alias: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    let regids = state.node.lookup_alias(app_id, alias).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "alias": alias, "regids": regids })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegIdsBody {
    regids: Vec<String>,
}

async fn topic_members(state: &HttpState, req: Request<Incoming>, topic: &str, join: bool) -> HttpResult {
    let app_id = app_of(state, &req)?;
    if !valid_name(topic) {
        return Err(HttpError::bad_request(format!("topic {BAD_NAME}")));
    }
    let body: RegIdsBody = json_body(state, req).await?;
    if body.regids.is_empty() || body.regids.len() > MAX_REGIDS {
        return Err(HttpError::bad_request(format!("regids must hold 1..={MAX_REGIDS} RegIDs")));
    }
    let (changed, invalid) = state.node.topic_members(app_id, topic, &body.regids, join).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "topic": topic, "changed": changed, "invalid": invalid })))
}

async fn message_status(state: &HttpState, req: &Request<Incoming>, id_text: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    let Some(id) = parse_message_id(id_text) else {
        return Err(HttpError::not_found(format!("no message {id_text}")));
    };
    if let Some(scheduled) = api_routes::scheduled_status(state, app_id, id, id_text).await? {
        return Ok(scheduled);
    }
    match state.node.message_status(app_id, id).await? {
        Some(counts) => {
            let now = core_engine::clock::now_unix_s();
            let state = if counts.expires_at <= now { "expired" } else { "sent" };
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "id": id_text,
                    "state": state,
                    "targets": counts.targets,
                    "delivered": counts.delivered,
                    "clicked": counts.clicked,
                    "expires_at": counts.expires_at,
                }),
            ))
        }
        None => Err(HttpError::not_found(format!("no message {id_text}"))),
    }
}
