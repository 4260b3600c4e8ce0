#!/usr/bin/env bash
# Unicast latency while a topic stream flows, on one node, for A/B runs of the node:
#   bench/mixed-node.sh BIN TAG
# Starts BIN (2 shards, fsync; DUR=buffered for the other) on free-ish loopback ports; one
# loadgen runs a fan-out to SUBS members (default 2,000) of MSGS topic messages (default 300)
# one every 50 ms; 3 s in, a second loadgen sends unicast pushes (5,000 devices, 5,000/s, 10
# RegIDs a request, 8 s; OFFLINE=1: the devices go offline and the latency is the HTTP
# answer's). Prints both latency summaries (/tmp/mixu-TAG.json, /tmp/mixf-TAG.json) and the
# node's CPU by thread, then stops the node it started. PSTAT=1 counts the node's io_uring
# submissions, io_uring_enter calls and context switches for 4 s into /tmp/pstat-TAG.txt.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1; TAG=$2
LG=${LG:-$ROOT/target/release/loadgen}
. "$ROOT/bench/node-lib.sh"
start_node $BIN ${DUR:-fsync} 2 "partitions = 16\nconnect_rate_per_ip = 0"
$LG fanout --target pushnode --mqtt 127.0.0.1:$MQ --http http://127.0.0.1:$HP --admin-token-file $D/data/admin.token \
  --source-ips 127.0.0.20-127.0.0.27 --workers 1 --subscribers ${SUBS:-2000} --messages ${MSGS:-300} --qos 1 --interval-ms 50 \
  --timeout-secs 120 --straggler-secs 10 --json /tmp/mixf-$TAG.json > $D/fan.out 2>&1 &
FAN=$!
sleep 3
[ -n "${PSTAT:-}" ] && (sleep 3; perf stat -e io_uring:io_uring_submit_req,syscalls:sys_enter_io_uring_enter,context-switches -p $PID -o /tmp/pstat-$TAG.txt -- sleep 4 >/dev/null 2>&1 &)
$LG unicast --mqtt 127.0.0.1:$MQ --http http://127.0.0.1:$HP --admin-token-file $D/data/admin.token \
  --source-ips 127.0.0.2-127.0.0.9 --connections 5000 --rate 5000 --duration-secs 8 --batch 10 ${OFFLINE:+--offline} \
  --straggler-secs 10 --timeout-secs 100 --json /tmp/mixu-$TAG.json > $D/uni.out 2>&1
wait $FAN
python3 -c "
import json, sys
u = json.load(open(sys.argv[1])); f = json.load(open(sys.argv[2]))
print('unicast', u['deliveries'], u['latency_us']); print('fanout', f['deliveries'], f['latency_us'])" /tmp/mixu-$TAG.json /tmp/mixf-$TAG.json
echo "node cpu s by thread: $(for t in /proc/$PID/task/*; do echo "$(cat $t/comm) $(awk '{print ($14+$15)/100}' $t/stat)"; done | awk '{sub(/-[0-9]+$/,"",$1); c[$1]+=$2} END {for (k in c) if (c[k] > 0.05) printf "%s %.2f  ", k, c[k]}')"
