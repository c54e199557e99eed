#!/usr/bin/env python3
"""Copied from the shared peers kit (helm_render.py) into the project so CI needs nothing outside
the repository; scripts/check-helm.sh runs it.

`helm lint` + `helm template` without a helm binary and without a cluster, via PyPI helm-sdkpy
(the Helm v4 Go library as libhelm_sdkpy.so). Run it with the venv that start via helm_venv.sh makes:

  /tmp/helm-venv/bin/python helm_render.py CHART_DIR [-f values.yaml|.json]... [--set a.b=v]...
                                          [--name REL] [--namespace NS] [-o OUT.yaml] [--lint-only]

- Lint: helm_sdkpy.Lint (renders templates; reports failing file paths, but its error text is
  lost in the JSON, "Err": {}), exit 1 on any Severity>=3 message.
- Render: helm_sdkpy has no dry-run/client-only option and Install insists on a reachable cluster,
  so this starts a ~fake Kubernetes API on 127.0.0.1 (in a thread) that answers discovery and
  accepts every create; Install(wait=False) then renders and returns the release manifest,
  which is printed (or written to -o). Template errors come back with full helm messages.
"""
import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import helm_sdkpy as h


def _res(name, kind, ns=True):
    return {"name": name, "singularName": "", "namespaced": ns, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}


CORE = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    _res("secrets", "Secret"), _res("services", "Service"), _res("configmaps", "ConfigMap"),
    _res("serviceaccounts", "ServiceAccount"), _res("pods", "Pod"),
    _res("persistentvolumeclaims", "PersistentVolumeClaim"), _res("namespaces", "Namespace", False)]}
GROUPS = {
    "apps/v1": [_res("deployments", "Deployment"), _res("statefulsets", "StatefulSet"),
                _res("daemonsets", "DaemonSet")],
    "policy/v1": [_res("poddisruptionbudgets", "PodDisruptionBudget")],
    "autoscaling/v2": [_res("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    "networking.k8s.io/v1": [_res("ingresses", "Ingress"), _res("networkpolicies", "NetworkPolicy")],
    "rbac.authorization.k8s.io/v1": [_res("roles", "Role"), _res("rolebindings", "RoleBinding"),
                                     _res("clusterroles", "ClusterRole", False),
                                     _res("clusterrolebindings", "ClusterRoleBinding", False)],
    "monitoring.coreos.com/v1": [_res("servicemonitors", "ServiceMonitor"),
                                 _res("podmonitors", "PodMonitor"),
                                 _res("prometheusrules", "PrometheusRule")],
    "batch/v1": [_res("jobs", "Job"), _res("cronjobs", "CronJob")],
    # Added for Herald's chart (HTTPRoute); the rest is /work/shared/peers/helm_render.py as is.
    "gateway.networking.k8s.io/v1": [_res("httproutes", "HTTPRoute"), _res("grpcroutes", "GRPCRoute"),
                                     _res("gateways", "Gateway")],
}


def _group_list():
    out = []
    for gv in GROUPS:
        g, v = gv.split("/")
        out.append({"name": g, "versions": [{"groupVersion": gv, "version": v}],
                    "preferredVersion": {"groupVersion": gv, "version": v}})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


class FakeKube(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: dict = {}

    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def _obj(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if "protobuf" in (self.headers.get("Content-Type") or ""):  # helm's release Secret
            m = re.search(rb"(sh\.helm\.release\.v1\.[A-Za-z0-9.-]+)", body)
            return {"kind": "Secret", "apiVersion": "v1",
                    "metadata": {"name": m.group(1).decode() if m else "x"}}
        return json.loads(body or b"{}")

    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
        if p == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if p == "/api/v1":
            return self._send(200, CORE)
        if p == "/apis":
            return self._send(200, _group_list())
        if p.startswith("/apis/") and p[6:] in GROUPS:
            return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": p[6:], "resources": GROUPS[p[6:]]})
        if p in self.store:
            return self._send(200, self.store[p])
        if p.endswith("/secrets"):
            return self._send(200, {"kind": "SecretList", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "1"}, "items": []})
        return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"})

    def do_POST(self):
        obj = self._obj()
        md = obj.setdefault("metadata", {})
        md["resourceVersion"] = "1"
        md["uid"] = "00000000-0000-0000-0000-%012d" % len(self.store)
        self.store[self.path.split("?")[0] + "/" + md.get("name", "x")] = obj
        return self._send(201, obj)

    def do_PUT(self):
        obj = self._obj()
        self.store[self.path.split("?")[0]] = obj
        return self._send(200, obj)

    def do_PATCH(self):
        self._obj()
        return self._send(200, self.store.get(self.path.split("?")[0], {}))

    def do_DELETE(self):
        return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def load_values(files, sets):
    vals: dict = {}

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v

    for f in files:
        txt = open(f).read()
        if f.endswith(".json"):
            merge(vals, json.loads(txt))
        else:
            import yaml  # pip install pyyaml
            merge(vals, yaml.safe_load(txt) or {})
    for s in sets:
        key, _, raw = s.partition("=")
        try:
            v = json.loads(raw)
        except ValueError:
            v = raw
        cur = vals
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return vals


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default="rel")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("-o", "--output")
    ap.add_argument("--lint-only", action="store_true")
    ap.add_argument("--lookup", action="append", default=[],
                    help="YAML of objects already in the fake cluster (what `lookup` finds)")
    ap.add_argument("--notes", help="write the rendered NOTES.txt here")
    a = ap.parse_args()
    chart = os.path.abspath(a.chart)
    rc = 0

    lint_cfg = h.Configuration(namespace=a.namespace)
    lint = asyncio.run(h.Lint(lint_cfg).run(chart))
    sev = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    for m in lint.get("Messages") or []:
        print(f"lint {sev.get(m['Severity'], m['Severity'])}: {m['Path']} {m.get('Err') or ''}",
              file=sys.stderr)
        if m["Severity"] >= 3:
            rc = 1
    print(f"lint: {'FAILED' if rc else 'ok'} ({lint.get('TotalChartsLinted')} chart)", file=sys.stderr)
    if a.lint_only:
        return rc

    for f in a.lookup:
        import yaml
        for obj in yaml.safe_load_all(open(f)):
            if obj:
                md = obj["metadata"]
                FakeKube.store[f"/api/v1/namespaces/{md.get('namespace', a.namespace)}/"
                               f"{obj['kind'].lower()}s/{md['name']}"] = obj
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeKube)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as kc:
        kc.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: fake, user: {{token: x}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {a.namespace}}}}}]
current-context: fake
""")
    try:
        cfg = h.Configuration(namespace=a.namespace, kubeconfig=kc.name)
        rel = asyncio.run(h.Install(cfg).run(a.name, chart, values=load_values(a.values, a.set),
                                             wait=False, timeout=30))
    except h.HelmError as e:
        print(f"render FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        os.unlink(kc.name)
        srv.shutdown()
    manifest = rel.get("manifest", "")
    if a.notes:
        with open(a.notes, "w") as f:
            f.write((rel.get("info") or {}).get("notes", ""))
    if a.output:
        with open(a.output, "w") as f:
            f.write(manifest)
    else:
        sys.stdout.write(manifest)
    print(f"render: ok ({manifest.count('# Source:')} documents)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
