"""Recovery after kill -9 with many pending messages (issue 7's target: 1M pending, serving
again within 10 s). Registers N_DEVICES offline devices over HTTP, queues PER_DEVICE pushes
for each (requests of 100 RegIDs, 16 clients, durability fsync), kills the node with SIGKILL,
restarts it and times how long until it answers /healthz and accepts MQTT again.

    python3 bench/recovery.py 10000 100     # 1,000,000 pending rows
    python3 bench/recovery.py 10000 100 1   # then restart on 1 shard: time the store's move

Needs a release build (target/release/pushnode) and `requests`. Everything is on loopback,
bounded (each wait 120 s), and only the node this script started is signalled.
"""
import json, os, signal, subprocess, sys, tempfile, time, socket
import requests
from concurrent.futures import ThreadPoolExecutor
BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "release", "pushnode")
d = tempfile.mkdtemp(prefix="recov-")
mq, hp = 31000 + os.getpid() % 1000, 32000 + os.getpid() % 1000
argv = [BIN, "serve", "--data-dir", f"{d}/data", "--mqtt-listen", f"127.0.0.1:{mq}", "--http-listen", f"127.0.0.1:{hp}", "--shards", "2", "--log", "info"]
def start():
    log = open(f"{d}/node.log", "a")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        try:
            if requests.get(f"http://127.0.0.1:{hp}/healthz", timeout=1).ok:
                with socket.create_connection(("127.0.0.1", mq), timeout=1):
                    return p, time.monotonic() - t0
        except Exception:
            time.sleep(0.05)
    raise SystemExit("not ready")
p, t = start()
tok = open(f"{d}/data/admin.token").read().strip()
app = requests.post(f"http://127.0.0.1:{hp}/v1/apps", json={"name": "r", "package": "com.r"}, headers={"Authorization": f"Bearer {tok}"}).json()
s = requests.Session()
N_DEV, PER = int(sys.argv[1]), int(sys.argv[2])  # devices, pushes per device
regids = [s.post(f"http://127.0.0.1:{hp}/v1/devices", json={"app_id": app["app_id"], "app_key": app["app_key"]}).json()["regid"] for _ in range(N_DEV)]
print(f"registered {N_DEV} devices", flush=True)
hdr = {"Authorization": f"key={app['app_secret']}"}
def push(chunk):
    ss = requests.Session(); ok = 0
    for _ in range(PER):
        r = ss.post(f"http://127.0.0.1:{hp}/v1/messages", json={"target": {"regids": chunk}, "type": "passthrough", "payload": "x" * 20}, headers=hdr, timeout=60)
        ok += r.status_code == 200
    return ok
chunks = [regids[i:i + 100] for i in range(0, N_DEV, 100)]
t0 = time.monotonic()
with ThreadPoolExecutor(16) as ex:
    acked = sum(ex.map(push, chunks))
el = time.monotonic() - t0
print(f"acked {acked} requests = {acked*100} pending rows in {el:.1f}s ({acked*100/el:.0f} rows/s)", flush=True)
m = requests.get(f"http://127.0.0.1:{hp}/metrics").text
print([l for l in m.splitlines() if l.startswith("pushnode_pending")], flush=True)
def restart_and_report(what, log_lines, tail):
    """Starts the node, says how long it took to serve, its pending gauge and its log's `log_lines`."""
    p, t = start()
    print(f"{what}: serving (HTTP healthz + MQTT accept) in {t:.2f}s", flush=True)
    m = requests.get(f"http://127.0.0.1:{hp}/metrics").text
    print([l for l in m.splitlines() if l.startswith("pushnode_pending")], flush=True)
    print(subprocess.run(["grep", "-E", log_lines, f"{d}/node.log"], capture_output=True, text=True).stdout[-tail:])
    p.send_signal(signal.SIGTERM); p.wait(30)
p.send_signal(signal.SIGKILL); p.wait()
restart_and_report("after kill -9", "replayed|shard loaded", 1500)
if len(sys.argv) > 3:  # restart with another shard count: every row moves to new files first
    argv[argv.index("--shards") + 1] = sys.argv[3]
    restart_and_report(f"restart on {sys.argv[3]} shard(s)", "moving the store|rows moved", 800)
subprocess.run(["rm", "-rf", d])
