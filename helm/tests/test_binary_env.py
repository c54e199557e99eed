#!/usr/bin/env python3
"""The real `herald` binary accepts the environment the chart gives its pods.

For every rendered scenario, starts target/release/herald (built by scripts/check-helm.sh with
the Dockerfile's command) with the ConfigMap's HERALD_* plus the container's literal env, on free
127.0.0.1 ports instead of 0.0.0.0, and with files the chart mounts from Secrets replaced by
local ones. Then:
- memory broker: the probes' paths answer on the admin port (/healthz 200, /readyz 200) and
  /metrics carries herald_connections;
- NATS broker (pointed at a closed local port): /healthz answers 200 and /readyz 503 at once
  (the node serves before NATS is reached) and the process is still running after a few
  seconds, i.e. it accepted every setting and keeps retrying NATS;
- the chart's defaults (generated API key Secret): every RPC without the key is refused
  (UNAUTHENTICATED), with the key read from the rendered Secret it is served.
Client auth, JWKS and namespaces settings come from the rendered values: the HMAC secret
(a secretKeyRef) gets a literal stand-in, the JWKS file is crates/herald-auth/testdata/jwks.json
and the namespaces file is the rendered herald.toml itself.

    HERALD_RENDER_DIR=target/helm-check/render python helm/tests/test_binary_env.py -v
"""
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_chart import ROOT, RENDER, SCENARIOS, herald_container, herald_env, load, read  # noqa: E402

BINARY = os.environ.get("HERALD_BINARY", os.path.join(ROOT, "target", "release", "herald"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def generated_key(docs):
    """The API key in the chart's generated Secret, if it rendered one."""
    import base64
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-api-keys"):
            return base64.b64decode(d["data"]["api-keys"]).decode().strip()
    return None


def wait_health(proc, admin, logpath, test):
    deadline = time.time() + 20
    while time.time() < deadline and proc.poll() is None:
        try:
            return get(f"{admin}/healthz")[0]
        except OSError:
            time.sleep(0.05)
    test.fail(read(logpath)[-2000:])


@unittest.skipUnless(os.access(BINARY, os.X_OK), f"{BINARY} not built")
class BinaryAcceptsChartEnv(unittest.TestCase):
    def start(self, scenario, tmp):
        docs = load(scenario)
        env = {k: v for k, v in herald_env(docs).items() if isinstance(v, str)}
        # Secret-backed settings: literal stand-ins (the chart mounts files at these paths).
        for name in ("HERALD_GRPC_TLS_CERT", "HERALD_GRPC_TLS_KEY", "HERALD_NATS_CREDS", "HERALD_NATS_CA",
                     "HERALD_NATS_TLS"):
            env.pop(name, None)
        if "HERALD_API_KEYS_FILE" in env:
            path = os.path.join(tmp, "api-keys")
            generated = generated_key(docs)
            with open(path, "w") as f:
                if generated:
                    f.write(generated + "\n")
                else:
                    f.write("# one key per line, at least 16 characters\n" + "0f" * 16 + "\n")
            env["HERALD_API_KEYS_FILE"] = path
        if isinstance(herald_env(docs).get("HERALD_AUTH_HMAC_SECRET"), dict):
            env["HERALD_AUTH_HMAC_SECRET"] = "stand-in-hmac-secret-0123456789abcdef"
        if "HERALD_AUTH_JWKS_FILE" in env:
            env["HERALD_AUTH_JWKS_FILE"] = os.path.join(ROOT, "crates", "herald-auth", "testdata", "jwks.json")
        if "HERALD_CONFIG" in env:
            path = os.path.join(tmp, "herald.toml")
            cms = [d for d in docs if d["kind"] == "ConfigMap" and os.path.basename(env["HERALD_CONFIG"]) in d.get("data", {})]
            with open(path, "w") as f:
                f.write(cms[0]["data"][os.path.basename(env["HERALD_CONFIG"])])
            env["HERALD_CONFIG"] = path
        ports = {k: free_port() for k in ("HTTP", "GRPC", "API", "ADMIN")}
        for k, p in ports.items():
            env[f"HERALD_{k}_ADDR"] = f"127.0.0.1:{p}"
        if env.get("HERALD_BROKER") == "nats":
            env["HERALD_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
        env["HERALD_NODE_ID"] = f"check-{scenario}"
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, **env}
        log = open(os.path.join(tmp, "herald.log"), "w")
        proc = subprocess.Popen([BINARY, *herald_container(docs).get("args", ["serve"])], env=full,
                                stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (proc.poll() is None and proc.kill(), proc.wait(), log.close()))
        return proc, ports, os.path.join(tmp, "herald.log")

    def test_memory_scenario_serves_probe_paths(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc, ports, logpath = self.start("memory", tmp)
            admin = f"http://127.0.0.1:{ports['ADMIN']}"
            deadline = time.time() + 20
            status = None
            while time.time() < deadline and proc.poll() is None:
                try:
                    status, _ = get(f"{admin}/healthz")
                    break
                except OSError:
                    time.sleep(0.1)
            if proc.poll() is not None:
                self.fail(read(logpath)[-2000:])
            self.assertEqual(status, 200)
            self.assertEqual(get(f"{admin}/readyz")[0], 200)
            code, metrics = get(f"{admin}/metrics")
            self.assertEqual(code, 200)
            self.assertIn('herald_connections{protocol="websocket"}', metrics)

    def test_nats_scenarios_accept_every_setting(self):
        for s in SCENARIOS:
            if s == "memory":
                continue
            with self.subTest(scenario=s), tempfile.TemporaryDirectory() as tmp:
                proc, ports, logpath = self.start(s, tmp)
                admin = f"http://127.0.0.1:{ports['ADMIN']}"
                self.assertEqual(wait_health(proc, admin, logpath, self), 200)
                code, body = get(f"{admin}/readyz")
                self.assertEqual(code, 503, body)
                self.assertIn("NATS", body)
                time.sleep(2.5)
                if proc.poll() is not None:
                    self.fail(f"herald exited with the {s} env:\n" + read(logpath)[-2000:])
                proc.terminate()
                proc.wait(timeout=30)

    def cli(self, ports, args, key=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "HERALD_GRPC_URL": f"http://127.0.0.1:{ports['GRPC']}"}
        if key:
            env["HERALD_API_KEY"] = key
        r = subprocess.run([BINARY, *args], env=env, capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    def test_chart_defaults_every_rpc_needs_the_generated_key(self):
        calls = [["publish", "news", "{}"], ["broadcast", "--channel", "a", "--channel", "b", "{}"],
                 ["history", "news"], ["channels"], ["stats"], ["drain", "check-default"]]
        for s in ("default", "memory"):
            with self.subTest(scenario=s), tempfile.TemporaryDirectory() as tmp:
                docs = load(s)
                key = generated_key(docs)
                self.assertTrue(key, f"{s}: no generated API key Secret")
                proc, ports, logpath = self.start(s, tmp)
                self.assertEqual(wait_health(proc, f"http://127.0.0.1:{ports['ADMIN']}", logpath, self), 200)
                for args in calls:
                    code, out = self.cli(ports, args)
                    self.assertNotEqual(code, 0, f"{s} {args} without a key: {out}")
                    self.assertIn("api key", out.lower(), f"{s} {args}: {out}")
                    code, out = self.cli(ports, args, key="not-the-generated-key-0123")
                    self.assertNotEqual(code, 0, f"{s} {args} with a wrong key: {out}")
                    self.assertIn("invalid api key", out.lower(), f"{s} {args}: {out}")
                code, out = self.cli(ports, ["stats"], key=key)
                self.assertEqual(code, 0, out)
                if s == "memory":
                    code, out = self.cli(ports, ["publish", "news", '{"n":1}'], key=key)
                    self.assertEqual(code, 0, out)
                    self.assertIn("cursor", out)
                else:
                    # Authenticated, then refused only because NATS is not there.
                    code, out = self.cli(ports, ["publish", "news", "{}"], key=key)
                    self.assertNotEqual(code, 0, out)
                    self.assertNotIn("api key", out.lower(), out)


if __name__ == "__main__":
    if not os.path.isdir(RENDER):
        sys.exit(f"render first (scripts/check-helm.sh): {RENDER}")
    unittest.main()
