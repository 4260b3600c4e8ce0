"""A minimal raw-socket MQTT 3.1.1 / 5.0 client for tests that need byte-level control.

Only what the e2e tests need: CONNECT, SUBSCRIBE, PUBACK, PINGREQ, DISCONNECT, reading and
parsing CONNACK / PUBLISH / SUBACK / DISCONNECT. Every read has a timeout.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time

# packet types (upper nibble of the first byte)
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

# MQTT 5 property identifiers used here
PROP_MESSAGE_EXPIRY = 0x02
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_REASON_STRING = 0x1F
PROP_USER_PROPERTY = 0x26


class Closed(Exception):
    """The peer closed the connection."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    version: int = 4,
    clean: bool = False,
    keepalive: int = 60,
    properties: bytes = b"",
) -> bytes:
    """version: 4 = MQTT 3.1.1, 5 = MQTT 5.0."""
    flags = 0
    if clean:
        flags |= 0x02
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = mqtt_str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += varint(len(properties)) + properties
    body += mqtt_str(client_id)
    if username is not None:
        body += mqtt_str(username)
    if password is not None:
        body += mqtt_str(password)
    return packet(0x10, body)


def subscribe_packet(pid: int, topic: str, qos: int = 1, version: int = 4) -> bytes:
    body = struct.pack("!H", pid)
    if version == 5:
        body += varint(0)
    body += mqtt_str(topic) + bytes([qos])
    return packet(0x82, body)


def puback_packet(pid: int) -> bytes:
    return packet(0x40, struct.pack("!H", pid))


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    mult, value = 1, 0
    for i in range(4):
        if pos >= len(buf):
            raise ValueError("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos
        mult *= 128
    raise ValueError("variable byte integer too long")


def parse_properties(buf: bytes, pos: int) -> tuple[dict, int]:
    """Parses an MQTT 5 property block at pos. Returns ({id: value or [values]}, new pos).
    User properties (0x26) are collected as a list of (key, value) tuples."""
    length, pos = read_varint(buf, pos)
    end = pos + length
    props: dict = {}
    while pos < end:
        pid = buf[pos]
        pos += 1
        if pid in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):  # byte
            val = buf[pos]
            pos += 1
        elif pid in (0x13, 0x21, 0x22, 0x23):  # two byte int
            (val,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif pid in (0x02, 0x11, 0x18, 0x27):  # four byte int
            (val,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif pid == 0x0B:  # subscription identifier (varint)
            val, pos = read_varint(buf, pos)
        elif pid in (0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F):  # utf-8 string
            (n,) = struct.unpack_from("!H", buf, pos)
            val = buf[pos + 2 : pos + 2 + n].decode()
            pos += 2 + n
        elif pid in (0x09, 0x16):  # binary data
            (n,) = struct.unpack_from("!H", buf, pos)
            val = buf[pos + 2 : pos + 2 + n]
            pos += 2 + n
        elif pid == PROP_USER_PROPERTY:
            (n,) = struct.unpack_from("!H", buf, pos)
            k = buf[pos + 2 : pos + 2 + n].decode()
            pos += 2 + n
            (m,) = struct.unpack_from("!H", buf, pos)
            v = buf[pos + 2 : pos + 2 + m].decode()
            pos += 2 + m
            props.setdefault(PROP_USER_PROPERTY, []).append((k, v))
            continue
        else:
            raise ValueError(f"unknown property id {pid:#x}")
        props[pid] = val
    if pos != end:
        raise ValueError("property block length mismatch")
    return props, pos


def tcp_connect(host: str, port: int, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    """A TCP connection (TCP_NODELAY), from address `source` (any free port) if given."""
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RawClient:
    """One TCP connection speaking raw MQTT bytes."""

    def __init__(self, host: str, port: int, version: int = 4, timeout: float = 10.0,
                 source: str | None = None, sock: socket.socket | None = None):
        """Connects to host:port, from address `source` if given (e.g. "127.0.0.9"), or
        speaks over `sock`, an already connected socket (e.g. an ssl-wrapped one)."""
        self.version = version
        if sock is None:
            sock = tcp_connect(host, port, timeout, source)
        self.sock = sock
        self._buf = b""

    # -- low level ---------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int, deadline: float) -> None:
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete MQTT packet within timeout (have {self._buf!r})")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as e:
                raise Closed(str(e)) from e
            if not chunk:
                raise Closed("EOF")
            self._buf += chunk

    def read_packet(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """Returns (first byte, body). Raises Closed on EOF/reset, TimeoutError on timeout."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        # remaining length: up to 4 bytes
        i, mult, length = 1, 1, 0
        while True:
            self._fill(i + 1, deadline)
            b = self._buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                break
            mult *= 128
            if i > 4:
                raise ValueError("bad remaining length from server")
        self._fill(i + length, deadline)
        first, body = self._buf[0], self._buf[i : i + length]
        self._buf = self._buf[i + length :]
        return first, body

    def expect_closed(self, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        """Reads until the server closes the connection. Returns the packets read before
        the close. Raises TimeoutError if the connection stays open past the timeout."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"connection not closed within {timeout}s; read {got!r}")
            try:
                got.append(self.read_packet(remaining))
            except Closed:
                return got
            except ValueError:
                # garbage from the server: keep reading until close
                self._buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- MQTT ------------------------------------------------------------------------
    def connect(self, client_id, username=None, password=None, clean=False, keepalive=60,
                timeout=5.0) -> dict:
        """Sends CONNECT and reads CONNACK. Returns {'session_present', 'rc', 'props'}."""
        self.send(connect_packet(client_id, username, password, self.version, clean, keepalive))
        first, body = self.read_packet(timeout)
        assert first >> 4 == CONNACK, f"expected CONNACK, got first byte {first:#x} body {body!r}"
        return parse_connack(body, self.version)

    def subscribe(self, topic: str, pid: int = 1, qos: int = 1, timeout: float = 5.0) -> list[int]:
        """Returns the SUBACK return/reason codes."""
        self.send(subscribe_packet(pid, topic, qos, self.version))
        first, body = self.read_packet(timeout)
        assert first >> 4 == SUBACK, f"expected SUBACK, got first byte {first:#x} body {body!r}"
        (rpid,) = struct.unpack_from("!H", body, 0)
        assert rpid == pid, f"SUBACK packet id {rpid} != {pid}"
        pos = 2
        if self.version == 5:
            _, pos = parse_properties(body, pos)
        return list(body[pos:])

    def read_publish(self, timeout: float = 5.0) -> dict:
        first, body = self.read_packet(timeout)
        assert first >> 4 == PUBLISH, f"expected PUBLISH, got first byte {first:#x} body {body!r}"
        return parse_publish(first, body, self.version)

    def puback(self, pid: int) -> None:
        self.send(puback_packet(pid))

    def disconnect(self) -> None:
        try:
            self.send(b"\xe0\x00")
        except OSError:
            pass
        self.close()


def parse_connack(body: bytes, version: int) -> dict:
    out = {"session_present": body[0] & 1, "rc": body[1], "props": {}}
    if version == 5 and len(body) > 2:
        out["props"], _ = parse_properties(body, 2)
    return out


def parse_publish(first: int, body: bytes, version: int) -> dict:
    qos = (first >> 1) & 3
    (tlen,) = struct.unpack_from("!H", body, 0)
    topic = body[2 : 2 + tlen].decode()
    pos = 2 + tlen
    pid = None
    if qos:
        (pid,) = struct.unpack_from("!H", body, pos)
        pos += 2
    props = {}
    if version == 5:
        props, pos = parse_properties(body, pos)
    payload = body[pos:]
    try:
        env = json.loads(payload)
    except ValueError:
        env = None
    return {
        "topic": topic,
        "qos": qos,
        "dup": bool(first & 0x08),
        "retain": bool(first & 0x01),
        "pid": pid,
        "props": props,
        "raw": payload,
        "payload": env,
    }
