#!/usr/bin/env bash
# Herald side by side with Nchan, Socket.IO and Pushpin, in one run on this machine: every
# server pinned to CPU 0 (taskset, children included), the load generator to CPU 1, the same
# clients, payload size (100 bytes) and connection limits. Bounded: every step stops by itself.
#   scripts/bench-peers.sh [idle|fanout|storm|poll|all]     (default all)
# Environment: CONNS (idle connections and held long-polls, 15000), SUBS (fan-out subscribers, 10000),
#   POLL_CLIENTS (keep-alive interval pollers, 50), POLL_RATES (total polls/s, 0 = flat out,
#   "10000 20000 0"),
#   RATES (publishes/s, "1 5 10 20"), DURATION (publishing time per rate, 10s), OUT,
#   ONLY (e.g. "herald:sse nchan:ws herald:poll": just these runs), HERALD_BIN (another herald binary,
#   e.g. a build of main for a before/after comparison).
# Results: JSON lines in $OUT/*.jsonl, a Markdown report ($OUT/report.md) with Herald/peer
# ratios, and a plot of p99 latency against publish rate ($OUT/fanout-p99.png).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHAT=${1:-all}
CONNS=${CONNS:-15000}
SUBS=${SUBS:-10000}
RATES=${RATES:-1 5 10 20}
DURATION=${DURATION:-10s}
OUT=${OUT:-$ROOT/target/bench/peers}
mkdir -p "$OUT"
ulimit -n 20000

missing=()
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(nginx-light libnginx-mod-nchan)
command -v pushpin >/dev/null || missing+=(pushpin)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release -q -p herald -p herald-bench
BENCH="taskset -c 1 $ROOT/target/release/herald-bench"

SERVER_PIDS=()
STOP_CMD=""
HERALD_PID=""
stop_server() {
  if [ -n "$HERALD_PID" ]; then kill -TERM "$HERALD_PID" 2>/dev/null || true; wait "$HERALD_PID" 2>/dev/null || true; fi
  if [ -n "$STOP_CMD" ]; then $STOP_CMD >/dev/null 2>&1 || true; fi
  HERALD_PID="" STOP_CMD="" SERVER_PIDS=()
  sleep 1
}
trap stop_server EXIT

# start_server NAME: starts it on CPU 0; sets ADDR (client host:port), PUB (publish host:port
# or gRPC URL) and SERVER_PIDS (every process serving clients).
start_server() {
  case $1 in
    herald)
      HERALD_HTTP_ADDR=127.0.0.1:28080 HERALD_GRPC_ADDR=127.0.0.1:25051 HERALD_ADMIN_ADDR=127.0.0.1:29464 HERALD_API_ADDR=127.0.0.1:28181 \
        HERALD_LOG=warn HERALD_MAX_CONNECTIONS=100000 HERALD_MAX_CHANNELS_PER_CONNECTION=100 \
        taskset -c 0 "${HERALD_BIN:-$ROOT/target/release/herald}" serve >"$OUT/herald.log" 2>&1 &
      HERALD_PID=$!
      for _ in $(seq 100); do curl -fs http://127.0.0.1:29464/readyz >/dev/null && break; sleep 0.1; done
      ADDR=127.0.0.1:28080 PUB=http://127.0.0.1:25051 SERVER_PIDS=("$HERALD_PID") ;;
    nchan)
      eval "$(taskset -c 0 scripts/peers/start_nchan.sh)"
      STOP_CMD=$STOP
      ADDR=${NCHAN_URL#http://} PUB=$ADDR
      mapfile -t SERVER_PIDS < <(pgrep -P "$NCHAN_PID") ;;   # the worker (1 by default)
    socketio)
      eval "$(taskset -c 0 scripts/peers/start_socketio.sh)"
      STOP_CMD=$STOP
      ADDR=${SIO_URL#http://} PUB=$ADDR SERVER_PIDS=("$SIO_PID") ;;
    pushpin)
      eval "$(taskset -c 0 scripts/peers/start_pushpin.sh)"
      STOP_CMD=$STOP
      ADDR=${PUSHPIN_URL#http://}
      PUB=${PUSHPIN_PUBLISH_URL#http://}
      PUB=${PUB%%/*}
      mapfile -t SERVER_PIDS < <(pgrep -f "$STATE_DIR" | grep -v "^$ORIGIN_PID\$") ;;
  esac
}

pid_args() { for p in "${SERVER_PIDS[@]}"; do printf -- '--pid %s ' "$p"; done; }

if [ "$WHAT" = idle ] || [ "$WHAT" = all ]; then
  : >"$OUT/idle.jsonl"
  for run in herald:ws herald:sse nchan:ws nchan:sse socketio:ws pushpin:sse; do
    [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $run "* ]] && continue
    target=${run%:*} proto=${run#*:}
    echo "==> idle: $target $proto x $CONNS"
    start_server "$target"
    # shellcheck disable=SC2046
    timeout 300 $BENCH idle --target "$target" --addr "$ADDR" --protocol "$proto" \
      --connections "$CONNS" --sources 127.0.0.2-127.0.0.9 $(pid_args) --hold 5s \
      | tail -1 | tee -a "$OUT/idle.jsonl" || echo "   (failed)"
    stop_server
  done
fi

if [ "$WHAT" = fanout ] || [ "$WHAT" = all ]; then
  : >"$OUT/fanout.jsonl"
  for run in herald:ws nchan:ws herald:sse nchan:sse socketio:ws; do
    [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $run "* ]] && continue
    target=${run%:*} proto=${run#*:}
    start_server "$target"
    for rate in $RATES; do
      echo "==> fan-out: $target $proto, $SUBS subscribers, $rate msg/s for $DURATION"
      grpc=""; pub=()
      if [ "$target" = herald ]; then grpc=$PUB; else pub=(--publish-addr "$PUB"); fi
      # shellcheck disable=SC2046
      timeout 240 $BENCH fanout --target "$target" --protocol "$proto" --addr "$ADDR" \
        --grpc "$grpc" "${pub[@]}" --subscribers "$SUBS" --rate "$rate" --duration "$DURATION" \
        --sources 127.0.0.2-127.0.0.9 $(pid_args) \
        | tail -1 | tee -a "$OUT/fanout.jsonl" || echo "   (failed)"
    done
    stop_server
  done
fi

if [ "$WHAT" = storm ] || [ "$WHAT" = all ]; then
  # Herald only: the peers have no cursor resume to compare with on equal terms.
  echo "==> reconnect storm: $SUBS WebSocket clients resume at once after missing 50 messages"
  start_server herald
  timeout 240 $BENCH storm --addr "$ADDR" --grpc "$PUB" --clients "$SUBS" --missed 50 \
    --sources 127.0.0.2-127.0.0.9 --pid "$HERALD_PID" --admin 127.0.0.1:29464 | tail -1 | tee "$OUT/storm.json" || echo "   (failed)"
  stop_server
fi

if [ "$WHAT" = poll ] || [ "$WHAT" = all ]; then
  # Herald's /poll against Nchan's long-poll (/sub/<ch>) and interval-poll (/poll/<ch>).
  : >"$OUT/poll.jsonl"
  for target in herald nchan; do
    [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $target:poll "* ]] && continue
    echo "==> held long-polls: $target x $CONNS"
    start_server "$target"
    # shellcheck disable=SC2046
    timeout 300 $BENCH longpoll-idle --target "$target" --addr "$ADDR" --connections "$CONNS" \
      --sources 127.0.0.2-127.0.0.9 $(pid_args) --hold 5s \
      | tail -1 | tee -a "$OUT/poll.jsonl" || echo "   (failed)"
    stop_server
    start_server "$target"
    for rate in ${POLL_RATES:-10000 20000 0}; do
      echo "==> interval polls of a quiet channel: $target, ${POLL_CLIENTS:-50} clients, rate $rate/s (0 = flat out) for $DURATION"
      # shellcheck disable=SC2046
      timeout 120 $BENCH poll-load --target "$target" --addr "$ADDR" --clients "${POLL_CLIENTS:-50}" \
        --rate "$rate" --duration "$DURATION" --sources 127.0.0.2-127.0.0.9 $(pid_args) \
        | tail -1 | tee -a "$OUT/poll.jsonl" || echo "   (failed)"
    done
    stop_server
  done
fi

python3 scripts/bench-peers-report.py "$OUT"
