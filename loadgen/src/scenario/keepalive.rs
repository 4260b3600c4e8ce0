//! Keep-alive HTTP/1.1 connections that POST one path of one node: the load senders'
//! client. hyper's pooled client cost a worker ~20 us a request under load (pool checkout,
//! a task and channels per exchange, header maps), as much as the node's own HTTP work,
//! on the same cores. Here a request is its head written once (built at start) plus the
//! body, in one `write`, and the answer is parsed with `httparse` in a buffer the
//! connection keeps. Connections are opened as requests need them and reused while the
//! node keeps them open.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer accepted (head and body).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// A connection idle longer than this is closed rather than reused: the node closes idle
/// connections after `http_idle_timeout_secs` (10 by default), and a request written on a
/// connection it is closing would fail for nothing.
const REUSE_WITHIN: Duration = Duration::from_secs(5);

/// Why an exchange failed; `label` is how the load tools count it.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node closed the connection before answering")]
    Closed,
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("bad answer: {0}")]
    BadAnswer(String),
    #[error("no answer in time")]
    Timeout,
}

impl PostError {
    /// A short reason for failure counts (the labels the hyper client used).
    pub fn label(&self) -> String {
        match self {
            PostError::Timeout => "timeout".into(),
            PostError::BadAnswer(_) => "bad answer".into(),
            PostError::Connect(_) | PostError::Io(_) | PostError::Closed | PostError::Http2(_) => {
                "request error".into()
            }
        }
    }
}

/// One answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One connection, the bytes it read past the last answer, and since when it is idle.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    idle_since: Instant,
}

/// Connections to `server` for `POST path` with a fixed `Authorization`; cheap to clone.
#[derive(Clone)]
pub struct KeepAlivePoster {
    server: SocketAddr,
    head: Rc<str>,
    idle: Rc<RefCell<VecDeque<Conn>>>,
}

impl KeepAlivePoster {
    /// `base` like `http://127.0.0.1:8080` (as `HttpClient::base` gives it).
    pub fn new(base: &str, path: &str, authorization: &str) -> Result<Self, String> {
        let authority = base.strip_prefix("http://").ok_or_else(|| format!("not an http:// URL: {base}"))?;
        let server = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .map_err(|e| format!("{base}: {e}"))?
            .next()
            .ok_or_else(|| format!("{base}: no address"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: {authorization}\r\n\
             content-type: application/json\r\ncontent-length: "
        );
        Ok(KeepAlivePoster { server, head: head.into(), idle: Rc::new(RefCell::new(VecDeque::new())) })
    }

    /// POSTs `body` and reads the answer, all within `limit`.
    pub async fn post(&self, body: &[u8], limit: Duration) -> Result<Answer, PostError> {
        let taken = {
            // Returned connections queue at the back, so the front is the longest idle.
            let mut idle = self.idle.borrow_mut();
            while idle.front().is_some_and(|conn| conn.idle_since.elapsed() >= REUSE_WITHIN) {
                idle.pop_front();
            }
            idle.pop_back()
        };
        let exchange = async {
            let mut conn = match taken {
                Some(conn) => conn,
                None => {
                    let stream = TcpStream::connect(self.server).await.map_err(PostError::Connect)?;
                    stream.set_nodelay(true).map_err(PostError::Connect)?;
                    Conn { stream, buf: Vec::with_capacity(4096), idle_since: Instant::now() }
                }
            };
            let mut request = Vec::with_capacity(self.head.len() + 16 + body.len());
            request.extend_from_slice(self.head.as_bytes());
            request.extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
            request.extend_from_slice(body);
            conn.stream.write_all(&request).await?;
            let (answer, keep) = read_answer(&mut conn).await?;
            if keep {
                conn.idle_since = Instant::now();
                self.idle.borrow_mut().push_back(conn);
            }
            Ok(answer)
        };
        tokio::time::timeout(limit, exchange).await.map_err(|_| PostError::Timeout)?
    }
}

/// Reads one whole answer from `conn`; also says whether the connection stays open.
async fn read_answer(conn: &mut Conn) -> Result<(Answer, bool), PostError> {
    loop {
        if let Some((head_len, status, body_len, keep)) = parse_head(&conn.buf)? {
            let end = head_len + body_len;
            if conn.buf.len() >= end {
                let body = conn.buf[head_len..end].to_vec();
                conn.buf.drain(..end);
                return Ok((Answer { status, body }, keep && conn.buf.is_empty()));
            }
        }
        if conn.buf.len() >= MAX_ANSWER_BYTES {
            return Err(PostError::BadAnswer(format!("over {MAX_ANSWER_BYTES} bytes")));
        }
        conn.buf.reserve(4096);
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(PostError::Closed);
        }
    }
}

/// The answer's head, if all of it is in `buf`: its length, status, body length and
/// whether the node keeps the connection open.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, usize, bool)>, PostError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(PostError::BadAnswer(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let mut body_len = None;
    let mut keep = response.version == Some(1);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            body_len = Some(n.ok_or_else(|| PostError::BadAnswer("bad content-length".into()))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(PostError::BadAnswer("chunked answers are not read".into()));
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body_len = body_len.ok_or_else(|| PostError::BadAnswer("no content-length".into()))?;
    Ok(Some((head_len, status, body_len, keep)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_whole_or_not_at_all() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{\"id\":1}\n";
        assert!(parse_head(&answer[..20]).unwrap().is_none());
        let (head_len, status, body_len, keep) = parse_head(answer).unwrap().unwrap();
        assert_eq!((status, body_len, keep), (200, 9, true));
        assert_eq!(&answer[head_len..], b"{\"id\":1}\n");
        let closing = b"HTTP/1.1 503 x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_head(closing).unwrap().map(|h| (h.1, h.3)), Some((503, false)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    /// A server on loopback that answers each request on a connection with the number of
    /// connections it has accepted so far, and closes after `close_after` answers.
    async fn counting_server(close_after: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::task::spawn_local(async move {
            let mut accepted = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted += 1;
                let conn = accepted;
                tokio::task::spawn_local(async move {
                    let mut buf = Vec::new();
                    for answered in 1..=close_after {
                        // Each test request is one small write: read until its body's end.
                        while !buf.ends_with(b"{}") {
                            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        buf.clear();
                        let close = if answered == close_after { "connection: close\r\n" } else { "" };
                        let body = conn.to_string();
                        let answer = format!("HTTP/1.1 200 OK\r\n{close}content-length: {}\r\n\r\n{body}", body.len());
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn connections_are_reused_until_the_server_closes_them() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let addr = counting_server(2).await;
            let poster = KeepAlivePoster::new(&format!("http://{addr}"), "/v1/messages", "key=k").unwrap();
            let mut served_by = Vec::new();
            for _ in 0..5 {
                let answer = poster.post(b"{}", Duration::from_secs(5)).await.unwrap();
                assert_eq!(answer.status, 200);
                served_by.push(String::from_utf8(answer.body).unwrap());
            }
            // Two answers a connection, the second saying close: a new one every two.
            assert_eq!(served_by, ["1", "1", "2", "2", "3"]);
        });
    }

    #[test]
    fn silent_and_closing_servers_are_errors_in_time() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            // Never accepted: the kernel completes the handshake, nobody answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let poster = KeepAlivePoster::new(&format!("http://{}", silent.local_addr().unwrap()), "/", "k").unwrap();
            let e = poster.post(b"{}", Duration::from_millis(200)).await.unwrap_err();
            assert!(matches!(e, PostError::Timeout), "{e}");
            // Accepted and closed at once, without an answer.
            let closing = counting_server(0).await;
            let poster = KeepAlivePoster::new(&format!("http://{closing}"), "/", "k").unwrap();
            let e = poster.post(b"{}", Duration::from_secs(5)).await.unwrap_err();
            assert_eq!(e.label(), "request error", "{e}");
            assert!(KeepAlivePoster::new("https://127.0.0.1:1", "/", "k").is_err());
        });
    }
}
