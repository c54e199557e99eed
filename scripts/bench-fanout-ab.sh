#!/usr/bin/env bash
# Fan-out A/B: several herald binaries and Nchan in turn, in one run, each server pinned to
# CPU 0 and the load generator to CPU 1 (as bench-peers.sh). Used for the "Direct writes from
# the fan-out" figures in docs/benchmarks.md.
#   scripts/bench-fanout-ab.sh NAME=PATH [NAME=PATH ...]
#   e.g. scripts/bench-fanout-ab.sh new=target/release/herald old=/tmp/herald-main
# Environment: PROTOS ("ws sse"), RATES ("1 5 10"), ROUNDS (2), SUBS (10000), DURATION (10s),
#   NCHAN (1: include Nchan), OUT (target/bench/fanout-ab).
# Results: JSON lines in $OUT/ab.jsonl ({"round","who","proto","rate","r": herald-bench's line}).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROTOS=${PROTOS:-ws sse}
RATES=${RATES:-1 5 10}
ROUNDS=${ROUNDS:-2}
SUBS=${SUBS:-10000}
DURATION=${DURATION:-10s}
OUT=${OUT:-$ROOT/target/bench/fanout-ab}
mkdir -p "$OUT"
ulimit -n 20000
[ $# -gt 0 ] || { echo "usage: $0 NAME=PATH [NAME=PATH ...]" >&2; exit 2; }
declare -A BIN
TARGETS=()
for arg in "$@"; do BIN[${arg%%=*}]=${arg#*=}; TARGETS+=("${arg%%=*}"); done
[ "${NCHAN:-1}" = 1 ] && TARGETS+=(nchan)
cargo build --release -q -p herald-bench
BENCH="taskset -c 1 $ROOT/target/release/herald-bench"

for round in $(seq "$ROUNDS"); do
  for proto in $PROTOS; do
    for who in "${TARGETS[@]}"; do
      if [ "$who" = nchan ]; then
        eval "$(taskset -c 0 scripts/peers/start_nchan.sh)"
        ADDR=${NCHAN_URL#http://}
        mapfile -t PIDS < <(pgrep -P "$NCHAN_PID")
        PUBARGS=(--publish-addr "$ADDR") TARGET=nchan
      else
        HERALD_HTTP_ADDR=127.0.0.1:28080 HERALD_GRPC_ADDR=127.0.0.1:25051 HERALD_ADMIN_ADDR=127.0.0.1:29464 \
          HERALD_API_ADDR=127.0.0.1:28181 HERALD_LOG=warn HERALD_MAX_CONNECTIONS=100000 \
          taskset -c 0 "${BIN[$who]}" serve >"$OUT/herald-$who.log" 2>&1 &
        HP=$!
        for _ in $(seq 100); do curl -fs http://127.0.0.1:29464/readyz >/dev/null && break; sleep 0.1; done
        ADDR=127.0.0.1:28080 PIDS=("$HP") PUBARGS=(--grpc http://127.0.0.1:25051) TARGET=herald
      fi
      for rate in $RATES; do
        echo "==> round $round: $who $proto, $SUBS subscribers, $rate msg/s for $DURATION"
        # shellcheck disable=SC2046
        r=$(timeout 240 $BENCH fanout --target "$TARGET" --protocol "$proto" --addr "$ADDR" "${PUBARGS[@]}" \
          --subscribers "$SUBS" --rate "$rate" --duration "$DURATION" --sources 127.0.0.2-127.0.0.9 \
          $(for p in "${PIDS[@]}"; do printf -- '--pid %s ' "$p"; done) | tail -1) || r=null
        echo "{\"round\":$round,\"who\":\"$who\",\"proto\":\"$proto\",\"rate\":$rate,\"r\":$r}" | tee -a "$OUT/ab.jsonl"
      done
      if [ "$who" = nchan ]; then $STOP >/dev/null 2>&1 || true
      else kill -TERM "$HP"; wait "$HP" 2>/dev/null || true; fi
      sleep 2
    done
  done
done
