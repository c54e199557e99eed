#!/usr/bin/env bash
# Reproduces the NATS figures in docs/benchmarks.md: publish-to-delivery latency with
# WebSocket subscribers split over 2 Herald nodes on one nats-server (publishing through node
# 1), all on node 2 (the node that does not take the publishes), the same on one node, and gRPC publish throughput with JetStream file and memory
# storage. Servers (nats-server and Herald) share CPU 0; the load generator runs on CPU 1.
#   scripts/bench-cluster.sh [SUBSCRIBERS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${1:-1000}
RATE=${2:-100}
ulimit -n 20000
cargo build --release -q -p herald -p herald-bench
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
NATS_BIN=${NATS_BIN:-/usr/sbin/nats-server}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start_nats() {  # $1 = store dir
  taskset -c 0 "$NATS_BIN" -js -a 127.0.0.1 -p 24222 -sd "$1" >"$OUT/nats.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/24222) 2>/dev/null && return; sleep 0.1; done
}
start_node() {  # $1 = index, $2 = storage
  HERALD_BROKER=nats HERALD_NATS_URL=nats://127.0.0.1:24222 HERALD_NATS_STORAGE="$2" \
  HERALD_NATS_STREAM="BENCH_$2" HERALD_NODE_ID="bench-$1" \
  HERALD_HTTP_ADDR=127.0.0.1:2808$1 HERALD_GRPC_ADDR=127.0.0.1:2505$1 HERALD_ADMIN_ADDR=127.0.0.1:2946$1 HERALD_API_ADDR=127.0.0.1:2818$1 \
    HERALD_LOG=warn taskset -c 0 ./target/release/herald serve >"$OUT/herald-$1.log" 2>&1 &
  PIDS+=("$!"); eval "NODE$1=$!"
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:2946$1/readyz" >/dev/null && return; sleep 0.1; done
  echo "node $1 did not become ready" >&2; exit 1
}

for storage in file memory; do
  STORE=$(mktemp -d)
  start_nats "$STORE"
  start_node 1 "$storage"; start_node 2 "$storage"
  echo "== storage=$storage: fan-out, $SUBS subscribers split over 2 nodes, $RATE msg/s via node 1"
  timeout 300 taskset -c 1 ./target/release/herald-bench fanout --addr 127.0.0.1:28081 --addr 127.0.0.1:28082 \
    --grpc http://127.0.0.1:25051 --subscribers "$SUBS" --rate "$RATE" --duration 10s \
    --pid "$NODE1" --pid "$NODE2" --pid "$NATS_PID" --json "$OUT/cluster-fanout-$storage.json" | tail -1
  echo "== storage=$storage: fan-out, $SUBS subscribers on node 2 only, publishes through node 1"
  timeout 300 taskset -c 1 ./target/release/herald-bench fanout --addr 127.0.0.1:28082 \
    --grpc http://127.0.0.1:25051 --subscribers "$SUBS" --rate "$RATE" --duration 10s \
    --pid "$NODE1" --pid "$NODE2" --pid "$NATS_PID" --json "$OUT/remote-fanout-$storage.json" | tail -1
  echo "== storage=$storage: fan-out, $SUBS subscribers on node 1 only"
  timeout 300 taskset -c 1 ./target/release/herald-bench fanout --addr 127.0.0.1:28081 \
    --grpc http://127.0.0.1:25051 --subscribers "$SUBS" --rate "$RATE" --duration 10s \
    --pid "$NODE1" --pid "$NATS_PID" --json "$OUT/single-fanout-$storage.json" | tail -1
  for mode in unary stream; do
    echo "== storage=$storage: gRPC publish throughput ($mode) through node 1"
    timeout 120 taskset -c 1 ./target/release/herald-bench publish --grpc http://127.0.0.1:25051 \
      --mode "$mode" --concurrency "$([ "$mode" = stream ] && echo 1 || echo 64)" --duration 5s | tail -1
  done
  cleanup; PIDS=(); rm -rf "$STORE"
done
