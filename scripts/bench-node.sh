#!/usr/bin/env bash
# Reproduces the single-node figures in docs/benchmarks.md: idle RSS per WebSocket and SSE
# connection at 15,000 connections, and fan-out to N WebSocket subscribers. The server is
# pinned to CPU 0 and the load generator to CPU 1. Bounded: every step stops by itself.
#   scripts/bench-node.sh [CONNECTIONS] [FANOUT_SUBSCRIBERS] [FANOUT_RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-15000}
SUBS=${2:-10000}
RATE=${3:-10}
ulimit -n 20000
cargo build --release -q -p herald -p herald-bench
OUT=${OUT:-target/bench}
mkdir -p "$OUT"

start() {
  HERALD_HTTP_ADDR=127.0.0.1:28080 HERALD_GRPC_ADDR=127.0.0.1:25051 HERALD_ADMIN_ADDR=127.0.0.1:29464 HERALD_API_ADDR=127.0.0.1:28181 \
    HERALD_LOG=warn taskset -c 0 ./target/release/herald serve >"$OUT/herald.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:29464/readyz >/dev/null && return; sleep 0.1; done
  echo "herald did not start" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

for proto in ws sse; do
  start
  timeout 300 taskset -c 1 ./target/release/herald-bench idle --addr 127.0.0.1:28080 \
    --protocol "$proto" --connections "$CONNS" --pid "$PID" --hold 5s | tee "$OUT/idle-$proto.json"
  stop
done
start
timeout 300 taskset -c 1 ./target/release/herald-bench fanout --addr 127.0.0.1:28080 \
  --grpc http://127.0.0.1:25051 --subscribers "$SUBS" --rate "$RATE" --duration 10s --pid "$PID" \
  --json "$OUT/fanout.json" | tail -1
stop
