#!/usr/bin/env python3
"""Assertions on the Herald chart's rendered manifests.

scripts/check-helm.sh renders the chart once per scenario into $HERALD_RENDER_DIR/<name>.yaml
(default.yaml, all-on.yaml, external-nats.yaml, memory.yaml, nats-single.yaml) and then runs
this file with the venv's Python:

    HERALD_RENDER_DIR=target/helm-check/render python helm/tests/test_chart.py -v

The expected values come from the sources of truth, never from the chart: ports from the
DEFAULT_*_ADDR constants of crates/herald/src/config.rs, probe paths from the admin router,
dashboards from deploy/grafana/*.json (byte for byte), alert rules from
deploy/prometheus/alerts.yml.
"""
import glob
import hashlib
import os
import re
import sys
import unittest
from urllib.parse import urlparse

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RENDER = os.environ.get("HERALD_RENDER_DIR", os.path.join(ROOT, "target", "helm-check", "render"))
CHART = os.path.join(ROOT, "helm", "herald")
SCENARIOS = ["default", "all-on", "external-nats", "memory", "nats-single", "insecure"]
NAMESPACE = os.environ.get("HERALD_RENDER_NAMESPACE", "default")


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def load(scenario):
    path = os.path.join(RENDER, f"{scenario}.yaml")
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    out = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return out


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def herald_deployment(docs):
    return one(docs, "Deployment")


def herald_container(docs):
    pod = herald_deployment(docs)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "herald")


def herald_env(docs):
    """The environment a Herald container gets: ConfigMap (envFrom) overlaid by env."""
    c = herald_container(docs)
    env = {}
    for src in c.get("envFrom", []):
        cm = one(docs, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm["data"])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def binary_defaults():
    """{'HTTP': 8080, 'GRPC': 50051, 'ADMIN': 9464} parsed from config.rs."""
    src = read(os.path.join(ROOT, "crates", "herald", "src", "config.rs"))
    found = dict(
        (name, int(port))
        for name, port in re.findall(r'const DEFAULT_(\w+)_ADDR: &str = "[^"]*:(\d+)";', src)
    )
    for k in ("HTTP", "GRPC", "ADMIN"):
        assert k in found, f"DEFAULT_{k}_ADDR not found in config.rs"
    return found


def admin_routes():
    """Paths routed by the admin server (crates/herald/src/admin.rs)."""
    src = read(os.path.join(ROOT, "crates", "herald", "src", "admin.rs"))
    return set(re.findall(r'\.route\(\s*"([^"]+)"', src))


def duration_seconds(text):
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for num, unit in re.findall(r"(\d+)(ms|s|m|h)", text):
        total += int(num) * units[unit]
    assert total > 0, f"unparsed duration {text!r}"
    return total


class Scenarios(unittest.TestCase):
    """Checks that hold for every rendered scenario."""

    def test_container_ports_match_binary_defaults(self):
        want = binary_defaults()
        for s in SCENARIOS:
            with self.subTest(scenario=s):
                docs = load(s)
                ports = {p["name"]: p["containerPort"] for p in herald_container(docs)["ports"]}
                self.assertEqual(ports, {"http": want["HTTP"], "grpc": want["GRPC"],
                                         "api": want["API"], "admin": want["ADMIN"]})
                env = herald_env(docs)
                # The binary listens where the container ports say.
                self.assertEqual(env["HERALD_HTTP_ADDR"], f"0.0.0.0:{want['HTTP']}")
                self.assertEqual(env["HERALD_GRPC_ADDR"], f"0.0.0.0:{want['GRPC']}")
                self.assertEqual(env["HERALD_API_ADDR"], f"0.0.0.0:{want['API']}")
                self.assertEqual(env["HERALD_ADMIN_ADDR"], f"0.0.0.0:{want['ADMIN']}")

    def test_services_target_named_container_ports(self):
        for s in SCENARIOS:
            with self.subTest(scenario=s):
                docs = load(s)
                names = {p["name"] for p in herald_container(docs)["ports"]}
                sel = herald_deployment(docs)["spec"]["template"]["metadata"]["labels"]
                svcs = [d for d in find(docs, "Service")
                        if all(sel.get(k) == v for k, v in d["spec"]["selector"].items())]
                by_target = {p["targetPort"]: p for svc in svcs for p in svc["spec"]["ports"]}
                self.assertEqual(set(by_target), names)
                self.assertIn(by_target["http"]["appProtocol"], ("http", "kubernetes.io/ws"))
                self.assertIn(by_target["grpc"]["appProtocol"],
                              ("grpc", "kubernetes.io/h2c", "kubernetes.io/h2"))

    def test_probes_hit_admin_routes_on_admin_port(self):
        routes = admin_routes()
        self.assertTrue({"/healthz", "/readyz", "/metrics"} <= routes, routes)
        admin = binary_defaults()["ADMIN"]
        for s in SCENARIOS:
            with self.subTest(scenario=s):
                c = herald_container(load(s))
                named = {p["name"]: p["containerPort"] for p in c["ports"]}
                want = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                        "readinessProbe": "/readyz"}
                for probe, path in want.items():
                    get = c[probe]["httpGet"]
                    self.assertEqual(get["path"], path, probe)
                    self.assertIn(get["path"], routes)
                    port = named.get(get["port"], get["port"])
                    self.assertEqual(port, admin, f"{probe} is not on the admin port")
                st = c["startupProbe"]
                # Time to reach NATS (Herald retries it) before the kubelet gives up.
                self.assertGreaterEqual(st["periodSeconds"] * st["failureThreshold"], 120)

    def test_grace_period_exceeds_prestop_plus_drain(self):
        for s in SCENARIOS:
            with self.subTest(scenario=s):
                docs = load(s)
                pod = herald_deployment(docs)["spec"]["template"]["spec"]
                c = herald_container(docs)
                drain = duration_seconds(herald_env(docs)["HERALD_DRAIN_TIMEOUT"])
                cmd = c["lifecycle"]["preStop"]["exec"]["command"]
                self.assertEqual(cmd[0], "sleep")
                sleep = float(cmd[1])
                grace = pod["terminationGracePeriodSeconds"]
                self.assertGreater(grace, drain + sleep,
                                   f"grace {grace}s <= preStop {sleep}s + drain {drain}s")

    def test_pods_are_locked_down(self):
        for s in SCENARIOS:
            with self.subTest(scenario=s):
                docs = load(s)
                for wl in find(docs, "Deployment") + find(docs, "StatefulSet"):
                    pod = wl["spec"]["template"]["spec"]
                    self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                    self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
                    self.assertFalse(pod.get("automountServiceAccountToken", True))
                    self.assertTrue(pod.get("topologySpreadConstraints"), wl["metadata"]["name"])
                    for c in pod["containers"]:
                        sc = c["securityContext"]
                        self.assertTrue(sc["readOnlyRootFilesystem"], c["name"])
                        self.assertFalse(sc["allowPrivilegeEscalation"], c["name"])
                        self.assertEqual(sc["capabilities"]["drop"], ["ALL"], c["name"])
                        self.assertTrue(c.get("resources", {}).get("requests"), c["name"])

    def test_config_checksum_annotation_follows_the_configmap(self):
        sums = {}
        for s in SCENARIOS:
            docs = load(s)
            ann = herald_deployment(docs)["spec"]["template"]["metadata"]["annotations"]
            self.assertRegex(ann["checksum/config"], r"^[0-9a-f]{64}$")
            cm = one(docs, "ConfigMap", herald_container(docs)["envFrom"][0]["configMapRef"]["name"])
            sums[s] = (ann["checksum/config"], tuple(sorted(cm["data"].items())))
        # Different configuration, different checksum (so pods roll); same, same.
        by_cfg = {}
        for s, (cs, data) in sums.items():
            by_cfg.setdefault(data, set()).add(cs)
        for data, checksums in by_cfg.items():
            self.assertEqual(len(checksums), 1)
        self.assertEqual(len({cs for cs, _ in sums.values()}), len(by_cfg))

    def test_everything_is_namespaced_and_labelled(self):
        for s in SCENARIOS:
            with self.subTest(scenario=s):
                for d in load(s):
                    md = d["metadata"]
                    self.assertIn("namespace", md, d["kind"])
                    self.assertEqual(md["labels"].get("app.kubernetes.io/managed-by"), "Helm")


class Names(unittest.TestCase):
    def test_names_fit_kubernetes_limits(self):
        """Every scenario, including all-on rendered with a 48-character release name."""
        dns1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
        paths = sorted(glob.glob(os.path.join(RENDER, "*.yaml")))
        self.assertIn(os.path.join(RENDER, "long-name.yaml"), paths)
        for path in paths:
            docs = load(os.path.basename(path)[:-5])
            keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
            self.assertEqual(len(keys), len(set(keys)), f"duplicate objects in {path}")
            for d in docs:
                name = d["metadata"]["name"]
                with self.subTest(file=os.path.basename(path), kind=d["kind"], name=name):
                    self.assertLessEqual(len(name), 63)
                    if d["kind"] == "Service":
                        self.assertRegex(name, dns1035)
                    if d["kind"] == "StatefulSet":
                        # Pod names get "-N"; the controller-revision-hash label needs room.
                        self.assertLessEqual(len(name), 52)
                        self.assertLessEqual(len(d["spec"]["serviceName"]), 63)
                    for k, v in d["metadata"].get("labels", {}).items():
                        self.assertLessEqual(len(v), 63, k)


    def test_release_namespace_everywhere(self):
        """long-name.yaml is rendered in namespace push-prod: nothing may say "default"."""
        docs = load("long-name")
        for d in docs:
            self.assertEqual(d["metadata"]["namespace"], "push-prod", f"{d['kind']}/{d['metadata']['name']}")
        host = urlparse(herald_env(docs)["HERALD_NATS_URL"]).hostname
        self.assertTrue(host.endswith(".push-prod.svc.cluster.local"), host)
        sts = one(docs, "StatefulSet")
        conf = one(docs, "ConfigMap", sts["metadata"]["name"])["data"]["nats.conf"]
        self.assertEqual(len(re.findall(r"\.push-prod\.svc\.cluster\.local:6222", conf)), 3)


class BundledNats(unittest.TestCase):
    def test_nats_url_points_at_the_bundled_nats_service(self):
        for s in ("default", "all-on", "nats-single"):
            with self.subTest(scenario=s):
                docs = load(s)
                env = herald_env(docs)
                self.assertEqual(env["HERALD_BROKER"], "nats")
                urls = env["HERALD_NATS_URL"].split(",")
                self.assertEqual(len(urls), 1)
                u = urlparse(urls[0])
                self.assertEqual(u.scheme, "nats")
                host = u.hostname.split(".")
                self.assertEqual(host[1:], [NAMESPACE, "svc", "cluster", "local"])
                svc = one(docs, "Service", host[0])
                sts = one(docs, "StatefulSet")
                pod_labels = sts["spec"]["template"]["metadata"]["labels"]
                for k, v in svc["spec"]["selector"].items():
                    self.assertEqual(pod_labels.get(k), v, "NATS Service does not select NATS pods")
                port = next(p for p in svc["spec"]["ports"] if p["port"] == u.port)
                nats_c = sts["spec"]["template"]["spec"]["containers"][0]
                named = {p["name"]: p["containerPort"] for p in nats_c["ports"]}
                self.assertEqual(named[port["targetPort"]], 4222)

    def test_three_node_jetstream_cluster(self):
        docs = load("default")
        sts = one(docs, "StatefulSet")
        n = sts["spec"]["replicas"]
        self.assertEqual(n, 3)
        self.assertEqual(herald_env(docs)["HERALD_NATS_REPLICAS"], "3")
        self.assertEqual(herald_env(docs)["HERALD_NATS_STORAGE"], "file")
        c = sts["spec"]["template"]["spec"]["containers"][0]
        self.assertTrue(c["image"].startswith("nats:2.10"), c["image"])
        # Routes name every pod through the StatefulSet's headless Service.
        headless = one(docs, "Service", sts["spec"]["serviceName"])
        self.assertEqual(headless["spec"]["clusterIP"], "None")
        conf = one(docs, "ConfigMap", sts["metadata"]["name"])["data"]["nats.conf"]
        name = sts["metadata"]["name"]
        for i in range(n):
            self.assertIn(f"nats://{name}-{i}.{headless['metadata']['name']}.{NAMESPACE}.svc"
                          f".cluster.local:6222", conf)
        self.assertRegex(conf, r"jetstream\s*\{[^}]*store_dir: /data")
        # JetStream file storage on a PVC mounted at the store_dir.
        claims = sts["spec"]["volumeClaimTemplates"]
        self.assertEqual([c["metadata"]["name"] for c in claims], ["data"])
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(mounts["data"], "/data")
        # Config changes roll the NATS pods.
        self.assertRegex(sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
                         r"^[0-9a-f]{64}$")

    def test_single_nats_has_no_cluster_and_stream_replicas_one(self):
        docs = load("nats-single")
        self.assertEqual(herald_env(docs)["HERALD_NATS_REPLICAS"], "1")
        sts = one(docs, "StatefulSet")
        self.assertNotIn("cluster {", one(docs, "ConfigMap", sts["metadata"]["name"])["data"]["nats.conf"])
        self.assertNotIn("volumeClaimTemplates", sts["spec"])

    def test_nats_token_reaches_both_sides(self):
        docs = load("all-on")
        sts = one(docs, "StatefulSet")
        conf = one(docs, "ConfigMap", sts["metadata"]["name"])["data"]["nats.conf"]
        self.assertIn("token: $NATS_TOKEN", conf)
        env = herald_env(docs)
        self.assertEqual(env["HERALD_NATS_TOKEN"]["secretKeyRef"]["name"], "herald-nats-token")


class ExternalAndMemory(unittest.TestCase):
    def test_external_nats(self):
        docs = load("external-nats")
        self.assertEqual(find(docs, "StatefulSet"), [])
        env = herald_env(docs)
        self.assertEqual(env["HERALD_BROKER"], "nats")
        self.assertEqual(env["HERALD_NATS_URL"], "tls://nats-0.messaging:4222,tls://nats-1.messaging:4222")
        self.assertEqual(env["HERALD_NATS_TLS"], "true")
        self.assertEqual(env["HERALD_NATS_PASSWORD"]["secretKeyRef"]["name"], "herald-nats-auth")
        c = herald_container(docs)
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(os.path.dirname(env["HERALD_NATS_CREDS"]), "/etc/herald/nats-creds")
        self.assertIn("/etc/herald/nats-creds", mounts)
        self.assertIn(os.path.dirname(env["HERALD_NATS_CA"]), mounts)

    def test_memory_broker_single_pod(self):
        docs = load("memory")
        env = herald_env(docs)
        self.assertEqual(env["HERALD_BROKER"], "memory")
        self.assertNotIn("HERALD_NATS_URL", env)
        self.assertEqual(herald_deployment(docs)["spec"]["replicas"], 1)
        self.assertEqual(find(docs, "StatefulSet"), [])


class Toggles(unittest.TestCase):
    def test_dashboards_configmaps_equal_deploy_grafana_byte_for_byte(self):
        files = sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "*.json")))
        self.assertTrue(files, "deploy/grafana/*.json: no dashboards")
        for s in ("all-on", "external-nats"):
            with self.subTest(scenario=s):
                docs = load(s)
                cms = [d for d in find(docs, "ConfigMap")
                       if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
                data = {}
                for cm in cms:
                    for k, v in cm["data"].items():
                        self.assertNotIn(k, data, f"dashboard {k} rendered twice")
                        data[k] = v
                self.assertEqual(sorted(data), [os.path.basename(f) for f in files])
                for f in files:
                    want = read(f, "rb")
                    got = data[os.path.basename(f)].encode("utf-8")
                    self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(want).hexdigest(),
                                     f"{os.path.basename(f)} differs from deploy/grafana")
        ns = {cm["metadata"]["namespace"] for cm in find(load("external-nats"), "ConfigMap")
              if cm["metadata"]["labels"].get("grafana_dashboard") == "1"}
        self.assertEqual(ns, {"monitoring"})

    def test_chart_files_are_symlinks_to_deploy(self):
        files = os.path.join(CHART, "files")
        alerts = os.path.join(files, "alerts.yml")
        grafana = os.path.join(files, "grafana")
        self.assertTrue(os.path.islink(alerts) and os.path.islink(grafana))
        self.assertEqual(os.path.realpath(alerts),
                         os.path.realpath(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")))
        self.assertEqual(os.path.realpath(grafana),
                         os.path.realpath(os.path.join(ROOT, "deploy", "grafana")))

    def test_prometheus_rule_is_deploy_prometheus_alerts(self):
        want = yaml.safe_load(read(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")))
        for s in ("all-on", "external-nats"):
            with self.subTest(scenario=s):
                rule = one(load(s), "PrometheusRule")
                self.assertEqual(rule["spec"]["groups"], want["groups"])

    def test_service_monitor_scrapes_admin_metrics(self):
        docs = load("all-on")
        sm = one(docs, "ServiceMonitor")
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        ep = sm["spec"]["endpoints"][0]
        self.assertEqual((ep["port"], ep["path"]), ("metrics", "/metrics"))
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [svc for svc in find(docs, "Service")
                   if all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        self.assertEqual(len(matched), 1)
        port = next(p for p in matched[0]["spec"]["ports"] if p["name"] == "metrics")
        named = {p["name"]: p["containerPort"] for p in herald_container(docs)["ports"]}
        self.assertEqual(named[port["targetPort"]], binary_defaults()["ADMIN"])

    def test_hpa_cpu_and_connections(self):
        docs = load("all-on")
        hpa = one(docs, "HorizontalPodAutoscaler")
        self.assertNotIn("replicas", herald_deployment(docs)["spec"])
        kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
        self.assertEqual(kinds["Resource"]["resource"]["name"], "cpu")
        self.assertEqual(kinds["Pods"]["pods"]["metric"]["name"], "herald_connections")
        self.assertGreaterEqual(hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 300)
        self.assertEqual(find(load("default"), "HorizontalPodAutoscaler"), [])

    def test_ingress_and_route_keep_streams_alive(self):
        docs = load("all-on")
        ing = one(docs, "Ingress")
        ann = ing["metadata"]["annotations"]
        self.assertGreaterEqual(int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]), 3600)
        self.assertGreaterEqual(int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]), 3600)
        self.assertEqual(ann["nginx.ingress.kubernetes.io/proxy-buffering"], "off")
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        client_svc = one(docs, "Service", backend["name"])
        self.assertEqual(client_svc["spec"]["ports"][0]["targetPort"], "http")
        route = one(docs, "HTTPRoute")
        t = route["spec"]["rules"][0]["timeouts"]
        for k in ("request", "backendRequest"):
            self.assertTrue(t[k] == "0s" or duration_seconds(t[k]) >= 3600, t)
        self.assertEqual(route["spec"]["rules"][0]["backendRefs"][0]["name"], client_svc["metadata"]["name"])

    def test_secrets_by_reference(self):
        docs = load("all-on")
        self.assertEqual(find(docs, "Secret"), [], "with existingSecret, the chart creates no Secret")
        env = herald_env(docs)
        c = herald_container(docs)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(os.path.dirname(env["HERALD_API_KEYS_FILE"]), mounts["api-keys"])
        self.assertEqual(os.path.dirname(env["HERALD_GRPC_TLS_CERT"]), mounts["grpc-tls"])
        vols = {v["name"]: v for v in herald_deployment(docs)["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["api-keys"]["secret"]["secretName"], "herald-api-keys")

    def test_default_generates_an_api_key_wired_into_the_pods(self):
        import base64
        for s in ("default", "memory", "nats-single", "external-nats"):
            docs = load(s)
            secret = one(docs, "Secret")
            self.assertEqual(secret["metadata"]["name"], "rel-herald-api-keys", s)
            key = base64.b64decode(secret["data"]["api-keys"]).decode().strip()
            self.assertRegex(key, r"^[A-Za-z0-9]{48}$", s)
            env = herald_env(docs)
            self.assertNotIn("HERALD_API_INSECURE", env, s)
            c = herald_container(docs)
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            self.assertEqual(env["HERALD_API_KEYS_FILE"], mounts["api-keys"] + "/api-keys", s)
            vols = {v["name"]: v for v in herald_deployment(docs)["spec"]["template"]["spec"]["volumes"]}
            self.assertEqual(vols["api-keys"]["secret"]["secretName"], "rel-herald-api-keys", s)
            self.assertEqual(env["HERALD_GRPC_ADDR"], "0.0.0.0:50051", s)
        # NOTES.txt tells how to read it (rendered by helm_render.py into the notes file).
        notes = os.path.join(RENDER, "default.notes.txt")
        if os.path.exists(notes):
            self.assertIn("get secret rel-herald-api-keys -o jsonpath='{.data.api-keys}' | base64 -d", read(notes))

    def test_upgrade_keeps_the_generated_key(self):
        import base64
        docs = load("upgrade")
        key = base64.b64decode(one(docs, "Secret")["data"]["api-keys"]).decode().strip()
        self.assertEqual(key, "kept-from-the-first-install-0123456789abcdef")

    def test_insecure_has_no_key_and_says_so(self):
        docs = load("insecure")
        self.assertEqual(find(docs, "Secret"), [])
        env = herald_env(docs)
        self.assertEqual(env["HERALD_API_INSECURE"], "true")
        self.assertNotIn("HERALD_API_KEYS_FILE", env)

    def test_client_auth_namespaces_and_proxies_reach_the_container(self):
        docs = load("all-on")
        env = herald_env(docs)
        self.assertEqual(env["HERALD_AUTH_HMAC_SECRET"],
                         {"secretKeyRef": {"name": "herald-client-auth", "key": "hmac-secret"}})
        c = herald_container(docs)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in herald_deployment(docs)["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(env["HERALD_AUTH_JWKS_FILE"], mounts["jwks"] + "/jwks.json")
        self.assertEqual(vols["jwks"]["secret"]["secretName"], "herald-client-jwks")
        self.assertEqual(env["HERALD_AUTH_ISSUER"], "https://auth.example.com")
        self.assertEqual(env["HERALD_AUTH_AUDIENCE"], "push")
        self.assertEqual(env["HERALD_ANONYMOUS"], "false")
        self.assertEqual(env["HERALD_WS_ORIGINS"], "https://app.example.com")
        self.assertEqual(env["HERALD_TRUSTED_PROXIES"], "10.0.0.0/8,fd00::/8")
        self.assertEqual(env["HERALD_FORWARDED_HEADER"], "x-forwarded-for")
        self.assertEqual(os.path.dirname(env["HERALD_CONFIG"]), mounts["config"])
        cm = one(docs, "ConfigMap", vols["config"]["configMap"]["name"])
        toml_text = cm["data"][os.path.basename(env["HERALD_CONFIG"])]
        import tomllib
        parsed = tomllib.loads(toml_text)
        self.assertEqual(parsed["namespaces"], {
            "public": {"anonymous": True},
            "chat": {"anonymous": False, "history_size": 50, "history_ttl": "1m"},
        })
        # None of it in the default render.
        env = herald_env(load("default"))
        for k in ("HERALD_AUTH_HMAC_SECRET", "HERALD_AUTH_JWKS_FILE", "HERALD_CONFIG",
                  "HERALD_TRUSTED_PROXIES", "HERALD_ANONYMOUS"):
            self.assertNotIn(k, env)

    def test_network_policies_cover_herald_and_nats(self):
        docs = load("all-on")
        pols = find(docs, "NetworkPolicy")
        self.assertEqual(len(pols), 2)
        nats_pol = next(p for p in pols if p["metadata"]["name"].endswith("-nats"))
        client_rule = next(r for r in nats_pol["spec"]["ingress"] if r["ports"][0]["port"] == "client")
        herald_labels = herald_deployment(docs)["spec"]["template"]["metadata"]["labels"]
        sel = client_rule["from"][0]["podSelector"]["matchLabels"]
        self.assertTrue(all(herald_labels.get(k) == v for k, v in sel.items()))

    def test_pdb_and_rolling_update_pacing(self):
        docs = load("default")
        dep = herald_deployment(docs)
        ru = dep["spec"]["strategy"]["rollingUpdate"]
        self.assertEqual(ru["maxUnavailable"], 0)
        self.assertGreater(dep["spec"]["minReadySeconds"], 0)
        pdbs = {p["metadata"]["name"]: p for p in find(docs, "PodDisruptionBudget")}
        self.assertEqual(len(pdbs), 2)


if __name__ == "__main__":
    missing = [s for s in SCENARIOS if not os.path.exists(os.path.join(RENDER, f"{s}.yaml"))]
    if missing:
        sys.exit(f"render first (scripts/check-helm.sh): missing {missing} in {RENDER}")
    unittest.main()
