"""App-server API features around a send, end to end with real paho devices: scheduled sends
(`send_at`, cancel, status, surviving kill -9), `request_id` retries, templates, batches,
the broadcast rate limit and strict send bodies."""

import time

import requests


def _auth(app) -> dict:
    return {"Authorization": f"key={app['app_secret']}"}


def _online(node, app, version=5):
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=version)
    dev.connect()
    return regid, token, dev


def _post(node, app, path, body) -> requests.Response:
    return node.http("POST", path, headers=_auth(app), json=body)


def _send(node, app, body) -> requests.Response:
    return _post(node, app, "/v1/messages", body)


def _note(regid, **fields) -> dict:
    body = {"target": {"regids": [regid]}, "type": "notification", "title": "hello"}
    body.update(fields)
    return body


# ------------------------------------------------------------------------------------
# send_at
# ------------------------------------------------------------------------------------


def test_scheduled_send_fires_at_its_time_not_before(node, app):
    regid, _, dev = _online(node, app)
    send_at = int(time.time()) + 2
    r = _send(node, app, _note(regid, title="later", send_at=send_at))
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["state"] == "scheduled" and res["send_at"] == send_at and res["id"], res

    st = node.status(app, res["id"])
    assert st.status_code == 200 and st.json()["state"] == "scheduled", st.text
    assert st.json()["targets"] == 0 and st.json()["delivered"] == 0, st.text

    dev.expect_no_more(0, wait=max(0.0, send_at - time.time() - 0.3))
    msg = dev.wait_messages(1, timeout=5)[0]
    assert msg["time"] >= send_at, f"arrived {send_at - msg['time']:.3f}s early"
    assert msg["payload"]["id"] == res["id"] and msg["payload"]["title"] == "later", msg
    last = node.wait_delivered(app, res["id"], 1)
    assert last["state"] == "sent" and last["targets"] == 1, last
    dev.expect_no_more(1, wait=0.5)


def test_cancel_prevents_the_send(node, app):
    regid, _, dev = _online(node, app)
    res = _send(node, app, _note(regid, send_at=int(time.time()) + 2)).json()
    assert res["state"] == "scheduled", res
    r = node.http("DELETE", f"/v1/messages/{res['id']}", headers=_auth(app))
    assert r.status_code == 200 and r.json() == {"id": res["id"], "state": "canceled"}, r.text
    assert node.status(app, res["id"]).json()["state"] == "canceled"
    # Canceling twice is fine; another app cannot see it; an unknown id is 404.
    assert node.http("DELETE", f"/v1/messages/{res['id']}", headers=_auth(app)).status_code == 200
    other = node.create_app(name="other")
    assert node.http("DELETE", f"/v1/messages/{res['id']}", headers=_auth(other)).status_code == 404
    assert node.http("DELETE", "/v1/messages/00000000000000ff", headers=_auth(app)).status_code == 404
    dev.expect_no_more(0, wait=3.0)

    # A sent message (immediate or scheduled and fired) cannot be canceled: 409.
    now = node.send(app, regid, title="now")
    dev.wait_messages(1)
    r = node.http("DELETE", f"/v1/messages/{now['id']}", headers=_auth(app))
    assert r.status_code == 409 and r.json()["code"] == "already_sent", r.text
    fired = _send(node, app, _note(regid, send_at=int(time.time()) + 1)).json()
    dev.wait_messages(2, timeout=5)
    r = node.http("DELETE", f"/v1/messages/{fired['id']}", headers=_auth(app))
    assert r.status_code == 409 and r.json()["code"] == "already_sent", r.text


def test_scheduled_message_survives_kill_9(make_node):
    node = make_node()
    app = node.create_app()
    regid, token = node.register(app)
    send_at = int(time.time()) + 4
    res = _send(node, app, _note(regid, title="durable", send_at=send_at)).json()
    assert res["state"] == "scheduled", res
    node.kill()
    node.start()
    assert node.status(app, res["id"]).json()["state"] in ("scheduled", "sent")
    dev = node.device(app, regid, token)
    dev.connect()
    msg = dev.wait_messages(1, timeout=10)[0]
    assert msg["payload"]["id"] == res["id"] and msg["payload"]["title"] == "durable", msg
    assert msg["time"] >= send_at
    node.wait_delivered(app, res["id"], 1)
    dev.expect_no_more(1, wait=0.5)


def test_send_at_limits_and_formats(node, app):
    regid, _, dev = _online(node, app)
    r = _send(node, app, _note(regid, send_at=int(time.time()) + 7 * 24 * 3600 + 60))
    assert r.status_code == 400 and "7 days" in r.json()["message"], r.text
    r = _send(node, app, _note(regid, send_at="tomorrow"))
    assert r.status_code == 400 and "send_at" in r.json()["message"], r.text

    # A past time sends now: a normal answer and the device gets it at once.
    r = _send(node, app, _note(regid, title="past", send_at=int(time.time()) - 60))
    assert r.status_code == 200 and "state" not in r.json() and r.json()["targets"] == 1, r.text
    assert dev.wait_messages(1, timeout=3)[0]["payload"]["title"] == "past"
    r = _send(node, app, _note(regid, title="past3339", send_at="2001-02-03T04:05:06Z"))
    assert r.status_code == 200 and r.json()["targets"] == 1, r.text
    assert dev.wait_messages(2, timeout=3)[1]["payload"]["title"] == "past3339"

    # RFC 3339 with an offset, in the future.
    ahead = int(time.time()) + 3600
    text = time.strftime("%Y-%m-%dT%H:%M:%S+01:00", time.gmtime(ahead + 3600))
    r = _send(node, app, _note(regid, send_at=text))
    assert r.status_code == 200 and r.json()["send_at"] == ahead, r.text
    # Limits are checked when scheduling, not when due.
    r = _send(node, app, _note(regid, title="x" * 51, send_at=ahead))
    assert r.status_code == 400 and "title" in r.json()["message"], r.text


# ------------------------------------------------------------------------------------
# request_id
# ------------------------------------------------------------------------------------


def test_request_id_retry_answers_the_first_answer_and_sends_once(make_node):
    node = make_node()
    app = node.create_app()
    regid, token = node.register(app)
    dev = node.device(app, regid, token)
    dev.connect()
    body = _note(regid, title="once", request_id="order-42")
    first = _send(node, app, body)
    assert first.status_code == 200, first.text
    again = _send(node, app, body)
    assert again.status_code == 200 and again.json() == first.json(), (first.text, again.text)
    assert dev.wait_messages(1)[0]["payload"]["id"] == first.json()["id"]
    dev.expect_no_more(1, wait=0.7)

    # A refused request is remembered too; another request id or another app is new.
    bad = _send(node, app, _note(regid, title="x" * 51, request_id="bad-1"))
    assert bad.status_code == 400
    bad2 = _send(node, app, _note(regid, title="fine", request_id="bad-1"))
    assert bad2.status_code == 400 and bad2.json() == bad.json(), bad2.text
    other = _send(node, app, _note(regid, title="two", request_id="order-43"))
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]
    dev.wait_messages(2)
    r = _send(node, app, _note(regid, request_id="x" * 129))
    assert r.status_code == 400 and "request_id" in r.json()["message"], r.text

    # Remembered durably: the same answer after kill -9, and still nothing new is sent.
    node.wait_delivered(app, first.json()["id"], 1)
    node.wait_delivered(app, other.json()["id"], 1)
    dev.disconnect()
    node.kill()
    node.start()
    dev = node.device(app, regid, token)
    dev.connect()
    after = _send(node, app, body)
    assert after.status_code == 200 and after.json() == first.json(), after.text
    time.sleep(0.7)
    assert not [m for m in dev.messages if m["payload"]["title"] == "once"], dev.messages


# ------------------------------------------------------------------------------------
# templates
# ------------------------------------------------------------------------------------


def test_template_renders_and_missing_variable_is_named(node, app):
    regid, _, dev = _online(node, app)
    r = _post(node, app, "/v1/templates", {
        "name": "welcome",
        "title": "Hi {{name}}",
        "description": "You have {{ count }} new messages",
        "payload": '{"user":"{{name}}"}',
    })
    assert r.status_code == 201, r.text
    tid = r.json()["template_id"]
    got = node.http("GET", f"/v1/templates/{tid}", headers=_auth(app))
    assert got.status_code == 200, got.text
    assert got.json()["title"] == "Hi {{name}}" and sorted(got.json()["variables"]) == ["count", "name"], got.text
    other = node.create_app(name="other")
    assert node.http("GET", f"/v1/templates/{tid}", headers=_auth(other)).status_code == 404

    r = _send(node, app, {"target": {"regids": [regid]}, "template": tid, "vars": {"name": "Ann", "count": 3}})
    assert r.status_code == 200, r.text
    env = dev.wait_messages(1)[0]["payload"]
    assert env["title"] == "Hi Ann" and env["description"] == "You have 3 new messages", env
    assert env["payload"] == '{"user":"Ann"}' and env["id"] == r.json()["id"], env

    r = _send(node, app, {"target": {"regids": [regid]}, "template": tid, "vars": {"name": "Ann"}})
    assert r.status_code == 400 and "count" in r.json()["message"], r.text
    # The rendered message obeys the message limits.
    r = _send(node, app, {"target": {"regids": [regid]}, "template": tid, "vars": {"name": "A" * 60, "count": 1}})
    assert r.status_code == 400 and "title" in r.json()["message"], r.text
    r = _send(node, app, {"target": {"regids": [regid]}, "template": "nope", "vars": {}})
    assert r.status_code == 400 and "template" in r.json()["message"], r.text
    r = _post(node, app, "/v1/templates", {"name": "broken", "title": "Hi {{name"})
    assert r.status_code == 400, r.text
    dev.expect_no_more(1, wait=0.3)


# ------------------------------------------------------------------------------------
# batch
# ------------------------------------------------------------------------------------


def test_batch_sends_each_device_its_own_text(node, app):
    devices = [_online(node, app) for _ in range(3)]
    tid = _post(node, app, "/v1/templates", {"name": "hi", "title": "Hi {{name}}"}).json()["template_id"]
    items = [{"target": {"regids": [regid]}, "vars": {"name": name}}
             for (regid, _, _), name in zip(devices, ["A", "B", "C"])]
    items.insert(2, {"target": {"regids": [devices[0][0]]}, "vars": {"nom": "X"}})  # missing `name`
    r = _post(node, app, "/v1/messages/batch", {"template": "%s" % tid, "type": "notification", "items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4, results
    assert results[2]["error"]["code"] == "bad_request" and "name" in results[2]["error"]["message"], results
    ok = [results[0], results[1], results[3]]
    assert all(res["targets"] == 1 and res["invalid"] == [] for res in ok), results
    assert len({res["id"] for res in ok}) == 3, results
    for (_, _, dev), name, res in zip(devices, ["A", "B", "C"], ok):
        env = dev.wait_messages(1)[0]["payload"]
        assert env["title"] == f"Hi {name}" and env["id"] == res["id"], env
    for _, _, dev in devices:
        dev.expect_no_more(1, wait=0.3)

    # Items can carry their own fields instead of vars; an item's own field wins.
    regid, _, dev = devices[0]
    r = _post(node, app, "/v1/messages/batch", {"type": "notification", "title": "shared", "items": [
        {"target": {"regids": [regid]}},
        {"target": {"regids": [regid]}, "title": "own", "description": "d"},
        {"target": {"regids": ["junk"]}},
    ]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[2]["invalid"] == ["junk"] and results[2]["targets"] == 0, results
    titles = [m["payload"]["title"] for m in dev.wait_messages(3)[1:]]
    assert sorted(titles) == ["own", "shared"], titles

    too_many = [{"target": {"regids": [regid]}}] * 1001
    r = _post(node, app, "/v1/messages/batch", {"title": "t", "items": too_many})
    assert r.status_code == 400 and "1000" in r.json()["message"], r.text
    r = _post(node, app, "/v1/messages/batch", {"title": "t", "bogus": 1, "items": items})
    assert r.status_code == 400 and "bogus" in r.json()["message"], r.text
    dev.expect_no_more(3, wait=0.3)


# ------------------------------------------------------------------------------------
# broadcast rate limit, strict bodies
# ------------------------------------------------------------------------------------


def test_broadcast_twice_quickly_is_429_with_retry_after(node, app):
    _, _, dev = _online(node, app)
    body = {"target": {"all": True}, "type": "notification", "title": "all"}
    assert _send(node, app, body).status_code == 200
    r = _send(node, app, body)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 3, r.headers
    # Another app has its own budget; targeted pushes are not limited.
    other = node.create_app(name="other")
    assert _send(node, other, body).status_code == 200
    regid = node.register(app)[0]
    assert _send(node, app, _note(regid)).status_code == 200
    dev.wait_messages(1)
    time.sleep(retry_after)
    assert _send(node, app, body).status_code == 200
    dev.wait_messages(2)


def test_unknown_top_level_field_is_400_naming_it(node, app):
    regid, _, dev = _online(node, app)
    r = _send(node, app, _note(regid, titel="typo"))
    assert r.status_code == 400 and "titel" in r.json()["message"], r.text
    r = _send(node, app, _note(regid, vars={"a": "b"}))
    assert r.status_code == 400 and "template" in r.json()["message"], r.text
    dev.expect_no_more(0, wait=0.3)


def test_callback_receipts_delivered_and_clicked(node, app):
    """A send with `callback` gets delivered and clicked receipts POSTed to that URL, in
    batches, at most once a second."""
    import struct as _struct

    import mqttraw
    from conftest import ReceiptSink

    sink = ReceiptSink()
    try:
        url = sink.url("/receipts?app=1")
        regid, token = node.register(app)
        c = node.raw(version=5)
        assert c.connect(regid, app["app_id"], token)["rc"] == 0
        res = node.send(app, [regid], title="cb", callback=url)
        msg = c.read_publish()
        c.puback(msg["pid"])
        c.send(mqttraw.packet(0x32, mqttraw.mqtt_str("ack/click") + _struct.pack("!H", 9) + b"\x00" + res["id"].encode()))

        def kinds():
            return sorted(r["type"] for r in sink.receipts() if r["id"] == res["id"] and r["regid"] == regid)

        assert sink.wait_for(lambda: kinds() == ["clicked", "delivered"], 10), sink.posts
        assert all(path == "/receipts?app=1" for path, _ in sink.posts), sink.posts
        bad = node.push(app, [regid], callback="ftp://example.invalid/x")
        assert bad.status_code == 400 and "callback" in bad.json()["message"], bad.text
        c.disconnect()
    finally:
        sink.close()
