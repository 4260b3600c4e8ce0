//! API errors and their wire form: an HTTP status and a JSON `{code, message}` body.

use bytes::Bytes;
use core_engine::ApiError;
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// An error answer.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 409 while a retry is in progress).
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError { status, code, message: message.into(), retry_after: None }
    }

    /// The same error with a `Retry-After: secs` header.
    pub fn with_retry_after(self, secs: u64) -> Self {
        HttpError { retry_after: Some(secs), ..self }
    }

    /// The JSON body: `{"code","message"}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message })
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status, &self.body());
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(e) => HttpError::bad_request(e.to_string()),
            ApiError::Unavailable => HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
            ApiError::UnknownDevice => HttpError::not_found("unknown RegID for this app"),
            ApiError::Quota(text) => HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", text),
            other => {
                tracing::error!(error = %other, "request failed in the store");
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the store failed; the message was not accepted",
                )
            }
        }
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let raw = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(raw)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}
