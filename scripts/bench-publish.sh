#!/usr/bin/env bash
# Publish throughput on NATS (JetStream file storage, one nats-server on a free port with its
# own store): PublishStream and unary Publish through one node over 100 channels, then a hot
# channel published from many places: 8 PublishStream streams spread over 3 Herald nodes, all
# into one channel (every publish must succeed; races lost between nodes are read from
# herald_publish_conflicts_total). Then the raw ceiling of the same nats-server shapes without
# Herald (examples/publish_ceiling.rs). Unpinned: servers and load share both cores.
#   scripts/bench-publish.sh            (DURATION=5s)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
ulimit -n 20000
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p herald -p herald-bench
  cargo build --release -q -p herald-nats --example publish_ceiling
fi
NATS_BIN=${NATS_BIN:-/usr/sbin/nats-server}
BENCH=./target/release/herald-bench
PIDS=()
STORE=$(mktemp -d)
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$STORE"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port)
"$NATS_BIN" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$STORE" >"$OUT/publish-nats.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.1; done

GRPC=(); ADMIN=()
for i in 1 2 3; do
  http=$(free_port); grpc=$(free_port); admin=$(free_port); api=$(free_port)
  HERALD_BROKER=nats HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT" HERALD_NATS_STORAGE=file \
  HERALD_NATS_STREAM=BENCH_PUB HERALD_NODE_ID="pub-$i" \
  HERALD_HTTP_ADDR="127.0.0.1:$http" HERALD_GRPC_ADDR="127.0.0.1:$grpc" HERALD_ADMIN_ADDR="127.0.0.1:$admin" HERALD_API_ADDR="127.0.0.1:$api" \
    HERALD_LOG=warn ./target/release/herald serve >"$OUT/publish-herald-$i.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
  GRPC+=("http://127.0.0.1:$grpc"); ADMIN+=("127.0.0.1:$admin")
done

echo "== PublishStream, 1 stream, 100 channels, through node 1"
timeout 120 $BENCH publish --grpc "${GRPC[0]}" --mode stream --concurrency 1 --duration "$DURATION" | tail -1
echo "== PublishStream, 4 streams, 100 channels, through node 1"
timeout 120 $BENCH publish --grpc "${GRPC[0]}" --mode stream --concurrency 4 --duration "$DURATION" | tail -1
echo "== unary Publish, 64 in flight, 100 channels, through node 1"
timeout 120 $BENCH publish --grpc "${GRPC[0]}" --mode unary --concurrency 64 --duration "$DURATION" | tail -1
conflicts() {
  local sum=0 n
  for a in "${ADMIN[@]}"; do
    n=$(curl -fs "http://$a/metrics" | awk '/^herald_publish_conflicts_total/ {print $2}')
    sum=$((sum + ${n:-0}))
  done
  echo "$sum"
}
before=$(conflicts)
echo "== hot channel: 8 PublishStream streams over 3 nodes, 1 channel"
timeout 120 $BENCH publish --grpc "$(IFS=,; echo "${GRPC[*]}")" --mode stream --concurrency 8 \
  --channels 1 --duration "$DURATION" | tail -1
sleep 1.5  # the nodes export the broker's conflict count once a second
echo "races lost and retried: $(( $(conflicts) - before ))"
echo "== hot channel: 8 unary publishers over 3 nodes, 1 channel"
before=$(conflicts)
timeout 120 $BENCH publish --grpc "$(IFS=,; echo "${GRPC[*]}")" --mode unary --concurrency 8 \
  --channels 1 --duration "$DURATION" | tail -1
sleep 1.5
echo "races lost and retried: $(( $(conflicts) - before ))"
cleanup; PIDS=()

echo "== nats-server alone (examples/publish_ceiling.rs), 100 subjects"
timeout 120 ./target/release/examples/publish_ceiling 100 "${DURATION%s}"
