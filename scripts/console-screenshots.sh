#!/usr/bin/env bash
# Regenerates the admin console's screenshots in docs/img/console-*.png: runs
# clients/js/test/console.test.cjs (headless chromium against two real nodes on a real
# nats-server) with SCREENSHOT_DIR=docs/img. Needs what scripts/check-browser.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JS=clients/js
[ -x /usr/bin/chromium ] || { echo "chromium missing: apt-get install -y chromium" >&2; exit 2; }
HERALD_BIN=${HERALD_BIN:-$ROOT/target/debug/herald}
[ -x "$HERALD_BIN" ] || cargo build -p herald
if [ ! -d "$JS/node_modules/playwright-core" ]; then
  (cd "$JS" && timeout 300 npm install --no-audit --no-fund --no-save --loglevel=error playwright-core@1 >/dev/null)
fi
mkdir -p docs/img
NODE_PATH="$ROOT/$JS/node_modules" HERALD_BIN="$HERALD_BIN" SCREENSHOT_DIR="$ROOT/docs/img" \
  timeout 300 node "$JS/test/console.test.cjs"
ls -l docs/img/console-*.png
