"""Push delivery: online, offline, across restarts, receipts, re-sends with DUP."""

import concurrent.futures
import time

import pytest

import mqttraw


def _check_envelope(env: dict, msg_id, sent: dict, ttl: int, t0: float, t1: float):
    assert isinstance(env, dict), f"payload is not a JSON object: {env!r}"
    expected_keys = {"id", "type", "title", "description", "payload", "notify_id", "extra",
                     "sent_at", "expires_at"}
    assert expected_keys <= set(env), f"envelope lacks {expected_keys - set(env)}: {env}"
    assert env["id"] == msg_id, env
    for k in ("type", "title", "description", "payload", "notify_id", "extra"):
        assert env[k] == sent[k], f"envelope {k}: {env[k]!r} != sent {sent[k]!r}"
    assert isinstance(env["sent_at"], int) and isinstance(env["expires_at"], int), env
    assert int(t0) - 2 <= env["sent_at"] <= int(t1) + 2, (env["sent_at"], t0, t1)
    assert abs(env["expires_at"] - env["sent_at"] - ttl) <= 2, env


SENT = {
    "type": "notification",
    "title": "Hello",
    "description": "World \u00e9\u4e2d",
    "payload": "{\"deep\":\"link\"}",
    "notify_id": 7,
    "extra": {"sound": "default", "k": "v"},
}


def _push_online(node, app, version):
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=version)
    dev.connect()
    ttl = 3600
    t0 = time.time()
    res = node.send(app, [regid], ttl=ttl, **SENT)
    t1 = time.time()
    assert res["targets"] == 1, res
    assert res["invalid"] == [], res
    assert res.get("id") not in (None, ""), res
    msg = dev.wait_messages(1, timeout=10)[0]
    assert msg["topic"] == "inbox", msg
    assert msg["qos"] == 1, msg
    assert msg["dup"] is False, msg
    assert msg["retain"] is False, msg
    _check_envelope(msg["payload"], res["id"], SENT, ttl, t0, t1)
    if version == 5:
        mei = msg["props"].get("MessageExpiryInterval")
        assert mei is not None, f"no Message Expiry Interval: {msg['props']}"
        assert 0 < mei <= ttl, mei
    node.wait_delivered(app, res["id"], 1)
    dev.expect_no_more(1, wait=0.5)


def test_push_online_v311(node, app):
    _push_online(node, app, 4)


def test_push_online_v5(node, app):
    _push_online(node, app, 5)


def test_push_passthrough(node, app):
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=5)
    dev.connect()
    res = node.send(app, [regid], type="passthrough", title="pt", payload="silent-data")
    env = dev.wait_messages(1)[0]["payload"]
    assert env["id"] == res["id"] and env["type"] == "passthrough", env
    assert env["payload"] == "silent-data", env


def test_push_offline_delivered_on_reconnect(node, app):
    regid, token = node.register(app)
    ids = []
    for i in range(3):
        res = node.send(app, [regid], title=f"m{i}")
        assert res["targets"] == 1 and res["invalid"] == [], res
        ids.append(res["id"])
    assert len(set(ids)) == 3, ids
    dev = node.device(app, regid, token, version=4)
    ack = dev.connect()
    assert ack["session_present"] is True
    got = dev.wait_messages(3, timeout=10)
    assert [m["payload"]["id"] for m in got] == ids, got
    assert [m["payload"]["title"] for m in got] == ["m0", "m1", "m2"]
    assert all(m["topic"] == "inbox" and m["qos"] == 1 for m in got), got
    for i in ids:
        node.wait_delivered(app, i, 1)
    dev.expect_no_more(3, wait=0.5)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_push_survives_restart(node, app, how):
    regid, token = node.register(app)
    res = node.send(app, [regid], title=f"survives-{how}")
    assert res["targets"] == 1, res
    if how == "sigterm":
        node.restart()
        assert not node.last_stop_forced, "node did not exit within 10 s of SIGTERM"
    else:
        node.kill()
        node.start()
    dev = node.device(app, regid, token, version=5)
    dev.connect()  # also proves app and device survived the restart
    msg = dev.wait_messages(1, timeout=10)[0]
    assert msg["payload"]["id"] == res["id"], msg
    assert msg["payload"]["title"] == f"survives-{how}", msg
    node.wait_delivered(app, res["id"], 1)


def test_puback_counts_delivered(node, app):
    r1, t1 = node.register(app)
    r2, t2 = node.register(app)
    d1 = node.device(app, r1, t1, version=4)
    d1.connect()
    res = node.send(app, [r1, r2], title="two")
    assert res["targets"] == 2 and res["invalid"] == [], res
    d1.wait_messages(1)
    st = node.wait_delivered(app, res["id"], 1, timeout=5)
    assert st["targets"] == 2 and str(st["id"]) == str(res["id"]), st
    time.sleep(0.5)
    st = node.status(app, res["id"]).json()
    assert st["delivered"] == 1, f"second device is offline, yet {st}"

    d2 = node.device(app, r2, t2, version=5)
    d2.connect()
    d2.wait_messages(1)
    st = node.wait_delivered(app, res["id"], 2, timeout=5)
    assert st["targets"] == 2, st


def test_manual_ack_controls_delivered(node, app):
    """Delivered counts PUBACKs, not PUBLISHes sent."""
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=5, manual_ack=True)
    dev.connect()
    res = node.send(app, [regid], title="ack-me")
    msg = dev.wait_messages(1)[0]
    time.sleep(0.7)
    st = node.status(app, res["id"]).json()
    assert st["delivered"] == 0, f"delivered before PUBACK: {st}"
    dev.ack(msg)
    node.wait_delivered(app, res["id"], 1)


def test_unacked_resent_with_dup(node, app):
    regid, token = node.register(app)
    raw = node.raw(version=4)
    ack = raw.connect(regid, app["app_id"], token, clean=False)
    assert ack["rc"] == 0, ack
    res = node.send(app, [regid], title="unacked")
    pub = raw.read_publish(timeout=10)
    assert pub["topic"] == "inbox" and pub["qos"] == 1 and pub["pid"], pub
    assert pub["payload"]["id"] == res["id"], pub
    assert pub["dup"] is False, pub
    raw.close()  # no PUBACK, no DISCONNECT
    time.sleep(0.3)
    assert node.status(app, res["id"]).json()["delivered"] == 0

    dev = node.device(app, regid, token, version=4)
    dev.connect()
    msg = dev.wait_messages(1, timeout=10)[0]
    assert msg["payload"]["id"] == res["id"], msg
    assert msg["dup"] is True, f"re-sent message lacks DUP: {msg}"
    node.wait_delivered(app, res["id"], 1)  # paho acked it
    dev.disconnect()

    dev2 = node.device(app, regid, token, version=4)
    dev2.connect()
    dev2.expect_no_more(0, wait=1.0)
    dev2.disconnect()


def test_unacked_resent_in_order(node, app):
    regid, token = node.register(app)
    raw = node.raw(version=5)
    assert raw.connect(regid, app["app_id"], token)["rc"] == 0
    ids = [node.send(app, [regid], title=f"o{i}")["id"] for i in range(3)]
    seen = [raw.read_publish(timeout=10)["payload"]["id"] for _ in range(3)]
    assert seen == ids
    raw.close()
    dev = node.device(app, regid, token, version=5)
    dev.connect()
    got = dev.wait_messages(3, timeout=10)
    assert [m["payload"]["id"] for m in got] == ids, got
    assert all(m["dup"] for m in got), got


def test_invalid_and_foreign_regids(node, app):
    app_b = node.create_app(name="b")
    rb, tb = node.register(app_b)
    dev_b = node.device(app_b, rb, tb, version=5)
    dev_b.connect()
    garbage = "not a regid!"

    res = node.send(app, [rb, garbage], title="foreign")
    assert res["targets"] == 0, res
    assert sorted(res["invalid"]) == sorted([rb, garbage]), res

    ra, ta = node.register(app)
    res = node.send(app, [ra, rb, garbage], title="mixed")
    assert res["targets"] == 1, res
    assert sorted(res["invalid"]) == sorted([rb, garbage]), res

    dev_b.expect_no_more(0, wait=1.5)
    dev_a = node.device(app, ra, ta, version=4)
    dev_a.connect()
    assert dev_a.wait_messages(1)[0]["payload"]["title"] == "mixed"


def test_a_push_acked_then_reconnected_before_its_commit_is_not_sent_again(make_node):
    """A push goes out before its commit. A device that acknowledges it, disconnects and
    connects again before that commit completes must not get it again on the new
    connection (it used to, with DUP: the commit's completion sent it to whatever
    connection the device had then). fsync durability makes the commit the slow side of
    the race; the test runs it many times over."""
    node = make_node(extra_args=("--durability", "fsync"))
    app = node.create_app()
    regid, token = node.register(app)
    raw = node.raw(version=5)
    assert raw.connect(regid, app["app_id"], token, clean=False)["rc"] == 0
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    raced, again = 0, []
    for i in range(40):
        answer = pool.submit(node.send, app, [regid], title=f"race{i}")
        pub = raw.read_publish(timeout=10)
        raw.send(mqttraw.puback_packet(pub["pid"]) + mqttraw.packet(0xE0, b"\x00\x00"))
        raw.close()
        raw = node.raw(version=5)
        assert raw.connect(regid, app["app_id"], token, clean=False)["rc"] == 0
        raced += not answer.done()
        msg_id = answer.result(timeout=10)["id"]
        assert pub["payload"]["id"] == msg_id, pub
        try:
            again.append(raw.read_publish(timeout=0.3))
        except TimeoutError:
            pass
    pool.shutdown()
    assert raced > 0, "every commit completed before the device was back: the race was not run"
    assert not again, f"{len(again)} acknowledged pushes sent again ({raced} of 40 reconnects raced the commit): {again[:3]}"
