// Browser tests of the admin console (docs/console.md): Debian's chromium, headless
// (playwright-core), against two real herald nodes (HERALD_BIN) with an API key on a real
// nats-server. Login (a wrong key refused), both nodes and their per-protocol counts moving as
// SDK clients connect over WebSocket, SSE, long-poll and poll, a channel's live tail and the
// publish form (the message reaches the tail and subscribed clients), the API's errors for bad
// input, users' actions, draining node 2 from the console with its clients moving to node 1
// and nothing lost, every route refused without login, and the session unusable cross-site.
// With SCREENSHOT_DIR set, saves docs' screenshots there (scripts/console-screenshots.sh).
// Exits non-zero on any failure.
//   NODE_PATH=<dir>/node_modules HERALD_BIN=target/debug/herald node clients/js/test/console.test.cjs
"use strict";
const fs = require("fs");
const path = require("path");
const H = require("./harness.cjs");
const { TMP, sleep, startNats, startNode, publish, publishPaced } = H;

// H.test, and on failure a screenshot of every open page into the log directory.
let failed = 0;
const test = (name, fn) =>
  H.test(name, async () => {
    try {
      await fn();
    } catch (e) {
      for (const p of ctx ? ctx.pages() : []) await p.screenshot({ path: path.join(TMP, `fail-${++failed}.png`) }).catch(() => {});
      throw e;
    }
  });

const KEY = "console-browser-key-0123456789abcdef";
process.env.HERALD_API_KEY = KEY; // the CLI's calls (publish) carry it
const SECRET = "console-test-secret-0123456789abcdef0123";

// A client token for `user` (what an app backend would mint; here `herald token`).
function mint(user) {
  const { spawnSync } = require("child_process");
  const r = spawnSync(H.BIN, ["token", "--sub", user, "--channel", "*", "--ttl", "10m"], {
    env: { ...process.env, HERALD_AUTH_HMAC_SECRET: SECRET }, encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`herald token: ${r.stderr}`);
  return r.stdout.trim();
}
const SHOTS = process.env.SCREENSHOT_DIR || "";
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const PROTOCOLS = ["websocket", "sse", "longpoll", "poll"];

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}
const same = (got, want, what) =>
  expect(JSON.stringify(got) === JSON.stringify(want), `${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);

async function shot(page, name) {
  if (!SHOTS) return;
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `console-${name}.png`) });
}

let ctx;
let c1;
let c2;
// The console page of node `at`, logged in (unless `key` is null).
async function consolePage(at, key = KEY, viewport = DESKTOP) {
  const page = await ctx.newPage();
  await page.setViewportSize(viewport);
  page.on("pageerror", (e) => console.log(`  [console page error] ${e.message}`));
  await page.goto(`${at.admin}/console/`);
  await page.waitForSelector("#login:not([hidden]), #top:not([hidden])", { timeout: 10000 });
  if (key !== null && (await page.isVisible("#login"))) {
    await page.fill("#key", key);
    await page.press("#key", "Enter");
    await page.waitForSelector("#top:not([hidden])", { timeout: 10000 });
  }
  return page;
}

// The per-protocol counts of node `id` as the cluster page shows them.
const counts = (page, id) =>
  page.evaluate(([id, protos]) => {
    const row = document.querySelector(`#nodes tr[data-node="${id}"]`);
    if (!row) return null;
    const o = {};
    for (const p of protos) o[p] = Number(row.querySelector(`[data-proto="${p}"]`).textContent);
    o.state = row.querySelector("[data-state]").textContent;
    return o;
  }, [id, PROTOCOLS]);

async function untilCounts(page, id, pred, what, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await counts(page, id);
    if (last && pred(last)) return last;
    await sleep(200);
  }
  throw new Error(`${what}: node ${id} shows ${JSON.stringify(last)} after ${ms} ms`);
}

// A page of node `at` (its demo page: a document from the node, so its WebSockets and
// EventSources may reach the nodes) with one SDK subscription per protocol to `channel`,
// failing over from `at` to `then`.
async function clientsPage(at, then, channel) {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.log(`  [clients page error] ${e.message}`));
  await page.goto(`${at.url}/?${new URLSearchParams({ channel: "pub:page", transports: "poll", poll: 600000 })}`);
  await page.waitForFunction(() => window.heraldDemo && window.heraldDemo.sub, null, { timeout: 10000 });
  await page.evaluate(() => window.heraldDemo.sub.close());
  await page.evaluate(async ([urls, channel, protos]) => {
    const { subscribe } = await import("/herald.js");
    window.subs = {};
    for (const t of protos) {
      const r = (window.subs[t] = { log: [] });
      r.sub = subscribe(urls, [channel], { transports: [t], backoffMin: 100, backoffMax: 500, pollInterval: 300, climbInterval: 0 });
      r.sub.addEventListener("message", (e) => r.log.push(e.detail.data));
    }
  }, [[at.url, then.url], channel, PROTOCOLS]);
  await page.waitForFunction((protos) => protos.every((t) => window.subs[t].sub.state === "connected"), PROTOCOLS, { timeout: 15000 });
  return page;
}
const received = (page) => page.evaluate((protos) => Object.fromEntries(protos.map((t) => [t, window.subs[t].log])), PROTOCOLS);
const urls = (page) => page.evaluate((protos) => Object.fromEntries(protos.map((t) => [t, window.subs[t].sub.url])), PROTOCOLS);

// The HTTP/JSON API's answer to a publish body (to compare the console's errors with).
async function apiPublish(node, body) {
  const r = await fetch(`${node.api}/api/v1/publish`, {
    method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body,
  });
  return (await r.json()).error;
}

H.main(170000, async () => {
  const nats = await startNats();
  const conf = path.join(TMP, "console.toml");
  fs.writeFileSync(conf, ["[namespaces.room]", "presence = true", "join_leave = true"].join("\n") + "\n");
  const env = {
    HERALD_BROKER: "nats",
    HERALD_NATS_URL: nats,
    HERALD_CONFIG: conf,
    HERALD_API_KEYS: KEY,
    // Tokens name users (the Users page); channels stay open to clients without one.
    HERALD_AUTH_HMAC_SECRET: SECRET,
    HERALD_ANONYMOUS: "true",
    HERALD_HEARTBEAT_INTERVAL: "500ms",
    HERALD_SSE_RETRY: "300ms",
  };
  [c1, c2] = await Promise.all([startNode("c1", env), startNode("c2", env)]);
  console.log(`nats ${nats}; nodes ${c1.admin} ${c2.admin}; ${H.BIN}`);
  ctx = await H.launchBrowser();
  if (process.env.CONSOLE_ASSETS_FROM_CHECKOUT) {
    // Development aid: the checkout's script and style instead of the binary's embedded copy.
    const dir = path.join(__dirname, "../../../crates/herald-control/console");
    await ctx.route(/\/console\/console\.(js|css)$/, (route) => {
      const ext = route.request().url().endsWith(".js") ? "js" : "css";
      route.fulfill({ contentType: ext === "js" ? "text/javascript" : "text/css", body: fs.readFileSync(path.join(dir, `console.${ext}`), "utf8") });
    });
  }

  await test("without login every console API route is refused, and the page shows only the login", async () => {
    const routes = ["session", "stats/stream", "stats", "channels", "history?channel=a", "presence?channel=a",
      "presence_stats?channel=a", "publish", "broadcast", "disconnect", "subscribe", "unsubscribe", "revoke_token",
      "revoke_user", "drain", "connections", "logout", "nothing-here"];
    for (const r of routes) {
      const get = /^(session|stats|channels|history|presence|nothing)/.test(r);
      const res = await fetch(`${c1.admin}/console/api/${r}`, get ? {} : {
        method: "POST", headers: { "x-herald-console": "1", "content-type": "application/json" }, body: "{}",
      });
      same(res.status, 401, `${get ? "GET" : "POST"} /console/api/${r}`);
    }
    const page = await consolePage(c1, null);
    expect(await page.isVisible("#login"), "login form shown");
    expect(!(await page.isVisible("#view")), "no data view without login");
    await shot(page, "login");
  });

  await test("a wrong key is refused; the right key logs in", async () => {
    const page = await consolePage(c1, null);
    await page.fill("#key", "not-the-key-0123456789abcdef");
    await page.press("#key", "Enter");
    await page.waitForFunction(() => /invalid API key/.test(document.querySelector("#login-error").textContent), null, { timeout: 5000 });
    expect(!(await page.isVisible("#top")), "still logged out");
    await page.fill("#key", KEY);
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#nodes", { timeout: 10000 });
    const cookies = await ctx.cookies(`${c1.admin}/console/`);
    const c = cookies.find((x) => x.name === "herald_console");
    expect(c && c.httpOnly && c.sameSite === "Strict" && c.path === "/console", `cookie ${JSON.stringify(c)}`);
    expect(!(await page.evaluate(() => document.cookie)).includes("herald_console"), "the page's script cannot read the session");
  });

  // Pages close after each test: each test that needs clients on c2 opens them.
  let clients;
  const CH = "room:live";
  await test("both nodes shown; per-protocol counts follow clients connecting over every protocol", async () => {
    const page = await consolePage(c1);
    await untilCounts(page, "c1", () => true, "node c1 listed");
    await untilCounts(page, "c2", () => true, "node c2 listed");
    const before = await counts(page, "c2");
    clients = await clientsPage(c2, c1, CH);
    const after = await untilCounts(page, "c2", (c) => PROTOCOLS.every((p) => c[p] >= before[p] + 1),
      "one more connection per protocol on c2");
    same(after.state, "ready", "c2 state");
    // Keyboard: 2 and 1 switch pages.
    await page.keyboard.press("2");
    await page.waitForSelector("#channels");
    await page.keyboard.press("1");
    await page.waitForSelector("#nodes");
    await sleep(SHOTS ? 12000 : 1000); // sparkline points for the screenshot
    await shot(page, "cluster");
    await page.setViewportSize(PHONE);
    await sleep(300);
    await shot(page, "cluster-phone");
  });

  await test("channels: the cluster-wide list, filtered by pattern", async () => {
    clients = await clientsPage(c2, c1, CH);
    const page = await consolePage(c1);
    await page.goto(`${c1.admin}/console/#/channels`);
    await page.waitForSelector(`#channels tr[data-channel="${CH}"]`, { timeout: 10000 });
    const subs = await page.textContent(`#channels tr[data-channel="${CH}"] td.num`);
    expect(Number(subs) >= 3, `${CH} has ${subs} subscribers (WebSocket, SSE, long-poll at least)`);
    await page.fill("#pattern", "nothing:*");
    await page.press("#pattern", "Enter");
    await page.waitForSelector(`#channels tr[data-channel="${CH}"]`, { state: "detached", timeout: 5000 });
    await page.fill("#pattern", "room:*");
    await page.press("#pattern", "Enter");
    await page.waitForSelector(`#channels tr[data-channel="${CH}"]`, { timeout: 5000 });
    await shot(page, "channels");
  });

  await test("channel: publish from the form reaches the live tail and the subscribed clients", async () => {
    publish(c1, CH, [{ n: "before" }]); // some history
    clients = await clientsPage(c2, c1, CH);
    const page = await consolePage(c1);
    await page.goto(`${c1.admin}/console/#/channel/${encodeURIComponent(CH)}`);
    await page.waitForFunction(() => document.querySelector("#tail-state").textContent === "live", null, { timeout: 10000 });
    await page.fill("#publish-data", '{"from":"console","n":1}');
    await page.click("#publish-form button[type=submit]");
    await page.waitForFunction(() => /Published: cursor \d+/.test(document.querySelector("#publish-ok").textContent), null, { timeout: 5000 });
    await page.waitForFunction(() => /"from":"console"/.test(document.querySelector("#tail").textContent), null, { timeout: 5000 });
    await clients.waitForFunction((protos) => protos.every((t) => window.subs[t].log.some((d) => d && d.from === "console")), PROTOCOLS, { timeout: 10000 })
      .catch(async () => { throw new Error(`clients got ${JSON.stringify(await received(clients))}`); });
    // History shows the messages with their cursors; presence lists the held clients.
    await page.click('button:has-text("Load")');
    await page.waitForFunction(() => /"from":"console"/.test(document.querySelector("#history").textContent), null, { timeout: 5000 });
    // Presence: the clients' WebSocket and SSE on c2, and the console's own tail on c1.
    await page.click('button:has-text("Refresh")');
    await page.waitForFunction(() => document.querySelectorAll("#presence tbody tr").length >= 3, null, { timeout: 5000 });
    await shot(page, "channel");
  });

  await test("bad input from the forms gets the API's own errors", async () => {
    const page = await consolePage(c1);
    const tryPublish = async (channel, data) => {
      await page.goto(`${c1.admin}/console/#/channel/${encodeURIComponent(channel)}`);
      await page.waitForSelector("#publish-data");
      await page.fill("#publish-data", data);
      await page.click("#publish-form button[type=submit]");
      await page.waitForFunction(() => document.querySelector("#publish-error").textContent.length > 0, null, { timeout: 5000 });
      return page.textContent("#publish-error");
    };
    const cases = [
      ["invalid JSON", CH, '{"a": oops}'],
      ["bad channel name", "bad name", "1"],
      ["huge payload", CH, JSON.stringify({ big: "x".repeat(70000) })],
    ];
    for (const [what, channel, data] of cases) {
      const shown = await tryPublish(channel, data);
      const api = await apiPublish(c1, `{"channel":${JSON.stringify(channel)},"data":${data}}`);
      same(shown, `${api.code}: ${api.message}`, `${what}: console error vs API error`);
      expect(api.code === "invalid_argument", `${what}: ${api.code}`);
    }
    await shot(page, "publish-error");
  });

  await test("users: a user's connections on both nodes are listed", async () => {
    // zoe holds a WebSocket on node 1 and an SSE stream on node 2 (a page of node 1).
    const zoe = await ctx.newPage();
    await zoe.goto(`${c1.url}/?${new URLSearchParams({ channel: "pub:page", transports: "poll", poll: 600000 })}`);
    await zoe.waitForFunction(() => window.heraldDemo && window.heraldDemo.sub, null, { timeout: 10000 });
    await zoe.evaluate(() => window.heraldDemo.sub.close());
    await zoe.evaluate(async ([a, b, token]) => {
      const { subscribe } = await import("/herald.js");
      window.zoe = [subscribe(a, ["room:zoe"], { transports: ["websocket"], token }), subscribe(b, ["room:zoe"], { transports: ["sse"], token })];
    }, [c1.url, c2.url, mint("zoe")]);
    await zoe.waitForFunction(() => window.zoe.every((s) => s.state === "connected" && s.clientId), null, { timeout: 15000 });
    const ids = await zoe.evaluate(() => window.zoe.map((s) => s.clientId));
    const page = await consolePage(c1);
    await page.goto(`${c1.admin}/console/#/users`);
    await page.fill("#cx-user", "zoe");
    await page.click('#connections-form button[type="submit"]');
    await page.waitForFunction(() => document.querySelectorAll("#connections tbody tr").length === 2, null, { timeout: 5000 });
    const rows = await page.$$eval("#connections tbody tr", (trs) => trs.map((tr) => [...tr.children].slice(0, 3).map((td) => td.textContent)));
    const want = [[ids[0], "c1", "websocket"], [ids[1], "c2", "sse"]].sort((x, y) => (x[0] < y[0] ? -1 : 1));
    same(rows, want, "zoe's connections");
    same(await page.textContent("#connections-info"), "2 connection(s) of zoe", "the summary");
    await shot(page, "users");
    await zoe.evaluate(() => window.zoe.forEach((s) => s.close()));
  });

  await test("users: actions run cluster-wide and answer with the API's counts and errors", async () => {
    const page = await consolePage(c1);
    await page.goto(`${c1.admin}/console/#/users`);
    await page.fill("#uc-user", "nobody");
    await page.fill("#uc-channel", "room:x");
    await page.click('button:has-text("Unsubscribe")');
    await page.waitForFunction(() => /Unsubscribe: 0 connection/.test(document.querySelector("#user-result").textContent), null, { timeout: 5000 });
    await page.fill("#uc-channel", "bad name");
    await page.click('button:has-text("Unsubscribe")');
    await page.waitForFunction(() => /invalid_argument: channel "bad name"/.test(document.querySelector("#user-error").textContent), null, { timeout: 5000 });
    await shot(page, "users-actions");
  });

  await test("drain node 2 from the console: its clients move to node 1, nothing lost", async () => {
    clients = await clientsPage(c2, c1, CH);
    const page = await consolePage(c1);
    await untilCounts(page, "c2", (c) => c.websocket >= 1 && c.sse >= 1, "clients on c2");
    const N = 60;
    const values = Array.from({ length: N }, (_, i) => ({ n: i }));
    const base = await received(clients);
    const pub = publishPaced(c1, CH, values, 4000);
    await sleep(1000);
    await page.click('[data-drain="c2"]');
    await page.waitForSelector("#confirm[open]");
    await shot(page, "drain-confirm");
    await page.click("#confirm-ok");
    await page.waitForFunction(() => /Draining c2/.test(document.querySelector("#drain-ok").textContent), null, { timeout: 5000 });
    // (Poll and long-poll counts are clients seen in the last 30 s: they linger.)
    await untilCounts(page, "c2", (c) => c.state === "draining" && c.websocket === 0 && c.sse === 0,
      "c2 draining with no WebSocket or SSE connection", 20000);
    await untilCounts(page, "c1", (c) => c.websocket >= 1 && c.sse >= 1, "WebSocket and SSE clients on c1", 20000);
    await pub;
    await clients.waitForFunction(([protos, n]) => protos.every((t) => window.subs[t].log.filter((d) => d && typeof d.n === "number").length >= n), [PROTOCOLS, N], { timeout: 20000 })
      .catch(async () => { throw new Error(`clients got ${JSON.stringify(await received(clients))}`); });
    const got = await received(clients);
    for (const t of PROTOCOLS) {
      const ns = got[t].slice(base[t].length).filter((d) => d && typeof d.n === "number").map((d) => d.n);
      same(ns, values.map((v) => v.n), `${t}: every message once, in order, across the drain`);
    }
    const where = await urls(clients);
    // Polls too: a draining node's poll replies say `"reconnect":"draining"`, and the SDK
    // polls the next node from the reply's cursor.
    for (const t of PROTOCOLS) same(where[t], c1.url, `${t} client's node after the drain`);
    // A client whose only URL is the draining node: its polls back off instead of looping
    // (a reply saying "reconnect":"draining" counts toward the backoff until a connection
    // to a node that is not draining).
    const lone = await ctx.newPage();
    let polls = 0;
    lone.on("request", (r) => new URL(r.url()).port === String(c2.port) && new URL(r.url()).pathname === "/poll" && polls++);
    await lone.goto(`${c1.url}/?${new URLSearchParams({ channel: "pub:page", transports: "poll", poll: 600000 })}`);
    await lone.waitForFunction(() => window.heraldDemo && window.heraldDemo.sub, null, { timeout: 10000 });
    await lone.evaluate(() => window.heraldDemo.sub.close());
    polls = 0;
    await lone.evaluate(async ([url, channel]) => {
      const { subscribe } = await import("/herald.js");
      window.lone = subscribe([url], [channel], { transports: ["longpoll"], backoffMin: 100, backoffMax: 1000 });
    }, [c2.url, CH]);
    await sleep(3000);
    await lone.evaluate(() => window.lone.close());
    expect(polls > 0 && polls < 25, `a lone long-poll client polled the draining node ${polls} times in 3 s`);
    await shot(page, "cluster-draining");
  });

  await test("the session cannot be used cross-site", async () => {
    await consolePage(c1); // logged in: the context holds the cookie
    // A page of another site (localhost is not 127.0.0.1) aims at the console's API.
    const evil = await ctx.newPage();
    await evil.goto(`http://localhost:${c1.port}/?channel=pub:x&transports=poll&poll=600000`);
    const seen = [];
    evil.on("response", async (r) => {
      if (r.url().includes("/console/api/")) seen.push({ url: r.url(), status: r.status(), cookie: (await r.request().allHeaders()).cookie || "" });
    });
    await evil.evaluate(async (admin) => {
      const opts = { mode: "no-cors", credentials: "include" };
      await fetch(`${admin}/console/api/session`, opts).catch(() => {});
      await fetch(`${admin}/console/api/drain`, { ...opts, method: "POST", body: '{"node_id":"c1"}', headers: { "content-type": "text/plain" } }).catch(() => {});
      const f = document.createElement("form");
      f.method = "POST";
      f.action = `${admin}/console/api/publish`;
      document.body.append(f);
      f.submit();
    }, c1.admin);
    await sleep(1500);
    expect(seen.length >= 2, `responses seen: ${JSON.stringify(seen)}`);
    for (const s of seen) {
      expect(s.status === 401 || s.status === 403, `cross-site ${s.url} answered ${s.status}`);
      expect(!s.cookie.includes("herald_console"), `cross-site ${s.url} carried the session cookie`);
    }
    const ready = await fetch(`${c1.admin}/readyz`);
    same(ready.status, 200, "c1 not drained by the cross-site page");
  });
});
