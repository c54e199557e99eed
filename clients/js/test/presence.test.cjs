// Browser tests of the SDK's side of docs/presence.md: client ids, join/leave events, the
// server's endings (Disconnect with and without reconnect, revoked tokens) and server-side
// unsubscribe/subscribe. Debian's chromium, headless (playwright-core), against two real herald
// nodes (HERALD_BIN) on a real nats-server: the page on one node, the CLI's gRPC calls on the
// same node, then other clients and the calls on the other node (the cluster-wide part).
// Exits non-zero on any failure.
//   NODE_PATH=<dir>/node_modules HERALD_BIN=target/debug/herald node clients/js/test/presence.test.cjs
"use strict";
const fs = require("fs");
const path = require("path");
const { spawnSync } = require("child_process");
const H = require("./harness.cjs");
const { BIN, TMP, sleep, startNats, startNode, publish, test } = H;

const SECRET = "presence-test-secret-0123456789abcdef";

// Mints a token the way an app backend would (here: `herald token`), with the claims of
// docs/presence.md: `sub` (the user), `info` (shown in join/leave), `jti` (and `iat`).
let jtis = 0;
function mint(user, info, ttl = "10m") {
  const jti = `jti-${user}-${++jtis}`;
  const args = ["token", "--sub", user, "--channel", "*", "--ttl", ttl, "--jti", jti];
  if (info !== undefined) args.push("--info", JSON.stringify(info));
  const r = spawnSync(BIN, args, { env: { ...process.env, HERALD_AUTH_HMAC_SECRET: SECRET }, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`herald token: ${r.stderr}`);
  return r.stdout.trim();
}

// `herald <args> --grpc <node>`: the operator's calls of docs/presence.md.
function cli(node, ...args) {
  const r = spawnSync(BIN, [...args, "--grpc", node.grpc], { encoding: "utf8", timeout: 20000 });
  if (r.status !== 0) throw new Error(`herald ${args.join(" ")}: exit ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout.trim();
}

let ctx;
// A page of node `at` (its demo page, on an anonymous channel, polling rarely: a document
// from the node, so its WebSockets and EventSources may reach the nodes), which counts the
// requests it makes to /sse, /ws and /poll.
async function newPage(at) {
  const page = await ctx.newPage();
  page.requests = { sse: [], ws: [], poll: [] };
  const count = (url) => {
    const u = new URL(url);
    const k = u.pathname.slice(1);
    if (k in page.requests && u.searchParams.get("token")) page.requests[k].push(u);
  };
  page.on("request", (r) => count(r.url()));
  page.on("websocket", (ws) => count(ws.url()));
  page.on("console", (m) => {
    const t = m.text(); // refused or cut connections are expected here
    if (!/Failed to load resource|WebSocket connection to|EventSource/.test(t)) console.log(`  [page] ${t}`);
  });
  page.on("pageerror", (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${at.url}/?${new URLSearchParams({ channel: "pub:page", transports: "poll", poll: 600000 })}`);
  await page.waitForFunction(() => window.heraldDemo && window.heraldDemo.sub, null, { timeout: 10000 });
  await page.evaluate(() => window.heraldDemo.sub.close());
  return page;
}

// Starts an SDK subscription named `name` in the page; it logs every event it emits.
async function sdk(page, name, urls, channels, opts) {
  await page.evaluate(async ([name, urls, channels, opts]) => {
    const { subscribe } = await import("/herald.js");
    window.subs = window.subs || {};
    const r = (window.subs[name] = { log: [] });
    r.sub = subscribe(urls, channels, { backoffMin: 100, backoffMax: 1000, pollInterval: 300, climbInterval: 0, ...opts });
    for (const type of ["message", "join", "leave", "disconnect", "subscribed", "unsubscribed", "error", "state"])
      r.sub.addEventListener(type, (e) =>
        r.log.push({ type, detail: e.detail, clientId: r.sub.clientId, cursor: r.sub.cursor, state: r.sub.state }));
  }, [name, urls, channels, opts]);
}

const log = (page, name, type) =>
  page.evaluate(([name, type]) => window.subs[name].log.filter((e) => !type || e.type === type), [name, type]);
const sub = (page, name) =>
  page.evaluate((name) => {
    const s = window.subs[name].sub;
    return { state: s.state, transport: s.transport, clientId: s.clientId, cursor: s.cursor, channels: [...s.channels] };
  }, name);
const msgs = async (page, name) => (await log(page, name, "message")).map((e) => `${e.detail.channel}/${e.detail.data.n}`);

// Waits until `pred(log of name)` (a function's source, run in the page) holds.
async function until(page, name, pred, what, ms = 15000) {
  const r = `window.subs[${JSON.stringify(name)}]`;
  await page
    .waitForFunction(`(${pred})(${r}.log, ${r}.sub)`, null, { timeout: ms })
    .catch(async () => {
      const l = await log(page, name);
      throw new Error(`${name}: ${what} not seen in ${ms} ms; events: ${JSON.stringify(l.map(({ type, detail }) => ({ type, detail })))}`);
    });
}

const connected = (page, name, ms) => until(page, name, (l, s) => s.state === "connected", "state connected", ms);

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}
const same = (got, want, what) =>
  expect(JSON.stringify(got) === JSON.stringify(want), `${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);

const seq = (ch, a, b) => Array.from({ length: b - a }, (_, i) => `${ch}/${a + i}`);
const vals = (a, b) => Array.from({ length: b - a }, (_, i) => ({ n: a + i }));
const CLIENT_ID = /^[0-9a-f]{12}-\d+$/;

H.main(240000, async () => {
  const nats = await startNats();
  const conf = path.join(TMP, "presence.toml");
  fs.writeFileSync(
    conf,
    [
      "[namespaces.room]", "presence = true", "join_leave = true",
      "[namespaces.quiet]", "presence = true", // presence without join/leave events
      "[namespaces.pub]", "anonymous = true",
    ].join("\n") + "\n",
  );
  const env = {
    HERALD_BROKER: "nats",
    HERALD_NATS_URL: nats,
    HERALD_CONFIG: conf,
    HERALD_AUTH_HMAC_SECRET: SECRET,
    HERALD_AUTH_LEEWAY: "0s",
    HERALD_SSE_RETRY: "300ms", // a plain EventSource would come back quickly: we check it does not
  };
  const [p1, p2] = await Promise.all([startNode("p1", env), startNode("p2", env)]);
  console.log(`nats ${nats}; nodes ${p1.url} ${p2.url}; ${BIN}`);
  ctx = await H.launchBrowser();

  for (const t of ["websocket", "sse", "longpoll"]) {
    await test(`clientId on ${t}`, async () => {
      const page = await newPage(p1);
      await sdk(page, "c", p1.url, [`room:cid-${t}`], { transports: [t], token: mint(`cid-${t}`) });
      await connected(page, "c");
      const s = await sub(page, "c");
      if (t === "longpoll") same(s.clientId, null, "clientId on longpoll");
      else expect(CLIENT_ID.test(s.clientId || ""), `clientId ${JSON.stringify(s.clientId)} is not <12 hex>-<n>`);
    });
  }

  for (const [t, other] of [["websocket", "p1"], ["sse", "p1"], ["websocket", "p2"], ["sse", "p2"]]) {
    const where = other === "p1" ? "same node" : "from the other node";
    await test(`join/leave on ${t}, ${where}: with user and info, own join included, no position moved`, async () => {
      const bobAt = other === "p1" ? p1 : p2;
      const [room, quiet] = [`room:jl-${t}-${other}`, `quiet:jl-${t}-${other}`];
      const page = await newPage(p1);
      await sdk(page, "alice", p1.url, [room, quiet], { transports: [t], token: mint(`alice-${t}`, { name: "Alice" }) });
      await connected(page, "alice");
      await until(page, "alice", (l) => l.some((e) => e.type === "join"), "alice's own join");
      const me = (await sub(page, "alice")).clientId;
      const own = (await log(page, "alice", "join"))[0];
      same(own.detail, { channel: room, client: me, user: `alice-${t}`, info: { name: "Alice" } }, "alice's own join");
      const before = (await sub(page, "alice")).cursor;
      // Bob: another client of another user, over the same transport.
      await sdk(page, "bob", bobAt.url, [room, quiet], { transports: [t], token: mint(`bob-${t}`, { name: "Bob" }) });
      await connected(page, "bob");
      const bob = (await sub(page, "bob")).clientId;
      expect(bob && bob !== me, `bob's clientId ${bob} (alice's ${me})`);
      await until(page, "alice", (l) => l.filter((e) => e.type === "join").length >= 2, "bob's join");
      await page.evaluate(() => window.subs.bob.sub.close());
      await until(page, "alice", (l) => l.some((e) => e.type === "leave"), "bob's leave");
      await sleep(500);
      const events = (await log(page, "alice")).filter((e) => e.type === "join" || e.type === "leave");
      same(
        events.map((e) => [e.type, e.detail]),
        [
          ["join", { channel: room, client: me, user: `alice-${t}`, info: { name: "Alice" } }],
          ["join", { channel: room, client: bob, user: `bob-${t}`, info: { name: "Bob" } }],
          ["leave", { channel: room, client: bob, user: `bob-${t}`, info: { name: "Bob" } }],
        ],
        "alice's join/leave events (none for the quiet: namespace)",
      );
      const s = await sub(page, "alice");
      same(s.cursor, before, "alice's position after join/leave events");
      same(s.state, "connected", "alice's state");
      // Messages still flow, exactly, after the ephemeral events.
      publish(bobAt, room, vals(0, 3));
      await until(page, "alice", (l) => l.filter((e) => e.type === "message").length >= 3, "3 messages");
      same(await msgs(page, "alice"), seq(room, 0, 3), "messages after join/leave");
    });
  }

  for (const t of ["websocket", "sse", "longpoll"]) {
    await test(`disconnect without reconnect on ${t}: disconnect event, closed for good`, async () => {
      const [user, ch] = [`dis-${t}`, `feed:dis-${t}`];
      const page = await newPage(p1);
      await sdk(page, "d", p1.url, [ch], { transports: [t], token: mint(user) });
      await connected(page, "d");
      if (t === "longpoll") await sleep(500); // the held request, after the first immediate one
      const kind = { websocket: "ws", sse: "sse", longpoll: "poll" }[t];
      const n = page.requests[kind].length;
      const out = cli(p1, "disconnect", user, "--reason", "maintenance");
      await until(page, "d", (l) => l.some((e) => e.type === "disconnect"), "a disconnect event");
      const [d] = await log(page, "d", "disconnect");
      same(d.detail, { code: "disconnected", reason: "maintenance", reconnect: false }, `disconnect event (CLI said ${out})`);
      await sleep(2500); // several SSE retry periods (HERALD_SSE_RETRY=300ms) and backoffs
      publish(p1, ch, vals(0, 2));
      await sleep(500);
      const s = await sub(page, "d");
      same(s.state, "closed", "state after disconnect");
      const after = (await log(page, "d")).slice((await log(page, "d")).findIndex((e) => e.type === "disconnect") + 1);
      same(after.map((e) => e.type === "state" ? e.detail.state : e.type), ["closed"], "events after the disconnect");
      same(page.requests[kind].length, n, `requests to the node after the disconnect (${t})`);
      same(await msgs(page, "d"), [], "messages");
    });
  }

  for (const t of ["websocket", "sse", "longpoll"]) {
    await test(`disconnect --reconnect on ${t}: comes back, no message lost or repeated`, async () => {
      const [user, ch] = [`rec-${t}`, `feed:rec-${t}`];
      const page = await newPage(p1);
      await sdk(page, "r", [p1.url, p2.url], [ch], { transports: [t], token: mint(user) });
      await connected(page, "r");
      const first = (await sub(page, "r")).clientId;
      publish(p1, ch, vals(0, 5));
      await until(page, "r", (l) => l.filter((e) => e.type === "message").length >= 5, "5 messages");
      if (t === "longpoll") await sleep(500);
      cli(p1, "disconnect", user, "--reconnect");
      publish(p2, ch, vals(5, 10)); // while the SDK reconnects
      await until(page, "r", (l) => l.some((e) => e.type === "disconnect"), "a disconnect event");
      const [d] = await log(page, "r", "disconnect");
      same([d.detail.code, d.detail.reconnect], ["disconnected", true], "disconnect event");
      await until(page, "r", (l, s) => s.state === "connected" && l.some((e) => e.type === "disconnect"), "connected again");
      publish(p1, ch, vals(10, 15));
      await until(page, "r", (l) => l.filter((e) => e.type === "message").length >= 15, "15 messages");
      await sleep(500);
      same(await msgs(page, "r"), seq(ch, 0, 15), "messages across the disconnect");
      const again = (await sub(page, "r")).clientId;
      if (t !== "longpoll") expect(again && again !== first, `clientId after reconnect: ${again} (before: ${first})`);
    });
  }

  for (const t of ["websocket", "sse"]) {
    await test(`server-side unsubscribe on ${t}: delivery stops, a reconnect does not bring the channel back`, async () => {
      const [user, keep, drop] = [`uns-${t}`, `feed:keep-${t}`, `feed:drop-${t}`];
      const page = await newPage(p1);
      await sdk(page, "u", p1.url, [keep, drop], { transports: [t], token: mint(user) });
      await connected(page, "u");
      cli(p1, "unsubscribe-user", user, drop);
      await until(page, "u", (l) => l.some((e) => e.type === "unsubscribed"), "an unsubscribed event");
      same((await log(page, "u", "unsubscribed"))[0].detail, { channels: [drop], reason: "server" }, "unsubscribed event");
      same((await sub(page, "u")).channels, [keep], "the SDK's channels");
      publish(p1, drop, vals(0, 2));
      publish(p1, keep, vals(0, 2));
      await until(page, "u", (l) => l.filter((e) => e.type === "message").length >= 2, "2 messages");
      await sleep(700);
      same(await msgs(page, "u"), seq(keep, 0, 2), "messages after the server's unsubscribe");
      // A reconnect (the server asks for one) subscribes the SDK's set: without `drop`.
      const sse = page.requests.sse.length;
      cli(p1, "disconnect", user, "--reconnect");
      await until(page, "u", (l, s) => s.state === "connected" && l.some((e) => e.type === "disconnect"), "connected again");
      publish(p1, drop, vals(2, 4));
      publish(p1, keep, vals(2, 4));
      await until(page, "u", (l) => l.filter((e) => e.type === "message").length >= 4, "4 messages");
      await sleep(700);
      same(await msgs(page, "u"), seq(keep, 0, 4), "messages after the reconnect");
      if (t === "sse") {
        const urls = page.requests.sse.slice(sse).map((u) => u.searchParams.getAll("channel"));
        same(urls, [[keep]], "channels of the reopened /sse");
      }
    });
  }

  for (const t of ["websocket", "sse"]) {
    await test(`server-side subscribe on ${t}: the channel is delivered and kept, with its position, across a reconnect`, async () => {
      const [user, mine, added] = [`sub-${t}`, `feed:mine-${t}`, `feed:added-${t}`];
      const page = await newPage(p1);
      await sdk(page, "s", [p1.url, p2.url], [mine], { transports: [t], token: mint(user) });
      await connected(page, "s");
      cli(p1, "subscribe-user", user, added);
      await until(page, "s", (l) => l.some((e) => e.type === "subscribed"), "a subscribed event");
      const [ev] = await log(page, "s", "subscribed");
      same([ev.detail.channels, ev.detail.server, typeof ev.detail.cursor], [[added], true, "string"], "subscribed event");
      same((await sub(page, "s")).channels.sort(), [added, mine].sort(), "the SDK's channels");
      publish(p1, added, vals(0, 3));
      publish(p1, mine, vals(0, 1));
      await until(page, "s", (l) => l.filter((e) => e.type === "message").length >= 4, "4 messages");
      // Reconnect; what is published meanwhile on the added channel arrives after it.
      cli(p1, "disconnect", user, "--reconnect");
      publish(p2, added, vals(3, 6));
      await until(page, "s", (l, s) => s.state === "connected" && l.some((e) => e.type === "disconnect"), "connected again");
      publish(p1, added, vals(6, 8));
      await until(page, "s", (l) => l.filter((e) => e.type === "message").length >= 9, "9 messages");
      await sleep(700);
      const got = await msgs(page, "s");
      same(got.filter((m) => m.startsWith(added)), seq(added, 0, 8), "messages of the server-added channel");
      same(got.filter((m) => m.startsWith(mine)), seq(mine, 0, 1), "messages of the own channel");
    });
  }

  for (const [t, how] of [["websocket", "user"], ["sse", "token"], ["longpoll", "user"]]) {
    await test(`revoke-${how} on ${t}: token_revoked, closed for good`, async () => {
      const [user, ch] = [`rev-${t}`, `feed:rev-${t}`];
      const page = await newPage(p1);
      const token = mint(user);
      await sdk(page, "v", p1.url, [ch], { transports: [t], token });
      await connected(page, "v");
      if (t === "longpoll") await sleep(500);
      const jti = JSON.parse(Buffer.from(token.split(".")[1], "base64url")).jti;
      // Issued before: a token minted this second counts as issued before the next one.
      if (how === "user") cli(p1, "revoke-user", user, "--issued-before", String(Math.floor(Date.now() / 1000) + 1));
      else cli(p1, "revoke-token", jti);
      await until(page, "v", (l) => l.some((e) => e.type === "disconnect"), "a disconnect event");
      const [d] = await log(page, "v", "disconnect");
      same([d.detail.code, d.detail.reconnect], ["token_revoked", false], "disconnect event");
      await sleep(1500);
      same((await sub(page, "v")).state, "closed", "state after revocation");
      const errors = (await log(page, "v", "error")).map((e) => e.detail.code);
      expect(errors.includes("token_revoked"), `error events: ${JSON.stringify(errors)}`);
    });
  }

  await test("websocket close 4001 (token expired) is no disconnect: the SDK reconnects with a fresh token", async () => {
    const [user, ch] = ["expiring", "feed:expiring"];
    const page = await newPage(p1);
    await page.exposeFunction("mintShort", () => mint(user, undefined, "3s"));
    // The second call (the in-place refresh at 80% of the token's life) fails: the server
    // closes with 4001 at `exp`, and the SDK's reconnect asks for a token again.
    await page.evaluate(() => {
      let calls = 0;
      window.tokenFn = async () => (++calls === 2 ? Promise.reject(new Error("no refresh")) : window.mintShort());
    });
    await page.evaluate(async ([url, ch]) => {
      const { subscribe } = await import("/herald.js");
      const r = (window.subs = { x: { log: [] } }).x;
      r.sub = subscribe(url, [ch], { transports: ["websocket"], backoffMin: 100, token: window.tokenFn });
      for (const type of ["message", "disconnect", "state", "error"])
        r.sub.addEventListener(type, (e) => r.log.push({ type, detail: e.detail }));
    }, [p1.url, ch]);
    await connected(page, "x");
    publish(p1, ch, vals(0, 3));
    await until(page, "x", (l) => l.filter((e) => e.type === "state" && e.detail.state === "reconnecting").length >= 1, "a reconnect at expiry", 8000);
    await connected(page, "x");
    publish(p1, ch, vals(3, 6));
    await until(page, "x", (l) => l.filter((e) => e.type === "message").length >= 6, "6 messages");
    await sleep(300);
    same(await msgs(page, "x"), seq(ch, 0, 6), "messages across the expiry");
    same((await log(page, "x", "disconnect")).length, 0, "disconnect events");
  });

  // The operator's calls reach every node: the page is on p1, the calls go to p2.
  for (const t of ["websocket", "sse"]) {
    await test(`actions through the other node on ${t}: unsubscribe-user, subscribe-user, disconnect`, async () => {
      const [user, a, b] = [`far-${t}`, `feed:far-a-${t}`, `feed:far-b-${t}`];
      const page = await newPage(p1);
      await sdk(page, "f", p1.url, [a], { transports: [t], token: mint(user) });
      await connected(page, "f");
      const calls = [];
      calls.push(cli(p2, "subscribe-user", user, b));
      await until(page, "f", (l) => l.some((e) => e.type === "subscribed"), `a subscribed event (CLI: ${calls})`, 5000);
      calls.push(cli(p2, "unsubscribe-user", user, a));
      await until(page, "f", (l) => l.some((e) => e.type === "unsubscribed"), `an unsubscribed event (CLI: ${calls})`, 5000);
      same((await sub(page, "f")).channels, [b], "the SDK's channels");
      calls.push(cli(p2, "disconnect", user));
      await until(page, "f", (l, s) => s.state === "closed", `state closed (CLI: ${calls})`, 5000);
    });
  }

  // What docs/sdk.md says of a plain EventSource after a server-side change: its ids keep
  // naming its URL's channel set, so its own reconnect (the URL plus Last-Event-ID) resumes the
  // URL's channels: a server-added channel is not resumed, a server-removed one comes back.
  await test("a plain EventSource reconnects after a server-side subscribe, without the added channel", async () => {
    const [user, mine, added] = ["plain-es", "feed:plain-mine", "feed:plain-added"];
    const page = await newPage(p1);
    const answers = []; // the node's answers to the EventSource's requests
    page.on("response", async (r) => {
      if (new URL(r.url()).pathname !== "/sse") return;
      answers.push({ url: r.url(), status: r.status() });
    });
    await page.evaluate(([url, ch, token]) => {
      window.plain = { events: [], opens: 0 };
      const es = (window.plain.es = new EventSource(`${url}/sse?channel=${ch}&token=${token}`));
      es.onopen = () => window.plain.opens++;
      for (const t of ["subscribed", "message", "disconnect", "error"])
        es.addEventListener(t, (e) => window.plain.events.push({ t, data: e.data || null, id: e.lastEventId }));
    }, [p1.url, mine, mint(user)]);
    const wait = (what, f) =>
      page.waitForFunction(f, null, { timeout: 10000 }).catch(async () => {
        throw new Error(`plain EventSource: ${what} not seen: ${JSON.stringify(await page.evaluate(() => window.plain))}`);
      });
    await wait("subscribed", () => window.plain.events.some((e) => e.t === "subscribed"));
    cli(p1, "subscribe-user", user, added);
    await wait("the server's subscribed", () => window.plain.events.filter((e) => e.t === "subscribed").length >= 2);
    publish(p1, added, vals(0, 1));
    await wait("a message", () => window.plain.events.some((e) => e.t === "message"));
    cli(p1, "disconnect", user, "--reconnect");
    await sleep(2000); // several retry periods (HERALD_SSE_RETRY=300ms)
    publish(p1, added, vals(1, 2));
    publish(p1, mine, vals(0, 1));
    await sleep(1000);
    const p = await page.evaluate(() => ({ ...window.plain, es: { readyState: window.plain.es.readyState } }));
    const got = p.events.filter((e) => e.t === "message").map((e) => JSON.parse(e.data)).map((m) => `${m.channel}/${m.data.n}`);
    const last = p.events.filter((e) => e.t !== "error").pop();
    // Its reconnect names the URL's channel set, and so does its Last-Event-ID: accepted.
    // (The same request from here, to read the answer.)
    const again = await fetch(answers[0].url, { headers: { "last-event-id": last.id } });
    const code = again.status === 200 ? "" : (await again.json()).error.code;
    if (again.body) await again.body.cancel().catch(() => {});
    console.log(`     plain EventSource: ${p.opens} open(s), readyState ${p.es.readyState}; last id ${last.id}, ` +
      `requests answered ${answers.map((a) => a.status)}; that id on its URL: ${again.status} ${code}`);
    same(answers.map((a) => a.status), [200, 200], "answers to the EventSource's requests");
    same([again.status, code], [200, ""], "its URL with its Last-Event-ID");
    same([p.opens, p.es.readyState], [2, 1], "opens, readyState (1: OPEN)");
    same(got, [`${added}/0`, `${mine}/0`], "a plain EventSource's messages");
  });

  await test("a plain EventSource gets a server-removed channel back at its reconnect", async () => {
    const [user, mine, gone] = ["plain-un", "feed:plain-un-mine", "feed:plain-un-gone"];
    const page = await newPage(p1);
    const answers = [];
    page.on("response", (r) => new URL(r.url()).pathname === "/sse" && answers.push(r.status()));
    await page.evaluate(([url, token, ...chs]) => {
      window.plain = { events: [], opens: 0 };
      const es = (window.plain.es = new EventSource(`${url}/sse?${chs.map((c) => `channel=${c}`).join("&")}&token=${token}`));
      es.onopen = () => window.plain.opens++;
      for (const t of ["subscribed", "unsubscribed", "message", "disconnect", "error"])
        es.addEventListener(t, (e) => window.plain.events.push({ t, data: e.data || null, id: e.lastEventId }));
    }, [p1.url, mint(user), mine, gone]);
    const wait = (what, f) =>
      page.waitForFunction(f, null, { timeout: 10000 }).catch(async () => {
        throw new Error(`plain EventSource: ${what} not seen: ${JSON.stringify(await page.evaluate(() => window.plain))}`);
      });
    await wait("subscribed", () => window.plain.events.some((e) => e.t === "subscribed"));
    publish(p1, gone, vals(0, 1));
    publish(p1, mine, vals(0, 1));
    await wait("2 messages", () => window.plain.events.filter((e) => e.t === "message").length >= 2);
    cli(p1, "unsubscribe-user", user, gone);
    await wait("unsubscribed", () => window.plain.events.some((e) => e.t === "unsubscribed"));
    publish(p1, mine, vals(1, 2));
    await wait("3 messages", () => window.plain.events.filter((e) => e.t === "message").length >= 3);
    cli(p1, "disconnect", user, "--reconnect");
    await sleep(2000);
    publish(p1, gone, vals(1, 2));
    publish(p1, mine, vals(2, 3));
    await sleep(1000);
    const p = await page.evaluate(() => ({ ...window.plain, es: { readyState: window.plain.es.readyState } }));
    const got = p.events.filter((e) => e.t === "message").map((e) => JSON.parse(e.data)).map((m) => `${m.channel}/${m.data.n}`);
    console.log(`     plain EventSource: ${p.opens} open(s), readyState ${p.es.readyState}, answers ${answers}; ` +
      `ids ${p.events.map((e) => e.id).filter((id, i, a) => id && id !== a[i - 1]).join(" ")}`);
    // Its reconnect names the URL's channels, the removed one included: it is back.
    same([p.opens, p.es.readyState, answers], [2, 1, [200, 200]], "opens, readyState (1: OPEN), answers");
    same(got, [`${gone}/0`, `${mine}/0`, `${mine}/1`, `${gone}/1`, `${mine}/2`], "a plain EventSource's messages");
  });
});
