"""MQTT profile edges: malformed bytes, out-of-profile SUBSCRIBE, a stock client (mosquitto_sub)."""

import json
import random
import shutil
import subprocess
import time

import mqttraw


def _register_raw_v5(node, app):
    c = node.raw(version=5)
    ack = c.connect("", app["app_id"], app["app_key"], clean=False)
    assert ack["rc"] == 0, ack
    return c, ack


def _expect_disconnect_or_close(c, reason, timeout=5.0):
    """The node either sends DISCONNECT(reason) and closes, or just closes."""
    pkts = c.expect_closed(timeout=timeout)
    for first, body in pkts:
        assert first == 0xE0, f"unexpected packet {first:#x} {body!r} before close"
        assert body and body[0] == reason, f"DISCONNECT reason {body!r}, expected {reason:#x}"
    return pkts


def test_malformed_packet(node, app):
    # A bystander device that must be unaffected.
    regid, token = node.register(app)
    bystander = node.device(app, regid, token, version=5)
    bystander.connect()

    # Valid MQTT 5 registration, then garbage: reserved packet type 0.
    c, _ = _register_raw_v5(node, app)
    c.send(b"\x00\x00\xff")
    pkts = _expect_disconnect_or_close(c, 0x81)
    print("after reserved type 0:", pkts)

    # Valid MQTT 5 registration, then a PUBLISH whose remaining length varint is too long.
    c, _ = _register_raw_v5(node, app)
    c.send(b"\x30\xff\xff\xff\xff\x7f")
    _expect_disconnect_or_close(c, 0x81)

    # MQTT 3.1.1 connection + garbage -> closed (no DISCONNECT in 3.1.1).
    r2, t2 = node.register(app)
    c = node.raw(version=4)
    assert c.connect(r2, app["app_id"], t2)["rc"] == 0
    c.send(b"\x00\x00\xff")
    pkts = c.expect_closed(timeout=5)
    assert pkts == [], f"3.1.1: packets before close: {pkts}"

    # First packet not CONNECT (PINGREQ) -> closed without PINGRESP.
    c = node.raw(version=4)
    c.send(b"\xc0\x00")
    pkts = c.expect_closed(timeout=5)
    assert all(p[0] >> 4 != mqttraw.PINGRESP for p in pkts), pkts

    # First packet a SUBSCRIBE -> closed.
    c = node.raw(version=5)
    c.send(mqttraw.subscribe_packet(1, "inbox", 1, version=5))
    pkts = c.expect_closed(timeout=5)
    assert all(p[0] >> 4 != mqttraw.SUBACK for p in pkts), pkts

    # Random bytes as a first packet (a complete frame that is not CONNECT) -> closed.
    rnd = random.Random(20240611)
    for first in (0x00, 0x20, 0x30, 0x82, 0xC0, 0xF0, 0xFF):
        n = rnd.randrange(0, 128)
        c = node.raw(version=4)
        c.send(bytes([first, n]) + rnd.randbytes(n + 64))
        c.expect_closed(timeout=5)

    # A CONNECT with a bogus protocol name -> closed (3.1.1 may answer CONNACK rc 1 first).
    c = node.raw(version=4)
    body = mqttraw.mqtt_str("MQXX") + bytes([4, 0x02]) + b"\x00\x3c" + mqttraw.mqtt_str("x")
    c.send(mqttraw.packet(0x10, body))
    pkts = c.expect_closed(timeout=5)
    for first, b in pkts:
        assert first == 0x20 and b[1] != 0, f"bogus protocol name accepted: {pkts}"

    # The node is still healthy and the bystander still gets pushes.
    assert node.healthy()
    res = node.send(app, [regid], title="still-here")
    msg = bystander.wait_messages(1, timeout=10)[0]
    assert msg["payload"]["id"] == res["id"], msg
    assert bystander.client.is_connected()


def test_keepalive_ping(node, app):
    regid, token = node.register(app)
    c = node.raw(version=4)
    assert c.connect(regid, app["app_id"], token, keepalive=2)["rc"] == 0
    c.send(b"\xc0\x00")
    first, body = c.read_packet(timeout=5)
    assert first == 0xD0 and body == b"", (first, body)
    # Silent for 1.5 x keep-alive (3 s) -> closed; allow generous slack.
    t0 = time.monotonic()
    c.expect_closed(timeout=10)
    assert time.monotonic() - t0 >= 2.0, "closed earlier than the keep-alive allows"


def test_out_of_profile_subscribe(node, app):
    regid, token = node.register(app)

    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    codes = c.subscribe("#", pid=1)
    assert len(codes) == 1 and codes[0] >= 0x80, f"v5 SUBSCRIBE '#': {codes}"
    codes = c.subscribe("other/topic", pid=2)
    assert len(codes) == 1 and codes[0] >= 0x80, f"v5 SUBSCRIBE 'other/topic': {codes}"
    codes = c.subscribe("inbox/+", pid=3)
    assert codes[0] >= 0x80, f"v5 SUBSCRIBE 'inbox/+': {codes}"
    codes = c.subscribe("inbox", pid=4)
    assert codes == [1], f"v5 SUBSCRIBE 'inbox': {codes}"
    # Connection still usable after refusals: a push arrives.
    res = node.send(app, [regid], title="after-sub")
    pub = c.read_publish(timeout=10)
    assert pub["payload"]["id"] == res["id"] and pub["topic"] == "inbox", pub
    c.puback(pub["pid"])
    node.wait_delivered(app, res["id"], 1)
    c.disconnect()

    c = node.raw(version=4)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    assert c.subscribe("#", pid=7) == [0x80]
    assert c.subscribe("other/topic", pid=8) == [0x80]
    assert c.subscribe("inbox", pid=9) == [1]
    c.disconnect()

    # paho's view (v5) of the same
    dev = node.device(app, regid, token, version=5)
    dev.connect()
    codes = dev.subscribe("#")
    assert len(codes) == 1 and codes[0] >= 0x80, f"paho v5 SUBSCRIBE '#': {codes}"
    assert dev.subscribe("inbox") == [1]
    dev.disconnect()


def test_unsubscribe_answered(node, app):
    regid, token = node.register(app)
    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    c.send(mqttraw.packet(0xA2, b"\x00\x05" + b"\x00" + mqttraw.mqtt_str("nothing")))
    first, body = c.read_packet(timeout=5)
    assert first == 0xB0, (first, body)
    assert body[:2] == b"\x00\x05", body
    _, pos = mqttraw.parse_properties(body, 2)
    assert list(body[pos:]) == [0x11], body
    c.disconnect()


def test_mosquitto_sub(node, app):
    exe = shutil.which("mosquitto_sub")
    assert exe, "mosquitto_sub not installed (scripts/install-test-deps)"
    regid, token = node.register(app)
    proc = subprocess.Popen(
        [exe, "-h", "127.0.0.1", "-p", str(node.mqtt_port), "-i", regid,
         "-u", app["app_id"], "-P", token, "-c", "-q", "1", "-t", "inbox",
         "-C", "1", "-W", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        res = node.send(app, [regid], title="from-mosquitto")
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, f"mosquitto_sub rc {proc.returncode}: {out!r} {err!r}"
    lines = [ln for ln in out.decode().splitlines() if ln.strip()]
    assert len(lines) == 1, out
    env = json.loads(lines[0])
    assert env["id"] == res["id"] and env["title"] == "from-mosquitto", env
    node.wait_delivered(app, res["id"], 1)


def test_mosquitto_sub_v5_and_pub_refused(node, app):
    """mosquitto_sub over MQTT 5 receives too; a device PUBLISH (QoS 1, v5) gets PUBACK 0x87."""
    exe = shutil.which("mosquitto_sub")
    assert exe
    regid, token = node.register(app)
    proc = subprocess.Popen(
        [exe, "-V", "5", "-h", "127.0.0.1", "-p", str(node.mqtt_port), "-i", regid,
         "-u", app["app_id"], "-P", token, "-c", "-x", "3600", "-q", "1", "-t", "inbox",
         "-C", "1", "-W", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        res = node.send(app, [regid], title="v5-mosquitto")
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, f"mosquitto_sub -V 5 rc {proc.returncode}: {out!r} {err!r}"
    assert json.loads(out.decode().strip().splitlines()[0])["id"] == res["id"], out
    node.wait_delivered(app, res["id"], 1)  # mosquitto_sub acked it

    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("up") + b"\x00\x09" + b"\x00" + b"hi"))
    first, body = c.read_packet(timeout=5)
    assert first == 0x40 and body[:2] == b"\x00\x09", (first, body)
    assert len(body) >= 3 and body[2] == 0x87, f"PUBACK reason: {body!r}"
    c.disconnect()


def test_sigterm_closes_devices_with_0x8b(node, app):
    """Graceful shutdown: MQTT 5 devices get DISCONNECT 0x8B (server shutting down) and the
    node exits within its bounded time."""
    regid, token = node.register(app)
    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    node.stop()
    assert node.last_exit == 0 and not node.last_stop_forced, "no clean exit within 10 s of SIGTERM"
    packets = c.expect_closed(timeout=5)
    assert any(first == 0xE0 and body[:1] == b"\x8b" for first, body in packets), packets
