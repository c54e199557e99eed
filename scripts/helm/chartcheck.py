#!/usr/bin/env python3
"""Helpers for scripts/check-helm.sh (run with the helm venv's Python).

  chartcheck.py split RENDERED.yaml OUT_DIR
      Writes OUT_DIR/builtin.yaml (kinds kubernetes-validate knows) and OUT_DIR/crds.yaml
      (ServiceMonitor, PrometheusRule, HTTPRoute); prints the kinds found. Unknown kinds fail.
  chartcheck.py crds CRDS.yaml
      Structural check of the custom resources. kubernetes-validate only ships the built-in
      Kubernetes schemas, so these are checked against the minimal JSON schemas below (the
      fields the chart renders, typed, with unknown fields refused where the CRD refuses them).
  chartcheck.py bad CHART VALUES_DIR RENDER_PY
      Every VALUES_DIR/*.yaml must make rendering fail, with the text named on its first line:
      `# expect-schema: TEXT` (values.schema.json itself must reject the merged values, checked
      here with jsonschema as well) or `# expect-template: TEXT` (a cross-field `fail` in the
      templates; the schema alone accepts it).
  chartcheck.py package CHART OUT_DIR REPO_ROOT
      `helm package`; the archive must hold files/alerts.yml and files/grafana/*.json as regular
      files equal to deploy/prometheus/alerts.yml and deploy/grafana/*.json (symlinks followed).
  chartcheck.py compose deploy/compose.yaml
      3 Herald nodes (HERALD_BROKER=nats, URL naming the 3 NATS services), 3 NATS, Prometheus,
      Grafana mounting deploy/grafana; every bind-mount source exists.
  chartcheck.py dockerfile DOCKERFILE CONTEXT_DIR
      Structural lint: multi-stage, the build stage runs `cargo build --release --locked -p herald`,
      every COPY source exists in the context, every file a crate embeds (include_str!) is
      copied into the build stage, the final USER is numeric and non-root, EXPOSE lists 8080
      8081 50051 9464, ENTRYPOINT/CMD run herald.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import yaml

CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}
BUILTIN_KINDS = {
    "ConfigMap", "Service", "ServiceAccount", "Deployment", "StatefulSet", "PodDisruptionBudget",
    "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy", "Secret",
}

NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
META = {
    "type": "object", "required": ["name", "namespace"],
    "properties": {"name": NAME, "namespace": NAME, "labels": LABELS, "annotations": LABELS},
}
PROM_DURATION = {"type": "string", "pattern": r"^((\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?|0)$"}
GW_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}


def crd_schema(api, kind, spec):
    return {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": META,
                       "spec": spec},
    }


SCHEMAS = {
    # monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator), the fields used.
    "ServiceMonitor": crd_schema("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {
            "selector": {"type": "object", "additionalProperties": False, "minProperties": 1,
                         "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}}},
            "namespaceSelector": {"type": "object", "additionalProperties": False,
                                  "properties": {"any": {"type": "boolean"},
                                                 "matchNames": {"type": "array", "items": NAME}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                               "interval": PROM_DURATION, "scrapeTimeout": PROM_DURATION,
                               "scheme": {"enum": ["http", "https"]}}}},
            "jobLabel": {"type": "string"},
        }}),
    # monitoring.coreos.com/v1 PrometheusRule: groups of alerting/recording rules.
    "PrometheusRule": crd_schema("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": PROM_DURATION, "limit": {"type": "integer"},
                "query_offset": PROM_DURATION, "labels": LABELS,
                "partial_response_strategy": {"type": "string"},
                "rules": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {
                        "alert": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                        "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                        "expr": {"type": ["string", "integer"]},
                        "for": PROM_DURATION, "keep_firing_for": PROM_DURATION,
                        "labels": LABELS, "annotations": LABELS}}}}}}}}),
    # gateway.networking.k8s.io/v1 HTTPRoute, the fields used.
    "HTTPRoute": crd_schema("gateway.networking.k8s.io/v1", "HTTPRoute", {
        "type": "object", "required": ["parentRefs", "rules"], "additionalProperties": False,
        "properties": {
            "parentRefs": {"type": "array", "minItems": 1, "maxItems": 32, "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": NAME, "namespace": NAME, "sectionName": NAME,
                               "group": {"type": "string"}, "kind": {"type": "string"},
                               "port": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
            "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string"}},
            "rules": {"type": "array", "minItems": 1, "maxItems": 16, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "matches": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"path": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                           "value": {"type": "string", "pattern": "^/"}}}}}},
                    "backendRefs": {"type": "array", "items": {
                        "type": "object", "required": ["name", "port"], "additionalProperties": False,
                        "properties": {"name": NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                       "weight": {"type": "integer"}}}},
                    "timeouts": {"type": "object", "additionalProperties": False,
                                 "properties": {"request": GW_DURATION, "backendRequest": GW_DURATION}},
                }}},
        }}),
}


def cmd_split(rendered, out_dir):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    os.makedirs(out_dir, exist_ok=True)
    builtin = [d for d in docs if d["kind"] in BUILTIN_KINDS]
    crds = [d for d in docs if d["kind"] in CRD_KINDS]
    unknown = sorted({d["kind"] for d in docs} - BUILTIN_KINDS - CRD_KINDS)
    if unknown:
        sys.exit(f"split: kinds with no validation route: {unknown}")
    with open(os.path.join(out_dir, "builtin.yaml"), "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    with open(os.path.join(out_dir, "crds.yaml"), "w") as f:
        yaml.safe_dump_all(crds, f, sort_keys=False)
    kinds = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    print(" ".join(f"{k}x{n}" for k, n in sorted(kinds.items())))


def cmd_crds(path):
    import jsonschema
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    bad = 0
    for d in docs:
        v = jsonschema.Draft7Validator(SCHEMAS[d["kind"]])
        errs = sorted(v.iter_errors(d), key=lambda e: list(e.path))
        for e in errs:
            bad += 1
            print(f"  {d['kind']}/{d['metadata'].get('name')}: at /{'/'.join(map(str, e.path))}: "
                  f"{e.message}", file=sys.stderr)
        if not errs:
            print(f"  {d['kind']}/{d['metadata']['name']}: structure ok")
    if bad:
        sys.exit(f"crds: {bad} error(s)")


def merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v
    return a


def cmd_bad(chart, values_dir, render_py):
    import jsonschema
    schema = json.load(open(os.path.join(chart, "values.schema.json")))
    defaults = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    failures = 0
    files = sorted(f for f in os.listdir(values_dir) if f.endswith(".yaml"))
    if not files:
        sys.exit(f"bad: no values files in {values_dir}")
    for name in files:
        path = os.path.join(values_dir, name)
        first = open(path).readline().strip()
        m = re.match(r"^# expect-(schema|template): (.+)$", first)
        if not m:
            sys.exit(f"bad: {name}: first line must be '# expect-schema: TEXT' or '# expect-template: TEXT'")
        how, text = m.group(1), m.group(2)
        r = subprocess.run([sys.executable, render_py, chart, "-f", path, "-o", os.devnull],
                           capture_output=True, text=True, timeout=120)
        out = r.stdout + r.stderr
        merged = merge(json.loads(json.dumps(defaults)), yaml.safe_load(open(path)) or {})
        schema_errs = list(jsonschema.Draft7Validator(schema).iter_errors(merged))
        problems = []
        if r.returncode == 0:
            problems.append("rendered without error")
        elif text not in out:
            problems.append(f"error does not mention {text!r}: {out.strip().splitlines()[-3:]}")
        if how == "schema" and not schema_errs:
            problems.append("values.schema.json accepts it")
        if how == "template" and schema_errs:
            problems.append(f"expected the schema to accept it (template check), schema says {schema_errs[0].message}")
        if problems:
            failures += 1
            print(f"  FAIL {name}: {'; '.join(problems)}", file=sys.stderr)
        else:
            print(f"  rejected as expected ({how}): {name}")
    if failures:
        sys.exit(f"bad values: {failures} not rejected as expected")


def cmd_dockerfile(dockerfile, context):
    lines, cur = [], ""
    for raw in open(dockerfile):
        s = raw.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append((cur + s).strip())
        cur = ""
    errors = []
    stages, users, exposed = [], [], set()
    entry = cmd = None
    build_cmds = []
    copies = []
    for ln in lines:
        instr, _, rest = ln.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"image": m.group(1), "name": m.group(2), "runs": [], "user": None})
        elif not stages and instr not in ("ARG",):
            errors.append(f"{instr} before FROM")
        elif instr == "RUN":
            stages[-1]["runs"].append(rest)
        elif instr == "COPY":
            args = shlex.split(rest)
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            copies.append((len(stages) - 1, flags, paths[:-1], paths[-1]))
        elif instr == "USER":
            stages[-1]["user"] = rest.strip()
        elif instr == "EXPOSE":
            exposed |= {p.split("/")[0] for p in rest.split()}
        elif instr == "ENTRYPOINT":
            entry = json.loads(rest)
        elif instr == "CMD":
            cmd = json.loads(rest)
    if len(stages) < 2:
        errors.append(f"expected a multi-stage build, found {len(stages)} stage(s)")
    stage_names = {s["name"] for s in stages if s["name"]}
    for idx, flags, srcs, dest in copies:
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if from_stage:
            if from_stage not in stage_names:
                errors.append(f"COPY --from={from_stage}: no such stage")
            continue
        for src in srcs:
            if not os.path.exists(os.path.join(context, src)):
                errors.append(f"COPY source {src} does not exist in the build context")
    build = stages[0] if stages else {"runs": []}
    if not any("cargo build --release --locked -p herald" in r for r in build["runs"]):
        errors.append("the build stage does not run `cargo build --release --locked -p herald`")
    final = stages[-1] if stages else {"user": None, "image": ""}
    user = final["user"]
    if not user:
        errors.append("the final stage has no USER (would run as root)")
    else:
        uid = user.split(":")[0]
        if not uid.isdigit():
            errors.append(f"USER {user}: use a numeric uid so Kubernetes can check runAsNonRoot")
        elif int(uid) == 0:
            errors.append("USER is root")
    # Files the build embeds (include_str!/include_bytes! in the crates) must be in the build
    # stage: a path outside every COPY source fails `cargo build` in the image only.
    build_srcs = [os.path.normpath(src) for idx, flags, srcs, _ in copies if idx == 0
                  and not any(f.startswith("--from=") for f in flags) for src in srcs]
    for root, _, files in os.walk(os.path.join(context, "crates")):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text):
                target = os.path.normpath(os.path.relpath(os.path.join(root, inc), context))
                if not any(target == s or target.startswith(s + os.sep) for s in build_srcs):
                    errors.append(f"{os.path.relpath(path, context)} embeds {target}, which no COPY of the build stage brings in")
    # Clients, the HTTP/JSON API, gRPC, admin.
    want = {"8080", "8081", "50051", "9464"}
    if exposed != want:
        errors.append(f"EXPOSE lists {sorted(exposed)}, want {sorted(want)}")
    argv = (entry or []) + (cmd or [])
    if not argv or not any(a.endswith("/herald") or a == "herald" for a in argv) or "serve" not in argv:
        errors.append(f"ENTRYPOINT/CMD do not run `herald serve`: {argv}")
    # The chart's preStop hook runs `sleep`: the runtime image must have it (no distroless).
    if "distroless" in final["image"] or "scratch" == final["image"]:
        errors.append("the runtime image has no `sleep` for the chart's preStop hook")
    # The chart runs the container as uid 10001; the image's user must agree.
    if user and user.split(":")[0] != "10001":
        errors.append(f"USER {user} differs from the chart's runAsUser 10001")
    if errors:
        for e in errors:
            print(f"  Dockerfile: {e}", file=sys.stderr)
        sys.exit(f"dockerfile: {len(errors)} problem(s)")
    print(f"  Dockerfile ok: {len(stages)} stages ({', '.join(s['image'] for s in stages)}), "
          f"USER {user}, EXPOSE {' '.join(sorted(exposed, key=int))}, {len(copies)} COPY checked")


def cmd_compose(compose_file):
    """deploy/compose.yaml: 3 Herald nodes on NATS, 3 NATS servers, Prometheus, Grafana; every
    bind-mounted source exists; Herald nodes get the NATS cluster URL."""
    base = os.path.dirname(os.path.abspath(compose_file))
    doc = yaml.safe_load(open(compose_file))
    svcs = doc["services"]
    errors = []
    heralds = [n for n, s in svcs.items() if s.get("image", "").startswith("herald")]
    nats = [n for n, s in svcs.items() if s.get("image", "").startswith("nats:")]
    if len(heralds) != 3:
        errors.append(f"want 3 Herald nodes, found {heralds}")
    if len(nats) != 3:
        errors.append(f"want 3 NATS servers, found {nats}")
    for want in ("prometheus", "grafana"):
        if want not in svcs:
            errors.append(f"no {want} service")
    for n in heralds:
        env = svcs[n].get("environment", {})
        if env.get("HERALD_BROKER") != "nats":
            errors.append(f"{n}: HERALD_BROKER is not nats")
        hosts = {u.split("://")[1].split(":")[0] for u in env.get("HERALD_NATS_URL", "").split(",") if u}
        if hosts != set(nats):
            errors.append(f"{n}: HERALD_NATS_URL names {sorted(hosts)}, want {sorted(nats)}")
        b = svcs[n].get("build", {})
        if os.path.normpath(os.path.join(base, b.get("context", "."), b.get("dockerfile", ""))) != \
                os.path.normpath(os.path.join(base, "Dockerfile")):
            errors.append(f"{n}: does not build deploy/Dockerfile")
    for n, s in svcs.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("."):
                if not os.path.exists(os.path.join(base, src)):
                    errors.append(f"{n}: mount source {src} does not exist")
    dash = [v for v in svcs.get("grafana", {}).get("volumes", []) if str(v).startswith("./grafana:")]
    if not dash:
        errors.append("grafana does not mount ./grafana (deploy/grafana dashboards)")
    if errors:
        for e in errors:
            print(f"  compose: {e}", file=sys.stderr)
        sys.exit(f"compose: {len(errors)} problem(s)")
    print(f"  compose ok: herald {heralds}, nats {nats}, prometheus, grafana; mounts exist")


def cmd_package(chart, out_dir, root):
    """`helm package` (Helm's Go library) and check the archive carries the symlinked files as
    regular files with the bytes of deploy/prometheus/alerts.yml and deploy/grafana/*.json."""
    import asyncio
    import glob
    import tarfile
    import helm_sdkpy as h
    os.makedirs(out_dir, exist_ok=True)
    tgz = asyncio.run(h.Package(h.Configuration()).run(os.path.abspath(chart), os.path.abspath(out_dir)))
    want = {"herald/files/alerts.yml": os.path.join(root, "deploy", "prometheus", "alerts.yml")}
    for f in glob.glob(os.path.join(root, "deploy", "grafana", "*.json")):
        want[f"herald/files/grafana/{os.path.basename(f)}"] = f
    errors = []
    with tarfile.open(tgz) as t:
        names = set(t.getnames())
        for member, src in sorted(want.items()):
            if member not in names:
                errors.append(f"{member} missing from {os.path.basename(tgz)}")
                continue
            info = t.getmember(member)
            if not info.isfile():
                errors.append(f"{member} is not a regular file in the package")
                continue
            with open(src, "rb") as f:
                if t.extractfile(info).read() != f.read():
                    errors.append(f"{member} differs from {os.path.relpath(src, root)}")
    if errors:
        for e in errors:
            print(f"  package: {e}", file=sys.stderr)
        sys.exit(f"package: {len(errors)} problem(s)")
    print(f"  {os.path.basename(tgz)}: {len(want)} symlinked files packaged with their contents")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"split": cmd_split, "crds": cmd_crds, "bad": cmd_bad, "dockerfile": cmd_dockerfile,
     "compose": cmd_compose, "package": cmd_package}[cmd](*args)


if __name__ == "__main__":
    main()
