#!/usr/bin/env bash
# Users and presence: what they cost (docs/benchmarks.md, "Presence"). Every server (Herald
# nodes, nats-server) pinned to CPU 0, every load generator (herald-bench) to CPU 1; each case
# starts fresh servers on free ports (nats-server with JetStream, its own store and a monitoring
# port, never the shared one on 4222). Bounded: every step stops by itself.
#   scripts/bench-presence.sh [small|identity|room|cluster|kv|all]     (default all)
#     small:    1 node, memory broker, CONNS connections over CHANNELS_SMALL channels: tokens,
#               check, queries, a quiet window, churn with join/leave; the same on 1 NATS node
#     identity: RSS per connection on 1 node (memory broker), IDENT connections over
#               CHANNELS channels: `herald-bench idle` (anonymous, no namespace rules), then
#               `presence --anonymous`, then `presence` with tokens (sub, info, jti)
#     cluster:  NODES nodes on one nats-server, TOTAL connections over CHANNELS channels,
#               users USERS, load generators of at most PER_GEN connections each (one measures,
#               the others hold): RSS, check, queries (with a BIG-member channel), NATS traffic
#               at rest (STEADY) and during churn (CHURN reconnects/s for CHURN_FOR)
#     room:     one room of ROOM members on 1 node (memory broker), join/leave on and off: the
#               cost of filling it (each join reaches every member) and of churn in it
#     kv:       the alternative store: `presence-kv` on a fresh nats-server (file storage):
#               KV_ENTRIES entries refreshed every 30 s and every 10 s, with CHURN joins+leaves/s
# Environment: CONNS (2000), CHANNELS_SMALL (200), IDENT (15000), NODES (6), TOTAL (100000),
#   CHANNELS (10000), USERS (50000), PER_GEN (17000), BIG (10000), STEADY (60s), CHURN (100),
#   CHURN_FOR (30s), ROOM (5000), PROTO (ws), JOIN_LEAVE (true), KV_ENTRIES (TOTAL), SOURCES
#   (127.0.1.2-127.0.1.80), NODELAY (below), HERALD_BIN (another build), OUT, NO_BUILD.
# Results: JSON lines in $OUT/presence.jsonl (each tagged with its case and the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. scripts/peers/lib.sh
WHAT=${1:-all}
CONNS=${CONNS:-2000}
CHANNELS_SMALL=${CHANNELS_SMALL:-200}
IDENT=${IDENT:-15000}
NODES=${NODES:-6}
TOTAL=${TOTAL:-100000}
CHANNELS=${CHANNELS:-10000}
USERS=${USERS:-50000}
PER_GEN=${PER_GEN:-17000}
BIG=${BIG:-10000}
STEADY=${STEADY:-60s}
CHURN=${CHURN:-100}
CHURN_FOR=${CHURN_FOR:-30s}
ROOM=${ROOM:-5000}
PROTO=${PROTO:-ws}
JOIN_LEAVE=${JOIN_LEAVE:-true}
KV_ENTRIES=${KV_ENTRIES:-$TOTAL}
SOURCES=${SOURCES:-127.0.1.2-127.0.1.80}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET_DIR/bench/presence}
NATS_BIN=${NATS_BIN:-/usr/sbin/nats-server}
SECRET=${HERALD_BENCH_SECRET:-presence-bench-secret-0123456789abcdef}
export HERALD_BENCH_SECRET=$SECRET
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p herald -p herald-bench
HERALD=${HERALD_BIN:-$TARGET_DIR/release/herald}
# NODELAY=1: the nodes run with an LD_PRELOAD shim that sets TCP_NODELAY on every accepted
# socket. Herald's gRPC server accepts through its own listener stream, so tonic's default
# TCP_NODELAY is not applied, and a reply written in two pieces (a Presence answer) waits for
# the client's delayed ACK (~40 ms). The shim measures presence without that delay.
PRELOAD=()
if [ -n "${NODELAY:-}" ]; then
  mkdir -p "$OUT/nodelay"
  cat >"$OUT/nodelay/nodelay.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = dlsym(RTLD_NEXT, "accept4");
  int s = real(fd, addr, len, flags);
  if (s >= 0) { int one = 1; setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
  return s;
}
EOF
  gcc -O2 -shared -fPIC -o "$OUT/nodelay/libnodelay.so" "$OUT/nodelay/nodelay.c" -ldl
  PRELOAD=(LD_PRELOAD="$OUT/nodelay/libnodelay.so")
fi
BENCH="taskset -c 1 $TARGET_DIR/release/herald-bench"

# write_config JOIN_LEAVE: room:* keeps presence (join/leave as asked); hall:* (the big channel)
# keeps presence without join/leave, as a large room would.
write_config() {
  cat >"$OUT/presence.toml" <<EOF
[namespaces.room]
anonymous = true
presence = true
join_leave = $1

[namespaces.hall]
anonymous = true
presence = true
join_leave = false
EOF
}
write_config "$JOIN_LEAVE"

PIDS=() NATS_PID="" STORE="" GEN_PIDS=() NODE_PIDS=() HTTPS="" GRPCS=""
stop_all() {
  for p in "${GEN_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${GEN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$STORE" ]; then rm -rf "$STORE"; fi
  PIDS=() NATS_PID="" STORE="" GEN_PIDS=() NODE_PIDS=() HTTPS="" GRPCS=""
  sleep 1
}
trap stop_all EXIT

start_nats() {
  STORE=$(mktemp -d /tmp/bench-presence-nats.XXXXXX)
  NATS_PORT=$(free_port) NATS_MON=$(free_port)
  taskset -c 0 "$NATS_BIN" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -sd "$STORE" >"$OUT/nats.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  wait_port 127.0.0.1 "$NATS_PORT" 20 || { echo "nats-server did not start" >&2; exit 1; }
}

# start_node I BROKER [plain]: Herald node I (memory or nats) with the presence namespace and
# the token secret ("plain": neither, as `idle` runs); appends to HTTPS, GRPCS, NODE_PIDS.
start_node() {
  local i=$1 broker=$2 plain=${3:-} http grpc admin api
  http=$(free_port) grpc=$(free_port) admin=$(free_port) api=$(free_port)
  local env=(HERALD_BROKER="$broker" HERALD_NODE_ID="pres-$i" HERALD_LOG=warn
    HERALD_HTTP_ADDR=127.0.0.1:$http HERALD_GRPC_ADDR=127.0.0.1:$grpc HERALD_ADMIN_ADDR=127.0.0.1:$admin HERALD_API_ADDR=127.0.0.1:$api
    HERALD_MAX_CONNECTIONS=100000 HERALD_RECENT_CACHE_BYTES=1048576)
  [ -z "$plain" ] && env+=(HERALD_CONFIG="$OUT/presence.toml" HERALD_AUTH_HMAC_SECRET="$SECRET")
  [ "$broker" = nats ] && env+=(HERALD_NATS_URL="nats://127.0.0.1:$NATS_PORT" HERALD_NATS_STORAGE=file
    HERALD_NATS_STREAM=PRESENCE)
  env "${env[@]}" "${PRELOAD[@]}" taskset -c 0 "$HERALD" serve >"$OUT/herald-$i.log" 2>&1 &
  PIDS+=("$!"); NODE_PIDS+=("$!")
  HTTPS="${HTTPS:+$HTTPS,}127.0.0.1:$http" GRPCS="${GRPCS:+$GRPCS,}http://127.0.0.1:$grpc"
  wait_http "http://127.0.0.1:$admin/readyz" 60 || { echo "node $i not ready" >&2; tail "$OUT/herald-$i.log" >&2; exit 1; }
}

node_pid_args() { for p in "${NODE_PIDS[@]}"; do printf -- '--pid %s ' "$p"; done; }
rss_sum() { local s=0 p; for p in "$@"; do s=$((s + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status"))); done; echo "$s"; }

# record LABEL JSON: tag a result line with its case and the load average, append it.
record() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["case"]=sys.argv[2]; d["herald_bin"]=sys.argv[3]; d["nodelay_shim"]=sys.argv[4]!=""; d["loadavg_end"]=open("/proc/loadavg").read().split()[:3]; print(json.dumps(d))' "$2" "$1" "$HERALD" "${NODELAY:-}" \
    | tee -a "$OUT/presence.jsonl"
}

# measure LABEL ARGS...: one herald-bench run whose last stdout line is its JSON.
measure() {
  local label=$1; shift
  echo "==> $label (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  echo "    herald-bench $*" | sed "s/$SECRET/\$SECRET/g"
  local line
  line=$(timeout 1500 $BENCH "$@" | tail -1) || { echo "   (failed)"; return 0; }
  record "$label" "$line"
}

want() { [ "$WHAT" = all ] || [ "$WHAT" = "$1" ]; }
NATS_ARGS=()
nats_args() { NATS_ARGS=(--nats-pid "$NATS_PID" --nats-monitor "http://127.0.0.1:$NATS_MON"); }

if want small; then
  for broker in memory nats; do
    NATS_ARGS=()
    if [ "$broker" = nats ]; then start_nats; nats_args; fi
    start_node 1 "$broker"
    # shellcheck disable=SC2046
    measure "$broker 1 node, $CONNS x $PROTO over $CHANNELS_SMALL channels, tokens" presence \
      --addr "$HTTPS" --grpc "$GRPCS" --protocol "$PROTO" --connections "$CONNS" \
      --channels "$CHANNELS_SMALL" --users $((CONNS / 2)) --big $((CONNS / 4)) --sources "$SOURCES" \
      $(node_pid_args) "${NATS_ARGS[@]}" --check --steady 10s --churn-rate "$CHURN" --churn-duration 10s
    stop_all
  done
fi

if want identity; then
  start_node 1 memory plain
  measure "identity: idle, anonymous, no namespace rules, $IDENT x $PROTO over $CHANNELS" idle \
    --addr "${HTTPS}" --protocol "$PROTO" --connections "$IDENT" --channels "$CHANNELS" \
    --sources "$SOURCES" --pid "${NODE_PIDS[0]}" --hold 5s
  stop_all
  for mode in anonymous token; do
    start_node 1 memory
    extra=(); [ "$mode" = anonymous ] && extra=(--anonymous)
    measure "identity: presence namespace, $mode, $IDENT x $PROTO over $CHANNELS" presence --addr "$HTTPS" \
      --grpc "$GRPCS" --protocol "$PROTO" --connections "$IDENT" --channels "$CHANNELS" \
      --users $((IDENT / 2)) --sources "$SOURCES" --pid "${NODE_PIDS[0]}" --queries 0 --big-queries 0 \
      "${extra[@]}"
    stop_all
  done
fi

if want room; then
  # One room of ROOM members filling up, with and without join/leave: each join goes to every
  # member already there (ROOM^2/2 events), then CHURN/10 reconnects/s in the full room.
  for jl in true false; do
    write_config "$jl"
    start_node 1 memory
    measure "room: 1 node, memory, one room of $ROOM, join_leave $jl" presence --addr "$HTTPS" \
      --grpc "$GRPCS" --protocol "$PROTO" --connections "$ROOM" --channels 1 --users "$ROOM" \
      --sources "$SOURCES" --pid "${NODE_PIDS[0]}" --queries 50 --big-queries 0 \
      --churn-rate $((CHURN / 10)) --churn-duration 10s
    stop_all
  done
  write_config "$JOIN_LEAVE"
fi

if want cluster; then
  start_nats; nats_args
  for i in $(seq 1 "$NODES"); do start_node "$i" nats; done
  baseline=$(rss_sum "${NODE_PIDS[@]}")
  gens=$(( (TOTAL + PER_GEN - 1) / PER_GEN ))
  share=$(( (TOTAL + gens - 1) / gens ))
  run_id=$(( $(date +%s) % 100000000 ))
  rm -f "$OUT"/hold-*.json "$OUT"/hold-*.out "$OUT/stop"
  common=(--addr "$HTTPS" --grpc "$GRPCS" --protocol "$PROTO" --total "$TOTAL" --channels "$CHANNELS"
    --users "$USERS" --big "$BIG" --sources "$SOURCES" --run-id "$run_id")
  held=0 peers=()
  echo "==> cluster: $NODES nodes, $TOTAL connections in $gens load generators (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  for g in $(seq 0 $((gens - 2))); do
    timeout 2400 $BENCH presence "${common[@]}" --offset $((g * share)) --connections "$share" \
      --hold-only --hold 30m --status-file "$OUT/hold-$g.json" --stop-file "$OUT/stop" \
      >"$OUT/hold-$g.out" 2>&1 &
    GEN_PIDS+=("$!")
    # One at a time: the nodes and generators share two cores.
    for _ in $(seq 600); do [ -f "$OUT/hold-$g.json" ] && break; sleep 1; done
    [ -f "$OUT/hold-$g.json" ] || { echo "generator $g did not open in 600 s" >&2; exit 1; }
    opened=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["opened"])' "$OUT/hold-$g.json")
    echo "    generator $g: $opened of $share open ($(cut -d' ' -f1-3 /proc/loadavg))"
    held=$((held + opened)); peers+=(--peer-status "$OUT/hold-$g.json")
  done
  last=$((TOTAL - (gens - 1) * share))
  # shellcheck disable=SC2046
  measure "cluster: $NODES NATS nodes, $TOTAL x $PROTO over $CHANNELS channels, $USERS users, big $BIG" \
    presence "${common[@]}" --offset $(((gens - 1) * share)) --connections "$last" \
    --held-elsewhere "$held" --rss-baseline-kb "$baseline" $(node_pid_args) "${NATS_ARGS[@]}" \
    "${peers[@]}" --check --steady "$STEADY" --churn-rate "$CHURN" --churn-duration "$CHURN_FOR"
  touch "$OUT/stop"
  for p in "${GEN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  GEN_PIDS=()
  stop_all
fi

if want kv; then
  for refresh in 30s 10s; do
    start_nats
    measure "kv: $KV_ENTRIES entries refreshed every $refresh, $CHURN joins+leaves/s, file storage" \
      presence-kv --nats "nats://127.0.0.1:$NATS_PORT" --nats-pid "$NATS_PID" --entries "$KV_ENTRIES" \
      --channels "$CHANNELS" --refresh "$refresh" --churn "$CHURN" --duration 60s --max-age 90s
    stop_all
  done
fi
echo "results: $OUT/presence.jsonl"
