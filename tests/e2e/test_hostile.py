"""Hostile clients against a live node: random bytes, truncated packets, a 256 MB packet
announced and never sent, 2,000 connections that never send CONNECT, clients that
subscribe and never read, out-of-profile control publishes.

Throughout every test a normal device (paho, MQTT 5) keeps receiving a push every 0.2 s
(`guard` fixture: asserted at the end of each test) and the node's resident memory
(VmRSS from /proc/PID/status) is sampled and must stay under RSS_LIMIT_MB. Run with
`-s` to see the RSS and timing numbers.
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import threading
import time

import pytest

import mqttraw
from conftest import NO_CONNECT_LIMIT, wait_until

RSS_LIMIT_MB = 300
CONNECT_TIMEOUT_S = 10  # the node's CONNECT deadline (session.rs CONNECT_TIMEOUT_S)
SILENT_CONNECTIONS = 2000
TOO_LARGE = 0x95
MALFORMED = 0x81


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Guard:
    """A normal device that must keep receiving pushes while hostile clients play, and a
    sampler of the node's RSS."""

    def __init__(self, node, app, interval: float = 0.2):
        self.node = node
        self.app = app
        self.interval = interval
        regid, token = node.register(app)
        self.regid = regid
        self.device = node.device(app, regid, token, version=5)
        self.device.connect()
        self.sent: list[str] = []
        self.errors: list[str] = []
        self.rss_start_kb = rss_kb(node.proc.pid)
        self.rss_max_kb = self.rss_start_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-pusher", daemon=True)
        self._thread.start()

    def sample_rss(self) -> int:
        if self.node.running():
            kb = rss_kb(self.node.proc.pid)
            self.rss_max_kb = max(self.rss_max_kb, kb)
            return kb
        return 0

    def _run(self):
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                r = self.node.push(self.app, self.regid, title=f"guard {n}")
                if r.status_code == 200:
                    self.sent.append(r.json()["id"])
                else:
                    self.errors.append(f"push {n}: {r.status_code} {r.text}")
            except Exception as e:  # noqa: BLE001 - recorded and asserted in check()
                self.errors.append(f"push {n}: {e!r}")
            self.sample_rss()
            self._stop.wait(self.interval)

    def check(self, what: str) -> None:
        """The node is up, every push so far reached the device, RSS stayed bounded."""
        assert self.node.running(), f"node died during {what}"
        sent = list(self.sent)
        got = self.device.wait_messages(len(sent), timeout=15)
        ids = [m["payload"]["id"] for m in got if m["payload"]]
        missing = [i for i in sent if i not in ids]
        assert not missing, f"{what}: the normal device missed {len(missing)} of {len(sent)} pushes"
        assert not self.errors, f"{what}: pushes failed: {self.errors[:5]}"
        kb = self.sample_rss()
        print(f"\n[{what}] guard pushes delivered: {len(sent)}; node VmRSS start "
              f"{self.rss_start_kb / 1024:.1f} MB, now {kb / 1024:.1f} MB, max "
              f"{self.rss_max_kb / 1024:.1f} MB")
        assert self.rss_max_kb < RSS_LIMIT_MB * 1024, (
            f"{what}: node RSS reached {self.rss_max_kb / 1024:.1f} MB (limit {RSS_LIMIT_MB} MB)")

    def stop(self):
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def node(make_node):
    """Thousands of connections from 127.0.0.1 within seconds: the connect rate limit is off."""
    return make_node(extra_args=NO_CONNECT_LIMIT)


@pytest.fixture
def guard(node, app):
    g = Guard(node, app)
    yield g
    g.stop()


def _sock(node) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _connected_raw(node, app, version: int, keepalive: int = 60) -> mqttraw.RawClient:
    """A registered device connected over a raw socket."""
    regid, token = node.register(app)
    c = node.raw(version=version)
    ack = c.connect(regid, app["app_id"], token, keepalive=keepalive)
    assert ack["rc"] == 0, ack
    return c


def _wait_all_closed(socks: dict, deadline: float) -> tuple[dict, dict]:
    """Reads every socket until EOF/reset or the deadline. Returns ({name: seconds to
    close}, {name: bytes read}) for the sockets the node closed; the rest stay open."""
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    got: dict = {}
    closed: dict = {}
    for name, s in socks.items():
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, name)
        got[name] = b""
    try:
        while len(closed) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                name = key.data
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if data:
                    got[name] += data
                    continue
                closed[name] = time.monotonic() - start
                sel.unregister(key.fileobj)
    finally:
        sel.close()
    return closed, got


def test_garbage_truncated_and_silent_connections(node, app, guard):
    """2,000 connections that never send CONNECT, random bytes, truncated packets before
    and after CONNECT: the node closes every one of them by itself (CONNECT deadline,
    keep-alive, or malformed input) while the normal device keeps receiving."""
    rnd = random.Random(0x5EED)
    socks: dict = {}
    opened = time.monotonic()

    # Never send anything: the CONNECT deadline (10 s) must close them.
    for i in range(SILENT_CONNECTIONS):
        socks[f"silent-{i}"] = _sock(node)
    t_silent = time.monotonic() - opened

    # Random bytes as the first thing on the wire (may look like an unfinished packet:
    # then the CONNECT deadline closes it).
    for i in range(100):
        s = _sock(node)
        s.sendall(rnd.randbytes(rnd.choice([1, 2, 5, 17, 300, 4096, 9000])))
        socks[f"random-{i}"] = s

    # Every strict prefix of a real CONNECT (an unfinished packet): deadline again.
    regid, token = node.register(app)
    connect = mqttraw.connect_packet(regid, app["app_id"], token, version=5)
    for k in range(1, len(connect)):
        s = _sock(node)
        s.sendall(connect[:k])
        socks[f"truncated-connect-{k}"] = s

    # Connected devices (keep-alive 4 s) that then send garbage or half a packet: closed
    # at once (malformed) or by the keep-alive (1.5 x 4 s).
    sub = mqttraw.subscribe_packet(7, "inbox", 1, version=5)
    for i in range(20):
        c = _connected_raw(node, app, version=5 if i % 2 else 4, keepalive=4)
        if i < 10:
            c.send(rnd.randbytes(rnd.choice([3, 64, 2048])))
        else:
            cut = sub if c.version == 5 else mqttraw.subscribe_packet(7, "inbox", 1, 4)
            c.send(cut[: rnd.randrange(1, len(cut))])
        socks[f"connected-{i}-v{c.version}"] = c.sock

    rss_open = guard.sample_rss()
    deadline = opened + CONNECT_TIMEOUT_S + 5
    closed, got = _wait_all_closed(socks, deadline)
    for s in socks.values():
        s.close()

    silent_closed = [t for n, t in closed.items() if n.startswith("silent-")]
    open_left = sorted(set(socks) - set(closed))
    print(f"\nopened {SILENT_CONNECTIONS} silent connections in {t_silent:.1f}s; RSS with all "
          f"{len(socks)} open {rss_open / 1024:.1f} MB; node closed {len(closed)}/{len(socks)} "
          f"(silent: {len(silent_closed)} EOFs, last after {max(silent_closed, default=0):.1f}s)")
    assert not open_left, f"{len(open_left)} connections still open after "\
        f"{CONNECT_TIMEOUT_S + 5}s: {open_left[:10]}"
    # Nothing but a DISCONNECT (MQTT 5) may come back to a client that never connected.
    for name, data in got.items():
        if not name.startswith("connected-"):
            assert data == b"", f"{name}: node answered {data[:40]!r}"
    guard.check("garbage/silent")


def test_announced_256mb_packet(node, app, guard):
    """A PUBLISH (or CONNECT) announcing a remaining length of 268,435,455 bytes that
    never come: MQTT 5 gets DISCONNECT 0x95 and the close, 3.1.1 the close; at once,
    without waiting for (or buffering) the body."""
    header = b"\x30\xff\xff\xff\x7f"  # PUBLISH QoS 0, remaining length 268,435,455

    c5 = _connected_raw(node, app, version=5)
    t0 = time.monotonic()
    c5.send(header + b"\x00\x05inbox" + b"x" * 1000)
    pkts = c5.expect_closed(timeout=5)
    elapsed = time.monotonic() - t0
    assert pkts, "MQTT 5: closed without DISCONNECT"
    for first, body in pkts:
        assert first == 0xE0 and body[:1] == bytes([TOO_LARGE]), f"expected DISCONNECT 0x95, got {pkts!r}"

    c4 = _connected_raw(node, app, version=4)
    c4.send(header)
    assert c4.expect_closed(timeout=5) == [], "MQTT 3.1.1: packets before the close"

    # As the very first packet: a CONNECT announcing 256 MB.
    s = _sock(node)
    s.sendall(b"\x10\xff\xff\xff\x7f\x00\x04MQTT\x05")
    closed, got = _wait_all_closed({"connect-256mb": s}, time.monotonic() + 5)
    s.close()
    assert "connect-256mb" in closed, "a CONNECT announcing 256 MB was not closed within 5 s"
    print(f"\nMQTT 5 DISCONNECT 0x95 + close after {elapsed * 1000:.0f} ms")
    guard.check("256 MB announced")


def test_subscriber_that_never_reads(node, app, guard):
    """Devices that connect, SUBSCRIBE and then never read while pushes (4 KB payloads)
    flow to them: the node stays up, other devices keep receiving, memory stays bounded."""
    readers = 20
    pushes = 300
    regids = []
    for i in range(readers):
        regid, token = node.register(app)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up fast
        s.settimeout(10)
        s.connect(("127.0.0.1", node.mqtt_port))
        version = 5 if i % 2 else 4
        s.sendall(mqttraw.connect_packet(regid, app["app_id"], token, version=version, keepalive=0))
        s.sendall(mqttraw.subscribe_packet(1, "inbox", 1, version=version))
        # Read nothing, ever (not even CONNACK / SUBACK).
        node.clients.append(s)
        regids.append(regid)

    payload = "x" * 4000
    errors: list = []

    def sender(part: range):
        for n in part:
            try:
                r = node.push(app, regids, type="passthrough", payload=payload, title=f"slow {n}")
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    t0 = time.monotonic()
    threads = [threading.Thread(target=sender, args=(range(k, pushes, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert not errors, f"pushes to non-readers failed: {errors[:5]}"
    rss = guard.sample_rss()
    print(f"\npushed {pushes} x 4 KB to {readers} non-reading devices "
          f"({pushes * readers * 4 / 1024:.1f} MB of deliveries) in {elapsed:.1f}s; "
          f"node VmRSS {rss / 1024:.1f} MB")

    # The node is healthy and a new device still gets its push at once.
    assert node.healthy()
    regid, token = node.register(app)
    fresh = node.device(app, regid, token, version=4)
    fresh.connect()
    node.send(app, regid, title="after the flood")
    fresh.wait_messages(1, timeout=10)
    guard.check("never-reading subscribers")


def test_out_of_profile_control_publish_311_is_closed(node, app, guard):
    """MQTT 3.1.1 has no way to refuse a PUBLISH, so a control publish the node refuses
    (an invalid alias, or a control topic not offered) must close the connection; it must
    not leave it open and ignored."""
    for topic, payload in (("ctl/alias/set", b"not/a/valid/alias"), ("ctl/quiet", b"{}")):
        c = _connected_raw(node, app, version=4)
        c.send(mqttraw.packet(0x32, mqttraw.mqtt_str(topic) + struct.pack("!H", 5) + payload))
        try:
            pkts = c.expect_closed(timeout=5)
        except TimeoutError:
            pytest.fail(f"3.1.1 control publish to {topic} refused but the connection stayed open")
        assert all(p[0] >> 4 != mqttraw.PUBACK for p in pkts), f"{topic}: refused publish was PUBACKed: {pkts}"
    # The MQTT 5 answer for comparison: PUBACK with an error code, connection kept.
    c = _connected_raw(node, app, version=5)
    c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("ctl/quiet") + struct.pack("!H", 6) + b"\x00{}"))
    first, body = c.read_packet(timeout=5)
    assert first >> 4 == mqttraw.PUBACK and body[2] >= 0x80, (first, body)
    guard.check("control publish")


def test_connection_flood_with_bytes_after_connect(node, app, guard):
    """Pipelined junk right behind a CONNECT (read while the node checks it) and a byte
    stream of many tiny valid packets: handled, answered or closed; node stays up."""
    # CONNECT + 64 KB of junk in one write (packet type 0 first: malformed at once).
    rnd = random.Random(7)
    regid, token = node.register(app)
    c = node.raw(version=5)
    c.send(mqttraw.connect_packet(regid, app["app_id"], token, version=5) + b"\x00" + rnd.randbytes(65535))
    pkts = c.expect_closed(timeout=10)
    assert pkts and pkts[0][0] >> 4 == mqttraw.CONNACK, pkts[:2]

    # 5,000 PINGREQs in one write: 5,000 PINGRESPs come back, connection stays.
    c = _connected_raw(node, app, version=4)
    c.send(b"\xc0\x00" * 5000)
    for _ in range(5000):
        first, _ = c.read_packet(timeout=5)
        assert first >> 4 == mqttraw.PINGRESP
    guard.check("pipelined bytes")
