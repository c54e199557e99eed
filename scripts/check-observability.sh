#!/usr/bin/env bash
# Static checks of Herald's observability assets (no Herald process needed):
#   - deploy/prometheus/alerts.yml parses (`promtool check rules`) and its unit tests pass
#     (`promtool test rules deploy/prometheus/alerts_test.yml`);
#   - every Grafana dashboard in deploy/grafana/ has a sound structure and PromQL the real
#     Prometheus parser accepts (scripts/observability/dashboard_check.py);
#   - every dashboard type-checks against npm @grafana/schema (scripts/observability/dashboard_tscheck.sh).
# The live check (every expression returns data from 2 nodes on NATS) is the cargo test
# tests/tests/observability.rs. Needs promtool (Debian `prometheus`), python3, npm.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
for tool in promtool python3 npm; do
  command -v "$tool" >/dev/null || { echo "$tool missing (apt-get install -y prometheus python3 npm)" >&2; exit 2; }
done

log "promtool check rules"
promtool check rules deploy/prometheus/alerts.yml
log "promtool test rules"
promtool test rules deploy/prometheus/alerts_test.yml
log "dashboards: structure and PromQL parse"
python3 scripts/observability/dashboard_check.py deploy/grafana/*.json
log "dashboards: type-check against @grafana/schema"
scripts/observability/dashboard_tscheck.sh deploy/grafana/*.json
