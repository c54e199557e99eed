#!/usr/bin/env bash
# Herald and Nchan alternately (three rounds), the same poll-load (50 keep-alive pollers, 8 s per
# rate), to compare server CPU per empty poll on a machine whose load moves between runs.
#   scripts/bench-poll-interleaved.sh      (RATES="10000 20000", BIN=target/release/herald)
# Needs a release build of herald and herald-bench, and nginx-light + libnginx-mod-nchan.
set -uo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000
BIN=${BIN:-target/release/herald}
for _round in 1 2 3; do
 for target in herald nchan; do
  if [ $target = herald ]; then
    HERALD_HTTP_ADDR=127.0.0.1:28080 HERALD_GRPC_ADDR=127.0.0.1:25051 HERALD_ADMIN_ADDR=127.0.0.1:29464 HERALD_API_ADDR=127.0.0.1:28181 HERALD_LOG=warn \
      taskset -c 0 $BIN serve >/tmp/h.log 2>&1 &
    HP=$!; for _ in $(seq 100); do curl -fs http://127.0.0.1:29464/readyz >/dev/null && break; sleep 0.1; done
    ADDR=127.0.0.1:28080; PID=$HP
  else
    eval "$(taskset -c 0 scripts/peers/start_nchan.sh)"; ADDR=${NCHAN_URL#http://}; PID=$(pgrep -P $NCHAN_PID)
  fi
  for rate in ${RATES:-10000 20000}; do
    timeout 60 taskset -c 1 target/release/herald-bench poll-load --target $target --addr $ADDR --clients 50 --rate $rate --duration 8s --pid $PID | python3 -c "
import sys,json
d=json.loads(sys.stdin.readlines()[-1]); print(d['target'], d['rate_asked'], d['polls_per_second'], round(d['server_cpu_us_per_poll'],2))"
  done
  if [ $target = herald ]; then kill -TERM $HP; wait $HP; else $STOP >/dev/null; fi
  sleep 0.5
 done
done
