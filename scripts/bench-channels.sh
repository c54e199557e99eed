#!/usr/bin/env bash
# Many channels, few subscribers each, one steady total publish rate (docs/benchmarks.md,
# "Many channels"). Every server (Herald nodes, nats-server, Nchan) pinned to CPU 0, the load
# generator (herald-bench channels) to CPU 1; each case starts fresh servers on free ports, and
# nats-server gets its own store directory (JetStream, file storage). Bounded: every step stops
# by itself.
#   scripts/bench-channels.sh [small|big|all]      (default all)
#     small: CHANNELS x 1 subscriber at RATE msg/s: Herald memory broker, Nchan, Herald on NATS
#            (1 node; 2 nodes with the subscribers on the node that does not take the publishes)
#     big:   BIG channels x 1 (BIG_PER_CONN channels per connection) and x 1-5 (WebSocket and SSE
#            mixed), memory broker and NATS; memory per channel
# Environment: CHANNELS (10000), BIG (100000), BIG_PER_CONN (10), MIX_PER_CONN (20), RATE (2000),
#   DURATION (10s), PROTOS ("ws sse", small only), LIVE ("per-channel wildcard": the NATS runs
#   are made once per HERALD_NATS_LIVE_INTEREST), ONLY (cases: "mem nchan nats1 nats2 big-memory
#   big-nats"), OUT.
# Results: JSON lines in $OUT/channels.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/peers/lib.sh
WHAT=${1:-all}
CHANNELS=${CHANNELS:-10000}
BIG=${BIG:-100000}
BIG_PER_CONN=${BIG_PER_CONN:-10}
MIX_PER_CONN=${MIX_PER_CONN:-20}
RATE=${RATE:-2000}
DURATION=${DURATION:-10s}
PROTOS=${PROTOS:-ws sse}
LIVE=${LIVE:-per-channel wildcard}
LIVE_INTEREST=per-channel
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET_DIR/bench/channels}
NATS_BIN=${NATS_BIN:-/usr/sbin/nats-server}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
  echo "==> installing nginx-light libnginx-mod-nchan"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan >/dev/null
}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p herald -p herald-bench
HERALD=$TARGET_DIR/release/herald
BENCH="taskset -c 1 $TARGET_DIR/release/herald-bench"

PIDS=() NATS_PID="" STORE="" NCHAN_STOP=""
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$NCHAN_STOP" ]; then $NCHAN_STOP >/dev/null 2>&1 || true; fi
  if [ -n "$STORE" ]; then rm -rf "$STORE"; fi
  PIDS=() NATS_PID="" STORE="" NCHAN_STOP=""
  sleep 1
}
trap stop_all EXIT

start_nats() {
  STORE=$(mktemp -d /tmp/bench-channels-nats.XXXXXX)
  NATS_PORT=$(free_port)
  taskset -c 0 "$NATS_BIN" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$STORE" >"$OUT/nats.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  wait_port 127.0.0.1 "$NATS_PORT" 20 || { echo "nats-server did not start" >&2; exit 1; }
}

# start_node I BROKER: Herald node I (memory or nats); sets HTTP_I, GRPC_I, PID_I.
start_node() {
  local i=$1 broker=$2 http grpc admin api
  http=$(free_port) grpc=$(free_port) admin=$(free_port) api=$(free_port)
  local env=(HERALD_BROKER="$broker" HERALD_NODE_ID="chan-$i" HERALD_LOG=warn
    HERALD_HTTP_ADDR=127.0.0.1:$http HERALD_GRPC_ADDR=127.0.0.1:$grpc HERALD_ADMIN_ADDR=127.0.0.1:$admin HERALD_API_ADDR=127.0.0.1:$api
    HERALD_MAX_CONNECTIONS=100000 HERALD_MAX_CHANNELS_PER_CONNECTION=100)
  [ "$broker" = nats ] && env+=(HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT" HERALD_NATS_STORAGE=file
    HERALD_NATS_STREAM=CHANNELS HERALD_NATS_LIVE_INTEREST="$LIVE_INTEREST")
  env "${env[@]}" taskset -c 0 "$HERALD" serve >"$OUT/herald-$i.log" 2>&1 &
  PIDS+=("$!")
  eval "HTTP_$i=127.0.0.1:$http GRPC_$i=http://127.0.0.1:$grpc PID_$i=$!"
  wait_http "http://127.0.0.1:$admin/readyz" 30 || { echo "node $i not ready" >&2; tail "$OUT/herald-$i.log" >&2; exit 1; }
}

# bench LABEL ARGS...: one run, its JSON line tagged with LABEL and the load average.
bench() {
  local label=$1; shift
  echo "==> $label (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  local line
  line=$(timeout 400 $BENCH channels --sources 127.0.0.2-127.0.0.30 --rate "$RATE" --duration "$DURATION" "$@" | tail -1) || {
    echo "   (failed)"; return 0; }
  line=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["case"]=sys.argv[2]; d["loadavg"]=open("/proc/loadavg").read().split()[:3]; print(json.dumps(d))' "$line" "$label")
  echo "$line" | tee -a "$OUT/channels.jsonl"
}

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

if [ "$WHAT" = small ] || [ "$WHAT" = all ]; then
  for proto in $PROTOS; do
    if want mem; then
      start_node 1 memory
      bench "memory 1 node, $CHANNELS x 1 $proto" --addr "$HTTP_1" --grpc "$GRPC_1" \
        --protocol "$proto" --channels "$CHANNELS" --subscribers 1 --pid "$PID_1"
      stop_all
    fi
    if want nchan; then
      eval "$(taskset -c 0 scripts/peers/start_nchan.sh)"
      NCHAN_STOP=$STOP
      mapfile -t workers < <(pgrep -P "$NCHAN_PID")
      bench "nchan 1 worker, $CHANNELS x 1 $proto" --target nchan --addr "${NCHAN_URL#http://}" \
        --protocol "$proto" --channels "$CHANNELS" --subscribers 1 --pid "${workers[0]}"
      stop_all
    fi
    for LIVE_INTEREST in $LIVE; do
      if want nats1; then
        start_nats; start_node 1 nats
        bench "nats ($LIVE_INTEREST) 1 node, $CHANNELS x 1 $proto" --addr "$HTTP_1" --grpc "$GRPC_1" \
          --protocol "$proto" --channels "$CHANNELS" --subscribers 1 --pid "$PID_1" --pid "$NATS_PID"
        stop_all
      fi
      if want nats2; then
        start_nats; start_node 1 nats; start_node 2 nats
        bench "nats ($LIVE_INTEREST) 2 nodes (publish on 1, subscribers on 2), $CHANNELS x 1 $proto" \
          --addr "$HTTP_2" --grpc "$GRPC_1" --protocol "$proto" --channels "$CHANNELS" --subscribers 1 \
          --pid "$PID_1" --pid "$PID_2" --pid "$NATS_PID"
        stop_all
      fi
    done
  done
fi

if [ "$WHAT" = big ] || [ "$WHAT" = all ]; then
  # big_case BROKER: the same number of connections with 1 and BIG_PER_CONN channels each (the
  # difference in RSS is per channel), then BIG channels with 1-5 subscriptions (WS and SSE).
  big_case() {
    local broker=$1 conns=$((BIG / BIG_PER_CONN)) per pids tag=$1
    [ "$broker" = nats ] && tag="nats ($LIVE_INTEREST)"
    for per in 1 "$BIG_PER_CONN"; do
      [ "$broker" = nats ] && start_nats
      start_node 1 "$broker"
      pids=(--pid "$PID_1"); [ "$broker" = nats ] && pids+=(--pid "$NATS_PID")
      bench "$tag 1 node, $((conns * per)) x 1 ws, $per per connection" --addr "$HTTP_1" \
        --grpc "$GRPC_1" --protocol ws --channels $((conns * per)) --subscribers 1 \
        --channels-per-connection "$per" "${pids[@]}"
      stop_all
    done
    [ "$broker" = nats ] && start_nats
    start_node 1 "$broker"
    pids=(--pid "$PID_1"); [ "$broker" = nats ] && pids+=(--pid "$NATS_PID")
    bench "$tag 1 node, $BIG x 1-5 ws+sse, $MIX_PER_CONN per connection" --addr "$HTTP_1" \
      --grpc "$GRPC_1" --protocol mix --channels "$BIG" --subscribers 1-5 \
      --channels-per-connection "$MIX_PER_CONN" "${pids[@]}"
    stop_all
  }
  if want big-memory; then big_case memory; fi
  if want big-nats; then
    for LIVE_INTEREST in $LIVE; do big_case nats; done
  fi
fi
echo "results: $OUT/channels.jsonl"
