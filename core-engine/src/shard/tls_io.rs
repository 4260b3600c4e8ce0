//! The TLS layer of a connection, sans-IO like the session under it: TLS records from the
//! socket in, plaintext to the session out; the session's bytes sealed into records.

use crate::session::Session;
use rustls::ServerConnection;
use std::io::{Read, Write};

/// TLS failed (bad records, handshake failure); the connection must close.
#[derive(Debug)]
pub(super) struct TlsFailed;

/// Feeds records read from the socket; hands every plaintext chunk to `deliver`.
pub(super) fn receive(
    tls: &mut ServerConnection,
    mut data: &[u8],
    scratch: &mut [u8],
    mut deliver: impl FnMut(&[u8]),
) -> Result<(), TlsFailed> {
    while !data.is_empty() {
        let read = tls.read_tls(&mut data).map_err(|_| TlsFailed)?;
        let state = tls.process_new_packets().map_err(|e| {
            tracing::debug!(error = %e, "TLS error");
            TlsFailed
        })?;
        let mut plaintext = state.plaintext_bytes_to_read();
        while plaintext > 0 {
            let n = tls.reader().read(scratch).map_err(|_| TlsFailed)?;
            if n == 0 {
                break;
            }
            deliver(&scratch[..n]);
            plaintext = plaintext.saturating_sub(n);
        }
        if read == 0 {
            break;
        }
    }
    Ok(())
}

/// Ends TLS after the session's last bytes (a refusing CONNACK, a DISCONNECT): they go into
/// the TLS writer before the close_notify alert, or the peer would read end-of-stream first.
pub(super) fn close(tls: &mut ServerConnection, session: &mut Session) {
    if session.has_output() && tls.writer().write_all(&session.take_output()).is_err() {
        session.abandon();
    }
    tls.send_close_notify();
}

/// Seals what the session queued (and any TLS handshake or alert bytes) into `out`.
pub(super) fn seal(tls: &mut ServerConnection, session: &mut Session, out: &mut Vec<u8>) {
    if session.has_output() {
        let plain = session.take_output();
        if tls.writer().write_all(&plain).is_err() {
            session.abandon();
        }
    }
    while tls.wants_write() {
        match tls.write_tls(out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
