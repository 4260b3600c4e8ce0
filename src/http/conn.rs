//! One app-server connection: which HTTP version it speaks and serving it with hyper.
//!
//! HTTP/1.1 is the default. HTTP/2 is served to clients that open with its connection
//! preface (RFC 9113 §3.4: "prior knowledge", h2c on the plain listener) or that chose
//! "h2" by ALPN on the TLS listener. An app server that sends many pushes multiplexes
//! them on a few connections: one read and one write carry many requests, where
//! HTTP/1.1 pays a send and a receive each, on both sides.
//!
//! Every wait for the client is bounded by the idle timeout: the first bytes, HTTP/1.1's
//! request heads (hyper's header read timeout, see `start`), and an HTTP/2 connection that
//! reads nothing for a whole timeout period is shut down gracefully (GOAWAY; the streams
//! it already opened finish), and closed one period later if the client does not finish.

use super::HttpState;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The first bytes an HTTP/2 client sends on a connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks, as its first bytes tell.
#[derive(Debug, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
}

/// What the first bytes of a connection say: `None` while they are a strict prefix of the
/// HTTP/2 preface (more are needed to decide).
fn version_of(first: &[u8]) -> Option<Version> {
    if first.len() >= H2_PREFACE.len() {
        return Some(if first.starts_with(H2_PREFACE) { Version::Http2 } else { Version::Http1 });
    }
    if H2_PREFACE.starts_with(first) {
        None
    } else {
        Some(Version::Http1)
    }
}

/// Serves one accepted connection until it ends. `alpn_h2` is true when TLS negotiated
/// "h2"; otherwise the first bytes decide.
pub async fn serve<IO>(mut io: IO, alpn_h2: bool, state: Arc<HttpState>, idle_timeout: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = Vec::with_capacity(H2_PREFACE.len());
    let version = if alpn_h2 {
        Version::Http2
    } else {
        let sniffed = tokio::time::timeout(idle_timeout, async {
            loop {
                if let Some(version) = version_of(&first) {
                    return Ok(Some(version));
                }
                let mut byte_buf = [0u8; H2_PREFACE.len()];
                let want = H2_PREFACE.len() - first.len();
                let n = io.read(&mut byte_buf[..want]).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(None);
                }
                first.extend_from_slice(&byte_buf[..n]);
            }
        })
        .await;
        match sniffed {
            Ok(Ok(Some(version))) => version,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP connection ended"),
            Err(_) => return tracing::debug!("HTTP connection sent nothing in time"),
        }
    };
    let io = Replayed { first, at: 0, inner: io, reads: Arc::new(AtomicU64::new(0)) };
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        // Boxed: the routes' future is ~4 KiB, and hyper and tokio move a stream's future
        // several times before it first runs (a memcpy each); the box moves as a pointer.
        Box::pin(async move { Ok::<_, std::convert::Infallible>(super::routes::handle(&state, req).await) })
    });
    let ended = match version {
        Version::Http1 => {
            http1::Builder::new()
                .timer(TokioTimer::new())
                // Also the keep-alive idle timeout (see `start`).
                .header_read_timeout(idle_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(io), service)
                .await
        }
        Version::Http2 => {
            let reads = io.reads.clone();
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            // Shut down gracefully once a whole `idle_timeout` passes without a byte read.
            let mut seen = reads.load(Ordering::Relaxed);
            let start = tokio::time::Instant::now() + idle_timeout;
            let mut ticks = tokio::time::interval_at(start, idle_timeout);
            loop {
                tokio::select! {
                    ended = conn.as_mut() => break ended,
                    _ = ticks.tick() => {
                        let now = reads.load(Ordering::Relaxed);
                        if now == seen {
                            tracing::debug!("HTTP/2 connection idle: closing it");
                            conn.as_mut().graceful_shutdown();
                            // The goodbye waits for the client's PING answer: a dead client
                            // gets one more period, then the socket is dropped.
                            break tokio::time::timeout(idle_timeout, conn).await.unwrap_or(Ok(()));
                        }
                        seen = now;
                    }
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// A connection whose first bytes were read to choose the protocol: they are read again
/// first. It also counts the reads that return data (the HTTP/2 idle guard).
struct Replayed<IO> {
    first: Vec<u8>,
    at: usize,
    inner: IO,
    reads: Arc<AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replayed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.first.len() {
            let n = (this.first.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replayed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_choose_the_version() {
        assert_eq!(version_of(b""), None);
        assert_eq!(version_of(b"PRI * HTTP/2"), None);
        assert_eq!(version_of(H2_PREFACE), Some(Version::Http2));
        let mut longer = H2_PREFACE.to_vec();
        longer.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(version_of(&longer), Some(Version::Http2));
        assert_eq!(version_of(b"POST /v1/messages HTTP/1.1\r\n"), Some(Version::Http1));
        assert_eq!(version_of(b"G"), Some(Version::Http1));
        assert_eq!(version_of(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"), Some(Version::Http1));
    }
}
