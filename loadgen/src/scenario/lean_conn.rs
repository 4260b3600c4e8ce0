//! A memory-lean MQTT connection for holding many clients in one worker: reads go
//! into one 64 KiB buffer shared by every connection of the thread (waiting with
//! `readable()`, then `try_read`), and only the bytes of an unfinished packet are kept
//! per connection ([`FrameReader`]). An idle connection holds its socket, an empty
//! carry-over and nothing else.
//!
//! With TLS ([`LeanConn::new_tls`]) a boxed [`rustls::ClientConnection`] sits between
//! the socket and the frames, driven sans-IO: ciphertext is read into the same shared
//! buffer and handed to rustls (`read_tls`, `process_new_packets`); the plaintext it
//! opens is taken out through a second thread-shared buffer into the [`FrameReader`].
//! Writes are sealed by rustls and sent from rustls's own queue with `try_write`, so a
//! cancelled write loses nothing. An idle TLS connection adds the rustls state (its
//! receive buffer of about 4 KiB included); a plain one only an empty `Option`.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use core_engine::proto::{self, Disconnect, Packet, Properties, Version};
use loadgen::frame_reader::FrameReader;
use loadgen::mqtt_client::ClientError;
use rustls::ClientConnection;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Size of the thread's shared read buffer.
const SHARED_READ_BUF: usize = 64 * 1024;
/// Size of the thread's shared plaintext buffer (TLS only): one record's worth.
const SHARED_PLAIN_BUF: usize = 16 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SHARED_READ_BUF]);
    static PLAIN_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SHARED_PLAIN_BUF]);
}

pub struct LeanConn {
    stream: TcpStream,
    version: Version,
    frames: FrameReader,
    /// The TLS session of an MQTT-over-TLS connection; `None` for plain TCP.
    tls: Option<Box<ClientConnection>>,
}

impl LeanConn {
    pub fn new(stream: TcpStream, version: Version) -> Self {
        LeanConn { stream, version, frames: FrameReader::new(), tls: None }
    }

    /// A connection that speaks MQTT inside `tls`; call [`LeanConn::handshake`] first.
    pub fn new_tls(stream: TcpStream, version: Version, tls: ClientConnection) -> Self {
        LeanConn { stream, version, frames: FrameReader::new(), tls: Some(Box::new(tls)) }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Runs the TLS handshake to its end (returns at once for plain TCP). Callers bound
    /// it with their handshake timeout.
    pub async fn handshake(&mut self) -> Result<(), ClientError> {
        loop {
            self.flush_tls().await?;
            match self.tls.as_deref() {
                Some(tls) if tls.is_handshaking() => {}
                _ => return Ok(()),
            }
            let mut packets = Vec::new();
            self.read_some(&mut packets).await?;
            if !packets.is_empty() {
                return Err(ClientError::Protocol("MQTT packet inside the TLS handshake".into()));
            }
        }
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(64);
        proto::encode(packet, self.version, &mut out).map_err(|e| ClientError::Protocol(format!("encode: {e}")))?;
        self.send_bytes(&out).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self.tls.as_deref_mut() {
            None => self.stream.write_all(bytes).await.map_err(|error| ClientError::Io { context: "write", error }),
            Some(tls) => {
                tls.writer().write_all(bytes).map_err(|error| ClientError::Io { context: "tls write", error })?;
                self.flush_tls().await
            }
        }
    }

    /// Waits for bytes and decodes every whole packet they complete into `out` (which
    /// may stay empty if only part of a packet came). Cancel-safe.
    pub async fn read_some(&mut self, out: &mut Vec<Packet>) -> Result<(), ClientError> {
        loop {
            self.stream.readable().await.map_err(|error| ClientError::Io { context: "read", error })?;
            let stream = &self.stream;
            let frames = &mut self.frames;
            let version = self.version;
            let tls = self.tls.as_deref_mut();
            let done = READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                match stream.try_read(&mut buf) {
                    Ok(0) => Err(ClientError::Closed),
                    Ok(n) => {
                        let input = buf.get(..n).unwrap_or(&[]);
                        match tls {
                            None => frames.feed(input, version, out).map_err(malformed),
                            Some(tls) => open_records(tls, input, frames, version, out),
                        }
                        .map(|()| true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(error) => Err(ClientError::Io { context: "read", error }),
                }
            })?;
            if done {
                // What TLS answers by itself (a key update, the handshake's next flight)
                // goes out as far as the socket takes it now; the rest waits in rustls
                // for the next write, so this stays cancel-safe.
                self.try_flush_tls()?;
                return Ok(());
            }
        }
    }

    /// Normal DISCONNECT (and TLS close_notify), then close the write side.
    pub async fn disconnect(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() })).await?;
        if let Some(tls) = self.tls.as_deref_mut() {
            tls.send_close_notify();
            self.flush_tls().await?;
        }
        self.stream.shutdown().await.map_err(|error| ClientError::Io { context: "write", error })
    }

    /// Sends every sealed TLS byte, waiting for the socket as needed. Cancel-safe:
    /// unsent bytes stay queued in rustls.
    async fn flush_tls(&mut self) -> Result<(), ClientError> {
        while self.try_flush_tls()? {
            self.stream.writable().await.map_err(|error| ClientError::Io { context: "write", error })?;
        }
        Ok(())
    }

    /// Sends sealed TLS bytes until the socket would block; true if some are left.
    fn try_flush_tls(&mut self) -> Result<bool, ClientError> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(false);
        };
        while tls.wants_write() {
            match tls.write_tls(&mut TryWrite(&self.stream)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(error) => return Err(ClientError::Io { context: "write", error }),
            }
        }
        Ok(false)
    }
}

fn malformed(e: proto::DecodeError) -> ClientError {
    ClientError::Protocol(format!("malformed packet: {e}"))
}

/// Hands the ciphertext `input` to rustls and feeds every byte of plaintext it opens to
/// `frames`. rustls takes at most a few KiB per `read_tls`, so this loops until `input`
/// is used up; the plaintext is drained after each step, so its buffer never fills.
fn open_records(
    tls: &mut ClientConnection,
    mut input: &[u8],
    frames: &mut FrameReader,
    version: Version,
    out: &mut Vec<Packet>,
) -> Result<(), ClientError> {
    while !input.is_empty() {
        let taken = tls.read_tls(&mut input).map_err(|error| ClientError::Io { context: "tls read", error })?;
        let state = tls.process_new_packets().map_err(ClientError::Tls)?;
        let mut plaintext = state.plaintext_bytes_to_read();
        let peer_closed = state.peer_has_closed();
        PLAIN_BUF.with(|plain| {
            let mut plain = plain.borrow_mut();
            while plaintext > 0 {
                let n =
                    tls.reader().read(&mut plain).map_err(|error| ClientError::Io { context: "tls read", error })?;
                if n == 0 {
                    break;
                }
                plaintext = plaintext.saturating_sub(n);
                frames.feed(plain.get(..n).unwrap_or(&[]), version, out).map_err(malformed)?;
            }
            Ok::<(), ClientError>(())
        })?;
        // After close_notify rustls takes no more bytes: stop instead of spinning.
        if peer_closed || taken == 0 {
            return if out.is_empty() { Err(ClientError::Closed) } else { Ok(()) };
        }
    }
    Ok(())
}

/// `io::Write` over a tokio socket that never waits: `WouldBlock` when it is full.
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// A CA and a localhost certificate made with the openssl command; None without it.
    fn make_cert(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let (cert, key, csr, ext) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("c.csr"), dir.join("san"));
        std::fs::write(&ext, "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").ok()?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let s = |p: &PathBuf| p.to_string_lossy().into_owned();
        let steps: [Vec<String>; 3] = [
            ["req", "-x509"]
                .iter()
                .chain(&ec)
                .map(|a| a.to_string())
                .chain([
                    "-keyout".into(),
                    s(&ca_key),
                    "-out".into(),
                    s(&ca),
                    "-days".into(),
                    "1".into(),
                    "-subj".into(),
                    "/CN=loadgen-test-ca".into(),
                ])
                .collect(),
            ["req"]
                .iter()
                .chain(&ec)
                .map(|a| a.to_string())
                .chain(["-keyout".into(), s(&key), "-out".into(), s(&csr), "-subj".into(), "/CN=localhost".into()])
                .collect(),
            ["x509", "-req", "-in"]
                .iter()
                .map(|a| a.to_string())
                .chain([
                    s(&csr),
                    "-CA".into(),
                    s(&ca),
                    "-CAkey".into(),
                    s(&ca_key),
                    "-CAcreateserial".into(),
                    "-out".into(),
                    s(&cert),
                    "-days".into(),
                    "1".into(),
                    "-extfile".into(),
                    s(&ext),
                ])
                .collect(),
        ];
        for args in steps {
            let ok = std::process::Command::new("openssl").args(&args).output().ok()?.status.success();
            if !ok {
                return None;
            }
        }
        Some((ca, cert, key))
    }

    /// Handshake, a packet out, packets in (one split over two TLS records in two TCP
    /// writes), then close_notify: all through the shared buffers.
    #[test]
    fn tls_connection_round_trip_and_close() {
        let dir = std::env::temp_dir().join(format!("loadgen-lean-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some((ca, cert, key)) = make_cert(&dir) else {
            eprintln!("openssl not available: skipped");
            return;
        };
        let server_config = core_engine::tls::server_config(&cert, &key).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut conn = rustls::ServerConnection::new(server_config).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            let mut pingreq = [0u8; 2];
            tls.read_exact(&mut pingreq).unwrap();
            assert_eq!(pingreq, [0xC0, 0x00]);
            tls.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap(); // CONNACK (3.1.1), accepted
            tls.write_all(&[0xD0]).unwrap(); // PINGRESP, first byte in its own record
            std::thread::sleep(Duration::from_millis(50));
            tls.write_all(&[0x00]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
        });

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = loadgen::tls::TlsClient::from_ca_file(&ca, "localhost").unwrap();
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut conn = LeanConn::new_tls(stream, Version::V311, client.connection().unwrap());
            let limit = Duration::from_secs(10);
            tokio::time::timeout(limit, conn.handshake()).await.unwrap().unwrap();
            conn.send(&Packet::Pingreq).await.unwrap();
            let mut packets = Vec::new();
            while packets.len() < 2 {
                tokio::time::timeout(limit, conn.read_some(&mut packets)).await.unwrap().unwrap();
            }
            assert!(matches!(packets[0], Packet::Connack(ref c) if c.code == 0), "{packets:?}");
            assert!(matches!(packets[1], Packet::Pingresp), "{packets:?}");
            assert_eq!(conn.frames.pending_len(), 0);
            // Reads may also bring only TLS messages (session tickets): no packets.
            packets.clear();
            let mut end = Ok(());
            for _ in 0..10 {
                end = tokio::time::timeout(limit, conn.read_some(&mut packets)).await.unwrap();
                if end.is_err() {
                    break;
                }
            }
            assert!(matches!(end, Err(ClientError::Closed)), "{end:?}");
            assert!(packets.is_empty(), "{packets:?}");
        });
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_connections_stay_small() {
        // The TLS state is one pointer, `None` for plain TCP.
        assert_eq!(size_of::<Option<Box<ClientConnection>>>(), size_of::<usize>());
    }
}
