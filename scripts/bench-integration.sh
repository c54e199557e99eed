#!/usr/bin/env bash
# Application integration costs (docs/benchmarks.md, "Publishing over HTTP, client publishes
# and hooks"), release build:
#  1. publish throughput through the HTTP/JSON API next to gRPC unary and PublishStream, one
#     node on the memory broker (server on core 0, load on core 1);
#  2. tests/examples/integration_costs.rs: client publish round trips (WebSocket command,
#     POST /publish; one node, and two nodes on a nats-server), and WebSocket connects per
#     second without and with a connect hook (hook_backend over HTTP and gRPC).
#   scripts/bench-integration.sh            (DURATION=5s)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
OUT=${OUT:-target/bench}
T=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT"
ulimit -n 20000
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p herald -p herald-bench
  cargo build --release -q -p herald-e2e --bin hook_backend --example integration_costs
fi
BENCH=$T/release/herald-bench
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

http=$(free_port); grpc=$(free_port); admin=$(free_port); api=$(free_port)
HERALD_HTTP_ADDR="127.0.0.1:$http" HERALD_GRPC_ADDR="127.0.0.1:$grpc" HERALD_ADMIN_ADDR="127.0.0.1:$admin" \
HERALD_API_ADDR="127.0.0.1:$api" HERALD_LOG=warn taskset -c 0 "$T/release/herald" serve >"$OUT/integration-herald.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in 16 64; do
  echo "== HTTP/JSON POST /api/v1/publish, $c kept-alive connections"
  timeout 120 taskset -c 1 $BENCH publish --api "http://127.0.0.1:$api" --grpc "http://127.0.0.1:$grpc" --mode http --concurrency $c --duration "$DURATION" | tail -1
  echo "== gRPC unary Publish, $c in flight"
  timeout 120 taskset -c 1 $BENCH publish --grpc "http://127.0.0.1:$grpc" --mode unary --concurrency $c --duration "$DURATION" | tail -1
done
echo "== gRPC PublishStream, 1 stream"
timeout 120 taskset -c 1 $BENCH publish --grpc "http://127.0.0.1:$grpc" --mode stream --concurrency 1 --duration "$DURATION" | tail -1
cleanup; PIDS=()
echo "== client publishes and connect hooks (integration_costs)"
HERALD_BIN=$T/release/herald timeout 600 "$T/release/examples/integration_costs"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
