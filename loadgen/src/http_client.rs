//! Pooled HTTP/1.1 JSON client for the node's app-server API (docs/protocol.md,
//! "App server side"), on hyper's legacy client. It owns building requests against a
//! base URL (`http://host:port`), the `Authorization` header, a per-request time
//! limit covering the whole exchange, a cap on answer size, and helpers for the three
//! calls the tools make: `POST /v1/apps`, `POST /v1/devices`, `POST /v1/messages`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Answers larger than this are an error.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("could not encode the request body: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{method} {url}: {reason}")]
    Request { method: Method, url: String, reason: String },
    #[error("{method} {url}: no answer within {limit:?}")]
    Timeout { method: Method, url: String, limit: Duration },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status { method: Method, url: String, status: u16, body: String },
}

impl HttpError {
    /// A short label suitable for counting failures by reason.
    pub fn reason_label(&self) -> String {
        match self {
            HttpError::BadUrl { .. } => "bad url".into(),
            HttpError::Encode(_) => "encode".into(),
            HttpError::Request { .. } => "request error".into(),
            HttpError::Timeout { .. } => "timeout".into(),
            HttpError::Status { status, .. } => format!("http {status}"),
        }
    }
}

/// An HTTP answer: status and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub method: Method,
    pub url: String,
    pub status: u16,
    pub body: Bytes,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy UTF-8), without trailing whitespace.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_string()
    }

    /// Fails with [`HttpError::Status`] (carrying the body) unless 2xx.
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(HttpError::Status { status: self.status, body: self.text(), method: self.method, url: self.url })
        }
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Client bound to one node's base URL. Cheap to clone (shares the pool).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

/// Checks that `url` is a plain `http://authority[/]` base URL and returns it
/// without a trailing slash.
pub fn normalize_base(url: &str) -> Result<String, HttpError> {
    let bad = |reason: &str| HttpError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported")),
        None => return Err(bad("expected http://HOST:PORT")),
    }
    if uri.authority().is_none() {
        return Err(bad("missing host"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl HttpClient {
    /// `base_url` like `http://127.0.0.1:8080`; `timeout` bounds each request.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, HttpError> {
        let base = normalize_base(base_url)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(HttpClient { client, base, timeout })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request; any status is returned as `Ok` (see [`Response::error_for_status`]).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Response, HttpError> {
        self.request_within(method, path, authorization, body, self.timeout).await
    }

    /// Like [`HttpClient::request`] with an explicit time limit.
    pub async fn request_within(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Response, HttpError> {
        let url = format!("{}{}", self.base, path);
        let fail = |reason: String| HttpError::Request { method: method.clone(), url: url.clone(), reason };
        let mut builder = Request::builder().method(method.clone()).uri(url.as_str());
        if let Some(auth) = authorization {
            builder = builder.header(AUTHORIZATION, auth);
        }
        let has_body = body.is_some();
        if has_body {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| fail(error_chain(&e)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, HttpError>((status, body))
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(Ok((status, body))) => Ok(Response { method, url, status, body }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HttpError::Timeout { method, url, limit }),
        }
    }

    /// POST a JSON value.
    pub async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        authorization: Option<&str>,
        body: &T,
    ) -> Result<Response, HttpError> {
        let bytes = serde_json::to_vec(body)?;
        self.request(Method::POST, path, authorization, Some(bytes)).await
    }

    /// `POST /v1/apps` with the admin token.
    pub async fn create_app(&self, admin_token: &str, name: &str, package: &str) -> Result<Response, HttpError> {
        let auth = format!("Bearer {admin_token}");
        self.post_json("/v1/apps", Some(&auth), &serde_json::json!({ "name": name, "package": package })).await
    }

    /// `POST /v1/devices` (registration usable with any MQTT version).
    pub async fn register_device(&self, app_id: &str, app_key: &str) -> Result<Response, HttpError> {
        self.post_json("/v1/devices", None, &serde_json::json!({ "app_id": app_id, "app_key": app_key })).await
    }

    /// `POST /v1/messages` with the app secret; `message` is the whole JSON body.
    pub async fn send_message(&self, secret: &str, message: &serde_json::Value) -> Result<Response, HttpError> {
        let auth = format!("key={secret}");
        self.post_json("/v1/messages", Some(&auth), message).await
    }
}

/// An error and its sources on one line (hyper's top-level errors say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(normalize_base("http://127.0.0.1:8080/").ok().as_deref(), Some("http://127.0.0.1:8080"));
        assert!(normalize_base("https://x:1").is_err());
        assert!(normalize_base("127.0.0.1:8080").is_err());
        assert!(normalize_base("not a url").is_err());
    }

    #[tokio::test]
    async fn unreachable_node_is_an_error_not_a_hang() {
        // Port 9 on loopback: nothing listens; must fail (refused) fast.
        let c = HttpClient::new("http://127.0.0.1:9", Duration::from_secs(5)).unwrap();
        let r = c.request(Method::GET, "/healthz", None, None).await;
        assert!(r.is_err());
    }
}
