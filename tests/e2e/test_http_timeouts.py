"""HTTP keep-alive and the idle timeout (`http_idle_timeout_secs`), on raw sockets so the
test sees the real connection: one keep-alive connection carries several requests, an idle
one is closed after the timeout, and a client trickling a request's headers (slowloris) or
stalling a TLS handshake is cut off after the same time."""

import socket
import time

import pytest

from conftest import free_port
from test_tls import _make_ca

IDLE_S = 2
# Closed no earlier than this (timer granularity) and no later than this.
EARLIEST_S, LATEST_S = 1.5, 6.0


@pytest.fixture
def idle_node(make_node):
    return make_node(shards=1, extra_args=("--http-idle-timeout-secs", str(IDLE_S)))


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=LATEST_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _get(path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """One whole HTTP/1.1 response (Content-Length bodies only): status, headers, body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"connection closed before a whole response head: {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(4096)
        assert chunk, "connection closed inside a response body"
        body += chunk
    assert len(body) == length, f"bytes after the response: {body[length:]!r}"
    return status, headers, body


def _seconds_until_eof(s: socket.socket, since: float) -> tuple[float, bytes]:
    """Reads until the server closes (EOF or reset); the seconds since `since`, and what came."""
    got = b""
    s.settimeout(LATEST_S + 1)
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        except socket.timeout:
            raise AssertionError(f"still open {time.monotonic() - since:.1f}s later (got {got!r})")
        if not chunk:
            break
        got += chunk
    return time.monotonic() - since, got


def test_keepalive_connection_carries_requests_apart(idle_node):
    """Requests 1.2 s apart on one socket, 2.4 s in all: the timer counts idle time, not age."""
    with _connect(idle_node.http_port) as s:
        for i in range(3):
            if i:
                time.sleep(1.2)
            s.sendall(_get())
            status, headers, _ = _read_response(s)
            assert status == 200, f"request {i}: {status}"
            assert headers.get("connection", "").lower() != "close", headers


def test_idle_keepalive_connection_is_closed(idle_node):
    with _connect(idle_node.http_port) as s:
        s.sendall(_get())
        assert _read_response(s)[0] == 200
        elapsed, got = _seconds_until_eof(s, time.monotonic())
    assert got == b"", f"bytes on an idle connection: {got!r}"
    assert EARLIEST_S <= elapsed <= LATEST_S, f"idle connection closed after {elapsed:.1f}s"


def test_half_sent_and_trickled_headers_are_cut_off(idle_node):
    """Half a request's headers then silence, or headers trickled a byte every 0.25 s
    (slowloris): both closed ~IDLE_S after the connection opened, the trickle not extending it."""
    # Half the headers, then nothing.
    opened = time.monotonic()
    with _connect(idle_node.http_port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0")
        elapsed, got = _seconds_until_eof(s, opened)
    assert EARLIEST_S <= elapsed <= LATEST_S, f"half a header cut off after {elapsed:.1f}s"
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got

    # Trickled: one byte every 0.25 s of a header block that never ends.
    trickle = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    opened = time.monotonic()
    closed_after = None
    with _connect(idle_node.http_port) as s:
        s.settimeout(0.25)
        for byte in trickle:
            if time.monotonic() - opened > LATEST_S:
                break
            try:
                s.sendall(bytes([byte]))
                chunk = s.recv(4096)  # waits 0.25 s for the server's answer or close
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - opened
                break
            if chunk == b"" or chunk.startswith(b"HTTP/1.1 408"):
                closed_after = time.monotonic() - opened
                break
            raise AssertionError(f"unexpected answer to a trickled request: {chunk!r}")
    assert closed_after is not None, f"trickling client still connected after {LATEST_S}s"
    assert EARLIEST_S <= closed_after <= LATEST_S, f"trickling client cut off after {closed_after:.1f}s"
    assert idle_node.http("GET", "/healthz").status_code == 200


def test_stalled_https_handshake_is_cut_off(make_node, tmp_path):
    """A TCP connection to the HTTPS port that never sends a ClientHello."""
    _, crt, key = _make_ca(tmp_path)
    https = free_port()
    node = make_node(shards=1, extra_args=(
        "--https-listen", f"127.0.0.1:{https}", "--tls-cert", str(crt), "--tls-key", str(key),
        "--http-idle-timeout-secs", str(IDLE_S),
    ))
    opened = time.monotonic()
    with _connect(https) as s:
        elapsed, got = _seconds_until_eof(s, opened)
    assert got == b"", got
    assert EARLIEST_S <= elapsed <= LATEST_S, f"stalled handshake cut off after {elapsed:.1f}s"
    assert node.running()
