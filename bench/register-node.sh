#!/usr/bin/env bash
# How long an app server waits for `POST /v1/devices`, for A/B runs of the node:
#   bench/register-node.sh BIN [COUNT]
# Starts BIN (2 shards, fsync; DUR=buffered for the other) on free-ish loopback ports,
# creates an app, registers COUNT devices (default 300) one after another over one keep-alive
# connection (Python http.client), prints the answers' p50, p90 and max in ms, then stops the
# node it started.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1; COUNT=${2:-300}
. "$ROOT/bench/node-lib.sh"
start_node $BIN ${DUR:-fsync} 2 "partitions = 16"
APP=$(curl -s -X POST -H "Authorization: Bearer $(cat $D/data/admin.token)" -d '{"name":"b","package":"com.b"}' 127.0.0.1:$HP/v1/apps)
python3 - "$HP" "$APP" "$COUNT" <<'PY'
import http.client, json, sys, time
port, app, count = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
body = json.dumps({"app_id": app["app_id"], "app_key": app["app_key"]})
took = []
for _ in range(count):
    start = time.perf_counter()
    conn.request("POST", "/v1/devices", body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    if answer.status not in (200, 201):
        sys.exit(f"POST /v1/devices answered {answer.status}")
    took.append((time.perf_counter() - start) * 1000)
took.sort()
print(f"POST /v1/devices ms: p50 {took[len(took) // 2]:.2f} p90 {took[len(took) * 9 // 10]:.2f} max {took[-1]:.2f} ({count} answers)")
PY
