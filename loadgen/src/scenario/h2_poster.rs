//! HTTP/2 connections (h2c: prior knowledge, no TLS) that POST one path of one node: the
//! load senders' client with `--http2-connections N`. Requests go to the N connections in
//! turn and each connection carries many streams at once, so one read and one write serve
//! many requests on both sides, where the HTTP/1.1 [`KeepAlivePoster`] pays a send and a
//! receive each. A connection is opened when a request first needs it and opened again
//! after it fails or the node closes it (GOAWAY).
//!
//! [`KeepAlivePoster`]: super::keepalive::KeepAlivePoster

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use tokio::net::TcpStream;

use super::keepalive::{Answer, PostError, MAX_ANSWER_BYTES};

/// One connection slot: empty until a request opens it, emptied when it fails.
type Slot = Rc<tokio::sync::Mutex<Option<SendRequest<Bytes>>>>;

/// `connections` HTTP/2 connections to `server` for `POST path` with a fixed
/// `Authorization`; cheap to clone.
#[derive(Clone)]
pub struct H2Poster {
    server: SocketAddr,
    uri: Uri,
    authorization: HeaderValue,
    slots: Rc<[Slot]>,
    next: Rc<Cell<usize>>,
}

impl H2Poster {
    /// `base` like `http://127.0.0.1:8080` (as `HttpClient::base` gives it).
    pub fn new(base: &str, path: &str, authorization: &str, connections: u32) -> Result<Self, String> {
        assert!(connections > 0, "an HTTP/2 poster needs at least one connection");
        let authority = base.strip_prefix("http://").ok_or_else(|| format!("not an http:// URL: {base}"))?;
        let server = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .map_err(|e| format!("{base}: {e}"))?
            .next()
            .ok_or_else(|| format!("{base}: no address"))?;
        let uri: Uri = format!("{base}{path}").parse().map_err(|e| format!("{base}{path}: {e}"))?;
        let authorization = HeaderValue::from_str(authorization).map_err(|e| format!("authorization: {e}"))?;
        let slots = (0..connections).map(|_| Slot::default()).collect();
        Ok(H2Poster { server, uri, authorization, slots, next: Rc::new(Cell::new(0)) })
    }

    /// POSTs `body` and reads the answer, all within `limit`.
    pub async fn post(&self, body: &[u8], limit: Duration) -> Result<Answer, PostError> {
        let slot = &self.slots[self.next.get() % self.slots.len()];
        self.next.set(self.next.get().wrapping_add(1));
        let exchange = async {
            let sender = self.sender(slot).await?;
            let result = self.exchange(sender, body).await;
            if let Err(PostError::Http2(e)) = &result {
                if e.is_io() || e.is_go_away() {
                    slot.lock().await.take();
                }
            }
            result
        };
        tokio::time::timeout(limit, exchange).await.map_err(|_| PostError::Timeout)?
    }

    /// The slot's connection, opened first if it has none.
    async fn sender(&self, slot: &Slot) -> Result<SendRequest<Bytes>, PostError> {
        let mut held = slot.lock().await;
        if let Some(sender) = held.as_ref() {
            return Ok(sender.clone());
        }
        let stream = TcpStream::connect(self.server).await.map_err(PostError::Connect)?;
        stream.set_nodelay(true).map_err(PostError::Connect)?;
        let (sender, connection) = h2::client::handshake(stream).await?;
        // It ends when the node closes it; the requests on it then fail and say why.
        tokio::task::spawn_local(async move {
            let _ = connection.await;
        });
        *held = Some(sender.clone());
        Ok(sender)
    }

    async fn exchange(&self, sender: SendRequest<Bytes>, body: &[u8]) -> Result<Answer, PostError> {
        let mut sender = sender.ready().await?;
        let mut request = Request::builder().method(Method::POST).uri(self.uri.clone());
        if let Some(headers) = request.headers_mut() {
            headers.insert(AUTHORIZATION, self.authorization.clone());
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = request.body(()).map_err(|e| PostError::BadAnswer(format!("request: {e}")))?;
        let (answer, mut stream) = sender.send_request(request, false)?;
        stream.send_data(Bytes::copy_from_slice(body), true)?;
        let answer = answer.await?;
        let status = answer.status().as_u16();
        let mut incoming = answer.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = incoming.data().await {
            let chunk = chunk?;
            // The node may send more only once this is given back.
            let _ = incoming.flow_control().release_capacity(chunk.len());
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(PostError::BadAnswer(format!("over {MAX_ANSWER_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 server on loopback that answers every request with the number of
    /// connections it accepted so far and the request's body length.
    async fn counting_h2_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::task::spawn_local(async move {
            let mut accepted = 0;
            while let Ok((stream, _)) = listener.accept().await {
                accepted += 1;
                let conn_no = accepted;
                tokio::task::spawn_local(async move {
                    let Ok(mut conn) = h2::server::handshake(stream).await else { return };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        tokio::task::spawn_local(async move {
                            let mut body = request.into_body();
                            let mut len = 0;
                            while let Some(Ok(chunk)) = body.data().await {
                                len += chunk.len();
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            let answer = hyper::Response::builder().status(200).body(()).unwrap();
                            let Ok(mut send) = respond.send_response(answer, false) else { return };
                            let _ = send.send_data(Bytes::from(format!("{conn_no}/{len}")), true);
                        });
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn requests_share_the_connections_in_turn() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let addr = counting_h2_server().await;
            let poster = H2Poster::new(&format!("http://{addr}"), "/v1/messages", "key=k", 2).unwrap();
            // Twenty at once: two connections carry them all.
            let posts: Vec<_> = (0..20)
                .map(|_| {
                    let poster = poster.clone();
                    tokio::task::spawn_local(async move { poster.post(b"{\"a\":1}", Duration::from_secs(5)).await })
                })
                .collect();
            let mut conns = std::collections::BTreeSet::new();
            for post in posts {
                let answer = post.await.unwrap().unwrap();
                assert_eq!(answer.status, 200);
                let text = String::from_utf8(answer.body).unwrap();
                let (conn, len) = text.split_once('/').unwrap();
                assert_eq!(len, "7");
                conns.insert(conn.to_string());
            }
            assert_eq!(conns.len(), 2, "{conns:?}");
        });
    }

    #[test]
    fn a_silent_server_is_an_error_in_time() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            // Never accepted: the kernel completes the handshake, nobody answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let poster = H2Poster::new(&format!("http://{}", silent.local_addr().unwrap()), "/", "k", 1).unwrap();
            let e = poster.post(b"{}", Duration::from_millis(200)).await.unwrap_err();
            assert!(matches!(e, PostError::Timeout), "{e}");
            assert!(H2Poster::new("https://127.0.0.1:1", "/", "k", 1).is_err());
        });
    }
}
