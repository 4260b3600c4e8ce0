"""Fixtures and helpers for the Pushnode end-to-end tests.

The node binary comes from $PUSHNODE_BIN (default target/release/pushnode), the load
generator from $LOADGEN_BIN (default target/release/loadgen); relative paths are taken
from the repository root. Each `node` fixture is a fresh `pushnode serve` process on free
loopback ports with its own data directory. Only processes started here are ever signalled,
by their PID. Every wait has a timeout.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests

import mqttraw

REPO = Path(__file__).resolve().parents[2]


def _bin(env: str, default: str) -> Path:
    p = Path(os.environ.get(env, default))
    return p if p.is_absolute() else REPO / p


PUSHNODE_BIN = _bin("PUSHNODE_BIN", "target/release/pushnode")
LOADGEN_BIN = _bin("LOADGEN_BIN", "target/release/loadgen")

HTTP_TIMEOUT = 10.0

# For tests that open thousands of connections a second from one loopback address: turns
# the per-source-address connect rate limit off (its default, 100/s after a burst of 1000,
# stays on for every other test).
NO_CONNECT_LIMIT = ("--connect-rate-per-ip", "0")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` different free ports: each is held while the next is picked (picked one after
    another, the kernel may hand out the same port twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Polls pred() until it returns a truthy value; returns it. Fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def tail(path: Path, lines: int = 60) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------
# Node
# ------------------------------------------------------------------------------------


class Node:
    """One `pushnode serve` process. Same ports and data dir across restarts."""

    def __init__(self, workdir: Path, shards: int = 2, extra_args: tuple = ()):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "node.log"
        self.shards = shards
        self.extra_args = list(extra_args)
        self.mqtt_port, self.http_port = free_ports(2)
        self.proc: subprocess.Popen | None = None
        self.admin_token: str | None = None
        self.last_exit: int | None = None
        self.last_stop_forced = False
        self.starts = 0
        self.clients: list = []  # Device / RawClient objects to close at teardown

    # addresses
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def mqtt_addr(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # lifecycle
    def start(self, timeout: float = 20.0) -> "Node":
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        if not PUSHNODE_BIN.exists():
            pytest.fail(f"pushnode binary not found at {PUSHNODE_BIN} (set PUSHNODE_BIN)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(PUSHNODE_BIN), "serve",
            "--data-dir", str(self.data_dir),
            "--mqtt-listen", self.mqtt_addr,
            "--http-listen", self.http_addr,
            "--shards", str(self.shards),
            *self.extra_args,
        ]
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        http_ok = mqtt_ok = False
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"pushnode exited with {code} during startup; log tail:\n{tail(self.log_path)}"
                )
            if not http_ok:
                try:
                    # Connection: close, so the node does not hold the probe's connection
                    # until the client's socket is collected (or for its idle timeout).
                    with requests.get(self.url + "/healthz", timeout=1, headers={"Connection": "close"}) as r:
                        http_ok = r.status_code == 200
                except requests.RequestException:
                    pass
            if not mqtt_ok:
                try:
                    with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=1):
                        mqtt_ok = True
                except OSError:
                    pass
            token_file = self.data_dir / "admin.token"
            if http_ok and mqtt_ok and token_file.exists():
                token = token_file.read_text().strip()
                if token:
                    self.admin_token = token
                    return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"pushnode not ready within {timeout}s (healthz={http_ok} mqtt={mqtt_ok} "
                    f"token={token_file.exists()}); log tail:\n{tail(self.log_path)}"
                )
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        self.last_stop_forced = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.last_stop_forced = True
                self.proc.kill()
                self.proc.wait(10)
        self.last_exit = self.proc.returncode
        return self.last_exit

    def kill(self) -> int | None:
        """SIGKILL the node process (no graceful shutdown)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.last_exit = self.proc.returncode
        return self.last_exit

    def restart(self, timeout: float = 20.0) -> "Node":
        self.stop()
        return self.start(timeout)

    def healthy(self) -> bool:
        try:
            r = requests.get(self.url + "/healthz", timeout=2)
            return r.status_code == 200 and r.json().get("status") == "ok"
        except (requests.RequestException, ValueError):
            return False

    # HTTP API
    def http(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return requests.request(method, self.url + path, **kw)

    def create_app(self, name: str = "test", package: str = "com.example.test") -> dict:
        r = self.http(
            "POST", "/v1/apps",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            json={"name": name, "package": package},
        )
        assert r.status_code == 201, f"POST /v1/apps -> {r.status_code} {r.text}"
        app = r.json()
        for k in ("app_id", "app_key", "app_secret"):
            assert isinstance(app.get(k), str) and app[k], f"app answer lacks {k}: {app}"
        return app

    def register(self, app: dict) -> tuple[str, str]:
        r = self.http("POST", "/v1/devices", json={"app_id": app["app_id"], "app_key": app["app_key"]})
        assert r.status_code == 201, f"POST /v1/devices -> {r.status_code} {r.text}"
        body = r.json()
        assert isinstance(body.get("regid"), str) and body["regid"], body
        assert isinstance(body.get("token"), str) and body["token"], body
        return body["regid"], body["token"]

    def push(self, app: dict, regids, secret: str | None = None, **fields) -> requests.Response:
        """POST /v1/messages. `fields` override the defaults (type notification, title)."""
        if isinstance(regids, str):
            regids = [regids]
        body = {"target": {"regids": list(regids)}, "type": "notification", "title": "hello"}
        body.update(fields)
        return self.http(
            "POST", "/v1/messages",
            headers={"Authorization": f"key={secret if secret is not None else app['app_secret']}"},
            json=body,
        )

    def send(self, app: dict, regids, **fields) -> dict:
        """push() that must succeed: returns the JSON answer."""
        r = self.push(app, regids, **fields)
        assert r.status_code == 200, f"POST /v1/messages -> {r.status_code} {r.text}"
        return r.json()

    def status(self, app: dict, msg_id, secret: str | None = None) -> requests.Response:
        return self.http(
            "GET", f"/v1/messages/{msg_id}",
            headers={"Authorization": f"key={secret if secret is not None else app['app_secret']}"},
        )

    def wait_delivered(self, app: dict, msg_id, delivered: int, timeout: float = 5.0) -> dict:
        last = {}

        def check():
            nonlocal last
            r = self.status(app, msg_id)
            assert r.status_code == 200, f"GET /v1/messages/{msg_id} -> {r.status_code} {r.text}"
            last = r.json()
            return last.get("delivered") == delivered

        try:
            wait_until(check, timeout, interval=0.1, what=f"delivered == {delivered}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last status {last}") from None
        return last

    # device clients
    def device(self, app: dict, regid: str, token: str, version: int = 5, **kw) -> "Device":
        d = Device(self, client_id=regid, username=app["app_id"], password=token,
                   version=version, **kw)
        self.clients.append(d)
        return d

    def client(self, client_id: str, username, password, version: int = 5, **kw) -> "Device":
        """A paho device with arbitrary credentials (e.g. registration with the app key)."""
        d = Device(self, client_id=client_id, username=username, password=password,
                   version=version, **kw)
        self.clients.append(d)
        return d

    def raw(self, version: int = 4, timeout: float = 10.0, source: str | None = None) -> mqttraw.RawClient:
        """A raw MQTT client, connected from address `source` (e.g. "127.0.0.9") if given."""
        c = mqttraw.RawClient("127.0.0.1", self.mqtt_port, version=version, timeout=timeout, source=source)
        self.clients.append(c)
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        self.clients.clear()


# ------------------------------------------------------------------------------------
# paho device helper
# ------------------------------------------------------------------------------------


def _props_dict(props) -> dict:
    """paho Properties -> {'MessageExpiryInterval': 3600, 'UserProperty': [(k, v)], ...}"""
    if props is None:
        return {}
    out = {}
    for name in getattr(props, "names", {}):
        attr = name.replace(" ", "")
        if hasattr(props, attr):
            out[attr] = getattr(props, attr)
    return out


class Device:
    """A paho-mqtt 2.x device. Collects every PUBLISH it receives (auto-acked unless
    manual_ack=True, then `ack(msg)` sends the PUBACK)."""

    def __init__(self, node: Node, client_id: str, username: str | None, password: str | None,
                 version: int = 5, clean: bool = False, manual_ack: bool = False,
                 keepalive: int = 30):
        self.node = node
        self.version = version
        self.clean = clean
        self.keepalive = keepalive
        self.username = username
        self.password = password
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        kw = dict(client_id=client_id, protocol=proto, reconnect_on_failure=False,
                  manual_ack=manual_ack)
        if version != 5:
            kw["clean_session"] = clean
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self._cv = threading.Condition()
        self.messages: list[dict] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: dict | None = None
        self.suback: list | None = None
        self._started = False

    # callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cv:
            self.connack = {
                "rc": reason_code.value if hasattr(reason_code, "value") else int(reason_code),
                "failure": bool(getattr(reason_code, "is_failure", False)),
                "session_present": bool(flags.session_present),
                "props": _props_dict(properties),
            }
            self._cv.notify_all()
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cv:
            self.suback = [rc.value if hasattr(rc, "value") else int(rc) for rc in reason_codes]
            self._cv.notify_all()

    def _on_message(self, client, userdata, msg):
        try:
            env = json.loads(msg.payload)
        except ValueError:
            env = None
        rec = {
            "topic": msg.topic,
            "payload": env,
            "raw": bytes(msg.payload),
            "dup": bool(msg.dup),
            "qos": msg.qos,
            "mid": msg.mid,
            "retain": bool(msg.retain),
            "props": _props_dict(getattr(msg, "properties", None)),
            "time": time.time(),
        }
        with self._cv:
            self.messages.append(rec)
            self._cv.notify_all()

    # API
    def connect(self, timeout: float = 10.0, expect_ok: bool = True) -> dict:
        kw = {"keepalive": self.keepalive}
        if self.version == 5:
            kw["clean_start"] = self.clean
        self.connected.clear()
        self.disconnected.clear()
        self.connack = None
        self.client.connect("127.0.0.1", self.node.mqtt_port, **kw)
        if not self._started:
            self.client.loop_start()
            self._started = True
        if not self.connected.wait(timeout):
            raise AssertionError(f"no CONNACK within {timeout}s")
        if expect_ok:
            assert self.connack["rc"] == 0, f"connect refused: {self.connack}"
        return self.connack

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list:
        with self._cv:
            self.suback = None
        self.client.subscribe(topic, qos)
        with self._cv:
            if not self._cv.wait_for(lambda: self.suback is not None, timeout):
                raise AssertionError(f"no SUBACK within {timeout}s")
            return list(self.suback)

    def wait_messages(self, n: int, timeout: float = 10.0) -> list[dict]:
        with self._cv:
            ok = self._cv.wait_for(lambda: len(self.messages) >= n, timeout)
            got = list(self.messages)
        assert ok, f"expected {n} messages within {timeout}s, got {len(got)}: {got}"
        return got

    def expect_no_more(self, count: int, wait: float = 1.0) -> None:
        """Asserts that after `wait` seconds no more than `count` messages have arrived."""
        time.sleep(wait)
        with self._cv:
            got = list(self.messages)
        assert len(got) == count, f"expected {count} messages, got {len(got)}: {got}"

    def ack(self, msg: dict) -> None:
        self.client.ack(msg["mid"], msg["qos"])

    def disconnect(self, settle: float = 0.2) -> None:
        """Clean DISCONNECT. `settle` lets queued PUBACKs go out first."""
        if settle:
            time.sleep(settle)
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.disconnected.wait(5)
        self.close()

    def close(self) -> None:
        if self._started:
            self.client.loop_stop()
            self._started = False
        try:
            self.client.socket() and self.client.socket().close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------
# fixtures and hooks
# ------------------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "many_connections: > 20,000 device connections to one node (runs by default; "
        "deselect with -m 'not many_connections')",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, n in enumerate(getattr(item, "_pushnodes", [])):
            rep.sections.append((f"pushnode log tail (node {i}, {n.log_path})", tail(n.log_path)))


@pytest.fixture
def make_node(request, tmp_path):
    """Factory: make_node(shards=2, extra_args=()) -> started Node. All are stopped at teardown."""
    nodes: list[Node] = []
    request.node._pushnodes = nodes

    def make(shards: int = 2, extra_args: tuple = (), start: bool = True) -> Node:
        n = Node(tmp_path / f"node{len(nodes)}", shards=shards, extra_args=extra_args)
        nodes.append(n)
        if start:
            n.start()
        return n

    yield make
    for n in nodes:
        n.close_clients()
        try:
            n.stop()
        except Exception:
            n.kill()


@pytest.fixture
def node(make_node) -> Node:
    return make_node()


@pytest.fixture
def app(node) -> dict:
    return node.create_app()


class ReceiptSink:
    """An HTTP server on loopback that keeps what is POSTed to it: a `callback` URL's far end.
    `posts` holds (path, JSON body) in arrival order; `wait_for(predicate, timeout)` waits
    under its lock until `predicate()` holds."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.cv = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with sink.cv:
                    sink.posts.append((self.path, json.loads(body)))
                    sink.cv.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def receipts(self) -> list[dict]:
        return [r for _, body in self.posts for r in body["receipts"]]

    def wait_for(self, predicate, timeout: float) -> bool:
        with self.cv:
            return self.cv.wait_for(predicate, timeout)

    def close(self) -> None:
        self.server.shutdown()


class FanoutBurst:
    """`loadgen fanout` running against `node` in the background: `subscribers` devices on
    topic "bench" get `messages` QoS 1 messages posted back to back (under `app`'s
    credentials, else an app loadgen creates). `wait_until(predicate)` polls while it runs;
    `finish()` waits for it to exit 0 and returns its JSON report."""

    def __init__(self, node: Node, out: Path, subscribers: int, messages: int, app: dict | None = None):
        if app:
            auth = ["--app-id", app["app_id"], "--app-key", app["app_key"], "--app-secret", app["app_secret"]]
        else:
            auth = ["--admin-token-file", str(node.data_dir / "admin.token")]
        self.out = out
        cmd = [str(LOADGEN_BIN), "fanout", "--mqtt", node.mqtt_addr, "--http", node.url, *auth,
               "--workers", "2", "--subscribers", str(subscribers), "--messages", str(messages),
               "--interval-ms", "0", "--timeout-secs", "120", "--straggler-secs", "20", "--json", str(out)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_until(self, predicate, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None and time.monotonic() < deadline, "the fan-out did not get there"
            time.sleep(0.02)

    def finish(self) -> dict:
        stdout, stderr = self.proc.communicate(timeout=150)
        assert self.proc.returncode == 0, f"{stdout}\n{stderr[-3000:]}"
        return json.loads(self.out.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
