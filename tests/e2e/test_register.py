"""Device registration and connection: MQTT 5 registration, HTTP registration, refusals."""

import mqttraw


def test_register_mqtt5(node, app):
    # Register: empty client id, username = app id, password = app key.
    reg = node.client("", app["app_id"], app["app_key"], version=5)
    ack = reg.connect(expect_ok=False)
    assert ack["rc"] == 0, f"registration refused: {ack}"
    props = ack["props"]
    regid = props.get("AssignedClientIdentifier")
    assert isinstance(regid, str) and regid, f"no Assigned Client Identifier in CONNACK: {props}"
    user = dict(props.get("UserProperty") or [])
    token = user.get("token")
    assert isinstance(token, str) and token, f"no user property 'token' in CONNACK: {props}"
    reg.disconnect()

    # Reconnect with the RegID / token just assigned.
    dev = node.device(app, regid, token, version=5)
    ack = dev.connect(expect_ok=False)
    assert ack["rc"] == 0, f"reconnect with assigned regid/token refused: {ack}"

    # The registered device is a valid push target and receives the push.
    res = node.send(app, [regid], title="after-mqtt-register")
    assert res["targets"] == 1 and res["invalid"] == [], res
    msg = dev.wait_messages(1)[0]
    assert msg["topic"] == "inbox"
    assert msg["payload"]["title"] == "after-mqtt-register"
    dev.disconnect()

    # Two registrations give two distinct RegIDs.
    reg2 = node.client("", app["app_id"], app["app_key"], version=5)
    ack2 = reg2.connect()
    assert ack2["props"].get("AssignedClientIdentifier") not in (None, regid), ack2
    reg2.disconnect()


def test_register_http_and_connect_311(node, app):
    regid, token = node.register(app)
    dev = node.device(app, regid, token, version=4)
    ack = dev.connect(expect_ok=False)
    assert ack["rc"] == 0, f"3.1.1 connect refused: {ack}"
    assert ack["session_present"] is True, f"session present flag not set: {ack}"
    dev.disconnect()

    # Same check byte-exact with a raw client: CONNACK 0x20 0x02 0x01 0x00.
    raw = node.raw(version=4)
    ack = raw.connect(regid, app["app_id"], token, clean=False)
    assert ack == {"session_present": 1, "rc": 0, "props": {}}, ack
    raw.disconnect()


def _raw_connack(node, version, client_id, username, password):
    c = node.raw(version=version)
    ack = c.connect(client_id, username, password, clean=False)
    if ack["rc"] != 0:
        # a refused connection is closed by the server
        c.expect_closed(timeout=5)
    c.close()
    return ack


def test_wrong_token_refused(node, app):
    regid, token = node.register(app)
    bad = token[:-1] + ("A" if token[-1] != "A" else "B")

    # Wrong token
    ack = _raw_connack(node, 4, regid, app["app_id"], bad)
    assert ack["rc"] in (4, 5), f"3.1.1 wrong token: {ack}"
    ack = _raw_connack(node, 5, regid, app["app_id"], bad)
    assert ack["rc"] in (0x86, 0x87), f"5.0 wrong token: {ack}"

    # Unknown RegID (with the app's id and some token)
    for unknown in ("0" * len(regid), "no-such-regid"):
        ack = _raw_connack(node, 4, unknown, app["app_id"], token)
        assert ack["rc"] in (4, 5), f"3.1.1 unknown regid {unknown!r}: {ack}"
        ack = _raw_connack(node, 5, unknown, app["app_id"], token)
        assert ack["rc"] in (0x86, 0x87), f"5.0 unknown regid {unknown!r}: {ack}"

    # The right token for the right RegID but another app's id
    other = node.create_app(name="other")
    ack = _raw_connack(node, 5, regid, other["app_id"], token)
    assert ack["rc"] >= 0x80, f"5.0 regid with foreign app id accepted: {ack}"

    # Registration with a wrong app key / unknown app id: 3.1.1 -> 5 (HTTP), 5.0 -> 0x87
    ack = _raw_connack(node, 5, "", app["app_id"], app["app_key"] + "x")
    assert ack["rc"] == 0x87, f"5.0 register with wrong app key: {ack}"
    ack = _raw_connack(node, 5, "", "no-such-app", app["app_key"])
    assert ack["rc"] == 0x87, f"5.0 register with unknown app id: {ack}"
    r = node.http("POST", "/v1/devices", json={"app_id": app["app_id"], "app_key": "wrong"})
    assert 400 <= r.status_code < 500, f"POST /v1/devices with wrong key -> {r.status_code} {r.text}"
    assert isinstance(r.json().get("code"), str), r.text

    # After all that the right credentials still work.
    ack = _raw_connack(node, 4, regid, app["app_id"], token)
    assert ack["rc"] == 0 and ack["session_present"] == 1, ack
    assert node.healthy()


def test_paho_refused_reason_code(node, app):
    """The same refusal seen by a real client library (paho, MQTT 5)."""
    regid, token = node.register(app)
    dev = node.device(app, regid, token + "x", version=5)
    ack = dev.connect(expect_ok=False)
    assert ack["rc"] in (0x86, 0x87), f"paho v5 wrong token: {ack}"
    dev.close()


def test_connack_raw_mqtt5_register_properties(node, app):
    """Byte-level check of the registration CONNACK properties."""
    c = node.raw(version=5)
    ack = c.connect("", app["app_id"], app["app_key"], clean=False)
    assert ack["rc"] == 0, ack
    regid = ack["props"].get(mqttraw.PROP_ASSIGNED_CLIENT_ID)
    users = dict(ack["props"].get(mqttraw.PROP_USER_PROPERTY, []))
    assert regid and users.get("token"), ack
    c.disconnect()
    c2 = node.raw(version=5)
    ack2 = c2.connect(regid, app["app_id"], users["token"], clean=False)
    assert ack2["rc"] == 0 and ack2["session_present"] == 1, ack2
    c2.disconnect()
