# Sourced by bench/unicast-node.sh, fanout-node.sh, mixed-node.sh and register-node.sh: one
# Pushnode node for an A/B run. `start_node BIN DURABILITY SHARDS CONFIG` (CONFIG: the config file's text, `\n`
# between lines) starts BIN on random loopback ports no socket uses ($MQ, $HP) with a fresh data
# directory ($D), sets $PID and returns once it answers; the node is stopped and $D removed
# when the script exits, also when a pipe reading it closes early.
free_port() { ! ss -Htan "sport = :$1" | grep -q .; }

start_node() {
  D=$(mktemp -d /tmp/pn-bench-XXXX)
  until MQ=$((20000 + RANDOM % 20000)); HP=$((40000 + RANDOM % 20000)); free_port $MQ && free_port $HP; do :; done
  printf '%b\n' "$4" > $D/p.toml
  $1 serve --config $D/p.toml --data-dir $D/data --mqtt-listen 127.0.0.1:$MQ --http-listen 127.0.0.1:$HP \
    --durability $2 --shards $3 --max-connections-per-shard 16384 --log warn > $D/node.log 2>&1 &
  PID=$!
  trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf $D' EXIT
  for _ in $(seq 1 100); do [ -f $D/data/admin.token ] && curl -s 127.0.0.1:$HP/healthz >/dev/null && break; sleep 0.2; done
}
