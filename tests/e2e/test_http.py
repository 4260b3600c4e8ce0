"""HTTP API: health, auth and error answers."""

import json


def _err(r, status, code=None):
    assert r.status_code == status, f"expected {status}, got {r.status_code} {r.text[:300]!r}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{status} answer is not JSON: {r.text[:300]!r}") from None
    assert isinstance(body.get("code"), str) and body["code"], body
    assert isinstance(body.get("message"), str), body
    if code is not None:
        assert body["code"] == code, body
    return body


def _other_id(msg_id):
    """An id of the same shape as msg_id that no message has."""
    if isinstance(msg_id, int):
        return msg_id + 1_000_000
    s = str(msg_id)
    last = s[-1]
    if last.isdigit():
        repl = "7" if last != "7" else "3"
    elif last.isalpha():
        repl = ("b" if last != "b" else "c") if last.islower() else ("B" if last != "B" else "C")
    else:
        repl = "0"
    return s[:-1] + repl


def test_healthz(node):
    r = node.http("GET", "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text


def test_http_errors(node, app):
    regid, _ = node.register(app)
    auth = {"Authorization": f"key={app['app_secret']}"}

    # Bad JSON -> 400
    r = node.http("POST", "/v1/messages", headers={**auth, "Content-Type": "application/json"},
                  data=b'{"target": {"regids": [')
    _err(r, 400)
    # Valid JSON, bad fields -> 400
    r = node.http("POST", "/v1/messages", headers=auth, json={"target": "nope"})
    _err(r, 400)
    r = node.http("POST", "/v1/messages", headers=auth,
                  json={"target": {"regids": [regid]}, "type": "bogus-type", "title": "x"})
    _err(r, 400)

    # Missing / bad secret -> 401
    body = {"target": {"regids": [regid]}, "type": "notification", "title": "x"}
    _err(node.http("POST", "/v1/messages", json=body), 401, "unauthorized")
    _err(node.http("POST", "/v1/messages", json=body, headers={"Authorization": "key=wrong"}),
         401, "unauthorized")
    _err(node.http("POST", "/v1/messages", json=body,
                   headers={"Authorization": f"Bearer {app['app_secret']}"}), 401, "unauthorized")
    other = node.create_app(name="other")
    res = node.send(app, [regid], title="x")
    _err(node.status(app, res["id"], secret="wrong"), 401, "unauthorized")
    _err(node.http("GET", f"/v1/messages/{res['id']}"), 401, "unauthorized")
    # Admin endpoint: missing / wrong admin token -> 401
    _err(node.http("POST", "/v1/apps", json={"name": "x", "package": "p"}), 401, "unauthorized")
    _err(node.http("POST", "/v1/apps", json={"name": "x", "package": "p"},
                   headers={"Authorization": "Bearer nope"}), 401, "unauthorized")

    # Another app's secret cannot read this app's message: 404 (or 401/403), never 200.
    r = node.status(other, res["id"])
    assert r.status_code in (401, 403, 404), f"foreign app read a message status: {r.status_code}"

    # Body over 1 MiB -> 413
    big = json.dumps({**body, "payload": "x" * (1024 * 1024 + 1024)}).encode()
    r = node.http("POST", "/v1/messages", headers={**auth, "Content-Type": "application/json"},
                  data=big)
    _err(r, 413, "payload_too_large")
    # ... and the node is fine afterwards
    assert node.healthy()

    # Unknown message id -> 404
    _err(node.status(app, _other_id(res["id"])), 404, "not_found")
    _err(node.status(app, "does-not-exist"), 404, "not_found")
    # Unknown path -> 404
    _err(node.http("GET", "/v1/nothing-here"), 404, "not_found")

    # More than 1000 regids -> 400; exactly 1000 is fine.
    many = [f"r{i:06d}" for i in range(1001)]
    _err(node.push(app, many), 400)
    r = node.push(app, many[:1000])
    assert r.status_code == 200, r.text[:300]
    assert r.json()["targets"] == 0 and len(r.json()["invalid"]) == 1000

    # Wrong method -> 405
    _err(node.http("PUT", "/v1/messages", headers=auth, json=body), 405)
    _err(node.http("DELETE", "/healthz"), 405)

    # Normal requests still work on the same node.
    assert node.send(app, [regid], title="ok")["targets"] == 1


def test_keepalive_http_connection(node, app):
    """Several requests over one persistent HTTP/1.1 connection, errors included."""
    import requests

    regid, _ = node.register(app)
    with requests.Session() as s:
        auth = {"Authorization": f"key={app['app_secret']}"}
        for i in range(5):
            r = s.post(node.url + "/v1/messages", headers=auth, timeout=10,
                       json={"target": {"regids": [regid]}, "type": "notification",
                             "title": f"k{i}"})
            assert r.status_code == 200, r.text
            r = s.post(node.url + "/v1/messages", headers=auth, data=b"{", timeout=10)
            assert r.status_code == 400, r.text
