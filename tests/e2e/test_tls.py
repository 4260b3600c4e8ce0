"""TLS on both listeners: MQTT over TLS (paho with a CA made in the test) and HTTPS,
TLS 1.2 and 1.3 only, connections handed between shards keep their TLS state."""

import json
import socket
import ssl
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest
import requests

import mqttraw

from conftest import free_ports


def _make_ca(tmp_path):
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca_crt = tmp_path / "ca.key", tmp_path / "ca.pem"
    key, csr, crt = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
        "-days", "2", "-subj", "/CN=pushnode-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
        "-days", "2", "-extfile", ext)
    return ca_crt, crt, key


@pytest.fixture
def tls_node(make_node, tmp_path):
    ca, crt, key = _make_ca(tmp_path)
    mqtts, https = free_ports(2)
    node = make_node(extra_args=(
        "--mqtt-tls-listen", f"127.0.0.1:{mqtts}", "--https-listen", f"127.0.0.1:{https}",
        "--tls-cert", str(crt), "--tls-key", str(key),
    ))
    node.mqtts_port, node.https_url, node.ca = mqtts, f"https://127.0.0.1:{https}", str(ca)
    return node


class TlsDevice:
    def __init__(self, node, client_id, username, password, tls_version=None):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        context = ssl.create_default_context(cafile=node.ca)
        if tls_version is not None:
            context.minimum_version = context.maximum_version = tls_version
        self.client.tls_set_context(context)
        self.client.username_pw_set(username, password)
        self.connack = None
        self.messages = []
        self.cv = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.node = node

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cv:
            self.connack = (reason_code.value, properties)
            self.cv.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cv:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self.cv.notify_all()

    def connect(self):
        self.client.connect("127.0.0.1", self.node.mqtts_port, clean_start=False, keepalive=30)
        self.client.loop_start()
        with self.cv:
            assert self.cv.wait_for(lambda: self.connack is not None, 10), "no CONNACK over TLS"
        return self.connack

    def wait(self, n, timeout=10):
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.messages) >= n, timeout), self.messages
            return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_over_tls_register_and_receive_via_https(tls_node):
    node = tls_node
    r = requests.post(f"{node.https_url}/v1/apps", headers={"Authorization": f"Bearer {node.admin_token}"},
                      json={"name": "tls"}, verify=node.ca, timeout=10)
    assert r.status_code == 201, r.text
    app = r.json()
    dev = TlsDevice(node, "", app["app_id"], app["app_key"])
    rc, props = dev.connect()
    assert rc == 0
    regid = props.AssignedClientIdentifier
    token = dict(props.UserProperty)["token"]
    r = requests.post(f"{node.https_url}/v1/messages", headers={"Authorization": f"key={app['app_secret']}"},
                      json={"target": {"regids": [regid]}, "title": "secure"}, verify=node.ca, timeout=10)
    assert r.status_code == 200 and r.json()["targets"] == 1, r.text
    topic, env = dev.wait(1)[0]
    assert topic == "inbox" and env["title"] == "secure" and env["id"] == r.json()["id"]
    dev.close()

    # Reconnecting lands on either shard; the home shard gets the TLS connection by handoff.
    for i in range(6):
        push = node.send(app, [regid], title=f"again-{i}")
        dev = TlsDevice(node, regid, app["app_id"], token)
        assert dev.connect()[0] == 0
        assert dev.wait(1)[0][1]["id"] == push["id"], f"reconnect {i}"
        dev.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_accepted(tls_node, version):
    app = tls_node.create_app()
    dev = TlsDevice(tls_node, "", app["app_id"], app["app_key"], tls_version=version)
    assert dev.connect()[0] == 0
    dev.close()


def test_tls_11_refused_and_plaintext_on_tls_port_closed(tls_node):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls_node.ca)
    try:
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", tls_node.mqtts_port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.recv(1)
    # Plain MQTT bytes on the TLS port: the node closes the connection.
    with socket.create_connection(("127.0.0.1", tls_node.mqtts_port), timeout=10) as s:
        s.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd")
        s.settimeout(10)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert not data.startswith(b"\x20"), "no CONNACK over a plaintext connection to the TLS port"
    assert tls_node.healthy()


def test_refused_connect_over_tls_gets_its_connack(tls_node):
    """A refusing CONNACK is sealed before TLS's close_notify, so the client reads it
    (before, the close_notify went first and the client saw only end-of-stream)."""
    app = tls_node.create_app()
    context = ssl.create_default_context(cafile=tls_node.ca)
    sock = context.wrap_socket(mqttraw.tcp_connect("127.0.0.1", tls_node.mqtts_port), server_hostname="127.0.0.1")
    c = mqttraw.RawClient("127.0.0.1", tls_node.mqtts_port, 5, sock=sock)
    tls_node.clients.append(c)
    assert c.connect("not-a-regid", app["app_id"], "wrong")["rc"] == 0x86
    assert c.expect_closed(timeout=5) == []
