//! Delivery and click receipts posted to an app server's `callback` URL: the engine hands
//! the receipts of messages sent with a callback (their ids say so,
//! `core_engine::ids::wants_receipts`) over a bounded queue; this thread matches them to the messages that asked for
//! a callback and POSTs them in batches at most once a second per URL, retrying with
//! backoff a bounded number of times. Callbacks are kept in memory: a restart forgets them.

use core_engine::ids::{message_id_text, MessageId};
use core_engine::stats::Receipt;
use crossbeam_channel::Receiver;
use loadgen::http_client::HttpClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest callback URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Attempts per batch (first try plus retries, 1 s, 2 s, 4 s apart).
const ATTEMPTS: u32 = 4;
/// Receipts of a message not (yet) known as having a callback are kept this long: a fast
/// device can acknowledge before the send that registers the callback has returned.
const UNMATCHED_KEEP: Duration = Duration::from_secs(5);
/// Most receipts per POST.
const BATCH: usize = 1000;

/// Where each message's receipts go.
#[derive(Default)]
pub struct Callbacks {
    urls: Mutex<HashMap<MessageId, (String, u64)>>,
}

/// Checks a callback URL: `http://host[:port]/path`, at most [`MAX_URL_BYTES`].
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("callback is over {MAX_URL_BYTES} bytes"));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| format!("callback is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err("callback must be an http:// URL (https callbacks are not supported yet)".into());
    }
    Ok(())
}

impl Callbacks {
    /// Receipts of message `id` go to `url` until `expires_at` (unix s).
    pub fn register(&self, id: MessageId, url: String, expires_at: u64) {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (url, expires_at));
    }

    fn url_of(&self, id: MessageId) -> Option<String> {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).get(&id).map(|(u, _)| u.clone())
    }

    fn forget_expired(&self, now_s: u64) {
        self.urls.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (_, expires)| *expires > now_s);
    }
}

/// Starts the dispatcher thread.
pub fn start(receipts: Receiver<Receipt>, callbacks: Arc<Callbacks>) -> std::io::Result<()> {
    std::thread::Builder::new().name("callbacks".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "starting the callback runtime failed");
                return;
            }
        };
        runtime.block_on(dispatch(receipts, callbacks));
    })?;
    Ok(())
}

async fn dispatch(receipts: Receiver<Receipt>, callbacks: Arc<Callbacks>) {
    let mut unmatched: Vec<(Instant, Receipt)> = Vec::new();
    let mut last_prune = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut by_url: HashMap<String, Vec<Receipt>> = HashMap::new();
        let now = Instant::now();
        let fresh = receipts.try_iter().map(|r| (now, r));
        let waiting = std::mem::take(&mut unmatched);
        for (seen, receipt) in waiting.into_iter().chain(fresh) {
            match callbacks.url_of(receipt.id) {
                Some(url) => by_url.entry(url).or_default().push(receipt),
                None if seen.elapsed() < UNMATCHED_KEEP => unmatched.push((seen, receipt)),
                None => {}
            }
        }
        for (url, receipts) in by_url {
            for chunk in receipts.chunks(BATCH) {
                tokio::spawn(post(url.clone(), chunk.to_vec()));
            }
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            callbacks.forget_expired(core_engine::clock::now_unix_s());
            last_prune = Instant::now();
        }
    }
}

async fn post(url: String, receipts: Vec<Receipt>) {
    let Ok(uri) = url.parse::<hyper::Uri>() else { return };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else { return };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(client) = HttpClient::new(&format!("{scheme}://{authority}"), Duration::from_secs(5)) else { return };
    let body = serde_json::json!({
        "receipts": receipts
            .iter()
            .map(|r| serde_json::json!({
                "id": message_id_text(r.id),
                "regid": r.regid.to_string(),
                "type": if r.clicked { "clicked" } else { "delivered" },
                "at": r.at_s,
            }))
            .collect::<Vec<_>>()
    });
    for attempt in 0..ATTEMPTS {
        match client.post_json(path, None, &body).await {
            Ok(answer) if answer.is_success() => return,
            Ok(answer) => tracing::debug!(status = answer.status, attempt, "callback refused"),
            Err(e) => tracing::debug!(error = %e, attempt, "callback failed"),
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
    }
    tracing::warn!(receipts = receipts.len(), "callback gave up after {ATTEMPTS} attempts");
}
