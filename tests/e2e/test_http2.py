"""HTTP/2 on the app-server API, through a real node and the `h2` protocol library on raw
sockets: h2c with prior knowledge on the HTTP listener, "h2" by ALPN on HTTPS; many sends
multiplexed on one connection all answered and delivered; errors keep their JSON; an
idle HTTP/2 connection, and a client that stops inside the preface, are closed after
`http_idle_timeout_secs`."""

import json
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from test_tls import tls_node  # noqa: F401 (a fixture)

IDLE_S = 2


class H2Client:
    """One HTTP/2 connection (h2 state machine over a blocking socket)."""

    def __init__(self, sock, authority: str):
        self.sock = sock
        self.authority = authority
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.answers: dict[int, dict] = {}
        self.closed_by_server = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, method: str, path: str, headers: dict | None = None, body: bytes = b"") -> int:
        stream = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", self.authority)]
        fields += list((headers or {}).items())
        self.conn.send_headers(stream, fields, end_stream=not body)
        if body:
            self.conn.send_data(stream, body, end_stream=True)
        self.answers[stream] = {"status": None, "body": b"", "done": False}
        return stream

    def pump(self, timeout: float) -> bool:
        """Reads once; False when the server closed the connection."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            self.closed_by_server = True
            return False
        if self.closed_by_server:
            return True  # after GOAWAY only the end of the connection matters
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # The state machine closes on GOAWAY and refuses the PING hyper sends after it.
            assert self.conn.state_machine.state == h2.connection.ConnectionState.CLOSED, "bad frames"
            self.closed_by_server = True
            return True
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self.answers[event.stream_id]["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.answers[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.answers[event.stream_id]["done"] = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed_by_server = True
        self.flush()
        return True

    def wait(self, streams, timeout: float = 10.0) -> list[tuple[int, dict]]:
        self.flush()
        deadline = time.monotonic() + timeout
        while not all(self.answers[s]["done"] for s in streams):
            left = deadline - time.monotonic()
            assert left > 0, f"answers missing after {timeout}s: {[s for s in streams if not self.answers[s]['done']]}"
            assert self.pump(left), "the server closed the connection before answering"
        return [(self.answers[s]["status"], json.loads(self.answers[s]["body"])) for s in streams]


def _h2c(node) -> H2Client:
    sock = socket.create_connection((node.host, node.http_port), timeout=10)
    return H2Client(sock, node.http_addr)


def _send_body(regid: str, title: str) -> bytes:
    return json.dumps({"target": {"regids": [regid]}, "type": "notification", "title": title}).encode()


def test_many_sends_multiplexed_on_one_h2c_connection_are_all_answered_and_delivered(node, app):
    regid, token = node.register(app)
    device = node.device(app, regid, token)
    device.connect()
    client = _h2c(node)
    auth = {"authorization": f"key={app['app_secret']}", "content-type": "application/json"}
    # All 40 requests are written before any answer is read: they are in flight together.
    streams = [client.send("POST", "/v1/messages", auth, _send_body(regid, f"m{i}")) for i in range(40)]
    client.flush()
    answers = client.wait(streams)
    assert all(status == 200 for status, _ in answers), answers
    ids = [body["id"] for _, body in answers]
    assert len(set(ids)) == 40, ids
    assert all(body["targets"] == 1 and body["invalid"] == [] for _, body in answers), answers
    got = device.wait_messages(40)
    assert sorted(m["payload"]["title"] for m in got) == sorted(f"m{i}" for i in range(40))
    assert {str(m["payload"]["id"]) for m in got} == {str(i) for i in ids}
    # The same connection goes on serving, here a read.
    [(status, body)] = client.wait([client.send("GET", f"/v1/messages/{ids[0]}", auth)])
    assert status == 200 and body["targets"] == 1, body


def test_errors_over_h2_are_json_with_their_status(node, app):
    client = _h2c(node)
    bad_key = {"authorization": "key=not-a-secret", "content-type": "application/json"}
    good = {"authorization": f"key={app['app_secret']}", "content-type": "application/json"}
    s1 = client.send("POST", "/v1/messages", bad_key, b"{}")
    s2 = client.send("POST", "/v1/messages", good, b"{not json")
    s3 = client.send("GET", "/v1/nothing-here", good)
    client.flush()
    (st1, b1), (st2, b2), (st3, b3) = client.wait([s1, s2, s3])
    assert st1 == 401 and b1["code"] == "unauthorized", b1
    assert st2 == 400 and b2["code"], b2
    assert st3 == 404 and b3["code"], b3


def test_https_offers_h2_by_alpn(tls_node):
    https = int(tls_node.https_url.rsplit(":", 1)[1])
    ca = tls_node.ca
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", https), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert sock.selected_alpn_protocol() == "h2"
    client = H2Client(sock, f"127.0.0.1:{https}")
    [(status, body)] = client.wait([client.send("GET", "/healthz")])
    assert (status, body) == (200, {"status": "ok"})
    # A client that offers only HTTP/1.1 still gets it.
    context11 = ssl.create_default_context(cafile=str(ca))
    context11.set_alpn_protocols(["http/1.1"])
    sock11 = context11.wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=10),
                                   server_hostname="127.0.0.1")
    assert sock11.selected_alpn_protocol() == "http/1.1"
    sock11.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert sock11.recv(4096).startswith(b"HTTP/1.1 200"), "HTTP/1.1 over TLS still answered"


@pytest.fixture
def idle_node(make_node):
    return make_node(shards=1, extra_args=("--http-idle-timeout-secs", str(IDLE_S)))


def _seconds_until_closed(client: H2Client, since: float, limit: float) -> float:
    """Reads until the server closes the connection; the seconds since `since`."""
    while time.monotonic() - since < limit:
        try:
            if not client.pump(limit):
                break
        except (ConnectionResetError, socket.timeout):
            break
    return time.monotonic() - since


def test_an_idle_h2_connection_gets_goaway_and_is_closed(idle_node):
    client = _h2c(idle_node)
    [(status, _)] = client.wait([client.send("GET", "/healthz")])
    assert status == 200
    answered = time.monotonic()
    took = _seconds_until_closed(client, answered, limit=4 * IDLE_S + 2)
    assert client.closed_by_server, "the node never closed the idle connection"
    # GOAWAY after one to two idle periods of silence; this client does not answer the PING
    # that follows it, so the socket closes one period later.
    assert IDLE_S * 0.75 <= took <= 3 * IDLE_S + 1.5, took


def test_a_client_stalled_inside_the_preface_is_cut_off(idle_node):
    sock = socket.create_connection((idle_node.host, idle_node.http_port), timeout=10)
    sock.sendall(b"PRI * HTTP/2")
    sent = time.monotonic()
    sock.settimeout(4 * IDLE_S + 2)
    try:
        got = sock.recv(4096)
    except ConnectionResetError:
        got = b""
    took = time.monotonic() - sent
    assert got == b"", got
    assert IDLE_S * 0.75 <= took <= IDLE_S + 1.5, took
    assert idle_node.healthy()
