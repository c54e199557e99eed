#!/usr/bin/env bash
# Type-checks Grafana dashboard JSON against the `Dashboard` type of npm @grafana/schema with
# TypeScript `satisfies` (types, required keys, excess keys in object literals).
#   dashboard_tscheck.sh DASH.json...        exit 1 if any dashboard does not type-check
# The first run installs @grafana/schema and typescript (pinned below) into $GRAFANA_TS_DIR
# (default /tmp/herald-grafana-ts). Accepts a bare dashboard or the API export {"dashboard": ...}.
set -euo pipefail
SCHEMA_VERSION=${GRAFANA_SCHEMA_VERSION:-13.2.3}
TS_VERSION=${TYPESCRIPT_VERSION:-7.0.2}
D=${GRAFANA_TS_DIR:-/tmp/herald-grafana-ts}
command -v npm >/dev/null || { echo "npm missing: apt-get install -y npm" >&2; exit 2; }
if [ ! -d "$D/node_modules/@grafana/schema" ] || [ ! -d "$D/node_modules/typescript" ]; then
  mkdir -p "$D"
  (cd "$D" && { [ -f package.json ] || npm init -y >/dev/null; } &&
    timeout 300 npm install --no-audit --no-fund --loglevel=error \
      "@grafana/schema@$SCHEMA_VERSION" "typescript@$TS_VERSION" >/dev/null)
fi
rc=0
for f in "$@"; do
  t="$D/chk_$(basename "$f" .json | tr -c 'A-Za-z0-9_\n' _).ts"
  python3 - "$f" "$t" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d = d.get("dashboard", d) if isinstance(d, dict) else d
with open(sys.argv[2], "w") as out:
    out.write("import type { Dashboard } from '@grafana/schema';\n")
    out.write("export const d = (" + json.dumps(d, indent=1) + ") satisfies Dashboard;\n")
PY
  set +e
  out=$(cd "$D" && timeout 120 npx --no-install tsc --noEmit --strict --skipLibCheck --module esnext \
        --moduleResolution bundler --target es2022 "$(basename "$t")" 2>&1)
  st=$?
  set -e
  if [ $st -ne 0 ]; then
    printf '%s\n' "$out" | grep -v 'npm warn' || true
    echo "$f: FAILED (line numbers refer to $t)"; rc=1
  else
    echo "$f: ok"
  fi
done
exit $rc
