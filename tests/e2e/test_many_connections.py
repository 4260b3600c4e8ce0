"""More than 20,000 device connections held by ONE node process (whose fd limit is 20,000).

Uses $LOADGEN_BIN with this contract:
  loadgen hold --mqtt 127.0.0.1:PORT --http http://127.0.0.1:PORT --app-id ID --app-key KEY
               --app-secret SECRET --connections N --source-ip 127.0.0.X
               --push-timeout-secs 60 --json OUT.json
registers N devices over MQTT 5 from source address 127.0.0.X and holds them, prints the line
`ready N` on stdout, waits for the line `go` on stdin, then pushes one message to each of its
own RegIDs over HTTP (1000 per request), waits until all N arrive, writes
{"connected": N, "received": N, ...} to OUT.json and exits 0.
"""

import json
import os
import resource
import shutil
import subprocess
import threading
import time

import pytest

from conftest import LOADGEN_BIN, NO_CONNECT_LIMIT

PER_PROCESS = 7000
SOURCES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
READY_TIMEOUT = 180
DONE_TIMEOUT = 180


def established_to(port: int) -> int:
    """ESTABLISHED TCP sockets whose local port is `port` (the node's side).
    Uses `ss` (netlink, fast); falls back to /proc/net/tcp (slow with many sockets)."""
    ss = shutil.which("ss")
    if ss:
        out = subprocess.run([ss, "-Htn", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return sum(1 for line in out.splitlines() if line.strip())
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def children_of(pid: int) -> list:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


class Loadgen:
    def __init__(self, node, app, source_ip, n, workdir):
        self.source_ip = source_ip
        self.n = n
        self.json_path = workdir / f"loadgen-{source_ip}.json"
        self.err_path = workdir / f"loadgen-{source_ip}.err"
        self.lines = []
        self.ready = threading.Event()
        self.ready_count = None
        cmd = [
            str(LOADGEN_BIN), "hold",
            "--mqtt", node.mqtt_addr, "--http", node.url,
            "--app-id", app["app_id"], "--app-key", app["app_key"],
            "--app-secret", app["app_secret"],
            "--connections", str(n), "--source-ip", source_ip,
            "--push-timeout-secs", "60", "--json", str(self.json_path),
        ]
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            parts = line.split()
            if len(parts) == 2 and parts[0] == "ready" and parts[1].isdigit():
                self.ready_count = int(parts[1])
                self.ready.set()
        self.ready.set()  # EOF: wake waiters; ready_count tells whether it was real

    def describe(self):
        err = self.err_path.read_text(errors="replace")[-3000:] if self.err_path.exists() else ""
        return (f"loadgen {self.source_ip}: rc={self.proc.poll()} stdout={self.lines[-20:]!r}\n"
                f"stderr tail:\n{err}")

    def go(self):
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.err.close()


@pytest.mark.many_connections
def test_many_connections(make_node, tmp_path):
    assert LOADGEN_BIN.exists(), f"loadgen binary not found at {LOADGEN_BIN} (set LOADGEN_BIN)"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    total = PER_PROCESS * len(SOURCES)
    print(f"RLIMIT_NOFILE soft={soft} hard={hard}; connections={total}")
    assert total > 20_000

    node = make_node(shards=2, extra_args=NO_CONNECT_LIMIT)  # 7,000 connections per address
    app = node.create_app(name="many")
    gens = []
    try:
        for ip in SOURCES:
            gens.append(Loadgen(node, app, ip, PER_PROCESS, tmp_path))

        deadline = time.monotonic() + READY_TIMEOUT
        for g in gens:
            ok = g.ready.wait(max(0.0, deadline - time.monotonic()))
            assert ok and g.ready_count is not None, (
                f"not ready within {READY_TIMEOUT}s\n" + "\n".join(x.describe() for x in gens)
                + f"\nnode healthy: {node.healthy()}")
            assert g.ready_count == PER_PROCESS, g.describe()
        t_ready = time.monotonic()
        assert node.healthy(), "node unhealthy with all connections held"
        assert node.running()
        # All of them are held at once by the one node process (which has no children).
        held = established_to(node.mqtt_port)
        print(f"node-side ESTABLISHED connections on the MQTT port: {held}")
        assert held >= total, f"only {held} connections established to the node, want {total}"
        assert children_of(node.proc.pid) == [], "node process has child processes"

        for g in gens:
            g.go()
        deadline = time.monotonic() + DONE_TIMEOUT
        for g in gens:
            try:
                rc = g.proc.wait(max(0.1, deadline - time.monotonic()))
            except Exception:
                raise AssertionError(
                    f"loadgen not done within {DONE_TIMEOUT}s\n"
                    + "\n".join(x.describe() for x in gens)) from None
            assert rc == 0, g.describe()
        print(f"all pushes received {time.monotonic() - t_ready:.1f}s after ready")

        for g in gens:
            out = json.loads(g.json_path.read_text())
            print(g.source_ip, {k: v for k, v in out.items() if k != "regids"})
            assert out["connected"] == PER_PROCESS, (g.source_ip, out)
            assert out["received"] == PER_PROCESS, (g.source_ip, out)

        # The node is still healthy and still serves a fresh device.
        assert node.running() and node.healthy()
        regid, token = node.register(app)
        dev = node.device(app, regid, token, version=5)
        dev.connect()
        res = node.send(app, [regid], title="after-load")
        assert dev.wait_messages(1, timeout=10)[0]["payload"]["id"] == res["id"]
    finally:
        for g in gens:
            g.stop()
