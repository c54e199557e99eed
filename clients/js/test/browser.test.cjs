// Browser tests of the SDK: Debian's chromium, headless, driven by playwright-core, against
// real herald nodes (the binary in HERALD_BIN) on a real nats-server. Run by
// scripts/check-browser.sh; exits non-zero on any failure.
//   NODE_PATH=<dir>/node_modules HERALD_BIN=target/debug/herald SCREENSHOT=target/screenshots/demo.png \
//     node clients/js/test/browser.test.cjs
"use strict";
const fs = require("fs");
const path = require("path");
const H = require("./harness.cjs");
const { BIN, sleep, startNats, startNode, publish, test } = H;
const { spawnSync } = require("child_process");

const SHOT = process.env.SCREENSHOT || "target/screenshots/demo.png";

let ctx;
async function openDemo(node, params) {
  const page = await ctx.newPage();
  page.on("console", (m) => {
    const t = m.text(); // connection errors are expected while falling back or failing over
    if (!/Failed to load resource|WebSocket connection to/.test(t)) console.log(`  [page] ${t}`);
  });
  page.on("pageerror", (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${node.url}/?${new URLSearchParams(params)}`);
  return page;
}

const demo = (page) => page.evaluate(() => ({
  messages: window.heraldDemo.messages,
  gaps: window.heraldDemo.gaps,
  states: window.heraldDemo.states.map(({ state, transport, url }) => ({ state, transport, url })),
}));

async function waitConnected(page, transport, url, ms = 15000) {
  await page.waitForFunction(
    ([t, u]) => {
      const s = window.heraldDemo && window.heraldDemo.sub;
      return s && s.state === "connected" && s.transport === t && (!u || s.url === u);
    },
    [transport, url],
    { timeout: ms },
  ).catch(async () => {
    throw new Error(`not connected on ${transport} ${url || ""}: states ${JSON.stringify((await demo(page)).states)}`);
  });
}

async function waitCount(page, n, ms = 15000) {
  await page.waitForFunction((n) => window.heraldDemo.messages.length >= n, n, { timeout: ms }).catch(async () => {
    const d = await demo(page);
    throw new Error(`expected ${n} messages, got ${d.messages.length}: ${JSON.stringify(d.messages.map((m) => m.data))}`);
  });
  await sleep(300); // a duplicate would show up now
}

function expectSeq(messages, from, to, what) {
  const got = messages.map((m) => m.data.n);
  const want = [];
  for (let i = from; i < to; i++) want.push(i);
  if (JSON.stringify(got) !== JSON.stringify(want))
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

const seq = (a, b, tag) => Array.from({ length: b - a }, (_, i) => ({ n: a + i, tag }));

H.main(240000, async () => {
  const nats = await startNats();
  const onNats = { HERALD_BROKER: "nats", HERALD_NATS_URL: nats };
  const [a, b, noWs, noWsSse, gapNode] = await Promise.all([
    startNode("a", onNats),
    startNode("b", onNats),
    startNode("no-ws", { ...onNats, HERALD_DISABLED_TRANSPORTS: "websocket" }),
    startNode("no-ws-sse", { ...onNats, HERALD_DISABLED_TRANSPORTS: "websocket,sse" }),
    startNode("gap", { HERALD_BROKER: "memory", HERALD_HISTORY_SIZE: "3" }),
  ]);
  const SECRET = "browser-test-secret-0123456789abcdef";
  const authNode = await startNode("auth", {
    HERALD_BROKER: "memory",
    HERALD_AUTH_HMAC_SECRET: SECRET,
    HERALD_AUTH_LEEWAY: "0s",
  });
  // Mints a token the way an app backend would (here: `herald token`).
  const mint = (channel, ttl) => {
    const r = spawnSync(BIN, ["token", "--sub", "browser", "--channel", channel, "--ttl", ttl], {
      env: { ...process.env, HERALD_AUTH_HMAC_SECRET: SECRET },
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`herald token: ${r.stderr}`);
    return r.stdout.trim();
  };
  console.log(`nats ${nats}; nodes ${[a, b, noWs, noWsSse, gapNode].map((n) => n.url).join(" ")}`);

  ctx = await H.launchBrowser();

  await test("the node serves /herald.js as JavaScript and the demo page", async () => {
    const js = await fetch(`${a.url}/herald.js`);
    const ct = js.headers.get("content-type") || "";
    if (!js.ok || !ct.startsWith("text/javascript") || !js.headers.get("cache-control"))
      throw new Error(`/herald.js: ${js.status} ${ct} ${js.headers.get("cache-control")}`);
    // The pages load this checkout's herald.js; the binary must ship the same one.
    if ((await js.text()) !== fs.readFileSync(path.join(__dirname, "../herald.js"), "utf8"))
      throw new Error(`${BIN} embeds another herald.js than clients/js/herald.js: rebuild it (cargo build -p herald)`);
    const page = await fetch(`${a.url}/`);
    if (!page.ok || !(await page.text()).includes("herald.js")) throw new Error(`/: ${page.status}`);
    const ws = await fetch(`${noWsSse.url}/sse?channel=x`);
    const body = await ws.json();
    if (ws.status !== 403 || body.error.code !== "transport_disabled")
      throw new Error(`disabled /sse: ${ws.status} ${JSON.stringify(body)}`);
    const lp = await fetch(`${noWsSse.url}/poll?channel=x&wait=1`);
    const ip = await fetch(`${noWsSse.url}/poll?channel=x`);
    if (lp.status !== 200 || ip.status !== 200) throw new Error(`poll on no-ws-sse: ${lp.status} ${ip.status}`);
  });

  for (const t of ["websocket", "sse", "longpoll", "poll"]) {
    await test(`${t} alone: messages arrive in order`, async () => {
      const ch = `only-${t}`;
      const page = await openDemo(a, { channel: ch, transports: t, poll: 300 });
      await waitConnected(page, t);
      publish(a, ch, seq(0, 10, t));
      await waitCount(page, 10);
      const d = await demo(page);
      expectSeq(d.messages, 0, 10, t);
      const other = d.states.filter((s) => s.transport !== t);
      if (other.length) throw new Error(`used another transport: ${JSON.stringify(other)}`);
      await page.close();
    });
  }

  await test("fallback: WebSocket disabled -> SSE, every message", async () => {
    const page = await openDemo(noWs, { channel: "fb-sse" });
    await waitConnected(page, "sse");
    publish(noWs, "fb-sse", seq(0, 10));
    await waitCount(page, 10);
    expectSeq((await demo(page)).messages, 0, 10, "fallback to sse");
    await page.close();
  });

  await test("fallback: WebSocket and SSE disabled -> long-poll, every message", async () => {
    const page = await openDemo(noWsSse, { channel: "fb-lp" });
    await waitConnected(page, "longpoll");
    publish(a, "fb-lp", seq(0, 10));
    await waitCount(page, 10);
    expectSeq((await demo(page)).messages, 0, 10, "fallback to longpoll");
    await page.close();
  });

  await test("climb: on SSE the SDK periodically retries WebSocket, falls back again, loses nothing", async () => {
    // Page on no-ws (WebSocket refused), second URL a full node: climbing from SSE retries
    // WebSocket on the same node, falls back again; a node-level failure is not needed here.
    const page = await openDemo(noWs, { channel: "climb", climb: 1500 });
    await waitConnected(page, "sse");
    await page.waitForFunction(() => window.heraldDemo.states.some((s) => s.state === "reconnecting" && s.reason === "climb") ||
      window.heraldDemo.states.filter((s) => s.state === "connected").length >= 2, null, { timeout: 10000 });
    await waitConnected(page, "sse");
    publish(a, "climb", seq(0, 5));
    await waitCount(page, 5);
    expectSeq((await demo(page)).messages, 0, 5, "after climb attempt");
    await page.close();
  });

  await test("climb: WebSocket refused by a proxy -> SSE; once upgrades pass again, back on WebSocket", async () => {
    const page = await ctx.newPage();
    let blocked = true; // a test "proxy" in the browser that refuses WebSocket upgrades
    await page.routeWebSocket(/\/ws/, (ws) => (blocked ? ws.close({ code: 1006, reason: "blocked" }) : ws.connectToServer()));
    await page.goto(`${a.url}/?${new URLSearchParams({ channel: "climb-real", climb: 2000 })}`);
    await waitConnected(page, "sse");
    publish(a, "climb-real", seq(0, 5));
    await waitCount(page, 5);
    blocked = false;
    await waitConnected(page, "websocket", undefined, 10000);
    publish(a, "climb-real", seq(5, 10));
    await waitCount(page, 10);
    expectSeq((await demo(page)).messages, 0, 10, "climb to websocket");
  });

  for (const t of ["websocket", "sse", "longpoll"]) {
    await test(`failover on ${t}: node killed mid-stream, exactly the missed messages from the second node`, async () => {
      const ch = `failover-${t}`;
      const [x, y] = await Promise.all([startNode(`fx-${t}`, onNats), startNode(`fy-${t}`, onNats)]);
      const page = await openDemo(x, { channel: ch, transports: t, urls: `${x.url},${y.url}`, backoff: 200 });
      await waitConnected(page, t, x.url);
      publish(x, ch, seq(0, 5));
      await waitCount(page, 5);
      await ctx.setOffline(true); // keep the page from reconnecting until 5..14 are published
      x.proc.kill("SIGKILL");
      publish(y, ch, seq(5, 15));
      await sleep(500);
      const before = (await demo(page)).messages.length;
      if (before !== 5) throw new Error(`got ${before} messages while offline`);
      await ctx.setOffline(false);
      await waitConnected(page, t, y.url);
      publish(y, ch, seq(15, 20));
      await waitCount(page, 20);
      expectSeq((await demo(page)).messages, 0, 20, `failover ${t}`);
      y.proc.kill("SIGKILL");
      await page.close();
    });
  }

  for (const t of ["websocket", "sse", "longpoll", "poll"]) {
    await test(`gap on ${t}: resume beyond history (HERALD_HISTORY_SIZE=3) is a gap event`, async () => {
      const ch = `gap-${t}`;
      const c0 = publish(gapNode, ch, [{ n: -1 }]);
      publish(gapNode, ch, seq(0, 10));
      const page = await openDemo(gapNode, { channel: ch, transports: t, since: c0, poll: 300 });
      await waitCount(page, 3);
      const d = await demo(page);
      if (!d.gaps.some((g) => g.channel === ch)) throw new Error(`no gap event: ${JSON.stringify(d)}`);
      expectSeq(d.messages, 7, 10, `retained after gap on ${t}`);
      await page.close();
    });
  }

  for (const t of ["websocket", "sse", "longpoll", "poll"]) {
    await test(`channels added and removed at run time on ${t}`, async () => {
      const [ca, cb] = [`rt-a-${t}`, `rt-b-${t}`];
      const page = await openDemo(a, { channel: ca, transports: t, poll: 300 });
      await waitConnected(page, t);
      await page.evaluate((c) => window.heraldDemo.sub.add(c), cb);
      await waitConnected(page, t);
      await sleep(1000); // the subscription of a new channel starts from now
      publish(a, ca, [{ n: 0 }]);
      publish(a, cb, [{ n: 1 }]);
      await waitCount(page, 2);
      await page.evaluate((c) => window.heraldDemo.sub.remove(c), ca);
      await sleep(1000);
      publish(a, ca, [{ n: -1 }]);
      publish(a, cb, [{ n: 2 }]);
      await waitCount(page, 3);
      await sleep(700);
      const d = await demo(page);
      expectSeq(d.messages, 0, 3, `add/remove on ${t}`);
    });
  }

  // Client auth: a token function is called before every connect; short-lived tokens are
  // refreshed (WebSocket: in place; others: reconnect with the cursor) and nothing is lost.
  for (const t of ["websocket", "sse", "longpoll", "poll"]) {
    await test(`token on ${t}: 3 s tokens expire mid-stream, are renewed, every message arrives`, async () => {
      const ch = `private:${t}`;
      const page = await openDemo(authNode, { channel: "public-none", transports: "poll", poll: 5000 });
      let calls = 0;
      await page.exposeFunction("mintToken", () => (calls++, mint(ch, "3s")));
      await page.evaluate(async ([ch, t]) => {
        const { subscribe } = await import("/herald.js");
        window.auth = { msgs: [], errors: [], states: [] };
        window.auth.sub = subscribe("", [ch], {
          transports: [t],
          pollInterval: 300,
          token: () => window.mintToken(),
          onState: (s) => window.auth.states.push(s.state),
          onMessage: (m) => window.auth.msgs.push(m.data.n),
          onError: (e) => window.auth.errors.push(e.code),
        });
      }, [ch, t]);
      await page.waitForFunction(() => window.auth.sub.state === "connected", null, { timeout: 15000 });
      publish(authNode, ch, seq(0, 5));
      await sleep(4500); // past the first token's exp
      publish(authNode, ch, seq(5, 10));
      await page.waitForFunction(() => window.auth.msgs.length >= 10, null, { timeout: 15000 }).catch(async () => {
        throw new Error(`got ${JSON.stringify(await page.evaluate(() => window.auth))}`);
      });
      await sleep(500);
      const got = await page.evaluate(() => window.auth.msgs);
      if (JSON.stringify(got) !== JSON.stringify([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
        throw new Error(`${t}: got ${JSON.stringify(got)}`);
      if (calls < 2) throw new Error(`${t}: token function called ${calls} time(s); expected a renewal`);
      const states = await page.evaluate(() => window.auth.states);
      if (t === "websocket" && states.includes("reconnecting"))
        throw new Error(`websocket reconnected instead of refreshing in place: ${JSON.stringify(states)}`);
      console.log(`     ${t}: ${calls} tokens minted`);
    });
  }

  await test("no token: refused with token_required, never connected", async () => {
    const page = await openDemo(authNode, { channel: "public-none", transports: "poll", poll: 5000 });
    await page.evaluate(async () => {
      const { subscribe } = await import("/herald.js");
      window.auth = { errors: [], states: [] };
      window.auth.sub = subscribe("", ["private:x"], {
        transports: ["sse", "longpoll"],
        onError: (e) => window.auth.errors.push(e.code),
        onState: (s) => window.auth.states.push(s.state),
      });
    });
    await page.waitForFunction(() => window.auth.errors.includes("token_required"), null, { timeout: 15000 });
    const a = await page.evaluate(() => window.auth);
    if (a.states.includes("connected")) throw new Error(`connected without a token: ${JSON.stringify(a)}`);
    await page.evaluate(() => window.auth.sub.close());
  });

  await test("screenshot of the demo page", async () => {
    const page = await openDemo(a, { channel: "demo,news" });
    await waitConnected(page, "websocket");
    publish(a, "demo", [{ text: "hello from herald" }, { text: "second message", n: 2 }]);
    publish(a, "news", [{ headline: "Herald ships a browser SDK" }]);
    await waitCount(page, 3);
    fs.mkdirSync(path.dirname(SHOT), { recursive: true });
    await page.screenshot({ path: SHOT, fullPage: true });
    console.log(`     wrote ${SHOT}`);
    await page.close();
  });

});
