#!/usr/bin/env bash
# One node, one loadgen unicast run through the HTTP API, for durability A/B runs:
#   bench/unicast-node.sh BIN DURABILITY RATE SECS CONNS TAG
# e.g. bench/unicast-node.sh target/release/pushnode fsync 5000 20 10000 new  (BATCH=1: one RegID per request)
# Starts BIN with 2 shards (PARTS partitions, default 16) on free-ish loopback ports,
# creates an app, runs `loadgen unicast --batch 100`, prints loadgen's summary and CPU, the node's
# store commit metrics, its CPU seconds and context switches by thread, then stops the node it started. PERF=1 records
# a perf profile of the node to /tmp/perf-TAG.data. JSON: /tmp/fsb-TAG.json. OFFLINE=1: the devices
# disconnect before the sends (`loadgen unicast --offline`: the HTTP frontend and store alone).
# H2=N: loadgen sends over N HTTP/2 connections (`--http2-connections`) instead of HTTP/1.1.
# LG=PATH: the loadgen binary (default target/release/loadgen), for A/B runs of loadgen itself.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1; DUR=$2; RATE=$3; SECS=$4; N=$5; TAG=$6
. "$ROOT/bench/node-lib.sh"
start_node $BIN $DUR 2 "partitions = ${PARTS:-16}\n${CFG:-}"
[ -n "${PERF:-}" ] && (sleep 6; perf record ${PERFOPTS:--F 299 --call-graph dwarf,16384} -p $PID -o /tmp/perf-$TAG.data -- sleep 5 >/dev/null 2>&1 &)
/usr/bin/time -f "loadgen cpu: %U user %S sys s" -o $D/loadgen.time ${LG:-$ROOT/target/release/loadgen} unicast --mqtt 127.0.0.1:$MQ --http http://127.0.0.1:$HP --admin-token-file $D/data/admin.token \
  --connections $N --rate $RATE --duration-secs $SECS --batch ${BATCH:-100} ${WORKERS:+--workers $WORKERS} ${OFFLINE:+--offline} ${HTTPC:+--http-concurrency $HTTPC} ${H2:+--http2-connections $H2} --straggler-secs 10 --timeout-secs 200 --json /tmp/fsb-$TAG.json > $D/loadgen.out 2>&1
echo "loadgen rc=$?"; cat $D/loadgen.time
grep -E "achieved|p50|p99|deliver|latency|lost|sent" $D/loadgen.out | head -20
curl -s 127.0.0.1:$HP/metrics | grep -E "commit|delivery_latency|http" | grep -v "^#" | head -40
echo "node cpu: $(awk "{print (\$14+\$15)/100}" /proc/$PID/stat) s; by thread: $(for t in /proc/$PID/task/*; do echo "$(cat $t/comm) $(awk '{print ($14+$15)/100}' $t/stat)"; done | awk '{sub(/-[0-9]+$/,"",$1); c[$1]+=$2} END {for (k in c) if (c[k] > 0.05) printf "%s %.2f  ", k, c[k]}')"
echo "node HTTP threads' cpu s (how evenly connections spread): $(for t in /proc/$PID/task/*; do case "$(cat $t/comm)" in http-*) echo -n "$(cat $t/comm) $(awk '{print ($14+$15)/100}' $t/stat)  ";; esac; done)"
echo "node context switches (voluntary+involuntary) by thread: $(for t in /proc/$PID/task/*; do echo "$(cat $t/comm) $(awk '/ctxt_switches/ {s+=$2} END {print s}' $t/status)"; done | awk '{sub(/-[0-9]+$/,"",$1); c[$1]+=$2} END {for (k in c) if (c[k] > 1000) printf "%s %d  ", k, c[k]}')"
