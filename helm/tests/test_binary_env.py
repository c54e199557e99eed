#!/usr/bin/env python3
"""The real `herald` binary accepts the environment the chart gives its pods.

For every rendered scenario, starts target/release/herald (built by scripts/check-helm.sh with
the Dockerfile's command) with the ConfigMap's HERALD_* plus the container's literal env, on free
127.0.0.1 ports instead of 0.0.0.0, and with files the chart mounts from Secrets replaced by
local ones. Then:
- memory broker: the probes' paths answer on the admin port (/healthz 200, /readyz 200) and
  /metrics carries herald_connections;
- NATS broker (pointed at a closed local port): the process is still running after a few
  seconds, i.e. it accepted every setting and is retrying NATS, which is what the startupProbe
  allows time for.

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
            with open(path, "w") as f:
                f.write("# one key per line, at least 16 characters\n" + "0f" * 16 + "\n")
            env["HERALD_API_KEYS_FILE"] = path
        ports = {k: free_port() for k in ("HTTP", "GRPC", "ADMIN")}
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
                proc, _, logpath = self.start(s, tmp)
                time.sleep(2.5)
                if proc.poll() is not None:
                    self.fail(f"herald exited with the {s} env:\n" + read(logpath)[-2000:])
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    if not os.path.isdir(RENDER):
        sys.exit(f"render first (scripts/check-helm.sh): {RENDER}")
    unittest.main()
