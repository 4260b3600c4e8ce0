//! App-server authentication (docs/protocol.md, "Authentication"): the app secret in
//! `Authorization: key=<app secret>`, and the optional request signature
//!
//! ```text
//! X-Pushnode-Timestamp: <unix seconds>
//! X-Pushnode-Signature: hex(HMAC-SHA256(app secret, METHOD \n PATH_AND_QUERY \n TIMESTAMP \n hex(SHA-256(body))))
//! ```
//!
//! checked within +/- [`SIGNATURE_WINDOW_SECS`] of the node's clock, each signature accepted
//! once within that window (an in-memory, per-app bounded set with expiry).
//!
//! Where the check happens: the signature covers the body, so it can only be checked once
//! the body is read. [`app_of`] authenticates the secret and checks the signature of a
//! request without a body at once; for a request with a body it only checks the timestamp,
//! and `routes::read_body` (the one way handlers read a body) finishes the check after
//! reading, via [`pending_signature`] / [`PendingSignature::verify`]. So a handler that
//! authenticates with `app_of` and takes a body must read it with `read_body` (or
//! `json_body`) before acting; a signed GET, HEAD or DELETE must not carry a body.

use super::error::HttpError;
use super::HttpState;
use core_engine::ids::AppId;
use hmac::{Hmac, Mac};
use hyper::body::{Body, Incoming};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;

/// A signature's timestamp may be this far from the node's clock, either way.
pub const SIGNATURE_WINDOW_SECS: u64 = 300;
/// Signatures remembered per app within the window; beyond it a signed request is answered
/// 429 until older ones expire (about 870 signed requests a second, sustained, per app).
pub const MAX_SEEN_SIGNATURES_PER_APP: usize = 262_144;

pub const TIMESTAMP_HEADER: &str = "x-pushnode-timestamp";
pub const SIGNATURE_HEADER: &str = "x-pushnode-signature";

type HmacSha256 = Hmac<Sha256>;

/// Authentication settings and the replay guard, shared by the HTTP threads.
pub struct AuthState {
    /// Every app request must be signed (`require_signatures` in the config).
    pub require_signatures: bool,
    seen: Mutex<HashMap<AppId, SeenSignatures>>,
}

impl AuthState {
    pub fn new(require_signatures: bool) -> AuthState {
        AuthState { require_signatures, seen: Mutex::new(HashMap::new()) }
    }

    /// Records a verified signature; refuses one seen before within its window.
    fn remember(&self, app_id: AppId, signature: [u8; 32], timestamp: u64, now: u64) -> Result<(), HttpError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(app_id).or_default().insert(signature, timestamp + SIGNATURE_WINDOW_SECS + 1, now)
    }
}

/// One app's signatures still inside their window, with the time each may be forgotten.
#[derive(Default)]
struct SeenSignatures {
    set: HashSet<[u8; 32]>,
    by_expiry: BinaryHeap<Reverse<(u64, [u8; 32])>>,
}

impl SeenSignatures {
    fn insert(&mut self, signature: [u8; 32], forget_at: u64, now: u64) -> Result<(), HttpError> {
        while let Some(Reverse((at, old))) = self.by_expiry.peek().copied() {
            if at > now {
                break;
            }
            self.by_expiry.pop();
            self.set.remove(&old);
        }
        if self.set.contains(&signature) {
            return Err(unauthorized("replayed", "this signature was used already; sign each request anew"));
        }
        if self.set.len() >= MAX_SEEN_SIGNATURES_PER_APP {
            return Err(HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many signed requests within the signature window; retry",
            )
            .with_retry_after(1));
        }
        self.set.insert(signature);
        self.by_expiry.push(Reverse((forget_at, signature)));
        Ok(())
    }
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// `Authorization: <scheme><credential>`.
pub(super) fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix(scheme).map(str::trim)
}

/// The two signature headers, parsed (not yet checked).
struct Signed {
    /// As sent: it is part of the signed text.
    timestamp_text: String,
    timestamp: u64,
    signature: [u8; 32],
}

impl Signed {
    /// `None` when the request carries neither header.
    fn from_headers(headers: &HeaderMap) -> Result<Option<Signed>, HttpError> {
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or(""));
        let (timestamp_text, signature_hex) = match (text(TIMESTAMP_HEADER), text(SIGNATURE_HEADER)) {
            (None, None) => return Ok(None),
            (Some(t), Some(s)) => (t.trim(), s.trim()),
            _ => {
                return Err(unauthorized(
                    "bad_signature",
                    "a signed request needs both X-Pushnode-Timestamp and X-Pushnode-Signature",
                ))
            }
        };
        let timestamp = (!timestamp_text.is_empty() && timestamp_text.len() <= 19)
            .then_some(timestamp_text)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| unauthorized("bad_signature", "X-Pushnode-Timestamp must be unix seconds"))?;
        let signature = parse_hex32(signature_hex)
            .ok_or_else(|| unauthorized("bad_signature", "X-Pushnode-Signature must be 64 hex digits (HMAC-SHA256)"))?;
        Ok(Some(Signed { timestamp_text: timestamp_text.to_owned(), timestamp, signature }))
    }

    fn check_fresh(&self, now: u64) -> Result<(), HttpError> {
        if self.timestamp.abs_diff(now) > SIGNATURE_WINDOW_SECS {
            return Err(unauthorized(
                "stale_signature",
                format!(
                    "X-Pushnode-Timestamp {} is more than {SIGNATURE_WINDOW_SECS} s from the node's clock ({now})",
                    self.timestamp
                ),
            ));
        }
        Ok(())
    }

    /// Checks the HMAC (in constant time), then that it was not used before.
    fn verify(
        &self,
        auth: &AuthState,
        app_id: AppId,
        secret: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), HttpError> {
        let now = core_engine::clock::now_unix_s();
        self.check_fresh(now)?;
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
        mac.update(&string_to_sign(method, path_and_query, &self.timestamp_text, body));
        mac.verify_slice(&self.signature)
            .map_err(|_| unauthorized("bad_signature", "X-Pushnode-Signature does not match the request"))?;
        auth.remember(app_id, self.signature, self.timestamp, now)
    }
}

/// `METHOD \n PATH_AND_QUERY \n TIMESTAMP \n hex(SHA-256(body))`.
pub fn string_to_sign(method: &str, path_and_query: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let body_hash = core_engine::ids::hex(&Sha256::digest(body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{body_hash}").into_bytes()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let raw = text.as_bytes();
    if raw.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn path_and_query(req: &Request<Incoming>) -> &str {
    req.uri().path_and_query().map_or("/", |pq| pq.as_str())
}

/// Whether a body follows the headers (then the signature is checked once it is read).
fn body_follows(req: &Request<Incoming>) -> bool {
    !req.body().is_end_stream()
}

/// The app whose secret authorizes the request (`Authorization: key=<app secret>`); a
/// signature is checked here when there is no body, else by `read_body`.
pub(super) fn app_of(state: &HttpState, req: &Request<Incoming>) -> Result<AppId, HttpError> {
    let secret = authorization(req.headers(), "key=")
        .ok_or_else(|| HttpError::unauthorized("missing `Authorization: key=<app secret>`"))?;
    let app_id =
        state.node.apps().authenticate_secret(secret).ok_or_else(|| HttpError::unauthorized("unknown app secret"))?;
    let Some(signed) = Signed::from_headers(req.headers())? else {
        if state.auth.require_signatures {
            return Err(unauthorized(
                "signature_required",
                "this node requires signed requests (X-Pushnode-Timestamp and X-Pushnode-Signature)",
            ));
        }
        return Ok(app_id);
    };
    if !body_follows(req) {
        signed.verify(&state.auth, app_id, secret, req.method().as_str(), path_and_query(req), b"")?;
    } else if matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE) {
        return Err(HttpError::bad_request("a signed GET, HEAD or DELETE request must not carry a body"));
    } else {
        // Fail early on what does not need the body; read_body verifies the rest.
        signed.check_fresh(core_engine::clock::now_unix_s())?;
    }
    Ok(app_id)
}

/// A signature to check once the body is read.
pub(super) struct PendingSignature {
    app_id: AppId,
    secret: String,
    method: String,
    path_and_query: String,
    signed: Signed,
}

impl PendingSignature {
    pub(super) fn verify(&self, state: &HttpState, body: &[u8]) -> Result<(), HttpError> {
        self.signed.verify(&state.auth, self.app_id, &self.secret, &self.method, &self.path_and_query, body)
    }
}

/// For `read_body`, before it consumes the request: the signature its body completes, if
/// the request is signed by an app (requests of no app, or of an unknown secret, are left
/// to their handler).
pub(super) fn pending_signature(
    state: &HttpState,
    req: &Request<Incoming>,
) -> Result<Option<PendingSignature>, HttpError> {
    if !body_follows(req) {
        return Ok(None);
    }
    let Some(secret) = authorization(req.headers(), "key=") else {
        return Ok(None);
    };
    let Some(app_id) = state.node.apps().authenticate_secret(secret) else {
        return Ok(None);
    };
    let Some(signed) = Signed::from_headers(req.headers())? else {
        return Ok(None);
    };
    Ok(Some(PendingSignature {
        app_id,
        secret: secret.to_owned(),
        method: req.method().as_str().to_owned(),
        path_and_query: path_and_query(req).to_owned(),
        signed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, text: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(text);
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn string_to_sign_is_the_documented_one() {
        let text = string_to_sign("POST", "/v1/messages?x=1", "1700000000", b"");
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "POST\n/v1/messages?x=1\n1700000000\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn signatures_verify_once_within_the_window() {
        let auth = AuthState::new(false);
        let now = core_engine::clock::now_unix_s();
        let ts = now.to_string();
        let body = br#"{"x":1}"#;
        let sig = sign("s3cret", &string_to_sign("POST", "/v1/messages", &ts, body));
        let signed = Signed { timestamp_text: ts.clone(), timestamp: now, signature: sig };
        assert!(signed.verify(&auth, 7, "s3cret", "POST", "/v1/messages", body).is_ok());
        let again = signed.verify(&auth, 7, "s3cret", "POST", "/v1/messages", body).unwrap_err();
        assert_eq!(again.code, "replayed");
        let other_app = signed.verify(&auth, 8, "s3cret", "POST", "/v1/messages", body);
        assert!(other_app.is_ok(), "the replay guard is per app");
        let tampered = signed.verify(&auth, 7, "s3cret", "POST", "/v1/messages", br#"{"x":2}"#).unwrap_err();
        assert_eq!(tampered.code, "bad_signature");
        let wrong_key = signed.verify(&auth, 9, "other", "POST", "/v1/messages", body).unwrap_err();
        assert_eq!(wrong_key.code, "bad_signature");
        let old = Signed { timestamp_text: (now - 301).to_string(), timestamp: now - 301, signature: sig };
        assert_eq!(old.check_fresh(now).unwrap_err().code, "stale_signature");
        let ahead = Signed { timestamp_text: (now + 301).to_string(), timestamp: now + 301, signature: sig };
        assert_eq!(ahead.check_fresh(now).unwrap_err().code, "stale_signature");
        assert!(Signed { timestamp_text: String::new(), timestamp: now - 300, signature: sig }
            .check_fresh(now)
            .is_ok());
    }

    #[test]
    fn seen_signatures_expire_and_stay_bounded() {
        let mut seen = SeenSignatures::default();
        assert!(seen.insert([1; 32], 100, 50).is_ok());
        assert_eq!(seen.insert([1; 32], 100, 99).unwrap_err().code, "replayed");
        assert!(seen.insert([1; 32], 200, 100).is_ok(), "forgotten once out of its window");
        assert_eq!(seen.set.len(), 1);
        for i in 0..MAX_SEEN_SIGNATURES_PER_APP - 1 {
            let mut sig = [0u8; 32];
            sig[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seen.insert(sig, 500, 100).unwrap();
        }
        assert_eq!(seen.insert([9; 32], 500, 100).unwrap_err().code, "rate_limited");
        assert!(seen.insert([9; 32], 900, 500).is_ok(), "room again once they expire");
        assert_eq!(seen.set.len(), 1);
    }

    #[test]
    fn headers_parse() {
        let mut h = HeaderMap::new();
        assert!(Signed::from_headers(&h).unwrap().is_none());
        h.insert(TIMESTAMP_HEADER, "1700000000".parse().unwrap());
        assert_eq!(Signed::from_headers(&h).err().unwrap().code, "bad_signature");
        h.insert(SIGNATURE_HEADER, "ab".repeat(32).parse().unwrap());
        let s = Signed::from_headers(&h).unwrap().unwrap();
        assert_eq!((s.timestamp, s.signature), (1_700_000_000, [0xab; 32]));
        h.insert(SIGNATURE_HEADER, "AB".repeat(32).parse().unwrap());
        assert!(Signed::from_headers(&h).is_ok(), "upper-case hex too");
        h.insert(SIGNATURE_HEADER, "zz".repeat(32).parse().unwrap());
        assert_eq!(Signed::from_headers(&h).err().unwrap().code, "bad_signature");
        h.insert(SIGNATURE_HEADER, "ab".repeat(32).parse().unwrap());
        h.insert(TIMESTAMP_HEADER, "-5".parse().unwrap());
        assert_eq!(Signed::from_headers(&h).err().unwrap().code, "bad_signature");
    }
}
