#!/usr/bin/env bash
# Socket.IO (npm socket.io 4.x on node) peer: polling + websocket, HTTP publish endpoint.
#   start_socketio.sh [PORT]          start (random free port if omitted)
#   start_socketio.sh stop STATE_DIR
# Installs socket.io + socket.io-client into $SIO_DIR (default /tmp/peers-sio) on first use.
# Prints SIO_URL, SIO_PID, STATE_DIR, STARTUP_MS. Publish: POST $SIO_URL/publish/<room>
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = stop ]; then stop_statedir "${2:?usage: $0 stop STATE_DIR}"; exit; fi
SIO_DIR=${SIO_DIR:-$(cd "$PEERS_DIR/../.." && pwd)/target/peers/sio}
if [ ! -d "$SIO_DIR/node_modules/socket.io" ] || [ ! -d "$SIO_DIR/node_modules/socket.io-client" ]; then
  mkdir -p "$SIO_DIR"
  (cd "$SIO_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } &&
    timeout 300 npm install --no-audit --no-fund --loglevel=error socket.io socket.io-client >/dev/null)
fi
PORT=${1:-$(free_port)}
DIR=$(mktemp -d /tmp/socketio.XXXXXX)
t0=$(now_ms)
NODE_PATH="$SIO_DIR/node_modules" nohup node "$PEERS_DIR/socketio_server.js" "$PORT" > "$DIR/server.log" 2>&1 &
echo $! > "$DIR/node.pid"
if ! wait_http "http://127.0.0.1:$PORT/health" 20; then
  echo "socket.io server not ready; log:" >&2; cat "$DIR/server.log" >&2
  stop_statedir "$DIR" >&2; exit 1
fi
t1=$(now_ms)
cat <<EOF
SIO_URL=http://127.0.0.1:$PORT
SIO_PID=$(cat "$DIR/node.pid")
SIO_NODE_PATH=$SIO_DIR/node_modules
STATE_DIR=$DIR
STARTUP_MS=$((t1 - t0))
STOP="$PEERS_DIR/$(basename "$0") stop $DIR"
EOF
