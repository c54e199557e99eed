#!/usr/bin/env bash
# Copied from the shared peers kit (helm_venv.sh) into the project; scripts/check-helm.sh runs it.
# Make a venv with helm-sdkpy (Helm v4 Go library, linux-amd64 .so inside a py3-none-any wheel),
# plus pyyaml, kubernetes-validate and check-jsonschema, on the machine's Python 3.11.
# helm-sdkpy declares Requires-Python >=3.12 (plain `pip install helm-sdkpy` says "No matching
# distribution"), but installs and runs on 3.11 with --ignore-requires-python.
#   helm_venv.sh [VENV_DIR]      default /tmp/helm-venv; prints the venv path
set -euo pipefail
V=${1:-/tmp/helm-venv}
[ -x "$V/bin/python" ] || python3 -m venv "$V"
if ! "$V/bin/python" -c 'import helm_sdkpy' 2>/dev/null; then
  timeout 600 "$V/bin/pip" install -q --ignore-requires-python 'helm-sdkpy==0.1.32'
fi
"$V/bin/python" -c 'import yaml' 2>/dev/null || timeout 300 "$V/bin/pip" install -q pyyaml
[ -x "$V/bin/kubernetes-validate" ] || timeout 300 "$V/bin/pip" install -q kubernetes-validate
[ -x "$V/bin/check-jsonschema" ] || timeout 300 "$V/bin/pip" install -q check-jsonschema
echo "$V"
