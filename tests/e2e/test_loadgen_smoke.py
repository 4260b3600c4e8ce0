"""Smoke runs of loadgen's multi-process scenarios at tiny scale against a real node.

Each test runs `$LOADGEN_BIN <scenario> ... --json OUT` against a fresh node (the app is
created by loadgen itself with --admin-token-file), waits for it with a timeout, and
checks the counts in the JSON report: everything connected, nothing failed, every message
delivered, nothing lost. loadgen bounds its own run with --timeout-secs as well. The TLS
tests run the same over MQTT-over-TLS (`--tls-ca`) against the node's TLS listener and a
mosquitto TLS listener, with a CA made by openssl.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import LOADGEN_BIN, NO_CONNECT_LIMIT, free_port
from mqttraw import Closed, RawClient, packet
from test_tls import _make_ca

RUN_TIMEOUT = 90  # seconds, per loadgen run (loadgen's own bound is 60)


@pytest.fixture
def node(make_node):
    """loadgen connects as fast as it can: the connect rate limit is off, as in the bench."""
    return make_node(extra_args=NO_CONNECT_LIMIT)


def run_loadgen(node, tmp_path, scenario: str, *args: str, mqtt: str | None = None) -> dict:
    """Runs loadgen against `node` (MQTT at `mqtt`, default the node's plain listener);
    with node=None, against the plain MQTT broker at `mqtt` (pass --target mqtt)."""
    assert LOADGEN_BIN.exists(), f"loadgen binary not found at {LOADGEN_BIN} (set LOADGEN_BIN)"
    out = tmp_path / f"{scenario}.json"
    target = [] if node is None else [
        "--http", node.url, "--admin-token-file", str(node.data_dir / "admin.token")]
    cmd = [
        str(LOADGEN_BIN), scenario,
        "--mqtt", mqtt or node.mqtt_addr, *target,
        "--timeout-secs", "60", "--straggler-secs", "10",
        "--json", str(out), *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    report = json.loads(out.read_text())
    print(proc.stdout)
    return report


def assert_connected(report: dict, n: int) -> None:
    assert report["connections"] == n, report
    assert report["connected"] == n, report
    assert report["failed"] == {}, report
    assert report["loadgen"]["cpu_s"] >= 0, report
    assert report["loadgen"]["max_rss_bytes"] > 0, report


def assert_all_delivered(report: dict, n: int) -> None:
    """`n` pushes accepted, `n` delivered, each with its latency."""
    assert report["messages_sent"] == n, report
    assert report["deliveries"] == n, report
    assert report["latency_us"]["count"] == n, report


def test_connect(node, tmp_path):
    r = run_loadgen(node, tmp_path, "connect", "--connections", "200")
    assert r["scenario"] == "connect" and r["target"] == "pushnode"
    assert_connected(r, 200)
    assert r["connect_rate_per_s"] > 0


def test_idle(node, tmp_path):
    r = run_loadgen(node, tmp_path, "idle", "--connections", "200", "--hold-secs", "1",
                    "--server-pid", str(node.proc.pid))
    assert_connected(r, 200)
    for k in ("server_rss_before", "server_rss_after", "slab_before", "slab_after"):
        assert r[k] > 0, (k, r)
    assert "user_bytes_per_conn" in r and "kernel_bytes_per_conn" in r, r


def topic_target_supported(node) -> bool:
    """The node accepts a topic target (the lead's topic feature) unless it answers 400."""
    app = node.create_app(name="probe")
    resp = requests.post(
        node.url + "/v1/messages",
        headers={"Authorization": f"key={app['app_secret']}"},
        json={"target": {"topic": "bench"}, "type": "passthrough", "payload": "probe"},
        timeout=10,
    )
    return resp.status_code != 400


def test_fanout(node, tmp_path):
    if not topic_target_supported(node):
        pytest.skip("the node answers 400 for a topic target: topics not implemented yet")
    r = run_loadgen(node, tmp_path, "fanout", "--subscribers", "100", "--messages", "3",
                    "--interval-ms", "200")
    assert_connected(r, 100)
    assert r["messages_sent"] == 3, r
    assert r["deliveries"] == 300, r
    assert r["deliveries_per_s"] > 0, r
    assert r["latency_us"]["count"] == 300, r
    assert r["histogram"] and r["histogram"][-1][0] == 100.0, r


def test_unicast(node, tmp_path):
    r = run_loadgen(node, tmp_path, "unicast", "--connections", "100", "--rate", "200",
                    "--duration-secs", "3")
    assert_connected(r, 100)
    assert_all_delivered(r, 600)
    assert r["achieved_rate_per_s"] > 100, r
    lat = r["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"], lat


def test_unicast_over_http2(node, tmp_path):
    """`--http2-connections 2`: the sends share two HTTP/2 connections to the node."""
    r = run_loadgen(node, tmp_path, "unicast", "--connections", "100", "--rate", "300",
                    "--duration-secs", "2", "--http2-connections", "2", "--http-concurrency", "64")
    assert_connected(r, 100)
    assert_all_delivered(r, 600)


def test_unicast_batched(node, tmp_path):
    r = run_loadgen(node, tmp_path, "unicast", "--connections", "100", "--rate", "200",
                    "--duration-secs", "2", "--batch", "10")
    assert_connected(r, 100)
    assert_all_delivered(r, 400)


def test_unicast_batched_over_two_workers_names_both_workers_devices(node, tmp_path):
    """Two worker processes, ten RegIDs a request: a request's devices come from both
    workers (as a real request's are separate phones), and each worker still waits for
    exactly the deliveries its own devices get."""
    r = run_loadgen(node, tmp_path, "unicast", "--connections", "100", "--rate", "400",
                    "--duration-secs", "2", "--batch", "10", "--workers", "2")
    assert_connected(r, 100)
    assert_all_delivered(r, 800)
    # Random picks over 2 x 50 devices: about half the targets are the other worker's.
    assert 200 <= r["targets_on_other_workers"] <= 600, r


def test_unicast_offline_measures_the_http_answers(node, tmp_path):
    """`--offline`: the devices disconnect first, every push is stored for later, and the
    report counts the answered targets and the HTTP answers' latency."""
    r = run_loadgen(node, tmp_path, "unicast", "--connections", "50", "--rate", "200",
                    "--duration-secs", "2", "--offline")
    assert r["scenario"] == "unicast-offline", r
    assert_connected(r, 50)
    assert r["messages_sent"] == 400 and r["deliveries"] == 400, r
    assert r["latency_us"]["count"] == 400, r
    pending = node.http("GET", "/metrics").text
    stored = sum(float(line.split()[-1]) for line in pending.splitlines()
                 if line.startswith("pushnode_pending_messages"))
    assert stored == 400, "every push waits for its offline device"
    # Refused against a plain MQTT broker: there is no HTTP API to measure.
    proc = subprocess.run([str(LOADGEN_BIN), "unicast", "--target", "mqtt", "--mqtt", node.mqtt_addr,
                           "--connections", "1", "--rate", "1", "--duration-secs", "1", "--offline"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "--offline" in proc.stderr, proc.stderr


def test_churn(node, tmp_path):
    r = run_loadgen(node, tmp_path, "churn", "--connections", "100", "--churn-per-sec", "20",
                    "--rate", "100", "--duration-secs", "3")
    assert_connected(r, 100)
    assert r["messages_sent"] == 300, r
    assert r["lost"] == 0, r
    assert r["reconnects"] > 0, r
    assert r["deliveries"] == 300, r


# ------------------------------------------------------------------------------------
# MQTT over TLS (--tls-ca)
# ------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path):
    ca, crt, key = _make_ca(tmp_path)
    return {"ca": str(ca), "cert": str(crt), "key": str(key)}


@pytest.fixture
def tls_node(make_node, tls_files):
    port = free_port()
    node = make_node(extra_args=("--mqtt-tls-listen", f"127.0.0.1:{port}",
                                 "--tls-cert", tls_files["cert"], "--tls-key", tls_files["key"]))
    node.mqtts_addr = f"127.0.0.1:{port}"
    return node


def test_idle_tls(tls_node, tls_files, tmp_path):
    r = run_loadgen(tls_node, tmp_path, "idle", "--connections", "50", "--hold-secs", "1",
                    "--server-pid", str(tls_node.proc.pid), "--tls-ca", tls_files["ca"],
                    mqtt=tls_node.mqtts_addr)
    assert_connected(r, 50)
    assert r["server_rss_after"] > 0 and r["slab_after"] > 0, r
    assert "user_bytes_per_conn" in r and "kernel_bytes_per_conn" in r, r


def test_unicast_tls(tls_node, tls_files, tmp_path):
    """Pushes reach devices through TLS (records opened in the shared buffers, PUBACKs sealed)."""
    r = run_loadgen(tls_node, tmp_path, "unicast", "--connections", "50", "--rate", "50",
                    "--duration-secs", "2", "--tls-ca", tls_files["ca"], mqtt=tls_node.mqtts_addr)
    assert_connected(r, 50)
    assert r["messages_sent"] == 100, r
    assert r["deliveries"] == 100, r


def test_tls_with_an_untrusted_ca_fails_every_handshake(tls_node, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    stranger_ca, _, _ = _make_ca(other)
    out = tmp_path / "untrusted.json"
    cmd = [str(LOADGEN_BIN), "connect", "--mqtt", tls_node.mqtts_addr, "--http", tls_node.url,
           "--admin-token-file", str(tls_node.data_dir / "admin.token"), "--connections", "5",
           "--handshake-timeout-secs", "5", "--timeout-secs", "30", "--json", str(out),
           "--tls-ca", str(stranger_ca)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["connected"] == 0, r
    assert sum(r["failed"].values()) == 5 and all(k.startswith("tls:") for k in r["failed"]), r


@pytest.fixture
def mosquitto_tls(tmp_path, tls_files):
    """mosquitto with one MQTT-over-TLS listener on a free loopback port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK):
        pytest.skip("mosquitto not installed")
    port = free_port()
    # mosquitto started as root reads its certificates after dropping to its own user,
    # which cannot enter pytest's private tmp_path: a world-readable copy for it.
    shared = tempfile.mkdtemp(prefix="loadgen-smoke-tls-")
    os.chmod(shared, 0o755)
    files = {}
    for name, path in tls_files.items():
        files[name] = shutil.copy(path, shared)
        os.chmod(files[name], 0o644)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"cafile {files['ca']}\ncertfile {files['cert']}\n"
                    f"keyfile {files['key']}\nlog_dest stderr\n")
    log = open(tmp_path / "mosquitto.log", "wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(shared, ignore_errors=True)


def test_connect_and_idle_tls_against_an_mqtt_broker(mosquitto_tls, tls_files, tmp_path):
    tls = ("--target", "mqtt", "--tls-ca", tls_files["ca"])
    r = run_loadgen(None, tmp_path, "connect", "--connections", "50", *tls, mqtt=mosquitto_tls)
    assert r["target"] == "mqtt"
    assert_connected(r, 50)
    r = run_loadgen(None, tmp_path, "idle", "--connections", "50", "--hold-secs", "1", *tls,
                    mqtt=mosquitto_tls)
    assert_connected(r, 50)


class FirstTryDroppingBroker:
    """A minimal MQTT 3.1.1 broker that closes each client's first connection right after
    its CONNECT (as an overloaded server's accept queue or a broken link would) and serves
    later ones: CONNACK, SUBACK, then holds them until the client leaves. A client is its
    client id less loadgen's `-try<k>` suffix (a retry comes under an id of its own);
    `retry_ids` keeps the ids the later connections came with."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.seen: set[bytes] = set()
        self.retry_ids: list[bytes] = []
        self.dropped = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        peer = RawClient("", 0, version=4, sock=conn)
        with conn:
            try:
                kind, body = peer.read_packet(timeout=30)
                assert kind >> 4 == 1, kind  # CONNECT
                name_len = int.from_bytes(body[0:2], "big")
                pos = 2 + name_len + 1 + 1 + 2  # protocol name, level, flags, keep-alive
                id_len = int.from_bytes(body[pos:pos + 2], "big")
                client_id = body[pos + 2:pos + 2 + id_len]
                client = re.sub(rb"-try[0-9]+$", b"", client_id)
                with self.lock:
                    first_try = client not in self.seen
                    self.seen.add(client)
                    self.dropped += first_try
                    if not first_try:
                        self.retry_ids.append(client_id)
                if first_try:
                    return
                peer.send(packet(0x20, bytes([0, 0])))  # CONNACK accepted
                kind, body = peer.read_packet(timeout=30)
                assert kind >> 4 == 8, kind  # SUBSCRIBE
                peer.send(packet(0x90, body[0:2] + bytes([1])))  # SUBACK QoS 1
                while True:
                    kind, _ = peer.read_packet(timeout=60)
                    if kind >> 4 == 12:  # PINGREQ
                        peer.send(packet(0xD0, b""))  # PINGRESP
            except (Closed, TimeoutError, OSError):
                return

    def close(self):
        self.sock.close()


def test_hold_scenarios_retry_a_first_connection_that_breaks(tmp_path):
    broker = FirstTryDroppingBroker()
    try:
        r = run_loadgen(None, tmp_path, "idle", "--target", "mqtt", "--mqtt-version", "3",
                        "--connections", "20", "--hold-secs", "1", mqtt=broker.addr)
        assert_connected(r, 20)
        assert r["connect_retries"] == 20 and broker.dropped == 20, (r, broker.dropped)
        # A retry's CONNECT does not reuse the abandoned try's client id: a broker that reads
        # the old CONNECT late would take the id over and close the live connection.
        assert len(broker.retry_ids) == 20 and all(i.endswith(b"-try1") for i in broker.retry_ids), broker.retry_ids
        # `connect` measures single attempts: every client's first (and only) try fails.
        broker.seen.clear()
        out = tmp_path / "connect.json"
        proc = subprocess.run(
            [str(LOADGEN_BIN), "connect", "--target", "mqtt", "--mqtt-version", "3", "--mqtt", broker.addr,
             "--connections", "5", "--timeout-secs", "30", "--json", str(out)],
            capture_output=True, text=True, timeout=RUN_TIMEOUT)
        report = json.loads(out.read_text())
        assert report["connected"] == 0 and "connect_retries" not in report, (proc.stdout, report)
    finally:
        broker.close()
