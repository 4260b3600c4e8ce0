//! The admin API (`Authorization: Bearer <admin token>`) and credential rotation
//! (docs/protocol.md, "Authentication"):
//!
//! - `GET /v1/apps` -> `200 {"apps":[{"app_id","name","package"}]}` (never a secret);
//! - `POST /v1/apps/{app_id}/secret` -> `200 {"app_id","app_secret"}`: a new app secret, the
//!   old one refused from then on;
//! - `POST /v1/devices/{regid}/token` with the app's secret -> `200 {"regid","token"}`: a new
//!   device token; the old one is refused and a connection using it is closed.
//!
//! Secrets and tokens appear only in these answers, never in the log.

use super::auth::authorization;
use super::error::{json_response, HttpError};
use super::routes::{app_of, read_body};
use super::HttpState;
use bytes::Bytes;
use core_engine::ids::{hash_eq, secret_hash, AppId};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

type HttpResult = Result<Response<Full<Bytes>>, HttpError>;

/// Refuses a request without the admin token (compared as hashes, in constant time).
pub(super) fn require_admin(state: &HttpState, req: &Request<Incoming>) -> Result<(), HttpError> {
    let token = authorization(req.headers(), "Bearer ").unwrap_or("");
    if hash_eq(&secret_hash(token), &secret_hash(&state.admin_token)) {
        Ok(())
    } else {
        Err(HttpError::unauthorized("missing or wrong `Authorization: Bearer <admin token>`"))
    }
}

/// `GET /v1/apps`.
pub(super) async fn list_apps(state: &HttpState, req: &Request<Incoming>) -> HttpResult {
    require_admin(state, req)?;
    let apps: Vec<_> = state
        .node
        .apps()
        .list()
        .into_iter()
        .map(|(app_id, name, package)| json!({ "app_id": app_id.to_string(), "name": name, "package": package }))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "apps": apps })))
}

/// `POST /v1/apps/{app_id}/secret`.
pub(super) async fn rotate_app_secret(state: &HttpState, req: &Request<Incoming>, app_id_text: &str) -> HttpResult {
    require_admin(state, req)?;
    let not_found = || HttpError::not_found(format!("no app {app_id_text}"));
    let app_id: AppId = app_id_text.parse().map_err(|_| not_found())?;
    match state.node.apps().rotate_secret(app_id).map_err(core_engine::ApiError::from)? {
        Some(app_secret) => {
            tracing::info!(app_id, "app secret rotated");
            Ok(json_response(StatusCode::OK, &json!({ "app_id": app_id.to_string(), "app_secret": app_secret })))
        }
        None => Err(not_found()),
    }
}

/// `POST /v1/devices/{regid}/token` (app secret; the body, if any, is read so that a
/// signature over it is checked, and otherwise ignored).
pub(super) async fn rotate_device_token(state: &HttpState, req: Request<Incoming>, regid: &str) -> HttpResult {
    let app_id = app_of(state, &req)?;
    read_body(state, req).await?;
    let token = state.node.rotate_device_token(app_id, regid).await?;
    tracing::info!(app_id, regid, "device token rotated");
    Ok(json_response(StatusCode::OK, &json!({ "regid": regid, "token": token })))
}
