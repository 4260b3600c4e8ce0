//! The HTTP frontend for app servers and the admin (HTTP/1.1, and HTTP/2 where the client
//! asks for it: `conn.rs`): hyper on a current-thread tokio runtime per HTTP thread, each
//! with its own SO_REUSEPORT listener; a new connection is served by the runtime with the
//! fewest open (`balance.rs`). Handlers only parse, authenticate and route to the shards
//! through [`NodeHandle`].

mod admin_routes;
mod api_routes;
mod auth;
mod balance;
mod callbacks;
mod conn;
mod error;
mod metrics;
mod routes;
mod scheduler;
mod stats_routes;

pub use api_routes::ApiState;
pub use auth::AuthState;
pub use callbacks::Callbacks;

use core_engine::NodeHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What every handler needs.
pub struct HttpState {
    pub node: NodeHandle,
    pub admin_token: String,
    pub max_body_bytes: usize,
    /// Scheduling, templates, request ids, the broadcast limit (`api_routes.rs`).
    pub api: Arc<ApiState>,
    /// `require_signatures` and the signature replay guard (`auth.rs`).
    pub auth: AuthState,
    /// Messages whose receipts go to a callback URL (`callbacks.rs`).
    pub callbacks: Arc<callbacks::Callbacks>,
}

/// Starts `threads` HTTP threads listening on `addr` and the scheduler thread, and returns
/// once every HTTP thread serves; they run until the process exits.
///
/// `idle_timeout` bounds every wait for a client: the TLS handshake, a request's headers
/// (the slowloris guard) and the idle time between two requests on a keep-alive
/// connection. hyper's header read timeout covers the last two: its timer starts whenever
/// the connection waits for the next request head (`poll_read_head` in hyper 1.x
/// `proto/h1/conn.rs`, re-armed when the connection goes idle) and stops only once a whole
/// head is parsed, so trickled bytes do not extend it.
pub fn start(
    addr: SocketAddr,
    https: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    threads: usize,
    idle_timeout: Duration,
    state: Arc<HttpState>,
) -> anyhow::Result<()> {
    assert!(!idle_timeout.is_zero(), "a zero idle timeout would cut every connection at once");
    scheduler::start(state.node.clone(), state.api.clone())?;
    callbacks::start(state.node.receipts(), state.callbacks.clone())?;
    let mut listeners = vec![(addr, None)];
    if let Some((https_addr, config)) = https {
        // HTTPS offers HTTP/2 by ALPN (the MQTT listener's config is left as it is).
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        listeners.push((https_addr, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))));
    }
    let runtimes = balance::Runtimes::new(threads * listeners.len());
    // The node is ready once every runtime serves: connections are balanced over started
    // runtimes only, so one accepted earlier would stay on the first thread up.
    let (up_tx, up_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for thread in 0..threads {
        for (l, (addr, tls)) in listeners.iter().enumerate() {
            let index = thread * listeners.len() + l;
            let runtimes = runtimes.clone();
            let listener = core_engine::sys::reuseport_listener(*addr, 1024)?;
            listener.set_nonblocking(true)?;
            let (state, tls, up) = (state.clone(), tls.clone(), up_tx.clone());
            let name = if tls.is_some() { format!("https-{thread}") } else { format!("http-{thread}") };
            std::thread::Builder::new().name(name).spawn(move || {
                // Work for the shards is queued as requests come and each shard is woken
                // once before the runtime sleeps, not once per request (inbox.rs).
                core_engine::shard::defer_wakes_on_this_thread();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park(core_engine::shard::flush_deferred_wakes)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = up.send(Err(e.to_string()));
                        return;
                    }
                };
                // Answers from the shards wake this runtime once per batch (wake_relay.rs).
                let relay = core_engine::shard::relay_wakes_on_this_thread();
                runtime.block_on(async move {
                    tokio::spawn(relay);
                    runtimes.started(index);
                    let _ = up.send(Ok(()));
                    serve(listener, runtimes, index, state, tls, idle_timeout).await
                });
            })?;
        }
    }
    for _ in 0..threads * listeners.len() {
        match up_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("starting an HTTP runtime failed: {e}"),
            Err(_) => anyhow::bail!("an HTTP thread did not start within 30 s"),
        }
    }
    Ok(())
}

/// Accepts on `listener` of runtime `here` of `runtimes`, and serves each connection on
/// the runtime with the fewest open.
async fn serve(
    listener: std::net::TcpListener,
    runtimes: Arc<balance::Runtimes>,
    here: usize,
    state: Arc<HttpState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    idle_timeout: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "HTTP listener failed");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        runtimes.serve(here, stream, move |stream| async move {
            match tls {
                None => conn::serve(stream, false, state, idle_timeout).await,
                Some(acceptor) => {
                    // The handshake shares the idle timeout: a silent client is cut off.
                    match tokio::time::timeout(idle_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            conn::serve(stream, h2, state, idle_timeout).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}
