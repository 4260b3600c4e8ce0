//! The routes of the HTTP API (see docs/protocol.md): parsing, authentication, and
//! the call into the node.

use super::error::{json_response, HttpError};
use super::HttpState;
use bytes::Bytes;
use core_engine::ids::{hash_eq, parse_message_id, secret_hash, AppId};
use core_engine::push::{PushRequest, MAX_REGIDS};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

type HttpResult = Result<Response<Full<Bytes>>, HttpError>;

/// Answers one request.
pub async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::POST, ["v1", "apps"]) => create_app(state, req).await,
        (&Method::POST, ["v1", "devices"]) => register_device(state, req).await,
        (&Method::POST, ["v1", "messages"]) => send_message(state, req).await,
        (&Method::GET, ["v1", "messages", id]) => message_status(state, &req, id).await,
        (
            _,
            ["healthz"]
            | ["v1", "apps"]
            | ["v1", "devices"]
            | ["v1", "messages"]
            | ["v1", "messages", _],
        ) => Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(HttpError::not_found(format!("no route {path}"))),
    };
    let response = result.unwrap_or_else(HttpError::into_response);
    tracing::debug!(%method, %path, status = response.status().as_u16(), "http");
    response
}

/// Reads a JSON body of at most `max_body_bytes`.
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<T, HttpError> {
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
    serde_json::from_slice(&body).map_err(|e| HttpError::bad_request(format!("invalid JSON: {e}")))
}

fn authorization<'a>(req: &'a Request<Incoming>, scheme: &str) -> Option<&'a str> {
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value.strip_prefix(scheme).map(str::trim)
}

/// The app whose secret authorizes the request.
fn app_of(state: &HttpState, req: &Request<Incoming>) -> Result<AppId, HttpError> {
    let secret = authorization(req, "key=")
        .ok_or_else(|| HttpError::unauthorized("missing `Authorization: key=<app secret>`"))?;
    state
        .node
        .apps()
        .authenticate_secret(secret)
        .ok_or_else(|| HttpError::unauthorized("unknown app secret"))
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
        return Err(HttpError::unauthorized(
            "missing or wrong `Authorization: Bearer <admin token>`",
        ));
    }
    let body: CreateApp = json_body(state, req).await?;
    if body.name.is_empty() || body.name.len() > 128 || body.package.len() > 256 {
        return Err(HttpError::bad_request(
            "name must be 1..=128 bytes and package at most 256",
        ));
    }
    let created = state
        .node
        .apps()
        .create(&body.name, &body.package)
        .map_err(core_engine::ApiError::from)?;
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
    let Some(app_id) = app_id.filter(|&id| {
        state
            .node
            .apps()
            .check_device_key(id, body.app_key.as_bytes())
    }) else {
        return Err(HttpError::unauthorized("unknown app id or wrong app key"));
    };
    let (regid, token) = state.node.register(app_id).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({ "regid": regid.to_string(), "token": token }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    regids: Vec<String>,
}

#[derive(Deserialize)]
struct SendMessage {
    target: Target,
    #[serde(flatten)]
    message: PushRequest,
}

async fn send_message(state: &HttpState, req: Request<Incoming>) -> HttpResult {
    let app_id = app_of(state, &req)?;
    let body: SendMessage = json_body(state, req).await?;
    let regids = &body.target.regids;
    if regids.is_empty() || regids.len() > MAX_REGIDS {
        return Err(HttpError::bad_request(format!(
            "target.regids must hold 1..={MAX_REGIDS} RegIDs, got {}",
            regids.len()
        )));
    }
    let outcome = state.node.push(app_id, body.message, regids).await?;
    Ok(json_response(StatusCode::OK, &outcome))
}

async fn message_status(state: &HttpState, req: &Request<Incoming>, id_text: &str) -> HttpResult {
    let app_id = app_of(state, req)?;
    let Some(id) = parse_message_id(id_text) else {
        return Err(HttpError::not_found(format!("no message {id_text}")));
    };
    match state.node.message_status(app_id, id).await? {
        Some((targets, delivered)) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "id": id_text, "targets": targets, "delivered": delivered }),
        )),
        None => Err(HttpError::not_found(format!("no message {id_text}"))),
    }
}
