#!/usr/bin/env bash
# Reproduces the exact-resume figures in docs/benchmarks.md: a resume 20,000 messages back
# (time to the first message, backlog rate, progress with 150 ms connections) on the memory
# broker and on NATS with file storage, then a reconnect storm of 10,000 WebSocket clients
# 50 messages behind on two Herald nodes sharing one nats-server, with the broker reads it
# cost. Servers share CPU 0; the load generator runs on CPU 1.
#   scripts/bench-resume.sh [BACKLOG] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
BACKLOG=${1:-20000}
CLIENTS=${2:-10000}
ulimit -n 20000
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p herald -p herald-bench
HERALD=${HERALD_BIN:-./target/release/herald}
BENCH=./target/release/herald-bench
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
NATS_BIN=${NATS_BIN:-/usr/sbin/nats-server}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

start_nats() {  # $1 = store dir
  taskset -c 0 "$NATS_BIN" -js -a 127.0.0.1 -p 24222 -sd "$1" >"$OUT/nats.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/24222) 2>/dev/null && return; sleep 0.1; done
}
start_node() {  # $1 = index, then extra env assignments
  local i=$1; shift
  env "$@" HERALD_NODE_ID="bench-$i" HERALD_HISTORY_SIZE=100000 HERALD_HISTORY_TTL=1h \
    HERALD_HTTP_ADDR=127.0.0.1:2808$i HERALD_GRPC_ADDR=127.0.0.1:2505$i HERALD_ADMIN_ADDR=127.0.0.1:2946$i HERALD_API_ADDR=127.0.0.1:2818$i \
    HERALD_LOG=warn taskset -c 0 "$HERALD" serve >"$OUT/herald-$i.log" 2>&1 &
  PIDS+=("$!"); eval "NODE$i=$!"
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:2946$i/readyz" >/dev/null && return; sleep 0.1; done
  echo "node $i did not become ready" >&2; exit 1
}
NATS_ENV=(HERALD_BROKER=nats HERALD_NATS_URL=nats://127.0.0.1:24222 HERALD_NATS_STORAGE=file HERALD_NATS_STREAM=BENCH_RESUME)

echo "== catch-up $BACKLOG back, memory broker"
start_node 1 HERALD_BROKER=memory
timeout 300 taskset -c 1 $BENCH catchup --addr 127.0.0.1:28081 --grpc http://127.0.0.1:25051 \
  --messages "$BACKLOG" --pid "$NODE1" | tail -1 | tee "$OUT/catchup-memory.json"
cleanup

STORE=$(mktemp -d)
start_nats "$STORE"
echo "== catch-up $BACKLOG back, NATS (file storage)"
start_node 1 "${NATS_ENV[@]}"
timeout 300 taskset -c 1 $BENCH catchup --addr 127.0.0.1:28081 --grpc http://127.0.0.1:25051 \
  --messages "$BACKLOG" --pid "$NODE1" | tail -1 | tee "$OUT/catchup-nats.json"
echo "== reconnect storm: $CLIENTS WebSocket clients 50 behind, 2 nodes on NATS"
start_node 2 "${NATS_ENV[@]}"
timeout 300 taskset -c 1 $BENCH storm --addr 127.0.0.1:28081 --addr 127.0.0.1:28082 \
  --grpc http://127.0.0.1:25051 --clients "$CLIENTS" --missed 50 --sources 127.0.0.2-127.0.0.20 \
  --pid "$NODE1" --pid "$NODE2" --pid "$NATS_PID" --admin 127.0.0.1:29461 --admin 127.0.0.1:29462 \
  | tail -1 | tee "$OUT/storm-nats.json"
cleanup
rm -rf "$STORE"
