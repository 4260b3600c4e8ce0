#!/usr/bin/env python3
"""Side-by-side benchmark runner (called by scripts/bench; stdlib only).

For every target (pushnode, mosquitto, nats-server, rumqttd, the bench's bare server)
and every scenario of the profile it starts a fresh server on loopback, runs the same
`loadgen` scenario against it with --json, stops the server by its PID, and finally
renders the comparison table with bench/render.py.

Everything is bounded: each server start waits at most START_TIMEOUT_S, each loadgen run
at most its --timeout-secs plus a grace period (then its process group is killed), each
server stop waits STOP_TIMEOUT_S after SIGTERM before SIGKILL. Only processes this
script started are signalled, by PID / process group id.

The `idle-tls` scenario is loadgen's `idle` over MQTT-over-TLS: Pushnode gets its
`--mqtt-tls-listen` and mosquitto a TLS listener, both with a certificate from a throwaway
CA that openssl makes in a temporary folder for the run (removed afterwards); loadgen
trusts that CA (`--tls-ca`).

Results: bench/results/<date>-<profile>/ holds one <target>-<scenario>.json per run
(loadgen's --json, or a {"skipped": reason} stub), runs.json (what ran, exit codes,
server CPU and peak RSS), meta.json (machine, profile, versions), logs/, and table.md.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = os.path.join(HERE, "configs")
RELEASE = os.path.join(ROOT, "target", "release")
TOOLS_BIN = os.path.join(ROOT, "target", "bench-tools", "bin")

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 5
LOADGEN_GRACE_S = 60
# Connections a peer is given in the full profile: one process holds at most 20,000 fds.
FD_LIMIT = 20_000
PEER_CAP = 19_000

ALL_TARGETS = ["pushnode", "pushnode-cap", "mosquitto", "nats-server", "rumqttd", "bare"]
# Pushnode again at the peers' cap, so rates and latencies compare at equal scale too.
PEERS_AND_PUSHNODE = [t for t in ALL_TARGETS if t != "pushnode-cap"]
ALL_SCENARIOS = ["connect", "idle", "fanout", "unicast", "http", "http1", "fsync", "churn", "idle-tls"]
# Bench scenarios that run a loadgen scenario of another name, over TLS.
TLS_SCENARIOS = {"idle-tls": "idle"}
# `http`: the HTTP frontend alone (loadgen's `unicast --offline`, one RegID a request), over
# HTTP/2; `http1`: the same over HTTP/1.1 keep-alive connections (one request in flight each).
# `fsync`: unicast through the HTTP API with `durability = "fsync"`, 100 RegIDs a request.
LOADGEN_SCENARIO = {**TLS_SCENARIOS, "http": "unicast", "http1": "unicast", "fsync": "unicast"}
# Scenarios that run on fewer devices than the profile's connections, and the profile key saying how many.
DEVICES_KEY = {"http": "http_devices", "http1": "http_devices", "fsync": "fsync_devices"}
# What a repeated scenario keeps the median run of.
REPEATED = {"connect": ("connect_repeats", "connect_rate_per_s"), "fanout": ("fanout_repeats", "deliveries_per_s"),
            "http": ("http_repeats", "achieved_rate_per_s"), "http1": ("http_repeats", "achieved_rate_per_s")}

# Profiles: connections is what Pushnode gets; peers get min(connections, peer_cap).
PROFILES = {
    "smoke": dict(
        connections=500, peer_cap=500, targets=["pushnode", "bare"],
        scenarios=["connect", "idle", "fanout", "unicast", "http", "http1", "fsync", "churn"],
        idle_hold_s=2, fanout_messages=5, fanout_interval_ms=100,
        unicast_rate=1000, unicast_s=3, unicast_batch=100,
        http_devices=200, http_rate=1000, http_s=3,
        fsync_devices=200, fsync_rate=2000, fsync_s=3,
        churn_per_s=50, churn_rate=500, churn_s=3, timeout_s=30, straggler_s=3,
    ),
    "quick": dict(
        connections=10_000, peer_cap=10_000, targets=PEERS_AND_PUSHNODE,
        scenarios=["connect", "idle", "fanout", "unicast", "http", "http1", "fsync", "churn", "idle-tls"],
        idle_hold_s=3, fanout_messages=10, fanout_interval_ms=0, fanout_repeats=3,
        unicast_rate=20_000, unicast_s=5, unicast_batch=10, connect_repeats=3,
        http_devices=2_000, http_rate=30_000, http_s=5,
        fsync_devices=2_000, fsync_rate=10_000, fsync_s=5,
        churn_per_s=500, churn_rate=5_000, churn_s=5, timeout_s=60, straggler_s=5,
    ),
    "full": dict(
        connections=100_000, peer_cap=PEER_CAP, targets=ALL_TARGETS,
        scenarios=["connect", "idle", "fanout", "unicast", "http", "http1", "fsync", "churn"],
        idle_hold_s=15, fanout_messages=10, fanout_interval_ms=0, fanout_repeats=3,
        unicast_rate=20_000, unicast_s=30, unicast_batch=10, connect_repeats=3,
        http_devices=10_000, http_rate=60_000, http_s=15, http_repeats=3,
        fsync_devices=10_000, fsync_rate=30_000, fsync_s=60,
        churn_per_s=2_000, churn_rate=20_000, churn_s=30, timeout_s=600, straggler_s=15,
    ),
}

# MQTT version loadgen speaks to each peer (nats-server's MQTT is 3.1.1 only).
MQTT_VERSION = {"mosquitto": 5, "nats-server": 3, "rumqttd": 5, "bare": 5}

# Scenarios only some targets run, and why the others do not.
ONLY_FOR = {"churn": ({"pushnode", "pushnode-cap"}, "churn checks Pushnode's no-loss guarantee across "
                      "reconnects; loadgen runs it against --target pushnode only (plain MQTT "
                      "clients use clean sessions, where loss is by design)"),
            "idle-tls": ({"pushnode", "mosquitto"}, "the bench sets up an MQTT TLS listener "
                         "for Pushnode and mosquitto only"),
            "http": ({"pushnode"}, "the HTTP push API is Pushnode's own; peers are sent to over "
                     "MQTT (unicast)"),
            "http1": ({"pushnode"}, "the HTTP push API is Pushnode's own; peers are sent to over "
                      "MQTT (unicast)"),
            "fsync": ({"pushnode"}, "pushes through the HTTP API with every one durable on disk "
                      "before its answer are Pushnode's own (the peers' MQTT unicast is in `unicast`)")}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit_s):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before listening"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return None
        except OSError:
            time.sleep(0.1)
    return f"not listening on {port} after {limit_s}s"


def render_config(name, out_dir, **subst):
    with open(os.path.join(CONFIGS, name)) as f:
        text = f.read()
    for k, v in subst.items():
        text = text.replace(f"@{k}@", str(v))
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def make_tls_files(tmp):
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 (ECDSA P-256,
    so handshakes cost little CPU), made with the openssl command in `tmp`."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.pem")
    key, csr, cert = (os.path.join(tmp, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(tmp, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=pushnode-bench-ca")
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    # mosquitto started as root reads these after dropping to its own user.
    os.chmod(tmp, 0o755)
    os.chmod(key, 0o644)
    return {"ca": ca, "cert": cert, "key": key}


def proc_stats(pid):
    """Server CPU seconds and peak RSS (VmHWM) from /proc, while it still runs."""
    out = {}
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["server_cpu_s"] = round((int(fields[11]) + int(fields[12])) / tick, 2)
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key = "server_peak_rss_bytes" if line.startswith("VmHWM") else "server_rss_bytes"
                    out[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


class Server:
    """One started target: its process, its MQTT address and loadgen's target flags."""

    def __init__(self, name, proc, mqtt_port, loadgen_args, tmp, logf):
        self.name, self.proc, self.mqtt_port = name, proc, mqtt_port
        self.loadgen_args, self.tmp, self.logf = loadgen_args, tmp, logf
        self.extra = {}

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        """SIGTERM by PID, then SIGKILL after STOP_TIMEOUT_S."""
        stats = proc_stats(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM; SIGKILL")
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.logf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return stats


def spawn(name, argv, logs_dir, tag, tmp, env=None):
    logf = open(os.path.join(logs_dir, f"{tag}.server.log"), "w")
    logf.write("$ " + " ".join(argv) + "\n")
    logf.flush()
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=tmp, env=env)
    return proc, logf


def pushnode_layout(n):
    """Shards and per-shard capacity for n connections (a ring's fixed-file table, like
    a process's fd table, holds at most ~20,000 here)."""
    cores = os.cpu_count() or 1
    # As few shards as keep each one's devices under 14,000 on average: a shard's device
    # table doubles past 14,336 (7/8 of 16,384 buckets), which costs ~45 bytes per
    # connection; fewer shards are fewer threads and rings (at 1M, 56
    # shards of 17,900 delivered 26,004/s against 20,545/s on 80, but took 506 B per idle
    # connection against 468). SO_REUSEPORT spreads connections evenly (a shard's count
    # varies by ~sqrt of its mean); each ring may hold up to 19,500 (the fd limit is 20,000).
    shards = int(os.environ.get("BENCH_PUSHNODE_SHARDS") or max(cores, math.ceil(n / 14_000)))
    per_shard = min(19_500, max(1024, math.ceil(n * 1.3 / shards) + 1024))
    return shards, per_shard


def start_pushnode(n, logs_dir, tag, tls=None, durability="buffered"):
    tmp = tempfile.mkdtemp(prefix="bench-pushnode-")
    mqtt, http = free_port(), free_port()
    shards, per_shard = pushnode_layout(n)
    cfg = os.path.join(tmp, "pushnode.toml")
    with open(cfg, "w") as f:
        # loadgen opens thousands of connections a second per source address: the
        # per-address connect rate limit (on by default) would refuse most of them.
        f.write(f"partitions = {max(16, shards)}\nlog = \"warn\"\nconnect_rate_per_ip = 0\n")
        if shards > 2 * (os.cpu_count() or 1):
            # Many more shards than cores (one per 16k connections): each shard's receive
            # buffer ring is shared by its connections, so a smaller one per shard keeps the
            # node's total (shards x recv_buffers x 512 B: 40 MiB at 80 shards) well below
            # what it would be at the default 8192 (320 MiB).
            f.write("recv_buffers = 1024\n")
            # Likewise each shard's ring: its queues are mapped into the node (~0.5 MiB a
            # shard at the defaults, 42 MB of RSS at 80 shards before any connection);
            # a quarter of that suits a shard that holds 12,500.
            f.write("submission_queue_entries = 1024\ncompletion_queue_entries = 4096\n")
    data = os.path.join(tmp, "data")
    # The server runs in its own folder: a relative PUSHNODE is taken from here.
    argv = [os.path.abspath(os.environ.get("PUSHNODE") or os.path.join(RELEASE, "pushnode")), "serve", "--config", cfg, "--data-dir", data,
            "--mqtt-listen", f"127.0.0.1:{mqtt}", "--http-listen", f"127.0.0.1:{http}",
            "--durability", durability, "--shards", str(shards),
            "--max-connections-per-shard", str(per_shard)]
    mqtts = None
    if tls:
        mqtts = free_port()
        argv += ["--mqtt-tls-listen", f"127.0.0.1:{mqtts}", "--tls-cert", tls["cert"],
                 "--tls-key", tls["key"]]
    proc, logf = spawn("pushnode", argv, logs_dir, tag, tmp)
    srv = Server("pushnode", proc, mqtt, [], tmp, logf)
    err = wait_port(mqtt, proc, START_TIMEOUT_S) or wait_port(http, proc, START_TIMEOUT_S)
    if not err and mqtts:
        err = wait_port(mqtts, proc, START_TIMEOUT_S)
    if err:
        srv.stop()
        raise RuntimeError(f"pushnode: {err}")
    token_path = os.path.join(data, "admin.token")
    with open(token_path) as f:
        token = f.read().strip()
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}/v1/apps", method="POST",
        data=json.dumps({"name": "bench", "package": "com.bench"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        app = json.load(r)
    srv.loadgen_args = ["--target", "pushnode", "--mqtt", f"127.0.0.1:{mqtts or mqtt}",
                        "--http", f"http://127.0.0.1:{http}", "--app-id", app["app_id"],
                        "--app-key", app["app_key"], "--app-secret", app["app_secret"]]
    if tls:
        srv.loadgen_args += ["--tls-ca", tls["ca"]]
    srv.extra = {"shards": shards, "max_connections_per_shard": per_shard}
    return srv


def mqtt_target(name, proc, port, tmp, logf):
    srv = Server(name, proc, port, ["--target", "mqtt", "--mqtt", f"127.0.0.1:{port}",
                                    "--mqtt-version", str(MQTT_VERSION[name])], tmp, logf)
    err = wait_port(port, proc, START_TIMEOUT_S)
    if err:
        srv.stop()
        raise RuntimeError(f"{name}: {err}")
    return srv


def start_mosquitto(n, logs_dir, tag, tls=None):
    tmp = tempfile.mkdtemp(prefix="bench-mosquitto-")
    port = free_port()
    if tls:
        cfg = render_config("mosquitto-tls.conf", tmp, MQTT_PORT=port, CA_FILE=tls["ca"],
                            CERT_FILE=tls["cert"], KEY_FILE=tls["key"])
    else:
        cfg = render_config("mosquitto.conf", tmp, MQTT_PORT=port)
    proc, logf = spawn("mosquitto", [find_bin("mosquitto"), "-c", cfg], logs_dir, tag, tmp)
    srv = mqtt_target("mosquitto", proc, port, tmp, logf)
    if tls:
        srv.loadgen_args += ["--tls-ca", tls["ca"]]
    return srv


def start_nats(n, logs_dir, tag):
    tmp = tempfile.mkdtemp(prefix="bench-nats-")
    port, nats_port = free_port(), free_port()
    store = os.path.join(tmp, "jetstream")
    cfg = render_config("nats-server.conf", tmp, MQTT_PORT=port, NATS_PORT=nats_port,
                        STORE_DIR=store)
    proc, logf = spawn("nats-server", [find_bin("nats-server"), "-c", cfg], logs_dir, tag, tmp)
    return mqtt_target("nats-server", proc, port, tmp, logf)


def start_rumqttd(n, logs_dir, tag):
    tmp = tempfile.mkdtemp(prefix="bench-rumqttd-")
    v4, v5 = free_port(), free_port()
    cfg = render_config("rumqttd.toml", tmp, MQTT_PORT=v4, MQTT5_PORT=v5)
    proc, logf = spawn("rumqttd", [find_bin("rumqttd"), "-q", "-c", cfg], logs_dir, tag, tmp)
    port = v5 if MQTT_VERSION["rumqttd"] == 5 else v4
    return mqtt_target("rumqttd", proc, port, tmp, logf)


def start_bare(n, logs_dir, tag):
    tmp = tempfile.mkdtemp(prefix="bench-bare-")
    port = free_port()
    argv = [os.path.join(RELEASE, "bench"), "bare-server", "--listen", f"127.0.0.1:{port}",
            "--max-secs", "3600"]
    proc, logf = spawn("bare", argv, logs_dir, tag, tmp)
    return mqtt_target("bare", proc, port, tmp, logf)


STARTERS = {"pushnode": start_pushnode, "pushnode-cap": start_pushnode, "mosquitto": start_mosquitto,
            "nats-server": start_nats, "rumqttd": start_rumqttd, "bare": start_bare}


def find_bin(name):
    for d in (TOOLS_BIN, "/usr/sbin", "/usr/bin", "/usr/local/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which(name)
    if p:
        return p
    raise FileNotFoundError(f"{name} not installed (run scripts/bench-setup)")


def loadgen_bin():
    return os.path.abspath(os.environ.get("LOADGEN") or os.path.join(RELEASE, "loadgen"))


def loadgen_scenarios():
    """Scenarios the built loadgen offers (parsed from its --help)."""
    try:
        out = subprocess.run([loadgen_bin(), "--help"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    found, in_cmds = set(), False
    for line in out.splitlines():
        if line.strip().lower().startswith("commands:"):
            in_cmds = True
            continue
        if in_cmds:
            if not line.startswith("  "):
                break
            found.add(line.split()[0])
    return found


def loadgen_argv(scenario, srv, n, p, json_path):
    """THE loadgen invocation: the one place that knows loadgen's CLI."""
    workers = max(1, math.ceil((n + 100) / (FD_LIMIT - 2_000)))
    if scenario == "fsync":
        # Two workers: a request's 100 devices are then read by both (loadgen's spread runs).
        workers = max(2, workers)
    # At most 40,000 connections per loopback source address (of ~64,500 ports), so ports
    # left in TIME_WAIT by an earlier run never run out.
    source_ips = max(16, math.ceil(n / 40_000))
    argv = [loadgen_bin(), LOADGEN_SCENARIO.get(scenario, scenario)] + srv.loadgen_args + [
        "--source-ips", f"127.0.0.2-127.0.0.{1 + source_ips}", "--workers", str(workers),
        "--json", json_path, "--timeout-secs", str(p["timeout_s"]),
        "--straggler-secs", str(p["straggler_s"])]
    if scenario == "connect":
        argv += ["--connections", str(n), "--rate", "0"]
    elif scenario in ("idle", "idle-tls"):
        argv += ["--connections", str(n), "--hold-secs", str(p["idle_hold_s"]),
                 "--server-pid", str(srv.pid)]
    elif scenario == "fanout":
        argv += ["--subscribers", str(n), "--messages", str(p["fanout_messages"]),
                 "--qos", "1", "--interval-ms", str(p["fanout_interval_ms"])]
    elif scenario == "unicast":
        argv += ["--connections", str(n), "--rate", str(p["unicast_rate"]),
                 "--duration-secs", str(p["unicast_s"])]
        if srv.name.startswith("pushnode"):
            argv += ["--batch", str(p["unicast_batch"])]
    elif scenario in ("http", "http1"):
        # Devices register, connect and go offline; then single-RegID sends as fast as the
        # frontend answers them up to the offered rate, 256 in flight: over 4 HTTP/2
        # connections (`http`) or 256 HTTP/1.1 keep-alive connections (`http1`).
        argv += ["--connections", str(n), "--rate", str(p["http_rate"]),
                 "--duration-secs", str(p["http_s"]), "--batch", "1", "--offline",
                 "--http-concurrency", "256"]
        if scenario == "http":
            argv += ["--http2-connections", "4"]
    elif scenario == "fsync":
        argv += ["--connections", str(n), "--rate", str(p["fsync_rate"]),
                 "--duration-secs", str(p["fsync_s"]), "--batch", "100"]
    elif scenario == "churn":
        argv += ["--connections", str(n), "--churn-per-sec", str(p["churn_per_s"]),
                 "--rate", str(p["churn_rate"]), "--duration-secs", str(p["churn_s"])]
    else:
        raise ValueError(scenario)
    return argv


def run_loadgen(argv, logs_dir, tag, limit_s):
    """Runs loadgen in its own process group; kills that group if it overruns. Not its own
    session: with the kernel's autogroup scheduling (on by default) a new session is a new
    scheduling group, and the two groups then split the cores evenly under load, which
    capped every server under test at one core while loadgen was busy."""
    with open(os.path.join(logs_dir, f"{tag}.loadgen.log"), "w") as logf:
        logf.write("$ " + " ".join(argv) + "\n")
        logf.flush()
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, process_group=0)
        try:
            return proc.wait(limit_s), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
            return proc.returncode, True


def first_error(log_path):
    """loadgen's `Error: ...` line, if it printed one."""
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                if line.startswith("Error:"):
                    return line[len("Error:"):].strip()[:300]
    except OSError:
        pass
    return None


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    except (OSError, ValueError):
        pass
    # The sysctls that shape many loopback sockets (scripts/tune-host raises them), so a
    # table says whether its host was tuned: at 1M, larger SYN backlogs let a connect storm
    # queue past loadgen's handshake timeout instead of retrying SYNs (BENCHMARKS.md).
    info["sysctl"] = {}
    for name in ("net.ipv4.tcp_mem", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"):
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as f:
                info["sysctl"][name] = " ".join(f.read().split())
        except OSError:
            pass
    try:
        import resource
        info["nofile"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
    except (ImportError, ValueError):
        pass
    return info


def versions():
    out = {}
    probes = {"mosquitto": ["-h"], "nats-server": ["--version"], "rumqttd": ["--version"]}
    for name, args in probes.items():
        try:
            r = subprocess.run([find_bin(name)] + args, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            out[name] = text[0] if text else "?"
        except (OSError, FileNotFoundError, subprocess.TimeoutExpired):
            out[name] = "not installed"
    try:
        out["git"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        pass
    return out


def run_all(targets, scenarios, p, out, logs, offered, runs, tls):
    """Runs every (target, scenario) of the invocation, appending to `runs`; `tls`
    caches the throwaway CA files (made at the first TLS scenario)."""
    for target in targets:
        given = p["connections"] if target == "pushnode" else min(p["connections"], p["peer_cap"])
        capped = not target.startswith("pushnode") and given < p["connections"]
        for scenario in scenarios:
            n = min(given, p[DEVICES_KEY[scenario]]) if scenario in DEVICES_KEY else given
            tag = f"{target}-{scenario}"
            json_path = os.path.join(out, f"{tag}.json")
            run = {"target": target, "scenario": scenario, "connections": n, "capped": capped}
            if scenario in ONLY_FOR and target not in ONLY_FOR[scenario][0]:
                run["skipped"] = "not run: " + ONLY_FOR[scenario][1]
            elif LOADGEN_SCENARIO.get(scenario, scenario) not in offered:
                run["skipped"] = f"loadgen has no `{scenario}` scenario (yet)"
            if run.get("skipped"):
                log(f"{tag}: skipped: {run['skipped']}")
                write_json(json_path, {"scenario": scenario, "target": target,
                                       "skipped": run["skipped"]})
                runs.append(run)
                continue
            try:
                if scenario in TLS_SCENARIOS:
                    if "files" not in tls:
                        tls["dir"] = tempfile.mkdtemp(prefix="bench-tls-")
                        tls["files"] = make_tls_files(tls["dir"])
                    srv = STARTERS[target](n, logs, tag, tls=tls["files"])
                elif scenario == "fsync":
                    srv = start_pushnode(n, logs, tag, durability="fsync")
                else:
                    srv = STARTERS[target](n, logs, tag)
            except (RuntimeError, OSError, KeyError, ValueError,
                    subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                run["skipped"] = f"could not start {target}: {e}"
                log(f"{tag}: {run['skipped']}")
                write_json(json_path, {"scenario": scenario, "target": target,
                                       "skipped": run["skipped"]})
                runs.append(run)
                continue
            repeats = p.get(REPEATED[scenario][0], 1) if scenario in REPEATED else 1
            if repeats > 1:
                measure_median(srv, run, target, scenario, n, p, logs, json_path, repeats)
            else:
                measure_once(srv, run, target, tag, scenario, n, p, logs, json_path)
            runs.append(run)
            write_json(os.path.join(out, "runs.json"), runs)


def measure_once(srv, run, target, tag, scenario, n, p, logs, json_path):
    """One loadgen run against `srv` (started for it), then stops `srv`; fills `run`."""
    run["server_pid"] = srv.pid
    run.update(srv.extra)
    argv = loadgen_argv(scenario, srv, n, p, json_path)
    log(f"{tag}: server pid {srv.pid}; loadgen {scenario} x{n}")
    started = time.monotonic()
    rc, overran = run_loadgen(argv, logs, tag, p["timeout_s"] + LOADGEN_GRACE_S)
    run.update({"loadgen_rc": rc, "loadgen_killed": overran,
                "wall_s": round(time.monotonic() - started, 1)})
    run["server_alive_after"] = srv.proc.poll() is None
    run.update(srv.stop())
    if not os.path.exists(json_path):
        why = first_error(os.path.join(logs, f"{tag}.loadgen.log"))
        write_json(json_path, {"scenario": scenario, "target": target,
                               "error": f"loadgen exited {rc} without --json output"
                               + (" (killed: over time)" if overran else "")
                               + (f": {why}" if why else "")})
    log(f"{tag}: loadgen rc {rc} in {run['wall_s']} s"
        + ("" if run["server_alive_after"] else " (server had died)"))


def measure_median(srv, run, target, scenario, n, p, logs, json_path, repeats):
    """`repeats` runs of `scenario` (in REPEATED), each on a fresh server (`srv` is the first);
    keeps the run with the median rate as `json_path` and `run`, and every run's rate in
    `run["repeat_rates"]`. A connect run lasts a second or two, a fan-out burst half a
    second, and the HTTP frontend's rate swings with whatever else the shared machine runs:
    one run cannot stand for any of them."""
    key = REPEATED[scenario][1]
    tag = f"{target}-{scenario}"
    tries = []
    for i in range(repeats):
        if i > 0:
            try:
                srv = STARTERS[target](n, logs, f"{tag}.{i}")
            except (RuntimeError, OSError, KeyError, ValueError,
                    subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                log(f"{tag}: repeat {i}: could not start: {e}")
                continue
        one, path = dict(run), f"{json_path}.{i}"
        measure_once(srv, one, target, f"{tag}.{i}" if i else tag, scenario, n, p, logs, path)
        try:
            with open(path) as f:
                rate = json.load(f).get(key)
        except (OSError, ValueError):
            rate = None
        tries.append((rate if isinstance(rate, (int, float)) else -1, one, path))
    ranked = sorted(tries, key=lambda t: t[0])
    _, best, path = ranked[(len(ranked) - 1) // 2]
    run.update(best)
    run["repeat_rates"] = [t[0] for t in tries]
    os.replace(path, json_path)
    for _, _, other in tries:
        if other != path and os.path.exists(other):
            os.remove(other)
    log(f"{tag}: {key} {run['repeat_rates']}, median kept")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    ap.add_argument("--only", help="comma-separated targets: " + ",".join(ALL_TARGETS))
    ap.add_argument("--scenarios", help="comma-separated scenarios: " + ",".join(ALL_SCENARIOS))
    ap.add_argument("--connections", type=int,
                    help="override the profile's connection count (Pushnode; peers stay capped)")
    ap.add_argument("--fanout-messages", type=int,
                    help="override the profile's fan-out message count (1: how long one message "
                         "takes to reach every subscriber)")
    ap.add_argument("--out", help="results folder (default bench/results/<date>-<profile>)")
    args = ap.parse_args()

    p = dict(PROFILES[args.profile])
    if args.connections:
        p["connections"] = args.connections
    if args.fanout_messages:
        p["fanout_messages"] = args.fanout_messages
    targets = args.only.split(",") if args.only else p["targets"]
    scenarios = args.scenarios.split(",") if args.scenarios else p["scenarios"]
    for t in targets:
        if t not in STARTERS:
            sys.exit(f"unknown target {t!r}; known: {', '.join(ALL_TARGETS)}")
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            sys.exit(f"unknown scenario {s!r}; known: {', '.join(ALL_SCENARIOS)}")

    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    out = args.out or os.path.join(HERE, "results", f"{stamp}-{args.profile}")
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    offered = loadgen_scenarios()
    meta = {"profile": args.profile, "params": p, "targets": targets, "scenarios": scenarios,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": versions(),
            "mqtt_version": MQTT_VERSION, "fd_limit": FD_LIMIT,
            "loadgen_scenarios": sorted(offered), "command": " ".join(sys.argv),
            "tls": "idle-tls: throwaway CA and ECDSA P-256 server certificate (openssl), "
                   "rustls on Pushnode, OpenSSL on mosquitto"}
    write_json(os.path.join(out, "meta.json"), meta)
    log(f"profile {args.profile}: {p['connections']} connections (peers <= {p['peer_cap']}), "
        f"targets {','.join(targets)}, scenarios {','.join(scenarios)} -> {out}")

    runs = []
    t0 = time.monotonic()
    tls = {}
    try:
        run_all(targets, scenarios, p, out, logs, offered, runs, tls)
    finally:
        if tls.get("dir"):
            shutil.rmtree(tls["dir"], ignore_errors=True)
    write_json(os.path.join(out, "runs.json"), runs)
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    write_json(os.path.join(out, "meta.json"), meta)
    r = subprocess.run([sys.executable, os.path.join(HERE, "render.py"), out], timeout=60)
    log(f"done in {meta['elapsed_s']} s; table: {os.path.join(out, 'table.md')}")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
