"""The per-source-address connect rate limit (`connect_rate_per_ip`, `connect_burst_per_ip`)
against a real node: 30 connections opened at once from 127.0.0.9 with a limit of 5/s and a
burst of 10 get CONNACK 0 for the burst and 0x9F "Connection rate exceeded" (MQTT 3.1.1:
return code 3) for the rest; another address connects at the same moment; 127.0.0.9 gets
back in once its bucket has refilled; /metrics counts the refusals. Plain and TLS listeners.
"""

from __future__ import annotations

import re
import ssl
import time

import pytest

import mqttraw
from conftest import free_port
from test_tls import _make_ca

RATE, BURST = 5, 10
LIMIT_ARGS = ("--connect-rate-per-ip", str(RATE), "--connect-burst-per-ip", str(BURST))
HOT, OTHER = "127.0.0.9", "127.0.0.10"
OPENED = 30
RATE_EXCEEDED = {5: 0x9F, 4: 3}  # MQTT 5 reason code, MQTT 3.1.1 return code
CONNECT_TIMEOUT_S = 10  # session.rs CONNECT_TIMEOUT_S


def refused_by_rate(node) -> int:
    r = node.http("GET", "/metrics")
    assert r.status_code == 200, r.text
    m = re.search(r'^pushnode_connects_refused_total\{reason="rate"\} (\d+)$', r.text, re.M)
    assert m, "no pushnode_connects_refused_total{reason=\"rate\"} in /metrics"
    return int(m.group(1))


def connack_codes(clients, app, regid, token) -> list[int]:
    """Sends a valid CONNECT on each client in turn and collects the CONNACK codes; a
    refused connection must then be closed by the node."""
    codes = []
    for c in clients:
        rc = c.connect(regid, app["app_id"], token, keepalive=30, timeout=10)["rc"]
        if rc != 0:
            assert c.expect_closed(timeout=5) == [], "the node closes a refused connection"
        codes.append(rc)
        c.close()
    return codes


@pytest.mark.parametrize("version", [5, 4])
def test_burst_then_refused_other_address_unaffected_refill(make_node, version):
    node = make_node(extra_args=LIMIT_ARGS)
    app = node.create_app()
    regid, token = node.register(app)  # over HTTP: uses no MQTT connection
    refused_code = RATE_EXCEEDED[version]

    # Open every TCP connection first (the limit counts accepted connections), then CONNECT.
    hot = [mqttraw.RawClient("127.0.0.1", node.mqtt_port, version, source=HOT) for _ in range(OPENED)]
    node.clients.extend(hot)
    # At the same moment another address is not limited.
    other = node.raw(version=version, source=OTHER)
    assert other.connect(regid, app["app_id"], token)["rc"] == 0
    other.close()

    codes = connack_codes(hot, app, regid, token)
    accepted, refused = codes.count(0), codes.count(refused_code)
    print(f"\nMQTT v{version}: {accepted} accepted, {refused} refused of {OPENED}")
    assert accepted + refused == OPENED, f"only CONNACK 0 or {refused_code:#x} expected: {codes}"
    assert accepted >= BURST, codes
    assert refused >= OPENED - BURST - 5, codes  # a few tokens may refill while opening
    assert refused_by_rate(node) == refused

    # Once the bucket has refilled (burst / rate = 2 s), a whole burst gets in again.
    time.sleep(BURST / RATE + 0.5)
    again = [node.raw(version=version, source=HOT) for _ in range(BURST)]
    assert connack_codes(again, app, regid, token) == [0] * BURST
    assert refused_by_rate(node) == refused


def test_refused_connection_still_needs_connect_in_time(make_node):
    """An over-rate connection that never sends CONNECT is closed by the CONNECT deadline."""
    node = make_node(extra_args=("--connect-rate-per-ip", "1", "--connect-burst-per-ip", "1"))
    first = node.raw(source=HOT)
    silent = node.raw(source=HOT)
    opened = time.monotonic()
    assert first.expect_closed(timeout=CONNECT_TIMEOUT_S + 5) == []
    assert silent.expect_closed(timeout=CONNECT_TIMEOUT_S + 5) == []
    assert time.monotonic() - opened >= CONNECT_TIMEOUT_S - 1
    assert refused_by_rate(node) == 1


def test_rate_limit_on_the_tls_listener(make_node, tmp_path):
    ca, crt, key = _make_ca(tmp_path)
    mqtts = free_port()
    node = make_node(extra_args=(*LIMIT_ARGS, "--mqtt-tls-listen", f"127.0.0.1:{mqtts}",
                                 "--tls-cert", str(crt), "--tls-key", str(key)))
    app = node.create_app()
    regid, token = node.register(app)
    context = ssl.create_default_context(cafile=str(ca))

    socks = [mqttraw.tcp_connect("127.0.0.1", mqtts, source=HOT) for _ in range(OPENED // 2)]
    clients = [mqttraw.RawClient("127.0.0.1", mqtts, 5, sock=context.wrap_socket(s, server_hostname="127.0.0.1"))
               for s in socks]
    node.clients.extend(clients)
    codes = connack_codes(clients, app, regid, token)
    accepted, refused = codes.count(0), codes.count(0x9F)
    print(f"\nMQTT over TLS: {accepted} accepted, {refused} refused of {len(codes)}")
    assert accepted + refused == len(codes), codes
    assert accepted >= BURST and refused >= 1, codes
    assert refused_by_rate(node) == refused
