#!/usr/bin/env bash
# The admin console's cost on a node holding N idle WebSocket connections: the node's CPU and
# RSS over SECS seconds with no console open, then with one console page open (cluster page,
# live updates every second); the page's time to first render; its weight gzipped.
#   scripts/bench-console.sh [CONNECTIONS=15000] [SECS=20]      (PROFILE=release for a release build)
# Server pinned to CPU 0, load generator and chromium to CPU 1. Bounded: every step ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONNS=${1:-15000}
SECS=${2:-20}
PROFILE=${PROFILE:-debug}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
JS=clients/js
ulimit -n "$(ulimit -Hn)"
[ "$PROFILE" = release ] && cargo build --release -q -p herald -p herald-bench
[ -x "$BIN/herald-bench" ] || cargo build -q -p herald -p herald-bench
KEY=bench-console-key-0123456789abcdef
OUT=${OUT:-target/bench}
mkdir -p "$OUT"

echo "==> page weight (gzip -9 of the embedded files)"
total=0
for f in index.html console.js console.css; do
  raw=$(wc -c < "crates/herald-control/console/$f")
  gz=$(gzip -9c "crates/herald-control/console/$f" | wc -c)
  total=$((total + gz))
  echo "$f: $raw bytes, $gz gzipped"
done
echo "total gzipped: $total bytes"

HERALD_API_KEYS=$KEY HERALD_HTTP_ADDR=127.0.0.1:28080 HERALD_GRPC_ADDR=127.0.0.1:25051 \
  HERALD_ADMIN_ADDR=127.0.0.1:29464 HERALD_API_ADDR=127.0.0.1:28181 HERALD_LOG=warn \
  taskset -c 0 "$BIN/herald" serve >"$OUT/console-herald.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; [ -n "${BENCH:-}" ] && kill $BENCH 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs http://127.0.0.1:29464/readyz >/dev/null && break; sleep 0.1; done

taskset -c 1 "$BIN/herald-bench" idle --addr 127.0.0.1:28080 --protocol ws --connections "$CONNS" \
  --pid "$PID" --hold "$((SECS * 3 + 60))s" >"$OUT/console-idle.json" 2>"$OUT/console-idle.err" &
BENCH=$!
echo "==> opening $CONNS idle WebSocket connections"
for _ in $(seq 600); do
  n=$(curl -fs http://127.0.0.1:29464/metrics | awk '/^herald_connections\{protocol="websocket"\}/ {print $2}')
  [ "${n:-0}" -ge "$CONNS" ] && break
  sleep 0.5
done
echo "held: $n"
sleep 3

TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
measure() { # prints: cpu% rss_kb
  local t0 t1
  t0=$(ticks); sleep "$SECS"; t1=$(ticks)
  echo "$(awk -v a="$t0" -v b="$t1" -v hz="$TCK" -v s="$SECS" 'BEGIN {printf "%.2f", (b - a) / hz / s * 100}') $(rss_kb)"
}
read -r cpu_none rss_none < <(measure)
echo "no console:  CPU ${cpu_none}% of a core, RSS ${rss_none} KiB"

ADMIN=http://127.0.0.1:29464 KEY=$KEY HOLD_MS=$(( (SECS + 6) * 1000 )) NODE_PATH="$ROOT/$JS/node_modules" \
  taskset -c 1 timeout $((SECS + 90)) node "$JS/test/console-bench.cjs" >"$OUT/console-page.json" 2>"$OUT/console-page.err" &
PAGE=$!
for _ in $(seq 600); do grep -q holding "$OUT/console-page.err" 2>/dev/null && break; sleep 0.2; done
sleep 3
read -r cpu_one rss_one < <(measure)
echo "one console: CPU ${cpu_one}% of a core, RSS ${rss_one} KiB"
wait $PAGE
echo "page: $(cat "$OUT/console-page.json")"
