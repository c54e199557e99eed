// Exact resume under broken connections, in headless chromium against real herald nodes (a
// memory-broker node, and two nodes on a real nats-server), and the SDK's position-token
// codec against the server's. Run by scripts/check-browser.sh; exits non-zero on any failure.
//   NODE_PATH=<dir>/node_modules HERALD_BIN=target/debug/herald node clients/js/test/resume.test.cjs
// HERALD_TEST_FILTER=<regex> runs only the tests whose name matches.
//
// A TCP proxy in this process sits between chromium and herald and destroys every connection
// at random moments (every 100-600 ms; each break followed by an outage of up to 200 ms in
// which new connections are reset) while 8 concurrent publishers (`herald publish`, one per
// channel) publish hundreds of messages to the 8 channels of one stream. Every message must
// arrive exactly once per channel, in order, with no gap event.
"use strict";
const path = require("path");
const H = require("./harness.cjs");
const { sleep, startNats, startNode, publish, publishPaced, brokenProxy, breaker, test } = H;

// Messages per channel, and how long their publishing lasts: longer for the plain EventSource
// (the protocol itself), shorter for each of the SDK's 8 runs.
const PLAIN = { n: 500, ms: 10000 };
const SDK = { n: 300, ms: 6000 };
const SDK_URL = path.resolve(__dirname, "../herald.js");

// 8 channel names that sort differently bytewise than by eye (upper case, punctuation).
const channelsOf = (tag) => ["news", "Chat:1", "a_b", "a-b", "a=b", "a@b", "z9", "A"].map((c) => `${tag}.${c}`);

let ctx;
const seq = (n) => Array.from({ length: n }, (_, i) => i);

// Publishes `n` messages {n: 0..} to every channel at once over `ms`, one publisher per
// channel, nodes taken in turn; resolves when all are stored.
const publishAll = (nodes, channels, { n, ms }) =>
  Promise.all(channels.map((c, i) => publishPaced(nodes[i % nodes.length], c, seq(n).map((n) => ({ n })), ms)));

// Every channel got 0..n-1 exactly once, in order, and no gap was reported.
function checkExact(got, channels, gaps, n, what) {
  const want = JSON.stringify(seq(n));
  const bad = [];
  for (const c of channels) {
    const g = got[c] || [];
    if (JSON.stringify(g) === want) continue;
    const seen = new Set(g);
    const missing = seq(n).filter((i) => !seen.has(i));
    const dups = g.length - seen.size;
    const disorder = g.some((n, i) => i > 0 && n <= g[i - 1]);
    bad.push(`${c}: ${g.length} received, ${missing.length} missing (${missing.slice(0, 12).join(",")}${missing.length > 12 ? ",…" : ""}), ${dups} duplicated${disorder ? ", out of order" : ""}`);
  }
  if (gaps.length) bad.push(`gap events: ${JSON.stringify(gaps)}`);
  if (bad.length) throw new Error(`${what}:\n       ${bad.join("\n       ")}`);
}

// A page of `origin` that runs nothing by itself (the node's /herald.js shown as text).
async function newPage(origin) {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${origin}/herald.js`);
  return page;
}

// Waits (bounded) until the page holds every message, then a little longer so that a
// duplicate would show.
async function waitAll(page, total, ms = 30000) {
  await page
    .waitForFunction((t) => Object.values(window.rx.msgs).reduce((n, l) => n + l.length, 0) >= t, total, { timeout: ms, polling: 100 })
    .catch(() => {});
  await sleep(700);
}

// A page with a plain `EventSource` (no SDK) on `url`: it reconnects by itself, sending its
// last id as Last-Event-ID.
async function plainEventSource(origin, url) {
  const page = await newPage(origin);
  await page.evaluate((url) => {
    const rx = (window.rx = { msgs: {}, gaps: [], errors: [], opens: 0, subscribed: 0 });
    const es = (window.es = new EventSource(url));
    es.onopen = () => rx.opens++;
    es.addEventListener("subscribed", () => rx.subscribed++);
    es.addEventListener("message", (e) => {
      const m = JSON.parse(e.data);
      (rx.msgs[m.channel] ||= []).push(m.data.n);
    });
    es.addEventListener("gap", (e) => rx.gaps.push(JSON.parse(e.data).channel));
    es.addEventListener("error", (e) => e.data && rx.errors.push(e.data));
  }, url);
  await page.waitForFunction(() => window.rx.subscribed > 0, null, { timeout: 10000 });
  return page;
}

// A page running the SDK (this checkout's clients/js/herald.js) over `transports`.
async function sdkPage(origin, urls, channels, transports, climbInterval = 0, prepare = async () => {}) {
  const page = await newPage(origin);
  await prepare(page);
  await page.evaluate(
    async ([urls, channels, transports, climbInterval]) => {
      const { subscribe } = await import("/herald.js");
      const rx = (window.rx = { msgs: {}, gaps: [], errors: [], connects: 0, on: {} });
      window.sub = subscribe(urls, channels, {
        transports,
        backoffMin: 20,
        backoffMax: 300,
        connectTimeout: 4000,
        climbInterval,
        longPollWait: 5,
        pollInterval: 100,
        onMessage: (m) => (rx.msgs[m.channel] ||= []).push(m.data.n),
        onGap: (g) => rx.gaps.push(g.channel),
        onError: (e) => rx.errors.push(e.code || e.status),
        onState: (s) => s.state === "connected" && (rx.connects++, (rx.on[s.transport] = (rx.on[s.transport] || 0) + 1)),
      });
    },
    [urls, channels, transports, climbInterval],
  );
  await page.waitForFunction(() => window.rx.connects > 0, null, { timeout: 10000 });
  return page;
}

// Publishes to every channel while `proxies` break at random, waits for everything, checks.
async function underBreaks(page, nodes, channels, proxies, load, what) {
  const t0 = Date.now();
  const b = breaker(proxies);
  try {
    await publishAll(nodes, channels, load);
  } finally {
    b.stop();
  }
  const published = Date.now() - t0;
  await waitAll(page, channels.length * load.n);
  const rx = await page.evaluate(() => window.rx);
  checkExact(rx.msgs, channels, rx.gaps, load.n, what);
  const reconnects = (rx.opens ?? rx.connects) - 1;
  const refused = proxies.reduce((n, p) => n + p.refused, 0);
  console.log(`     ${what}: ${channels.length} x ${load.n} messages in ${published} ms; ${b.breaks} breaks, ` +
    `${refused} connections refused in outages, ${reconnects} reconnects; exactly once, in order`);
  if (b.breaks < 5) throw new Error(`only ${b.breaks} breaks`);
}

H.main(240000, async () => {
  const { encodePositions, decodePositions } = await import(SDK_URL);
  const fast = { HERALD_SSE_RETRY: "50ms", HERALD_HISTORY_SIZE: "100000" };
  const nats = await startNats();
  const onNats = { ...fast, HERALD_BROKER: "nats", HERALD_NATS_URL: nats };
  const [mem, a, b] = await Promise.all([
    startNode("mem", { ...fast, HERALD_BROKER: "memory" }),
    startNode("na", onNats),
    startNode("nb", onNats),
  ]);
  console.log(`nats ${nats}; nodes mem ${mem.url}, na ${a.url}, nb ${b.url}`);
  ctx = await H.launchBrowser();

  await test("position tokens: the SDK's codec reads and writes the server's tokens", async () => {
    // Vectors from herald-core's position::encode (crates/herald-core/src/position.rs).
    for (const [positions, token] of RUST_VECTORS) {
      const got = encodePositions(positions);
      if (got !== token) throw new Error(`encode ${JSON.stringify(positions)}: ${got}, Rust: ${token}`);
      const back = decodePositions(token, Object.keys(positions));
      if (JSON.stringify(back) !== JSON.stringify(sortedObject(positions)))
        throw new Error(`decode ${token}: ${JSON.stringify(back)}`);
    }
    // Malformed tokens (the Rust tests' list) and a token of another set decode to null.
    const good = encodePositions({ a: "1", b: "2" });
    const hash = good.split("_")[1];
    for (const bad of ["", "x", `1_${hash}`, `1_${hash}_`, `1_${hash}_1`, `1_${hash}_1.0`, `1_${hash}_2.1`,
      `1_${hash}_1.1_1.2`, `1_${hash}_1.1_0.1`, `1_${hash}_1.A`, `1_${hash}_1.zzzzzzzzzzzzzz`])
      if (decodePositions(bad, ["a", "b"]) !== null) throw new Error(`accepted ${bad}`);
    if (decodePositions(good, ["a", "c"]) !== null || decodePositions(good, ["a"]) !== null)
      throw new Error(`${good} accepted for another set`);

    // A real multi-channel SSE stream (in chromium): every id: decodes to the positions the
    // stream's own messages imply, and re-encodes to the same text.
    const chans = ["tok.b", "tok.A", "tok.c:1"];
    for (const [c, n] of [["tok.b", 3], ["tok.A", 5], ["tok.b", 2], ["tok.c:1", 1], ["tok.A", 1]])
      publish(mem, c, seq(n).map((n) => ({ n })));
    const page = await newPage(mem.url);
    const events = await page.evaluate(
      (url) =>
        new Promise((done, fail) => {
          const out = [];
          const es = new EventSource(url);
          const keep = (e) => {
            out.push({ type: e.type, id: e.lastEventId, data: JSON.parse(e.data) });
            if (out.filter((x) => x.type === "message").length === 12) es.close(), done(out);
          };
          es.addEventListener("subscribed", keep);
          es.addEventListener("message", keep);
          setTimeout(() => fail(new Error(`only ${JSON.stringify(out)}`)), 10000);
        }),
      `/sse?${chans.map((c) => `channel=${encodeURIComponent(c)}`).join("&")}&since=0`,
    );
    const at = Object.fromEntries(chans.map((c) => [c, "0"]));
    let withEntries = 0;
    for (const e of events) {
      if (e.type === "message") at[e.data.channel] = e.data.id;
      const mine = encodePositions(at);
      if (mine !== e.id) throw new Error(`server id ${e.id}, SDK encodes ${mine} for ${JSON.stringify(at)}`);
      if (JSON.stringify(decodePositions(e.id, chans)) !== JSON.stringify(sortedObject(at)))
        throw new Error(`decode ${e.id}: ${JSON.stringify(decodePositions(e.id, chans))}`);
      if (e.id.includes("_")) withEntries++;
    }
    if (withEntries < 5) throw new Error(`only ${withEntries} ids with entries: ${JSON.stringify(events.map((e) => e.id))}`);
    console.log(`     ${events.length} SSE ids (${withEntries} with entries), e.g. ${events[events.length - 2].id}`);

    // A token the SDK builds is accepted (hash and entries) and resumes each channel from
    // its own position: /sse starts exactly there (its subscribed id is the same token) and
    // a poll returns exactly the messages after each position.
    const msgs = events.filter((e) => e.type === "message").map((e) => e.data);
    const pos = { "tok.A": msgs.filter((m) => m.channel === "tok.A")[2].id, "tok.b": msgs[0].id, "tok.c:1": "0" };
    const token = encodePositions(pos);
    const q = `${chans.map((c) => `channel=${encodeURIComponent(c)}`).join("&")}&since=${token}`;
    const want = msgs.filter((m) => BigInt(m.id) > BigInt(pos[m.channel])).map((m) => m.id);
    const poll = await (await fetch(`${mem.url}/poll?${q}`)).json();
    if (JSON.stringify(poll.messages.map((m) => m.id)) !== JSON.stringify(want))
      throw new Error(`poll since ${token}: ${JSON.stringify(poll)}; want ${want}`);
    // Its cursor (a consistent cut) decodes to a position per channel, none behind the
    // channel's last message.
    const cut = decodePositions(poll.cursor, chans);
    if (!cut || chans.some((c) => BigInt(cut[c]) < BigInt(msgs.filter((m) => m.channel === c).pop().id)))
      throw new Error(`poll cursor ${poll.cursor}: ${JSON.stringify(cut)}`);
    const sse = await sseHead(`${mem.url}/sse?${q}`, 1 + want.length);
    if (sse[0].id !== token) throw new Error(`/sse since ${token} starts at ${sse[0].id}`);
    const ids = sse.slice(1).map((e) => JSON.parse(e.data).id);
    if (JSON.stringify(ids) !== JSON.stringify(want)) throw new Error(`/sse since ${token}: ${ids}; want ${want}`);
    // A token of another channel set is refused, not misapplied.
    const other = await fetch(`${mem.url}/poll?channel=tok.A&channel=tok.b&since=${token}`);
    const body = await other.json();
    if (other.status !== 400 || body.error.code !== "invalid_cursor")
      throw new Error(`token for another set: ${other.status} ${JSON.stringify(body)}`);
  });

  // --- a plain EventSource: the browser's own reconnect with Last-Event-ID ---------------
  await test("plain EventSource, memory broker: 8 channels, random breaks, exactly once in order", async () => {
    const proxy = await brokenProxy(() => mem.port);
    const channels = channelsOf("pe-mem");
    const page = await plainEventSource(proxy.url, `/sse?channel=${channels.map(encodeURIComponent).join(",")}`);
    await underBreaks(page, [mem], channels, [proxy], PLAIN, "plain EventSource (memory)");
    await proxy.close();
  });

  await test("plain EventSource, 2 nodes on NATS: every reconnect to a random node, exactly once in order", async () => {
    const proxy = await brokenProxy(() => (Math.random() < 0.5 ? a.port : b.port));
    const channels = channelsOf("pe-nats");
    const page = await plainEventSource(proxy.url, `/sse?channel=${channels.map(encodeURIComponent).join(",")}`);
    await underBreaks(page, [a, b], channels, [proxy], PLAIN, "plain EventSource (NATS, 2 nodes)");
    await proxy.close();
  });

  // --- the SDK ---------------------------------------------------------------------------
  for (const t of ["websocket", "sse", "longpoll", "poll"]) {
    await test(`SDK over ${t}, memory broker: random breaks, exactly once in order`, async () => {
      const proxy = await brokenProxy(() => mem.port);
      const channels = channelsOf(`sdk-mem-${t}`);
      const page = await sdkPage(proxy.url, [proxy.url], channels, [t]);
      await underBreaks(page, [mem], channels, [proxy], SDK, `SDK ${t} (memory)`);
      await proxy.close();
    });
    await test(`SDK over ${t}, 2 nodes on NATS: fails over between them at every break, exactly once in order`, async () => {
      const [pa, pb] = [await brokenProxy(() => a.port), await brokenProxy(() => b.port)];
      const channels = channelsOf(`sdk-nats-${t}`);
      const page = await sdkPage(pa.url, [pa.url, pb.url], channels, [t]);
      await underBreaks(page, [a, b], channels, [pa, pb], SDK, `SDK ${t} (NATS, 2 nodes)`);
      await Promise.all([pa.close(), pb.close()]);
    });
  }

  await test("SDK switching transports under breaks (WebSocket blocked at times, climbing every 500 ms), 2 nodes on NATS: exactly once in order", async () => {
    // The positions carry over from one transport to the next: WebSocket subscribe cursors,
    // SSE since tokens, poll cursors. A browser-side "proxy" refuses 2 WebSocket upgrades in
    // 3, so the SDK keeps falling back (to SSE, long-poll, poll) and climbing back.
    const [pa, pb] = [await brokenProxy(() => a.port), await brokenProxy(() => b.port)];
    const channels = channelsOf("sdk-switch");
    const block = (page) =>
      page.routeWebSocket(/\/ws/, (ws) => (Math.random() < 2 / 3 ? ws.close({ code: 1006, reason: "blocked" }) : ws.connectToServer()));
    const sw = await sdkPage(pa.url, [pa.url, pb.url], channels, ["websocket", "sse", "longpoll", "poll"], 500, block);
    await underBreaks(sw, [a, b], channels, [pa, pb], SDK, "SDK switching transports (NATS, 2 nodes)");
    const on = await sw.evaluate(() => window.rx.on);
    console.log(`     connected per transport: ${JSON.stringify(on)}`);
    if (Object.keys(on).length < 3) throw new Error(`used only ${JSON.stringify(on)}`);
    await Promise.all([pa.close(), pb.close()]);
  });
});

const sortedObject = (o) => Object.fromEntries(Object.entries(o).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));

// The first `n` events (id and data) of an SSE stream, read with fetch.
async function sseHead(url, n) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 10000);
  const res = await fetch(url, { signal: ctl.signal });
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  const out = [];
  let buf = "";
  const dec = new TextDecoder();
  try {
    for await (const chunk of res.body) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const f = {};
        for (const line of block.split("\n")) {
          const k = line.indexOf(": ");
          if (k > 0) f[line.slice(0, k)] = line.slice(k + 2);
        }
        if (f.event) out.push(f);
        if (out.length >= n) return out;
      }
    }
  } finally {
    clearTimeout(timer);
    ctl.abort();
  }
  throw new Error(`${url}: stream ended after ${JSON.stringify(out)}`);
}

// [positions, the token herald-core's position::encode writes for them] (printed by a
// throwaway example program calling herald_core::position::encode and checking Since::parse).
const RUST_VECTORS = [
  [{ a: "42" }, "42"],
  [{ a: "7", b: "7" }, "7"],
  [{ news: "100", "chat:1": "1000037", "z.z": "100", b: "136" }, "100_1csmpu7_0.10_1.lfk1"],
  [{ a: "1", b: "2" }, "1_bch440_1.1"],
  [{ x: "18446744073709551000", y: "18446744073709551615" }, "18446744073709551000_1lb1mdm_1.h3"],
  [{ A: "9007199254740993", a: "9007199254740991", _: "9007199254740992", Z: "9007199254740991" }, "9007199254740991_zu4hi_0.2_2.1"],
  [{ news: "1795467571318000", "chat:1": "1795467571318347" }, "1795467571318000_1cpk52r_0.9n"],
  // docs/protocol.md's example (herald-core test the_documented_example_encodes_as_shown)
  [{ a: "1795467571318347", b: "1795467571318000" }, "1795467571318000_bch440_0.9n"],
  [{ ...Object.fromEntries(Array.from({ length: 38 }, (_, i) => [`c${i}`, "5"])), c1: "6", c3: "900", c10: "12", c37: "77" },
    "5_142n7my_1.1_2.7_n.ov_v.20"],
  [{ "a.b": "0", "a-b": "3", "a=b": "0", "a@b": "1", a_b: "2", "A:b": "0" }, "0_1507l52_1.3_4.1_5.2"],
];
