//! A memory-lean MQTT connection for holding many clients in one worker: reads go
//! into one 64 KiB buffer shared by every connection of the thread (waiting with
//! `readable()`, then `try_read`), and only the bytes of an unfinished packet are kept
//! per connection ([`FrameReader`]). An idle connection holds its socket, an empty
//! carry-over and nothing else.

use std::cell::RefCell;
use std::io;

use core_engine::proto::{self, Disconnect, Packet, Properties, Version};
use loadgen::frame_reader::FrameReader;
use loadgen::mqtt_client::ClientError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Size of the thread's shared read buffer.
const SHARED_READ_BUF: usize = 64 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SHARED_READ_BUF]);
}

pub struct LeanConn {
    stream: TcpStream,
    version: Version,
    frames: FrameReader,
}

impl LeanConn {
    pub fn new(stream: TcpStream, version: Version) -> Self {
        LeanConn { stream, version, frames: FrameReader::new() }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(64);
        proto::encode(packet, self.version, &mut out).map_err(|e| ClientError::Protocol(format!("encode: {e}")))?;
        self.send_bytes(&out).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).await.map_err(|error| ClientError::Io { context: "write", error })
    }

    /// Waits for bytes and decodes every whole packet they complete into `out` (which
    /// may stay empty if only part of a packet came). Cancel-safe.
    pub async fn read_some(&mut self, out: &mut Vec<Packet>) -> Result<(), ClientError> {
        loop {
            self.stream.readable().await.map_err(|error| ClientError::Io { context: "read", error })?;
            let stream = &self.stream;
            let frames = &mut self.frames;
            let version = self.version;
            let done = READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                match stream.try_read(&mut buf) {
                    Ok(0) => Err(ClientError::Closed),
                    Ok(n) => frames
                        .feed(buf.get(..n).unwrap_or(&[]), version, out)
                        .map(|()| true)
                        .map_err(|e| ClientError::Protocol(format!("malformed packet: {e}"))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(error) => Err(ClientError::Io { context: "read", error }),
                }
            })?;
            if done {
                return Ok(());
            }
        }
    }

    /// Normal DISCONNECT, then close the write side.
    pub async fn disconnect(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() })).await?;
        self.stream.shutdown().await.map_err(|error| ClientError::Io { context: "write", error })
    }
}
