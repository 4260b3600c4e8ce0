//! The HTTP/1.1 frontend for app servers and the admin: hyper on a current-thread tokio
//! runtime per HTTP thread, each with its own SO_REUSEPORT listener. Handlers only parse,
//! authenticate and route to the shards through [`NodeHandle`].

mod error;
mod routes;

use core_engine::NodeHandle;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Time a client has to send a request's headers (slowloris guard; needs the timer).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler needs.
pub struct HttpState {
    pub node: NodeHandle,
    pub admin_token: String,
    pub max_body_bytes: usize,
}

/// Starts `threads` HTTP threads listening on `addr`; they run until the process exits.
pub fn start(addr: SocketAddr, threads: usize, state: Arc<HttpState>) -> anyhow::Result<()> {
    for index in 0..threads {
        let listener = core_engine::sys::reuseport_listener(addr, 1024)?;
        listener.set_nonblocking(true)?;
        let state = state.clone();
        std::thread::Builder::new().name(format!("http-{index}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "starting the HTTP runtime failed");
                    return;
                }
            };
            runtime.block_on(serve(listener, state));
        })?;
    }
    Ok(())
}

async fn serve(listener: std::net::TcpListener, state: Arc<HttpState>) {
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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}
