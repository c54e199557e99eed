// Measures the admin console in headless chromium (scripts/bench-console.sh runs it): logs in
// to ADMIN with KEY, reloads the cluster page and reports its time to first render (the node
// table drawn from the first live stats event) and first contentful paint, then keeps the page
// open with live updates for HOLD_MS. Prints one JSON line.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

(async () => {
  const { ADMIN, KEY } = process.env;
  const hold = Number(process.env.HOLD_MS || 20000);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "chromium-console-bench-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
    viewport: { width: 1280, height: 800 },
  });
  const page = await ctx.newPage();
  await page.goto(`${ADMIN}/console/`);
  await page.fill("#key", KEY);
  await page.press("#key", "Enter");
  await page.waitForSelector("#nodes tbody tr", { timeout: 20000 });
  const runs = [];
  for (let i = 0; i < 5; i++) {
    await page.reload();
    await page.waitForSelector("#nodes tbody tr", { timeout: 20000 });
    runs.push(await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const fcp = performance.getEntriesByName("first-contentful-paint")[0];
      return { rendered_ms: Math.round(performance.now()), fcp_ms: fcp ? Math.round(fcp.startTime) : null, dom_ms: Math.round(nav.domContentLoadedEventEnd) };
    }));
  }
  const bytes = await page.evaluate(() => performance.getEntriesByType("resource").concat(performance.getEntriesByType("navigation"))
    .filter((e) => e.name.includes("/console/") && !e.name.includes("/api/")).reduce((a, e) => a + (e.encodedBodySize || 0), 0));
  console.error("console open, holding");
  await new Promise((ok) => setTimeout(ok, hold));
  const median = (k) => runs.map((r) => r[k]).sort((a, b) => a - b)[2];
  console.log(JSON.stringify({ first_render_ms: median("rendered_ms"), fcp_ms: median("fcp_ms"), dom_content_loaded_ms: median("dom_ms"), page_bytes_transferred: bytes, runs }));
  await ctx.close();
  fs.rmSync(profile, { recursive: true, force: true });
})().catch((e) => (console.error(e), process.exit(1)));
