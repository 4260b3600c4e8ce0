"""Every way to target a push: topics (device SUBSCRIBE and HTTP), topic expressions,
broadcast to all, aliases (device control publishes and HTTP), with offline catch-up,
limits and isolation between apps."""

import json
import struct
import time

import mqttraw
import pytest


def _group_push(node, app, target: dict, **fields) -> dict:
    body = {"target": target, "type": "passthrough", "payload": "p"}
    body.update(fields)
    r = node.http("POST", "/v1/messages", headers={"Authorization": f"key={app['app_secret']}"}, json=body)
    assert r.status_code == 200, f"POST /v1/messages {target} -> {r.status_code} {r.text}"
    return r.json()


def _online(node, app, version=5, topics=()):
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=version)
    dev.connect()
    for topic in topics:
        assert dev.subscribe(f"topic/{topic}") == [1], f"SUBSCRIBE topic/{topic} refused"
    return regid, token, dev


def test_an_offline_member_catches_up_on_more_topic_messages_than_kept_in_memory(node, app):
    """A shard keeps its last 256 group messages in memory for devices that read them back;
    a device further behind reads the older ones from the store, then the rest, in order."""
    regid, token, dev = _online(node, app, topics=["many"])
    dev.disconnect()
    sent = [_group_push(node, app, {"topic": "many"}, payload=f"m{i}")["id"] for i in range(300)]
    again = node.device(app, regid, token)
    again.connect()
    got = again.wait_messages(300, timeout=30)
    again.expect_no_more(300, wait=0.5)
    assert [m["payload"]["id"] for m in got] == sent
    assert [m["payload"]["payload"] for m in got] == [f"m{i}" for i in range(300)]


def test_topic_push_online_offline_and_late_joiner(node, app):
    a_regid, _, a = _online(node, app, version=5, topics=["news"])
    b_regid, b_token, b = _online(node, app, version=4, topics=["news"])
    _, _, c = _online(node, app, version=5)  # not in the topic
    b.disconnect()

    res = _group_push(node, app, {"topic": "news"}, payload="breaking")
    assert res["targets"] == 2, res
    msg = a.wait_messages(1)[0]
    assert msg["topic"] == "topic/news", msg
    assert msg["payload"]["id"] == res["id"] and msg["payload"]["payload"] == "breaking", msg
    c.expect_no_more(0, wait=0.5)

    # The offline member catches up on reconnect, on the topic it joined.
    b2 = node.device(app, b_regid, b_token, version=4)
    b2.connect()
    got = b2.wait_messages(1)[0]
    assert got["topic"] == "topic/news" and got["payload"]["id"] == res["id"], got
    node.wait_delivered(app, res["id"], 2)

    # A device that joins after the push does not get the old message.
    _, _, late = _online(node, app, topics=["news"])
    late.expect_no_more(0, wait=0.7)


def test_topic_expressions(node, app):
    _, _, x = _online(node, app, topics=["a"])
    _, _, y = _online(node, app, topics=["a", "b"])
    _, _, z = _online(node, app, topics=["b"])
    # Each target gets the message on the first topic of the expression it is in.
    cases = [
        ({"topics": ["a", "b"], "op": "union"}, {"x": "topic/a", "y": "topic/a", "z": "topic/b"}),
        ({"topics": ["b", "a"], "op": "union"}, {"x": "topic/a", "y": "topic/b", "z": "topic/b"}),
        ({"topics": ["a", "b"], "op": "intersection"}, {"y": "topic/a"}),
        ({"topics": ["a", "b"], "op": "difference"}, {"x": "topic/a"}),
    ]
    devices = {"x": x, "y": y, "z": z}
    seen = {name: 0 for name in devices}
    for target, expected in cases:
        res = _group_push(node, app, target)
        assert res["targets"] == len(expected), (target, res)
        for name, dev in devices.items():
            if name in expected:
                seen[name] += 1
                msgs = dev.wait_messages(seen[name])
                assert msgs[-1]["payload"]["id"] == res["id"], (target, name, msgs[-1])
                assert msgs[-1]["topic"] == expected[name], (target, name, msgs[-1])
        for name, dev in devices.items():
            dev.expect_no_more(seen[name], wait=0.3)


def test_broadcast_reaches_every_device_of_the_app_only(node, app):
    _, _, online = _online(node, app, version=4)
    off_regid, off_token = node.register(app)
    other_app = node.create_app(name="other")
    _, _, stranger = _online(node, other_app)

    res = _group_push(node, app, {"all": True}, type="notification", title="to all")
    assert res["targets"] == 2, res
    msg = online.wait_messages(1)[0]
    assert msg["topic"] == "inbox" and msg["payload"]["title"] == "to all", msg
    stranger.expect_no_more(0, wait=0.5)

    late = node.device(app, off_regid, off_token)
    late.connect()
    assert late.wait_messages(1)[0]["payload"]["id"] == res["id"]
    # Registered after the broadcast: nothing.
    _, _, newcomer = _online(node, app)
    newcomer.expect_no_more(0, wait=0.5)
    node.wait_delivered(app, res["id"], 2)


def test_aliases_from_devices_and_http(node, app):
    r1, t1 = node.register(app)
    r2, t2 = node.register(app)
    r3, _ = node.register(app)
    # Devices set their alias with a QoS 1 control publish; MQTT 5 answers PUBACK 0.
    for regid, token in ((r1, t1), (r2, t2)):
        c = node.raw(version=5)
        assert c.connect(regid, app["app_id"], token)["rc"] == 0
        c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("ctl/alias/set") + struct.pack("!H", 7) + b"\x00" + b"user-42"))
        first, body = c.read_packet()
        assert first == 0x40 and body[:2] == b"\x00\x07", (first, body)
        assert len(body) == 2 or body[2] == 0, body
        c.disconnect()
    auth = {"Authorization": f"key={app['app_secret']}"}
    r = node.http("POST", f"/v1/devices/{r3}/aliases", headers=auth, json={"alias": "user-42"})
    assert r.status_code == 200, r.text
    r = node.http("GET", "/v1/aliases/user-42", headers=auth)
    assert r.status_code == 200 and sorted(r.json()["regids"]) == sorted([r1, r2, r3]), r.text

    res = _group_push(node, app, {"aliases": ["user-42", "nobody"]})
    assert res["targets"] == 3 and res["invalid"] == ["nobody"], res
    # Both the phone and the tablet of the account get it.
    for regid, token in ((r1, t1), (r2, t2)):
        dev = node.device(app, regid, token)
        dev.connect()
        assert dev.wait_messages(1)[0]["payload"]["id"] == res["id"]
        dev.disconnect()

    r = node.http("DELETE", f"/v1/devices/{r3}/aliases/user-42", headers=auth)
    assert r.status_code == 200, r.text
    assert sorted(node.http("GET", "/v1/aliases/user-42", headers=auth).json()["regids"]) == sorted([r1, r2])

    # Another app sees none of it and cannot touch these devices.
    other = node.create_app(name="other")
    other_auth = {"Authorization": f"key={other['app_secret']}"}
    assert node.http("GET", "/v1/aliases/user-42", headers=other_auth).json()["regids"] == []
    r = node.http("POST", f"/v1/devices/{r1}/aliases", headers=other_auth, json={"alias": "x"})
    assert r.status_code == 404, r.text
    assert _group_push(node, other, {"aliases": ["user-42"]})["targets"] == 0


def test_alias_limit_and_bad_alias(node, app):
    regid, token = node.register(app)
    auth = {"Authorization": f"key={app['app_secret']}"}
    for i in range(10):
        r = node.http("POST", f"/v1/devices/{regid}/aliases", headers=auth, json={"alias": f"a{i}"})
        assert r.status_code == 200, r.text
    r = node.http("POST", f"/v1/devices/{regid}/aliases", headers=auth, json={"alias": "a10"})
    assert r.status_code == 422 and r.json()["code"] == "limit_exceeded", r.text
    r = node.http("POST", f"/v1/devices/{regid}/aliases", headers=auth, json={"alias": "bad/alias"})
    assert r.status_code == 400, r.text
    # Over MQTT 5 the 11th alias gets PUBACK 0x97 (quota exceeded).
    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("ctl/alias/set") + struct.pack("!H", 9) + b"\x00" + b"a11"))
    first, body = c.read_packet()
    assert first == 0x40 and body[:3] == b"\x00\x09\x97", (first, body)
    c.disconnect()


def test_topic_limits_refused_with_suback_codes(make_node, tmp_path):
    config = tmp_path / "limits.toml"
    config.write_text("max_topics_per_device = 2\nmax_topics_per_app = 3\n")
    node = make_node(extra_args=("--config", str(config)))
    app = node.create_app()
    regid, token = node.register(app)
    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    assert c.subscribe("topic/t1", pid=1) == [1]
    assert c.subscribe("topic/t2", pid=2) == [1]
    assert c.subscribe("topic/t3", pid=3) == [0x97], "a third topic is over the device limit"
    c.disconnect()
    r2, t2 = node.register(app)
    c = node.raw(version=4)
    assert c.connect(r2, app["app_id"], t2)["rc"] == 0
    assert c.subscribe("topic/t3", pid=1) == [1]
    assert c.subscribe("topic/t4", pid=2) == [0x80], "a fourth topic is over the app limit"
    c.disconnect()


def test_http_topic_membership(node, app):
    regid, token, dev = _online(node, app)
    other = node.create_app(name="other")
    foreign, _ = node.register(other)
    auth = {"Authorization": f"key={app['app_secret']}"}
    r = node.http("POST", "/v1/topics/sports/subscribe", headers=auth, json={"regids": [regid, foreign, "junk"]})
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == 1 and sorted(r.json()["invalid"]) == sorted([foreign, "junk"]), r.text
    res = _group_push(node, app, {"topic": "sports"})
    assert res["targets"] == 1, res
    assert dev.wait_messages(1)[0]["topic"] == "topic/sports"
    r = node.http("POST", "/v1/topics/sports/unsubscribe", headers=auth, json={"regids": [regid]})
    assert r.status_code == 200 and r.json()["changed"] == 1, r.text
    assert _group_push(node, app, {"topic": "sports"})["targets"] == 0
    dev.expect_no_more(1, wait=0.5)


def test_topics_and_aliases_survive_restart(make_node):
    node = make_node()
    app = node.create_app()
    regid, token, dev = _online(node, app, topics=["weather"])
    auth = {"Authorization": f"key={app['app_secret']}"}
    assert node.http("POST", f"/v1/devices/{regid}/aliases", headers=auth, json={"alias": "me"}).status_code == 200
    dev.close()
    node.kill()
    node.start()
    topic_res = _group_push(node, app, {"topic": "weather"})
    alias_res = _group_push(node, app, {"aliases": ["me"]})
    assert topic_res["targets"] == 1 and alias_res["targets"] == 1, (topic_res, alias_res)
    dev = node.device(app, regid, token)
    dev.connect()
    got = dev.wait_messages(2)
    assert [m["payload"]["id"] for m in got] == [topic_res["id"], alias_res["id"]], got
    assert got[0]["topic"] == "topic/weather" and got[1]["topic"] == "inbox", got


@pytest.mark.parametrize("how", ["sigterm", "sigkill-after-a-second"])
def test_an_acknowledged_topic_message_is_not_sent_again_after_a_restart(make_node, how):
    """A device's group cursor is held in memory and written at most once a second (and when
    the node stops): after a stop, or a crash more than a second after the acknowledgement,
    the device does not get the topic message again; the next one still comes."""
    node = make_node()
    app = node.create_app()
    regid, token, dev = _online(node, app, topics=["once"])
    # Two, acknowledged one after the other: the first's cursor may be written at once, the
    # second's then waits in memory.
    sent = []
    for n in (1, 2):
        sent.append(_group_push(node, app, {"topic": "once"})["id"])
        assert [m["payload"]["id"] for m in dev.wait_messages(n)] == sent
        node.wait_delivered(app, sent[-1], 1)
    dev.close()
    if how == "sigterm":
        node.restart()
        assert not node.last_stop_forced, "node did not exit within 10 s of SIGTERM"
    else:
        time.sleep(2.5)  # past the cursor's flush interval (1 s) and the log's sync (1 s)
        node.kill()
        node.start()
    third = _group_push(node, app, {"topic": "once"})
    dev = node.device(app, regid, token)
    dev.connect()
    got = dev.wait_messages(1)
    dev.expect_no_more(1, wait=0.5)
    assert [m["payload"]["id"] for m in got] == [third["id"]], got


def test_bad_targets_are_400(node, app):
    auth = {"Authorization": f"key={app['app_secret']}"}
    for target in ({}, {"topic": "a/b"}, {"topics": ["a"] * 6}, {"all": False}, {"regids": ["x"], "topic": "y"}):
        r = node.http("POST", "/v1/messages", headers=auth, json={"target": target, "title": "t"})
        assert r.status_code == 400 and r.json()["code"] == "bad_request", (target, r.text)


def _quiet_now() -> dict:
    """A quiet period (UTC) from a minute ago to two minutes ahead."""
    import time as _t
    now_min = int(_t.time() // 60) % 1440
    fmt = lambda m: f"{(m % 1440) // 60:02d}:{m % 60:02d}"  # noqa: E731
    return {"start": fmt(now_min - 1), "end": fmt(now_min + 2), "utc_offset_minutes": 0}


def test_quiet_hours_hold_pushes_until_they_end(node, app):
    regid, token = node.register(app)
    # The device sets its quiet hours with a control publish (MQTT 5 PUBACK 0).
    c = node.raw(version=5)
    assert c.connect(regid, app["app_id"], token)["rc"] == 0
    payload = json.dumps(_quiet_now()).encode()
    c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("ctl/quiet") + struct.pack("!H", 3) + b"\x00" + payload))
    first, body = c.read_packet()
    assert first == 0x40 and (len(body) == 2 or body[2] == 0), (first, body)
    c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("ctl/quiet") + struct.pack("!H", 4) + b"\x00" + b"{bad"))
    first, body = c.read_packet()
    assert first == 0x40 and body[2] == 0x99, "malformed quiet hours are refused"
    c.disconnect()

    dev = node.device(app, regid, token)
    dev.connect()
    res = node.send(app, [regid], title="shh")
    dev.expect_no_more(0, wait=1.5)  # held on the node during quiet hours
    # The app server clears them (or they end): the held push goes out at once.
    auth = {"Authorization": f"key={app['app_secret']}"}
    r = node.http("DELETE", f"/v1/devices/{regid}/quiet", headers=auth)
    assert r.status_code == 200, r.text
    assert dev.wait_messages(1)[0]["payload"]["id"] == res["id"]

    # Set over HTTP too, and it survives a restart.
    r = node.http("PUT", f"/v1/devices/{regid}/quiet", headers=auth, json=_quiet_now())
    assert r.status_code == 200, r.text
    assert node.http("PUT", f"/v1/devices/{regid}/quiet", headers=auth, json={"start": "25:00", "end": "01:00"}).status_code == 400
    dev.close()
    node.stop()
    node.start()
    dev = node.device(app, regid, token)
    dev.connect()
    held = node.send(app, [regid], title="later")
    dev.expect_no_more(0, wait=1.5)
    assert node.http("DELETE", f"/v1/devices/{regid}/quiet", headers=auth).status_code == 200
    assert dev.wait_messages(1)[0]["payload"]["id"] == held["id"]


def test_pending_queue_bound_drops_oldest_and_counts(make_node, tmp_path):
    config = tmp_path / "pending.toml"
    config.write_text("max_pending_per_device = 3\n")
    node = make_node(extra_args=("--config", str(config)))
    app = node.create_app()
    regid, token = node.register(app)
    ids = [node.send(app, [regid], title=f"m{i}")["id"] for i in range(5)]
    dev = node.device(app, regid, token)
    dev.connect()
    got = [m["payload"]["id"] for m in dev.wait_messages(3)]
    assert got == ids[2:], "the two oldest were dropped, the rest arrive in order"
    dev.expect_no_more(3, wait=0.7)
    auth = {"Authorization": f"key={app['app_secret']}"}

    def dropped():
        rows = node.http("GET", "/v1/stats/push", headers=auth).json()
        return rows and rows[-1]["dropped"] == 2

    import time as _t
    deadline = _t.time() + 10
    while not dropped() and _t.time() < deadline:
        _t.sleep(0.2)
    assert dropped(), node.http("GET", "/v1/stats/push", headers=auth).text


def test_ttl_expired_messages_are_never_delivered(node, app):
    import time as _t
    regid, token = node.register(app)
    short = node.send(app, [regid], title="short", ttl=1)
    long = node.send(app, [regid], title="long", ttl=600)
    _t.sleep(2.2)
    dev = node.device(app, regid, token)
    dev.connect()
    got = dev.wait_messages(1)
    assert [m["payload"]["id"] for m in got] == [long["id"]], got
    dev.expect_no_more(1, wait=0.7)
    status = node.status(app, short["id"]).json()
    assert status["state"] == "expired" and status["delivered"] == 0, status
