"""HTTP connections spread over the node's HTTP threads by how many each serves, not by the
kernel's hash of their addresses alone: two keep-alive connections opened one after the
other are served by the two HTTP threads, one each, whichever thread's listener accepted
them (with the hash alone both land on one thread half the time). Seen from outside,
through each thread's CPU time in /proc while requests flow on both connections."""

import time
from pathlib import Path

from test_http_timeouts import _connect, _get, _read_response

REQUESTS = 1500


def http_thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU time (ns) of each of the node's `http-N` threads, from /proc/PID/task/*/schedstat."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        if name.startswith("http-"):
            out[name] = int((task / "schedstat").read_text().split()[0])
    return out


def node_side_connections(port: int) -> int:
    """Connections the node still holds on its listening `port`: established or closed by
    the client only (CLOSE_WAIT), from /proc/net/tcp."""
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == port and state in ("01", "08"):
            held += 1
    return held


def test_two_connections_are_served_by_the_two_http_threads(make_node):
    node = make_node(shards=1)  # two HTTP threads, the default
    # The readiness probes' connections are closed on the node's side (each counts on its
    # thread while open; on a busy machine that can take longer than a fixed wait).
    deadline = time.monotonic() + 10
    while node_side_connections(node.http_port) > 0:
        assert time.monotonic() < deadline, "the node still holds the readiness probes' connections"
        time.sleep(0.05)
    conns = []
    for _ in range(2):
        s = _connect(node.http_port)
        s.sendall(_get())
        assert _read_response(s)[0] == 200
        conns.append(s)
    before = http_thread_cpu_ns(node.proc.pid)
    assert sorted(before) == ["http-0", "http-1"], before
    for _ in range(REQUESTS):
        for s in conns:
            s.sendall(_get("/metrics"))
        for s in conns:
            assert _read_response(s)[0] == 200
    after = http_thread_cpu_ns(node.proc.pid)
    used = {name: after[name] - before[name] for name in before}
    total = sum(used.values())
    assert total > 0, used
    for name, ns in used.items():
        assert ns >= 0.25 * total, f"{name} did {ns / total:.0%} of the HTTP work: {used}"
    for s in conns:
        s.close()
