// Shared by the browser tests: real herald nodes (the binary in HERALD_BIN), a real
// nats-server, headless chromium (playwright-core), a breaking TCP proxy, and test bookkeeping.
"use strict";
const { spawn, spawnSync } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const BIN = process.env.HERALD_BIN || "target/debug/herald";
const NATS = process.env.NATS_SERVER || "/usr/sbin/nats-server";
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), "herald-browser-"));
// Only the tests whose name matches this regular expression run (all by default).
const FILTER = new RegExp(process.env.HERALD_TEST_FILTER || "");
const procs = [];
const state = { failures: 0, ctx: null, profile: null };

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const freePort = () =>
  new Promise((ok, err) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => ok(p));
    });
    s.on("error", err);
  });

function start(name, cmd, args, env = {}) {
  const log = fs.openSync(path.join(TMP, `${name}.log`), "w");
  const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", log, log] });
  p.name = name;
  procs.push(p);
  return p;
}

function killAll() {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
}
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(1));

async function waitHttp(url, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {}
    await sleep(100);
  }
  throw new Error(`${url} not ready in ${ms} ms`);
}

async function startNats() {
  const port = await freePort();
  start("nats", NATS, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", path.join(TMP, "nats")]);
  const end = Date.now() + 10000;
  for (;;) {
    const ok = await new Promise((r) => {
      const c = net.connect(port, "127.0.0.1", () => (c.end(), r(true)));
      c.on("error", () => r(false));
    });
    if (ok) return `nats://127.0.0.1:${port}`;
    if (Date.now() > end) throw new Error("nats-server did not start");
    await sleep(100);
  }
}

async function startNode(name, env) {
  const [http, grpc, admin, api] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const p = start(name, BIN, ["serve"], {
    HERALD_HTTP_ADDR: `127.0.0.1:${http}`,
    HERALD_GRPC_ADDR: `127.0.0.1:${grpc}`,
    HERALD_API_ADDR: `127.0.0.1:${api}`,
    HERALD_ADMIN_ADDR: `127.0.0.1:${admin}`,
    HERALD_NODE_ID: name,
    HERALD_LOG: "info",
    ...env,
  });
  await waitHttp(`http://127.0.0.1:${admin}/readyz`);
  return {
    name, proc: p, url: `http://127.0.0.1:${http}`, grpc: `http://127.0.0.1:${grpc}`, port: http,
    admin: `http://127.0.0.1:${admin}`, api: `http://127.0.0.1:${api}`,
  };
}

// Publishes JSON values through the CLI (gRPC); returns the cursors it printed.
function publish(node, channel, values) {
  const r = spawnSync(BIN, ["publish", "--grpc", node.grpc, channel, "-"], {
    input: values.map((v) => JSON.stringify(v)).join("\n") + "\n",
    encoding: "utf8",
    timeout: 20000,
  });
  if (r.status !== 0) throw new Error(`herald publish failed: ${r.stderr}`);
  const sum = JSON.parse(r.stdout); // stdin mode prints a summary
  if (sum.published !== values.length) throw new Error(`herald publish: ${r.stdout}`);
  return sum.last_cursor;
}

// A publisher that keeps running: `herald publish <channel> -` fed one JSON line at a time
// over `ms` milliseconds (random spacing), so several of them publish concurrently. Resolves
// with the CLI's summary once every line is published.
function publishPaced(node, channel, values, ms) {
  return new Promise((ok, fail) => {
    const p = spawn(BIN, ["publish", "--grpc", node.grpc, channel, "-"], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    const kill = setTimeout(() => p.kill("SIGKILL"), ms + 30000);
    p.on("close", (code) => {
      clearTimeout(kill);
      try {
        const sum = JSON.parse(out);
        if (code === 0 && sum.published === values.length) return ok(sum);
      } catch {}
      fail(new Error(`herald publish ${channel}: exit ${code}: ${out} ${err}`));
    });
    let i = 0;
    const step = ms / values.length;
    const next = () => {
      if (i >= values.length) return p.stdin.end();
      p.stdin.write(JSON.stringify(values[i++]) + "\n");
      setTimeout(next, Math.random() * 2 * step);
    };
    next();
  });
}

// A TCP proxy that breaks: connections go to `upstream()` (a port; called per connection).
// `breakAll(outage)` destroys every open one, both sides, at once, and then for `outage` ms
// resets every new connection as soon as it is accepted (the client's retry fails too).
async function brokenProxy(upstream) {
  const open = new Set();
  let downUntil = 0;
  const server = net.createServer((client) => {
    if (Date.now() < downUntil) return proxy.refused++, client.resetAndDestroy();
    const up = net.connect(upstream(), "127.0.0.1");
    const pair = { client, up };
    open.add(pair);
    const drop = () => {
      open.delete(pair);
      client.destroy();
      up.destroy();
    };
    client.on("error", drop).on("close", drop);
    up.on("error", drop).on("close", drop);
    client.pipe(up);
    up.pipe(client);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const port = server.address().port;
  const proxy = {
    port,
    url: `http://127.0.0.1:${port}`,
    refused: 0, // connections reset during outages
    // Ends the outage, if any.
    heal: () => (downUntil = 0),
    // Destroys every open connection; returns how many there were.
    breakAll(outage = 0) {
      const n = open.size;
      for (const { client, up } of open) client.resetAndDestroy(), up.destroy();
      open.clear();
      downUntil = Date.now() + outage;
      return n;
    },
    close: () => new Promise((ok) => (proxy.breakAll(), server.close(() => ok()))),
  };
  return proxy;
}

// Breaks every proxy in `proxies` at random moments (every `min`-`max` ms), each break
// followed by an outage of up to `outage` ms, until stopped; `stop()` returns the number of
// breaks that cut at least one open connection.
function breaker(proxies, { min = 100, max = 600, outage = 200 } = {}) {
  let breaks = 0;
  let on = true;
  let timer;
  const tick = () => {
    if (!on) return;
    const down = Math.random() * outage;
    let cut = 0;
    for (const p of proxies) cut += p.breakAll(down);
    if (cut) breaks++;
    timer = setTimeout(tick, min + Math.random() * (max - min));
  };
  timer = setTimeout(tick, min + Math.random() * (max - min));
  return {
    stop() {
      on = false;
      clearTimeout(timer);
      for (const p of proxies) p.heal();
      return breaks;
    },
    get breaks() {
      return breaks;
    },
  };
}

async function launchBrowser() {
  const { chromium } = require("playwright-core");
  state.profile = fs.mkdtempSync(path.join(os.tmpdir(), "chromium-profile-"));
  state.ctx = await chromium.launchPersistentContext(state.profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
    timeout: 30000,
    viewport: { width: 1000, height: 700 },
  });
  // Nothing leaves the machine. Scripts load this checkout's SDK (not the copy embedded in the
  // herald binary, which the first browser test compares with it). Documents always come
  // from the network: chromium blocks a page it did not get from a loopback address
  // (a fulfilled one) from opening WebSockets to loopback.
  const sdk = fs.readFileSync(path.join(__dirname, "../herald.js"), "utf8");
  await state.ctx.route("**/*", (route) => {
    const u = new URL(route.request().url());
    if (!/^(127\.|localhost$)/.test(u.hostname)) return route.abort();
    if (u.pathname === "/herald.js" && route.request().resourceType() !== "document")
      return route.fulfill({ contentType: "text/javascript", body: sdk });
    return route.continue();
  });
  return state.ctx;
}

async function test(name, fn) {
  if (!FILTER.test(name)) return;
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    state.failures++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
  for (const p of state.ctx ? state.ctx.pages() : []) await p.close().catch(() => {});
}

// Closes the browser, kills every process started, and exits (non-zero on any failure).
async function finish() {
  if (state.ctx) await state.ctx.close();
  killAll();
  if (state.profile) fs.rmSync(state.profile, { recursive: true, force: true });
  if (state.failures) {
    console.log(`${state.failures} browser test(s) failed; node logs in ${TMP}`);
    process.exit(1);
  }
  fs.rmSync(TMP, { recursive: true, force: true });
  console.log("all browser tests passed");
  process.exit(0);
}

function main(limitMs, body) {
  const deadline = setTimeout(() => {
    console.log(`FAIL: browser tests took over ${limitMs / 1000} s; node logs in ${TMP}`);
    process.exit(1);
  }, limitMs);
  body()
    .then(() => (clearTimeout(deadline), finish()))
    .catch((e) => {
      console.log(`FAIL: ${e.stack || e}`);
      console.log(`logs in ${TMP}`);
      process.exit(1);
    });
}

module.exports = {
  BIN, TMP, sleep, freePort, start, killAll, waitHttp, startNats, startNode, publish, publishPaced,
  brokenProxy, breaker, launchBrowser, test, main, state,
};
