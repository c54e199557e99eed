#!/usr/bin/env bash
# Checks Herald's Kubernetes packaging without a cluster and without a Docker engine:
#   1. deploy/Dockerfile: structural lint, and its build stage's command run for real
#      (`cargo build --release --locked -p herald`, then `herald --version`).
#   2. helm/herald: helm lint + render through Helm's own Go library (PyPI helm-sdkpy, driven by
#      scripts/helm/helm_render.py) for the defaults and every scenario in helm/tests/values/.
#   3. Every rendered built-in manifest validated by `kubernetes-validate --strict` (oldest and
#      newest supported Kubernetes); the custom resources (ServiceMonitor, PrometheusRule,
#      HTTPRoute), which kubernetes-validate has no schema for, against minimal structural
#      schemas in scripts/helm/chartcheck.py.
#   4. Bad values (helm/tests/bad/) that values.schema.json or the templates must reject.
#      Also an "upgrade" render with the generated API key Secret already in the (fake) cluster.
#   5. deploy/compose.yaml and the NATS/Prometheus configs checked by their own tools.
#   6. helm/tests/test_*.py: assertions on the rendered output, the real binary run with the
#      rendered environment, and the rendered NATS config run as a 3-server cluster.
# Any failure exits non-zero. Safe to re-run: the venv (target/helm-venv) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in helm/tests or scripts/helm

log() { printf '\n==> %s\n' "$*"; }
die() { printf '\ncheck-helm: FAILED: %s\n' "$*" >&2; exit 1; }

VENV=${HERALD_HELM_VENV:-$ROOT/target/helm-venv}
OUT=$ROOT/target/helm-check
CHART=$ROOT/helm/herald
RENDER="$VENV/bin/python $ROOT/scripts/helm/helm_render.py"
CHECK="$VENV/bin/python $ROOT/scripts/helm/chartcheck.py"
K8S_VERSIONS=(1.25.0 1.37.0)

# --- Python venv with helm-sdkpy, kubernetes-validate, check-jsonschema ----------------------
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  log "installing python3-venv"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi
log "helm venv ($VENV)"
bash scripts/helm/helm_venv.sh "$VENV" >/dev/null
"$VENV/bin/python" -c 'import helm_sdkpy, yaml, jsonschema' || die "venv $VENV is incomplete"

# --- 1. Dockerfile ------------------------------------------------------------------------
log "Dockerfile: structural lint (no Docker engine here: docs/deploy.md)"
$CHECK dockerfile deploy/Dockerfile .
if [ "${HERALD_CHECK_SKIP_CARGO:-0}" = 1 ]; then
  log "Dockerfile build stage: skipped (HERALD_CHECK_SKIP_CARGO=1, for iterating on the chart only)"
else
  log "Dockerfile build stage: cargo build --release --locked -p herald"
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  cargo build --release --locked -p herald
  ./target/release/herald --version || die "target/release/herald --version failed"
fi

# --- chart sources the chart reads through symlinks ----------------------------------------
log "chart files: symlinks into deploy/"
for link in files/alerts.yml files/grafana; do
  [ -L "$CHART/$link" ] || die "helm/herald/$link must be a symlink into deploy/"
  [ -e "$CHART/$link" ] || die "helm/herald/$link -> $(readlink "$CHART/$link"): target missing"
done
compgen -G "deploy/grafana/*.json" >/dev/null || die "no dashboards in deploy/grafana/*.json"
echo "alerts: deploy/prometheus/alerts.yml; dashboards: $(cd deploy/grafana && echo *.json)"

# --- 2. values schema, lint, render ---------------------------------------------------------
log "values.yaml against values.schema.json"
"$VENV/bin/check-jsonschema" --schemafile "$CHART/values.schema.json" "$CHART/values.yaml"
for v in helm/tests/values/*.yaml; do
  "$VENV/bin/python" - "$CHART" "$v" <<'PY'
import json, sys, yaml, jsonschema
sys.path.insert(0, "scripts/helm")
from chartcheck import merge
chart, path = sys.argv[1], sys.argv[2]
vals = merge(yaml.safe_load(open(f"{chart}/values.yaml")), yaml.safe_load(open(path)) or {})
jsonschema.Draft7Validator(json.load(open(f"{chart}/values.schema.json"))).validate(vals)
print(f"schema ok: {path}")
PY
done

rm -rf "$OUT"
mkdir -p "$OUT/render" "$OUT/split"
scenarios=(default)
for v in helm/tests/values/*.yaml; do scenarios+=("$(basename "$v" .yaml)"); done
for s in "${scenarios[@]}"; do
  log "helm lint + render: $s"
  args=()
  [ "$s" = default ] || args=(-f "helm/tests/values/$s.yaml")
  if ! $RENDER "$CHART" "${args[@]}" -o "$OUT/render/$s.yaml" --notes "$OUT/render/$s.notes.txt" \
      2>"$OUT/render/$s.log"; then
    grep -v 'found symbolic link' "$OUT/render/$s.log" >&2 || true
    die "render of $s"
  fi
  grep -v 'found symbolic link' "$OUT/render/$s.log" || true
  mkdir -p "$OUT/split/$s"
  $CHECK split "$OUT/render/$s.yaml" "$OUT/split/$s"
done

log "helm package: symlinked alerts and dashboards travel with the chart"
$CHECK package "$CHART" "$OUT/package" "$ROOT" 2> >(grep -v 'found symbolic link' >&2)

LONG_RELEASE=herald-production-europe-west1-blue-green-canary   # 48 characters
log "helm render: all-on with a long release name ($LONG_RELEASE) in namespace push-prod"
$RENDER "$CHART" -f helm/tests/values/all-on.yaml --name "$LONG_RELEASE" --namespace push-prod \
  -o "$OUT/render/long-name.yaml" 2> >(grep -v 'found symbolic link' >&2)
mkdir -p "$OUT/split/long-name"
$CHECK split "$OUT/render/long-name.yaml" "$OUT/split/long-name"
scenarios+=(long-name)

log "helm render: upgrade (the generated API key Secret exists already: lookup must keep its key)"
$RENDER "$CHART" --lookup helm/tests/lookup/api-keys-secret.yaml -o "$OUT/render/upgrade.yaml" \
  2> >(grep -v 'found symbolic link' >&2)

# --- 3. manifests ---------------------------------------------------------------------------
for s in "${scenarios[@]}"; do
  for k in "${K8S_VERSIONS[@]}"; do
    log "kubernetes-validate --strict -k $k: $s"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$k" "$OUT/split/$s/builtin.yaml" \
      || die "kubernetes-validate ($s, $k)"
    echo "ok: $(grep -c '^kind:' "$OUT/split/$s/builtin.yaml") built-in resources"
  done
  if [ -s "$OUT/split/$s/crds.yaml" ] && grep -q '^kind:' "$OUT/split/$s/crds.yaml"; then
    log "custom resources (structural schemas; not in kubernetes-validate): $s"
    $CHECK crds "$OUT/split/$s/crds.yaml"
  fi
done

# --- 4. bad values --------------------------------------------------------------------------
log "bad values must be rejected"
$CHECK bad "$CHART" helm/tests/bad scripts/helm/helm_render.py

# --- 5. compose and NATS / Prometheus configs (no Docker engine: checked by their own tools) ---
log "deploy/compose.yaml (compose-spec schema, services, mounts)"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
$CHECK compose deploy/compose.yaml
if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then
  NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
  log "nats-server -t: deploy/compose/nats.conf and the chart's rendered nats.conf"
  SERVER_NAME=nats-1 "$NATS_SERVER" -t -c deploy/compose/nats.conf
  for s in "${scenarios[@]}"; do
    "$VENV/bin/python" - "$OUT/render/$s.yaml" "$OUT/split/$s/nats.conf" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
confs = [d["data"]["nats.conf"] for d in docs if d["kind"] == "ConfigMap" and "nats.conf" in d.get("data", {})]
open(sys.argv[2], "w").write(confs[0] if confs else "")
PY
    if [ -s "$OUT/split/$s/nats.conf" ]; then
      SERVER_NAME=nats-0 NATS_TOKEN=check "$NATS_SERVER" -t -c "$OUT/split/$s/nats.conf"
    fi
  done
else
  log "nats-server not installed: NATS config syntax NOT checked (scripts/test.sh installs it)"
fi
if command -v promtool >/dev/null 2>&1; then
  log "promtool check config: deploy/compose/prometheus.yml"
  sed "s#/etc/prometheus/alerts.yml#$ROOT/deploy/prometheus/alerts.yml#" deploy/compose/prometheus.yml \
    > "$OUT/prometheus.yml"
  promtool check config "$OUT/prometheus.yml"
else
  log "promtool not installed: compose Prometheus config NOT checked"
fi

# --- 6. assertions on the rendered output ---------------------------------------------------
for t in helm/tests/test_*.py; do
  log "$t"
  HERALD_RENDER_DIR="$OUT/render" "$VENV/bin/python" "$t" -v || die "$t"
done

log "helm chart checks passed"
