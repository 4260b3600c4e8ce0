"""Authentication and tenant isolation: request signatures (HMAC-SHA256 over method, path,
timestamp and body, +/- 300 s, no replays), require_signatures, the admin API, rotation of
app secrets and device tokens, and app A never reaching app B's devices, aliases, topics,
messages or counts whatever the ids it guesses."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import mqttraw  # noqa: F401  (imported by conftest too; keeps the helper importable)


# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------


def sign_headers(secret: str, method: str, path_and_query: str, body: bytes, ts=None) -> dict:
    ts = str(int(time.time()) if ts is None else ts)
    text = f"{method}\n{path_and_query}\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    sig = hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()
    return {"Authorization": f"key={secret}", "X-Pushnode-Timestamp": ts, "X-Pushnode-Signature": sig}


def signed(node, secret: str, method: str, path: str, body=None, ts=None, headers=None):
    """A signed request; `body` a dict (sent as JSON) or bytes. Returns (response, headers, raw)."""
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    h = sign_headers(secret, method, path, raw, ts)
    if raw:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    return node.http(method, path, headers=h, data=raw or None), h, raw


def push_body(regids, **fields) -> dict:
    body = {"target": {"regids": list(regids)}, "type": "notification", "title": "hello"}
    body.update(fields)
    return body


def online(node, app, version=5):
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=version)
    dev.connect()
    return regid, token, dev


def code_of(r) -> str | None:
    try:
        return r.json().get("code")
    except ValueError:
        return None


def admin(node) -> dict:
    return {"Authorization": f"Bearer {node.admin_token}"}


def raw_connack(node, version, client_id, username, password) -> dict:
    c = node.raw(version=version)
    try:
        return c.connect(client_id, username, password)
    finally:
        c.close()


# ------------------------------------------------------------------------------------
# signatures
# ------------------------------------------------------------------------------------


def test_signed_requests_are_accepted(node, app):
    regid, _, dev = online(node, app)
    secret = app["app_secret"]

    r, _, _ = signed(node, secret, "POST", "/v1/messages", push_body([regid], title="signed"))
    assert r.status_code == 200, r.text
    msg_id = r.json()["id"]
    assert dev.wait_messages(1)[0]["payload"]["title"] == "signed"

    # A request without a body signs the hash of the empty string; the query is signed as sent.
    r, _, _ = signed(node, secret, "GET", f"/v1/messages/{msg_id}")
    assert r.status_code == 200 and r.json()["id"] == msg_id, r.text
    r, _, _ = signed(node, secret, "GET", f"/v1/messages/{msg_id}?verbose=1")
    assert r.status_code == 200, r.text
    h = sign_headers(secret, "GET", f"/v1/messages/{msg_id}", b"")  # query left out
    r = node.http("GET", f"/v1/messages/{msg_id}?verbose=1", headers=h)
    assert r.status_code == 401 and code_of(r) == "bad_signature", r.text

    # Other body-reading routes verify after reading the body.
    r, _, _ = signed(node, secret, "POST", f"/v1/devices/{regid}/aliases", {"alias": "signed-user"})
    assert r.status_code == 200, r.text
    r, _, _ = signed(node, secret, "POST", "/v1/topics/t1/subscribe", {"regids": [regid]})
    assert r.status_code == 200 and r.json()["changed"] == 1, r.text
    # Unsigned requests still work while the node does not require signatures.
    assert node.push(app, regid).status_code == 200
    dev.wait_messages(2)


def test_bad_stale_and_replayed_signatures_are_refused(node, app):
    regid, _, dev = online(node, app)
    secret = app["app_secret"]
    body = json.dumps(push_body([regid], title="once")).encode()
    now = int(time.time())

    def send(headers, data=body):
        h = {"Content-Type": "application/json", **headers}
        return node.http("POST", "/v1/messages", headers=h, data=data)

    # Signed with another key, for another body, path or method, or garbled: bad_signature.
    cases = {
        "wrong key": {**sign_headers("not-the-secret", "POST", "/v1/messages", body), "Authorization": f"key={secret}"},
        "other body": sign_headers(secret, "POST", "/v1/messages", body + b" "),
        "other path": sign_headers(secret, "POST", "/v1/messages/batch", body),
        "other method": sign_headers(secret, "PUT", "/v1/messages", body),
        "other timestamp": {**sign_headers(secret, "POST", "/v1/messages", body, now), "X-Pushnode-Timestamp": str(now - 1)},
        "not hex": {**sign_headers(secret, "POST", "/v1/messages", body), "X-Pushnode-Signature": "zz" * 32},
        "short": {**sign_headers(secret, "POST", "/v1/messages", body), "X-Pushnode-Signature": "ab"},
        "bad timestamp": {**sign_headers(secret, "POST", "/v1/messages", body), "X-Pushnode-Timestamp": "yesterday"},
    }
    only_sig = sign_headers(secret, "POST", "/v1/messages", body)
    del only_sig["X-Pushnode-Timestamp"]
    cases["signature without timestamp"] = only_sig
    for what, headers in cases.items():
        r = send(headers)
        assert r.status_code == 401 and code_of(r) == "bad_signature", f"{what}: {r.status_code} {r.text}"

    # Outside +/- 300 s: stale_signature (even when correctly signed). The clock is read
    # again for each: the cases above take time, and a second passing would move +301 inside.
    for offset in (-302, -3600, +302, None):
        now = int(time.time())
        ts = 0 if offset is None else now + offset
        r = send(sign_headers(secret, "POST", "/v1/messages", body, ts))
        assert r.status_code == 401 and code_of(r) == "stale_signature", f"ts {ts - now:+}: {r.text}"
    # Inside the window, a little off either way, it is accepted.
    for ts in (now - 250, now + 250):
        r, _, _ = signed(node, secret, "POST", "/v1/messages", push_body([regid], title=f"skew {ts - now}"), ts=ts)
        assert r.status_code == 200, r.text

    # A replay of an accepted request (same headers, same body): replayed, and sent once.
    good = sign_headers(secret, "POST", "/v1/messages", body)
    first = send(good)
    assert first.status_code == 200, first.text
    for _ in range(2):
        again = send(good)
        assert again.status_code == 401 and code_of(again) == "replayed", again.text
    # The same for a request without a body.
    status_headers = sign_headers(secret, "GET", f"/v1/messages/{first.json()['id']}", b"")
    assert node.http("GET", f"/v1/messages/{first.json()['id']}", headers=status_headers).status_code == 200
    r = node.http("GET", f"/v1/messages/{first.json()['id']}", headers=status_headers)
    assert r.status_code == 401 and code_of(r) == "replayed", r.text

    msgs = dev.wait_messages(3)
    dev.expect_no_more(3, wait=0.7)
    assert sorted(m["payload"]["title"] for m in msgs) == sorted(["skew -250", "skew 250", "once"]), msgs

    # A signature of one app is no use with another app's secret.
    other = node.create_app(name="other")
    h = {**sign_headers(secret, "POST", "/v1/messages", body), "Authorization": f"key={other['app_secret']}"}
    r = send(h)
    assert r.status_code == 401 and code_of(r) == "bad_signature", r.text


def test_require_signatures_refuses_unsigned_requests(make_node, tmp_path):
    config = tmp_path / "signed.toml"
    config.write_text("require_signatures = true\n")
    node = make_node(extra_args=("--config", str(config)))
    app = node.create_app()  # the admin token still works as before
    regid, _, dev = online(node, app)  # so does device registration

    r = node.push(app, regid)
    assert r.status_code == 401 and code_of(r) == "signature_required", r.text
    r = node.http("GET", "/v1/aliases/x", headers={"Authorization": f"key={app['app_secret']}"})
    assert r.status_code == 401 and code_of(r) == "signature_required", r.text
    r = node.http("POST", f"/v1/devices/{regid}/token", headers={"Authorization": f"key={app['app_secret']}"})
    assert r.status_code == 401 and code_of(r) == "signature_required", r.text

    r, _, _ = signed(node, app["app_secret"], "POST", "/v1/messages", push_body([regid], title="signed only"))
    assert r.status_code == 200, r.text
    r2, _, _ = signed(node, app["app_secret"], "GET", f"/v1/messages/{r.json()['id']}")
    assert r2.status_code == 200, r2.text
    msgs = dev.wait_messages(1)
    dev.expect_no_more(1, wait=0.5)
    assert msgs[0]["payload"]["title"] == "signed only"


# ------------------------------------------------------------------------------------
# admin API and rotation
# ------------------------------------------------------------------------------------


def test_admin_lists_apps_without_secrets(node):
    a = node.create_app(name="alpha", package="com.alpha")
    b = node.create_app(name="beta", package="com.beta")
    r = node.http("GET", "/v1/apps", headers=admin(node))
    assert r.status_code == 200, r.text
    apps = r.json()["apps"]
    assert {(x["app_id"], x["name"], x["package"]) for x in apps} == {
        (a["app_id"], "alpha", "com.alpha"), (b["app_id"], "beta", "com.beta")
    }, apps
    for secret in (a["app_secret"], a["app_key"], b["app_secret"], b["app_key"]):
        assert secret not in r.text, "a key or secret leaked into GET /v1/apps"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {a['app_secret']}"},
                    {"Authorization": f"key={a['app_secret']}"}):
        r = node.http("GET", "/v1/apps", headers=headers)
        assert r.status_code == 401 and code_of(r) == "unauthorized", (headers, r.text)
    # Nothing secret in the log either.
    log = node.log_path.read_text(errors="replace")
    for secret in (a["app_secret"], b["app_secret"], node.admin_token):
        assert secret not in log


def test_app_secret_rotation(node, app):
    regid, _, dev = online(node, app)
    old = app["app_secret"]
    # Only the admin can rotate; an app cannot rotate (its own or another's) secret.
    for headers in ({}, {"Authorization": f"key={old}"}, {"Authorization": f"Bearer {old}"}):
        r = node.http("POST", f"/v1/apps/{app['app_id']}/secret", headers=headers)
        assert r.status_code == 401, (headers, r.text)
    assert node.push(app, regid).status_code == 200

    r = node.http("POST", f"/v1/apps/{app['app_id']}/secret", headers=admin(node))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["app_id"] == app["app_id"] and isinstance(body["app_secret"], str), body
    new = body["app_secret"]
    assert new != old

    r = node.push(app, regid, secret=old)
    assert r.status_code == 401 and code_of(r) == "unauthorized", r.text
    r, _, _ = signed(node, old, "POST", "/v1/messages", push_body([regid]))
    assert r.status_code == 401, r.text
    r = node.push(app, regid, secret=new, title="after rotation")
    assert r.status_code == 200, r.text
    msgs = dev.wait_messages(2)
    assert msgs[-1]["payload"]["title"] == "after rotation"
    r, _, _ = signed(node, new, "POST", "/v1/messages", push_body([regid], title="signed with new"))
    assert r.status_code == 200, r.text
    dev.wait_messages(3)

    for unknown in ("999", "not-an-app", "4294967296", "-1"):
        r = node.http("POST", f"/v1/apps/{unknown}/secret", headers=admin(node))
        assert r.status_code == 404 and code_of(r) == "not_found", (unknown, r.text)
    # The rotation survives a restart; the new secret is not in the log.
    node.restart()
    assert node.push(app, regid, secret=old).status_code == 401
    assert node.push(app, regid, secret=new).status_code == 200
    assert new not in node.log_path.read_text(errors="replace")


def test_device_token_rotation(node, app):
    regid, token, dev = online(node, app, version=5)
    auth = {"Authorization": f"key={app['app_secret']}"}
    # The admin token is not an app secret.
    r = node.http("POST", f"/v1/devices/{regid}/token", headers=admin(node))
    assert r.status_code == 401, r.text
    assert not dev.disconnected.is_set()

    r = node.http("POST", f"/v1/devices/{regid}/token", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["regid"] == regid
    new = r.json()["token"]
    assert isinstance(new, str) and new and new != token

    # The live connection that used the old token is closed.
    assert dev.disconnected.wait(5), "the connection with the rotated token stayed open"
    dev.close()
    # The old token is refused: 5.0 0x86, 3.1.1 return code 4 (paho too).
    assert raw_connack(node, 5, regid, app["app_id"], token)["rc"] == 0x86
    assert raw_connack(node, 4, regid, app["app_id"], token)["rc"] == 4
    old_dev = node.device(app, regid, token, version=4)
    assert old_dev.connect(expect_ok=False)["rc"] in (4, 0x86), old_dev.connack
    old_dev.close()

    # A message sent meanwhile waits; the new token connects and receives it and new ones.
    res = node.send(app, regid, title="while away")
    fresh = node.device(app, regid, new, version=4)
    fresh.connect()
    assert fresh.wait_messages(1)[0]["payload"]["id"] == res["id"]
    node.send(app, regid, title="after")
    assert fresh.wait_messages(2)[1]["payload"]["title"] == "after"
    # Signed rotation (POST with no body) works too, and unknown RegIDs are 404.
    r, _, _ = signed(node, app["app_secret"], "POST", f"/v1/devices/{regid}/token")
    assert r.status_code == 200, r.text
    assert fresh.disconnected.wait(5)
    for unknown in ("0" * len(regid), "no-such-regid", regid[:-1] + ("0" if regid[-1] != "0" else "1")):
        r = node.http("POST", f"/v1/devices/{unknown}/token", headers=auth)
        assert r.status_code == 404 and code_of(r) == "not_found", (unknown, r.text)
    log = node.log_path.read_text(errors="replace")
    assert new not in log and token not in log


# ------------------------------------------------------------------------------------
# tenant isolation
# ------------------------------------------------------------------------------------


def test_tenant_isolation(node):
    a = node.create_app(name="A", package="com.a")
    b = node.create_app(name="B", package="com.b")
    a_auth = {"Authorization": f"key={a['app_secret']}"}
    b_auth = {"Authorization": f"key={b['app_secret']}"}

    a1, a1_token, a_dev = online(node, a)
    b1, b1_token, b1_dev = online(node, b, version=5)
    b3, _, b3_dev = online(node, b, version=4)
    b2, b2_token = node.register(b)  # offline
    assert node.http("POST", f"/v1/devices/{b2}/aliases", headers=b_auth, json={"alias": "bob"}).status_code == 200
    r = node.http("POST", "/v1/topics/news/subscribe", headers=b_auth, json={"regids": [b1]})
    assert r.status_code == 200 and r.json()["changed"] == 1, r.text
    b_msg = node.send(b, [b1], title="from B", request_id="shared-rid")
    b1_dev.wait_messages(1)
    r = node.http("POST", "/v1/templates", headers=b_auth, json={"name": "t", "title": "B {{x}}"})
    assert r.status_code == 201, r.text
    b_template = r.json()["template_id"]

    def mutate(regid: str) -> list[str]:
        return [regid.upper(), regid.lower(), regid[:-1] + ("0" if regid[-1] != "0" else "1"), regid + "0",
                " " + regid, regid.replace(regid[:4], a1[:4], 1)]

    b_regids = [b1, b2, b3]
    guesses = b_regids + [g for r in b_regids for g in mutate(r)]
    guesses = [g for g in dict.fromkeys(guesses) if g != a1]

    # Sends: B's RegIDs (and guesses) are invalid; B's aliases and topics are not A's.
    r = node.push(a, guesses, secret=a["app_secret"])
    assert r.status_code == 200, r.text
    assert r.json()["targets"] == 0 and set(r.json()["invalid"]) == set(guesses), r.text
    for target in ({"aliases": ["bob"]}, {"topic": "news"}, {"topics": ["news", "x"], "op": "union"}):
        r = node.http("POST", "/v1/messages", headers=a_auth, json={"target": target, "title": "evil"})
        assert r.status_code in (200, 400, 404), (target, r.text)
        if r.status_code == 200:
            assert r.json().get("targets", 0) == 0, (target, r.text)
    r = node.http("POST", "/v1/messages/batch", headers=a_auth,
                  json={"title": "evil", "items": [{"target": {"regids": [g]}} for g in guesses[:5]]})
    assert r.status_code == 200, r.text
    for item in r.json()["results"]:
        assert item.get("targets", 0) == 0, item
    # A broadcast of A reaches A's device only.
    r = node.http("POST", "/v1/messages", headers=a_auth, json={"target": {"all": True}, "title": "A to all"})
    assert r.status_code == 200 and r.json()["targets"] == 1, r.text
    assert a_dev.wait_messages(1)[0]["payload"]["title"] == "A to all"
    # The same request_id as B's is A's own: answered fresh, not with B's answer.
    r = node.http("POST", "/v1/messages", headers=a_auth,
                  json={"target": {"regids": [a1]}, "title": "A rid", "request_id": "shared-rid"})
    assert r.status_code == 200 and r.json()["id"] != b_msg["id"], r.text
    assert "idempotent-replayed" not in {k.lower() for k in r.headers}, r.headers
    a_dev.wait_messages(2)
    # A template of B is unknown to A.
    r = node.http("GET", f"/v1/templates/{b_template}", headers=a_auth)
    assert r.status_code == 404, r.text
    r = node.http("POST", "/v1/messages", headers=a_auth,
                  json={"target": {"regids": [b1]}, "template": b_template, "vars": {"x": "1"}})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert r.json()["targets"] == 0, r.text

    # Look-ups: B's alias is empty for A, B's message and its guesses are 404.
    r = node.http("GET", "/v1/aliases/bob", headers=a_auth)
    assert r.status_code in (200, 404), r.text
    if r.status_code == 200:
        assert r.json()["regids"] == [], r.text
    msg_guesses = [b_msg["id"], b_msg["id"].upper(), b_msg["id"][:-1] + ("0" if b_msg["id"][-1] != "0" else "1")]
    for mid in msg_guesses:
        r = node.http("GET", f"/v1/messages/{mid}", headers=a_auth)
        assert r.status_code == 404, (mid, r.text)
        r = node.http("DELETE", f"/v1/messages/{mid}", headers=a_auth)
        assert r.status_code == 404, (mid, r.text)
    assert node.status(b, b_msg["id"]).status_code == 200

    # Membership, aliases, tokens of B's devices: invalid or 404, and nothing changes.
    for action in ("subscribe", "unsubscribe"):
        r = node.http("POST", f"/v1/topics/news/{action}", headers=a_auth, json={"regids": guesses})
        assert r.status_code == 200, r.text
        assert r.json()["changed"] == 0 and set(r.json()["invalid"]) == set(guesses), r.text
    for g in guesses:
        r = node.http("POST", f"/v1/devices/{g}/aliases", headers=a_auth, json={"alias": "evil"})
        assert r.status_code in (400, 404), (g, r.text)
        r = node.http("DELETE", f"/v1/devices/{g}/aliases/bob", headers=a_auth)
        assert r.status_code in (400, 404), (g, r.text)
        r = node.http("POST", f"/v1/devices/{g}/token", headers=a_auth)
        assert r.status_code in (400, 404), (g, r.text)
    # B's state is untouched: its alias, its topic, its devices' tokens and connections.
    r = node.http("GET", "/v1/aliases/bob", headers=b_auth)
    assert r.status_code == 200 and r.json()["regids"] == [b2], r.text
    r = node.http("GET", "/v1/aliases/evil", headers=b_auth)
    assert r.status_code in (200, 404) and (r.status_code == 404 or r.json()["regids"] == []), r.text
    res = node.http("POST", "/v1/messages", headers=b_auth, json={"target": {"topic": "news"}, "title": "B news"})
    assert res.status_code == 200 and res.json()["targets"] == 1, res.text
    assert not b1_dev.disconnected.is_set() and not b3_dev.disconnected.is_set()
    assert raw_connack(node, 4, b2, b["app_id"], b2_token)["rc"] == 0

    # Counts: A's statistics know A's devices only (when the stats API is there).
    r = node.http("GET", "/v1/stats/users", headers=a_auth)
    if r.status_code == 200:
        today = r.json()[-1]
        assert today["online"] == 1 and today["new"] <= 1, r.text

    # B's devices received only B's messages.
    got = b1_dev.wait_messages(2)
    b1_dev.expect_no_more(2, wait=0.5)
    assert [m["payload"]["title"] for m in got] == ["from B", "B news"], got
    b3_dev.expect_no_more(0, wait=0.1)
    late = node.device(b, b2, b2_token)
    late.connect()
    late.expect_no_more(0, wait=0.7)
    a_dev.expect_no_more(2, wait=0.1)

    # Devices: A's device with B's app id (and its own token) is refused, and so is B's
    # device with A's app id; A's token does not open B's device either.
    for version, bad in ((4, (4, 5)), (5, (0x86, 0x87))):
        assert raw_connack(node, version, a1, b["app_id"], a1_token)["rc"] in bad
        assert raw_connack(node, version, b1, a["app_id"], b1_token)["rc"] in bad
        assert raw_connack(node, version, b1, b["app_id"], a1_token)["rc"] in bad
        assert raw_connack(node, version, b1, a["app_id"], a1_token)["rc"] in bad
    stranger = node.client(a1, b["app_id"], a1_token, version=5)
    assert stranger.connect(expect_ok=False)["rc"] in (0x86, 0x87), stranger.connack
    stranger.close()
    # B's devices still receive, after all of that.
    node.send(b, [b1, b3], title="still B")
    assert b1_dev.wait_messages(3)[-1]["payload"]["title"] == "still B"
    assert b3_dev.wait_messages(1)[0]["payload"]["title"] == "still B"
