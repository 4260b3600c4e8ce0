#!/usr/bin/env bash
# A long unicast run against one node, watching what grows:
#   bench/soak-node.sh BIN SECS RATE CONNS
# e.g. bench/soak-node.sh target/release/pushnode 300 20000 19000
# Starts BIN (2 shards, buffered; DUR=fsync for the other) on free-ish loopback ports, runs
# `loadgen unicast` (BATCH RegIDs a request, default 10) for SECS seconds at RATE deliveries/s
# to CONNS devices, and every 20 s prints the node's RSS, its data folder's size and its CPU
# seconds so far; then loadgen's summary and the node's pending, send-buffer and store-file
# gauges. A leak
# shows as RSS that keeps climbing; the store's retained rows as the data folder's growth.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$1; SECS=$2; RATE=$3; N=$4
. "$ROOT/bench/node-lib.sh"
start_node $BIN ${DUR:-buffered} 2 "partitions = 16"
(
  for i in $(seq 1 $((SECS / 20 + 1))); do
    sleep 20
    [ -d /proc/$PID ] || break
    echo "t=$((i * 20))s rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$PID/status) data_kb=$(du -sk $D/data | cut -f1) cpu_s=$(awk '{print ($14+$15)/100}' /proc/$PID/stat)"
  done
) &
WATCH=$!
${LG:-$ROOT/target/release/loadgen} unicast --mqtt 127.0.0.1:$MQ --http http://127.0.0.1:$HP --admin-token-file $D/data/admin.token \
  --connections $N --rate $RATE --duration-secs $SECS --batch ${BATCH:-10} --straggler-secs 10 \
  --timeout-secs $((SECS + 200)) > $D/loadgen.out 2>&1
echo "loadgen rc=$?"
kill $WATCH 2>/dev/null; wait $WATCH 2>/dev/null
grep -E "achieved|latency:|deliveries:" $D/loadgen.out
curl -s 127.0.0.1:$HP/metrics | grep -E "^pushnode_(pending_messages|send_buffered_bytes|store_file_bytes)"
