#!/usr/bin/env bash
# Browser SDK checks: the SDK's minified+gzipped size, then clients/js/test/browser.test.cjs and
# clients/js/test/resume.test.cjs in Debian's headless chromium (playwright-core from npm)
# against real herald nodes and a real nats-server. Needs: chromium, nats-server, node/npm
# (scripts/test.sh installs them) and a built target/debug/herald (HERALD_BIN to use another).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JS=clients/js
[ -x /usr/bin/chromium ] || { echo "chromium missing: apt-get install -y chromium" >&2; exit 2; }
command -v npm >/dev/null || { echo "npm missing: apt-get install -y npm" >&2; exit 2; }
HERALD_BIN=${HERALD_BIN:-$ROOT/target/debug/herald}
[ -x "$HERALD_BIN" ] || cargo build -p herald
echo "==> browser SDK: installing playwright-core, esbuild and typescript into $JS/node_modules"
if [ ! -d "$JS/node_modules/playwright-core" ] || [ ! -d "$JS/node_modules/esbuild" ] ||
  [ ! -d "$JS/node_modules/typescript" ]; then
  (cd "$JS" && timeout 300 npm install --no-audit --no-fund --no-save --loglevel=error \
    playwright-core@1 esbuild@0 typescript@5 >/dev/null)
fi
echo "==> herald.d.ts type-checks the documented usage (tsc --strict)"
"$JS/node_modules/.bin/tsc" --noEmit --strict --target es2022 --lib es2022,dom \
  --module es2022 --moduleResolution bundler "$JS/test/types.ts"
size=$("$JS/node_modules/.bin/esbuild" --minify --format=esm --log-level=error "$JS/herald.js" | gzip -9 | wc -c)
raw=$(wc -c < "$JS/herald.js")
echo "==> herald.js: $raw bytes source, $size bytes minified+gzipped"
echo "==> browser tests (headless chromium, real nodes, real nats-server)"
NODE_PATH="$ROOT/$JS/node_modules" HERALD_BIN="$HERALD_BIN" SCREENSHOT="$ROOT/target/screenshots/demo.png" \
  timeout 300 node "$JS/test/browser.test.cjs"
echo "==> exact resume under random connection breaks, and the position-token codec"
NODE_PATH="$ROOT/$JS/node_modules" HERALD_BIN="$HERALD_BIN" timeout 300 node "$JS/test/resume.test.cjs"
echo "==> presence: client ids, join/leave, server endings and server-side channel changes (two nodes on NATS)"
NODE_PATH="$ROOT/$JS/node_modules" HERALD_BIN="$HERALD_BIN" timeout 300 node "$JS/test/presence.test.cjs"
echo "==> client publishes: the chat example page in two tabs on two nodes (WebSocket and POST /publish)"
NODE_PATH="$ROOT/$JS/node_modules" HERALD_BIN="$HERALD_BIN" SCREENSHOT="$ROOT/target/screenshots/chat.png" \
  timeout 200 node "$JS/test/chat.test.cjs"
echo "==> admin console: login, live cluster stats, channel tail and publish, drain (two nodes on NATS)"
NODE_PATH="$ROOT/$JS/node_modules" HERALD_BIN="$HERALD_BIN" timeout 300 node "$JS/test/console.test.cjs"
