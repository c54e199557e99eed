#!/usr/bin/env python3
"""The bundled NATS configuration forms a JetStream cluster that Herald can use.

Takes the nats.conf the chart renders (default values: 3 servers) and runs it with the local
nats-server, three times on one machine. Only what a single host forces is rewritten: listen,
monitor and route addresses become 127.0.0.1 ports (the route list keeps its shape: one URL
per StatefulSet pod), store_dir and pid_file move to a temp dir. Everything else (cluster
name, server_name from $SERVER_NAME, JetStream limits, max_payload, lame-duck settings) is used
as rendered. Then:
- every server answers the StatefulSet's probe paths (/healthz, /healthz?js-enabled-only=true,
  /healthz?js-server-only=true) with 200;
- the real herald binary, with the Deployment's rendered environment (HERALD_NATS_REPLICAS=3),
  becomes ready (/readyz 200), i.e. it created its replicated stream on this cluster;
- the preStop command (`nats-server --signal ldm=<pid_file>`) puts a server in lame-duck mode.

Skipped when nats-server or target/release/herald is missing. The Debian nats-server here
(2.9) is older than the chart's image (nats:2.10-alpine).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_binary_env import BINARY, free_port, get  # noqa: E402
from test_chart import herald_container, herald_env, load, one, read  # noqa: E402

NATS = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)


def wait_for(fn, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@unittest.skipUnless(NATS and os.access(BINARY, os.X_OK), "needs nats-server and target/release/herald")
class BundledNatsCluster(unittest.TestCase):
    def test_rendered_cluster_serves_herald(self):
        docs = load("default")
        sts = one(docs, "StatefulSet")
        n = sts["spec"]["replicas"]
        conf = one(docs, "ConfigMap", sts["metadata"]["name"])["data"]["nats.conf"]
        routes = re.findall(r"nats://([^\s:]+):6222", conf)
        self.assertEqual(len(routes), n)
        c = sts["spec"]["template"]["spec"]["containers"][0]
        probe_paths = [c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
        prestop = c["lifecycle"]["preStop"]["exec"]["command"]

        tmp = tempfile.mkdtemp(prefix="herald-nats-")
        self.addCleanup(shutil.rmtree, tmp, True)
        ports = [{"client": free_port(), "monitor": free_port(), "route": free_port()} for _ in range(n)]
        procs = []
        for i in range(n):
            d = os.path.join(tmp, str(i))
            os.makedirs(d)
            ci = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{ports[i]['client']}")
            ci = ci.replace("http_port: 8222", f"http: 127.0.0.1:{ports[i]['monitor']}")
            ci = ci.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{ports[i]['route']}")
            ci = ci.replace("store_dir: /data", f"store_dir: {d}/js")
            ci = ci.replace("pid_file: /var/run/nats/nats.pid", f"pid_file: {d}/nats.pid")
            for j, host in enumerate(routes):
                ci = ci.replace(f"nats://{host}:6222", f"nats://127.0.0.1:{ports[j]['route']}")
            self.assertNotIn("0.0.0.0", ci)
            path = os.path.join(d, "nats.conf")
            with open(path, "w") as f:
                f.write(ci)
            log = open(os.path.join(d, "log"), "w")
            env = {"PATH": os.environ.get("PATH", ""), "SERVER_NAME": f"{sts['metadata']['name']}-{i}"}
            p = subprocess.Popen([NATS, "-c", path], env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            self.addCleanup(lambda p=p, log=log: (p.poll() is None and p.kill(), p.wait(), log.close()))

        for i in range(n):
            for path in probe_paths:
                url = f"http://127.0.0.1:{ports[i]['monitor']}{path}"
                wait_for(lambda: get(url)[0] == 200, 60, f"{url} (server {i}):\n"
                         + read(os.path.join(tmp, str(i), "log"))[-1500:])

        # Herald with the Deployment's environment (stream replicas 3) on this cluster.
        env = {k: v for k, v in herald_env(docs).items() if isinstance(v, str)}
        self.assertEqual(env["HERALD_NATS_REPLICAS"], str(n))
        hp = {k: free_port() for k in ("HTTP", "GRPC", "ADMIN")}
        for k, p in hp.items():
            env[f"HERALD_{k}_ADDR"] = f"127.0.0.1:{p}"
        env["HERALD_NATS_URL"] = f"nats://127.0.0.1:{ports[0]['client']}"
        env["HERALD_NODE_ID"] = "check-nats-cluster"
        if "HERALD_API_KEYS_FILE" in env:  # the chart's generated key Secret, mounted
            import base64
            secret = one(docs, "Secret")
            keys = os.path.join(tmp, "api-keys")
            with open(keys, "wb") as f:
                f.write(base64.b64decode(secret["data"]["api-keys"]))
            env["HERALD_API_KEYS_FILE"] = keys
        hlog_path = os.path.join(tmp, "herald.log")
        hlog = open(hlog_path, "w")
        herald = subprocess.Popen([BINARY, *herald_container(docs).get("args", ["serve"])],
                                  env={"PATH": os.environ.get("PATH", ""), "HOME": tmp, **env},
                                  stdout=hlog, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: (herald.poll() is None and herald.kill(), herald.wait(), hlog.close()))
        ready = f"http://127.0.0.1:{hp['ADMIN']}/readyz"
        try:
            wait_for(lambda: herald.poll() is None and get(ready)[0] == 200, 60, ready)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{read(hlog_path)[-2000:]}") from None

        # The preStop hook: lame-duck mode through the pid_file.
        self.assertEqual(prestop[:2], ["nats-server", "--signal"])
        sig = prestop[2].replace("/var/run/nats/nats.pid", os.path.join(tmp, str(n - 1), "nats.pid"))
        subprocess.run([NATS, "--signal", sig], check=True, capture_output=True, timeout=10)
        wait_for(lambda: "lame duck" in read(os.path.join(tmp, str(n - 1), "log")).lower(), 10,
                 "lame duck mode")
        herald.terminate()
        herald.wait(timeout=30)


if __name__ == "__main__":
    unittest.main()
