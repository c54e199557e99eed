// Browser test of client publishes (docs/sdk.md, "Publishing"): the chat example page served by
// the node (/chat) in two headless chromium tabs on two different herald nodes of a real
// nats-server. Tab A is on node 1 over WebSocket (sub.publish() sends the `publish` command);
// tab B on node 2 over SSE (sub.publish() falls back to POST /publish). Each types a message
// into the page's form; both tabs must show both messages, with the same ids, in the same
// order. A third tab whose token has no `publish` grant must show the refusal.
//   NODE_PATH=<dir>/node_modules HERALD_BIN=target/debug/herald node clients/js/test/chat.test.cjs
"use strict";
const fs = require("fs");
const path = require("path");
const { spawnSync } = require("child_process");
const H = require("./harness.cjs");
const { BIN, TMP, startNats, startNode, test } = H;

const SECRET = "chat-test-secret-0123456789abcdef0123";

function mint(user, publish) {
  const args = ["token", "--sub", user, "--channel", "chat:*", "--ttl", "10m"];
  for (const p of publish) args.push("--publish", p);
  const r = spawnSync(BIN, args, { env: { ...process.env, HERALD_AUTH_HMAC_SECRET: SECRET }, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`herald token: ${r.stderr}`);
  return r.stdout.trim();
}

function expect(cond, what) {
  if (!cond) throw new Error(what);
}

let ctx;
async function tab(node, params) {
  const page = await ctx.newPage();
  page.posts = 0; // POST /publish requests made by the page
  page.rpcPosts = 0; // POST /rpc
  page.on("request", (r) => r.method() === "POST" && new URL(r.url()).pathname === "/publish" && page.posts++);
  page.on("request", (r) => r.method() === "POST" && new URL(r.url()).pathname === "/rpc" && page.rpcPosts++);
  page.on("pageerror", (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(`${node.url}/chat?${new URLSearchParams(params)}`);
  await page.waitForFunction(() => window.heraldChat && window.heraldChat.sub.state === "connected", null, { timeout: 15000 });
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const texts = (page) => page.evaluate(() => window.heraldChat.messages.map((m) => `${m.id}:${m.data.name}:${m.data.text}`));

async function waitFor(page, n) {
  await page.waitForFunction((n) => window.heraldChat.messages.length >= n, n, { timeout: 15000 });
}

H.main(120000, async () => {
  const nats = await startNats();
  const conf = path.join(TMP, "chat.toml");
  fs.writeFileSync(conf, ["[namespaces.chat]", "publish = true", "join_leave = true"].join("\n") + "\n");
  const env = { HERALD_BROKER: "nats", HERALD_NATS_URL: nats, HERALD_CONFIG: conf, HERALD_AUTH_HMAC_SECRET: SECRET };
  // (the rpc test's node adds hook settings to these)
  const [n1, n2] = await Promise.all([startNode("c1", env), startNode("c2", env)]);
  console.log(`nats ${nats}; nodes ${n1.url} ${n2.url}; ${BIN}`);
  ctx = await H.launchBrowser();

  await test("two tabs on two nodes chat through client publishes (WebSocket and POST /publish)", async () => {
    const a = await tab(n1, { room: "r1", name: "ann", token: mint("ann", ["chat:*"]) });
    const b = await tab(n2, { room: "r1", name: "bob", token: mint("bob", ["chat:*"]), transports: "sse" });
    expect((await a.evaluate(() => window.heraldChat.sub.transport)) === "websocket", "tab A is on WebSocket");
    expect((await b.evaluate(() => window.heraldChat.sub.transport)) === "sse", "tab B is on SSE");
    await say(a, "hello from ann");
    await waitFor(b, 1);
    await say(b, "hi ann, bob here");
    await waitFor(a, 2);
    await say(a, "bye");
    await waitFor(b, 3);
    await waitFor(a, 3);
    const [ta, tb] = [await texts(a), await texts(b)];
    const want = ["ann:hello from ann", "bob:hi ann, bob here", "ann:bye"];
    expect(JSON.stringify(ta.map((t) => t.replace(/^\d+:/, ""))) === JSON.stringify(want), `tab A shows ${JSON.stringify(ta)}`);
    expect(JSON.stringify(ta) === JSON.stringify(tb), `both tabs show the same ids: ${JSON.stringify(ta)} vs ${JSON.stringify(tb)}`);
    // Tab A published over its WebSocket, tab B over HTTP.
    expect(a.posts === 0 && b.posts === 1, `POST /publish: tab A ${a.posts}, tab B ${b.posts}`);
    // What the user sees.
    expect((await b.textContent("#log")).includes("hi ann, bob here"), "tab B's page shows the message");
    // A late joiner gets the room's history (since "0") on the other transport mix.
    const c = await tab(n1, { room: "r1", name: "cy", token: mint("cy", []), transports: "longpoll" });
    await waitFor(c, 3);
    expect(JSON.stringify(await texts(c)) === JSON.stringify(ta), "history replays the same messages");
    // cy may read but not publish: the page shows the refusal and nobody gets a message.
    await say(c, "can I talk?");
    await c.waitForFunction(() => window.heraldChat.errors.length > 0, null, { timeout: 10000 });
    const errors = await c.evaluate(() => window.heraldChat.errors);
    expect(errors[0] === "publish_forbidden", `refusal code: ${errors}`);
    expect((await c.textContent("#log")).includes("not sent (publish_forbidden)"), "the page shows the refusal");
    await a.waitForTimeout(300);
    expect((await texts(a)).length === 3, "the refused message reached nobody");
    if (process.env.SCREENSHOT) await b.screenshot({ path: process.env.SCREENSHOT });
  });

  await test("rpc() reaches the application's backend over WebSocket and HTTP", async () => {
    // The scripted application backend of the Rust tests (target/<profile>/hook_backend).
    const bin = process.env.HOOK_BACKEND || path.join(path.dirname(BIN), "hook_backend");
    const { spawn } = require("child_process");
    const backend = spawn(bin, ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"], { stdio: ["pipe", "pipe", "inherit"] });
    try {
      const addrs = await new Promise((ok, fail) => {
        backend.stdout.once("data", (d) => ok(JSON.parse(String(d).split("\n")[0])));
        backend.once("error", fail);
      });
      const n3 = await startNode("c3", { ...env, HERALD_BROKER: "memory", HERALD_HOOKS_TARGET: `http://${addrs.http}/herald`, HERALD_RPC_HOOK: "true" });
      for (const transports of ["websocket", "sse"]) {
        const page = await tab(n3, { room: "r3", name: "eve", token: mint("eve", []), transports });
        const out = await page.evaluate(async () => {
          const sub = window.heraldChat.sub;
          const r = [await sub.rpc("echo", { x: [1, 2] })];
          try {
            await sub.rpc("refuse", null);
            r.push("resolved");
          } catch (e) {
            r.push(e.code);
          }
          return r;
        });
        expect(JSON.stringify(out) === JSON.stringify([{ x: [1, 2] }, "rpc_refused"]), `${transports}: ${JSON.stringify(out)}`);
        const posts = page.rpcPosts;
        expect(transports === "websocket" ? posts === 0 : posts === 2, `${transports}: POST /rpc ${posts}`);
      }
    } finally {
      backend.kill();
    }
  });

  await test("publish() rejects with the server's code over WebSocket and HTTP", async () => {
    const page = await tab(n1, { room: "r2", name: "dee", token: mint("dee", ["chat:r2"]) });
    const codes = await page.evaluate(async () => {
      const sub = window.heraldChat.sub;
      const out = [];
      for (const [ch, data] of [["chat:other", 1], ["news:x", 1], ["chat:r2", "x".repeat(20000)]]) {
        try {
          await sub.publish(ch, data);
          out.push("ok");
        } catch (e) {
          out.push(e.code);
        }
      }
      const ok = await sub.publish("chat:r2", { n: 1 });
      out.push(typeof ok.cursor);
      return out;
    });
    expect(JSON.stringify(codes) === JSON.stringify(["publish_forbidden", "publish_disabled", "message_too_large", "string"]), `codes ${codes}`);
  });
});
