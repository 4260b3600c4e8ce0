#!/usr/bin/env bash
# One node, one loadgen fan-out through the HTTP API, for A/B runs of the node:
#   bench/fanout-node.sh BIN SUBSCRIBERS MESSAGES TAG
# e.g. bench/fanout-node.sh target/release/pushnode 19000 10 new
# Starts BIN with 2 shards (SHARDS=N for another count) on free-ish loopback ports, no connect
# rate limit, runs `loadgen fanout --qos 1 --interval-ms 0` (every message posted without
# waiting for the last one's answer), prints loadgen's summary and the node's CPU seconds by
# thread (user+system), then stops the node it started. Once the node has accepted the first message:
# PERFSTAT=1 counts its io_uring submissions (sends, mostly) and io_uring_enter calls for PSECS
# seconds (default 2) into /tmp/pstat-TAG.txt; PERF=1 records a profile to /tmp/perf-TAG.data.
# WORKERS=N: loadgen processes (default 2; each holds < 20,000 descriptors here, so 6+ for 100k).
# LG=PATH: the loadgen binary (default target/release/loadgen). CONF='key = value': one more
# line of the node's config. DUR=fsync: the node's durability (default buffered, as the bench runs it).
# Prints the node's peak RSS (VmHWM) and send deferrals at the end.
# loadgen's JSON report: /tmp/fon-TAG.json (latency from each message's POST to its delivery).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1; N=$2; M=$3; TAG=$4
. "$ROOT/bench/node-lib.sh"
start_node $BIN ${DUR:-buffered} ${SHARDS:-2} "partitions = 16\nconnect_rate_per_ip = 0\n${CONF:-}"
( for i in $(seq 1 600); do
    v=$(curl -s 127.0.0.1:$HP/metrics | awk '/^pushnode_messages_accepted_total/ {print $2}')
    [ "${v:-0}" != "0" ] && break; sleep 0.05
  done
  [ -n "${PERFSTAT:-}" ] && perf stat -e 'io_uring:io_uring_submit_req,syscalls:sys_enter_io_uring_enter' -p $PID -o /tmp/pstat-$TAG.txt -- sleep ${PSECS:-2} >/dev/null 2>&1
  [ -n "${PERF:-}" ] && perf record -g -F 999 -p $PID -o /tmp/perf-$TAG.data -- sleep ${PSECS:-2} >/dev/null 2>&1 ) &
WATCH=$!
${LG:-$ROOT/target/release/loadgen} fanout --target pushnode --mqtt 127.0.0.1:$MQ --http http://127.0.0.1:$HP --admin-token-file $D/data/admin.token \
  --source-ips 127.0.0.2-127.0.0.17 --workers ${WORKERS:-2} --subscribers $N --messages $M --qos 1 --interval-ms 0 --timeout-secs 300 --straggler-secs 15 --json /tmp/fon-$TAG.json > $D/lg.out 2>&1
grep -E "^fanout|deliveries" $D/lg.out | tr '\n' ' '; echo
python3 -c "import json,sys; l=json.load(open(sys.argv[1]))['latency_us']; print('latency ms (post -> delivery): p50', l['p50']/1000, 'p99', l['p99']/1000, 'max', l['max']/1000)" /tmp/fon-$TAG.json 2>/dev/null
wait $WATCH
echo "node cpu s (user+sys): $(for t in /proc/$PID/task/*; do echo "$(cat $t/comm) $(awk '{print $14/100, $15/100}' $t/stat)"; done | awk '{sub(/-[0-9]+$/,"",$1); u[$1]+=$2; s[$1]+=$3} END {for (k in u) if (u[k] + s[k] > 0.05) printf "%s %.2f+%.2f  ", k, u[k], s[k]}')"
echo "node peak rss: $(awk '/VmHWM/ {print $2, $3}' /proc/$PID/status); $(curl -s 127.0.0.1:$HP/metrics | grep -E '^pushnode_send_deferrals_total' | tr '\n' ' ')"
[ -n "${PERFSTAT:-}" ] && grep -E "io_uring" /tmp/pstat-$TAG.txt
exit 0
