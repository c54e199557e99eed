// Herald console: one hand-written script, no framework, no build step. Every call goes to
// /console/api/..., the HTTP/JSON API's own requests run with the session's key (the key never
// reaches this page). Text from the server is always set with textContent, never as HTML.
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const POINTS = 120; // sparkline ring buffers: two minutes at one point per second
  const TAIL_MAX = 200; // messages kept in the live tail
  const PAGE = 50; // channels per page
  const PROTOCOLS = ["websocket", "sse", "longpoll", "poll"];
  const state = { session: null, stats: null, local: null, es: null, tail: null, page: null, live: false };
  // Ring buffers: cluster-wide connections per protocol, this node's deliveries per second,
  // and each node's total connections.
  const series = { websocket: [], sse: [], longpoll: [], poll: [], deliveries: [], nodes: {} };
  let lastDelivered = null;

  // h("tag.class", {attr: v, onclick: f}, child...): builds elements; strings become text.
  function h(spec, attrs, ...children) {
    // A second argument that is not a plain object is the first child.
    if (attrs !== null && attrs !== undefined && (typeof attrs !== "object" || Array.isArray(attrs) || attrs.nodeType))
      (children.unshift(attrs), (attrs = {}));
    const [tag, ...classes] = spec.split(".");
    const el = document.createElement(tag);
    if (classes.length) el.className = classes.join(" ");
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) el.append(c.nodeType ? c : String(c));
    return el;
  }
  const svgNS = "http://www.w3.org/2000/svg";
  function spark(values, color, cls = "line") {
    const svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("class", cls);
    svg.setAttribute("viewBox", `0 0 ${POINTS} 36`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const max = Math.max(1, ...values);
    // The newest point at the right edge; until the buffer fills, a window of at least 30
    // points spans the width.
    const step = POINTS / (Math.max(values.length, 30) - 1);
    const x0 = POINTS - (values.length - 1) * step;
    const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(34 - (v / max) * 32).toFixed(1)}`).join(" ");
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", pts);
    line.setAttribute("stroke", color);
    svg.append(line);
    return svg;
  }
  const push = (arr, v) => (arr.push(v), arr.length > POINTS && arr.shift());
  const fmtUptime = (s) =>
    s >= 86400 ? `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h` :
    s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m` :
    s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
  const color = (p) => getComputedStyle(document.documentElement).getPropertyValue(`--${p}`).trim() || "#0b63c5";

  // One JSON call. Resolves {ok, status, body}; a 401 sends the page back to the login.
  async function call(path, body, method = body === undefined ? "GET" : "POST") {
    const init = { method, credentials: "same-origin", headers: { "X-Herald-Console": "1" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(`/console/api/${path}`, init);
    } catch (e) {
      return { ok: false, status: 0, body: { error: { code: "unavailable", message: `node unreachable: ${e.message}` } } };
    }
    let json = null;
    try {
      json = await r.json();
    } catch {
      json = { error: { code: "unknown", message: `HTTP ${r.status}` } };
    }
    if (r.status === 401 && path !== "login") showLogin("Your session ended: log in again.");
    return { ok: r.ok, status: r.status, body: json };
  }
  const errText = (r) => (r.body && r.body.error ? `${r.body.error.code}: ${r.body.error.message}` : `HTTP ${r.status}`);

  // ---- confirmation dialog ----
  function confirmAction(text, okLabel) {
    const d = $("#confirm");
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    return new Promise((ok) => {
      d.addEventListener("close", () => ok(d.returnValue === "ok"), { once: true });
      d.returnValue = "";
      d.showModal();
    });
  }

  // ---- login / session ----
  function showLogin(message) {
    stopStats();
    stopTail();
    state.session = null;
    $("#top").hidden = true;
    $("#view").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = message || "";
    $("#key").focus();
  }
  async function start() {
    const r = await call("session");
    if (!r.ok) return showLogin(r.status === 401 ? "" : errText(r));
    state.session = r.body;
    $("#login").hidden = true;
    $("#top").hidden = false;
    $("#view").hidden = false;
    $("#who").textContent = r.body.open ? `node ${r.body.node_id} · open console (no key)` : `node ${r.body.node_id} · key ${r.body.key_id}`;
    startStats();
    route();
  }
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("#key").value;
    $("#login-error").textContent = "";
    const r = await call("login", { key });
    if (!r.ok) return ($("#login-error").textContent = `Refused: ${errText(r)}`);
    $("#key").value = "";
    start();
  });
  $("#logout").addEventListener("click", async () => {
    await call("logout", {});
    showLogin("Logged out.");
  });

  // ---- live stats (WatchStats as server-sent events) ----
  function startStats() {
    stopStats();
    const es = new EventSource("/console/api/stats/stream");
    state.es = es;
    es.addEventListener("stats", (ev) => {
      const { stats, local } = JSON.parse(ev.data);
      state.stats = stats;
      state.local = local;
      state.live = true;
      for (const p of PROTOCOLS) push(series[p], stats.totals.connections[p]);
      const d = PROTOCOLS.reduce((a, p) => a + local.delivered[p], 0);
      if (lastDelivered) {
        const dt = Math.max(0.001, (local.ts - lastDelivered.ts) / 1000);
        push(series.deliveries, Math.max(0, (d - lastDelivered.d) / dt));
      }
      lastDelivered = { d, ts: local.ts };
      for (const n of stats.nodes) {
        const arr = (series.nodes[n.node_id] = series.nodes[n.node_id] || []);
        push(arr, PROTOCOLS.reduce((a, p) => a + n.connections[p], 0));
      }
      banners();
      if (state.page === "cluster") renderCluster();
    });
    es.addEventListener("failed", (ev) => {
      state.live = false;
      banners(JSON.parse(ev.data).error.message);
    });
    es.onerror = async () => {
      state.live = false;
      banners();
      if (es.readyState === EventSource.CLOSED) {
        const r = await call("session");
        if (r.ok && state.es === es) setTimeout(startStats, 1000);
      }
    };
  }
  function stopStats() {
    if (state.es) state.es.close();
    state.es = null;
  }
  function banners(extra) {
    const b = $("#banners");
    b.replaceChildren();
    const l = state.local;
    if (!state.session) return;
    if (l && l.broker !== "connected")
      b.append(h("div.banner.bad", { "data-banner": "broker" }, `Broker down: node ${l.node_id} cannot reach ${l.broker_kind}; publishes fail with UNAVAILABLE until it is back.`));
    const me = state.stats && state.stats.nodes.find((n) => n.node_id === state.session.node_id);
    if (me && me.draining)
      b.append(h("div.banner.warn", { "data-banner": "draining" }, `This node (${me.node_id}) is draining: its clients are moving to other nodes. Open the console of another node.`));
    if (!state.live) b.append(h("div.banner.warn", { "data-banner": "stale" }, `Live updates interrupted${extra ? `: ${extra}` : ""}; reconnecting…`));
  }

  // ---- router ----
  function route() {
    if (!state.session) return;
    const hash = location.hash || "#/cluster";
    const [, page, ...rest] = hash.split("/");
    stopTail();
    state.page = page;
    for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === page || (page === "channel" && a.dataset.page === "channels"));
    const view = $("#view");
    view.replaceChildren();
    if (page === "channels") renderChannels(view);
    else if (page === "channel") renderChannel(view, decodeURIComponent(rest.join("/")));
    else if (page === "users") renderUsers(view);
    else {
      state.page = "cluster";
      renderCluster();
    }
    document.title = `Herald · ${state.page}`;
  }
  window.addEventListener("hashchange", route);
  // Keys: 1/2/3 pages, "/" focuses the first filter or field, Escape leaves a field.
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (e.key === "Escape" && typing) return document.activeElement.blur();
    if (typing || e.ctrlKey || e.metaKey || e.altKey || !state.session) return;
    const pages = { 1: "#/cluster", 2: "#/channels", 3: "#/users" };
    if (pages[e.key]) location.hash = pages[e.key];
    else if (e.key === "/") {
      const f = $("#view input, #view textarea");
      if (f) (e.preventDefault(), f.focus());
    }
  });

  // ---- cluster page ----
  function renderCluster() {
    const view = $("#view");
    const s = state.stats;
    if (!s) return view.replaceChildren(h("p.hint", { text: "Waiting for the first stats…" }));
    // Keep focus (a focused Drain button) across the re-render.
    const focused = document.activeElement && document.activeElement.dataset.drain;
    const sparks = h("div.sparks",
      PROTOCOLS.map((p) => h("div.spark", { "data-spark": p },
        h("div.label", h("span", { text: p }), h("span.value", { "data-total": p, text: String(s.totals.connections[p]) })),
        spark(series[p], color(p)))),
      h("div.spark", { "data-spark": "deliveries" },
        h("div.label", h("span", { text: `deliveries/s (${state.local.node_id})` }),
          h("span.value", { text: String(Math.round(series.deliveries.at(-1) || 0)) })),
        spark(series.deliveries, "#1b1f24")));
    const rows = s.nodes.map((n) => {
      const me = n.node_id === state.session.node_id;
      const broker = me ? state.local.broker : "connected";
      return h(`tr${me ? ".this" : ""}`, { "data-node": n.node_id },
        h("td.mono", { text: n.node_id }),
        h("td", h(`span.badge.${n.draining ? "warn" : "ok"}`, { "data-state": "", text: n.draining ? "draining" : "ready" })),
        h("td.hide-narrow", { text: n.version }),
        h("td.num.hide-narrow", { text: fmtUptime(n.uptime_seconds) }),
        PROTOCOLS.map((p) => h("td.num", { "data-proto": p, text: String(n.connections[p]) })),
        h("td.hide-narrow", spark(series.nodes[n.node_id] || [], "#0b63c5", "mini")),
        h("td.num.hide-narrow", { text: String(n.subscriptions) }),
        h("td.num.hide-narrow", { text: String(n.channels) }),
        h("td", h(`span.badge.${broker === "connected" ? "ok" : "bad"}`, { title: me ? "this node's broker connection" : "heartbeats arrive over the broker", text: broker === "connected" ? "up" : "down" })),
        h("td", h("button.quiet", { type: "button", "data-drain": n.node_id, disabled: n.draining, onclick: () => drain(n) }, "Drain…")));
    });
    view.replaceChildren(
      h("section.card", h("h1", { text: `Cluster: ${s.totals.nodes} node${s.totals.nodes === 1 ? "" : "s"}, ${PROTOCOLS.reduce((a, p) => a + s.totals.connections[p], 0)} connections` }), sparks,
        h("p.hint", { text: "Connections: cluster-wide, one point per second over the last two minutes. Poll and long-poll count clients seen in the last 30 s. Deliveries: this node's own counter." })),
      h("section.card", h("h2", { text: "Nodes" }), h("div.scroll", h("table", { id: "nodes" },
        h("thead", h("tr", ["node", "state", "version", "uptime", "ws", "sse", "long-poll", "poll", "trend", "subs", "channels", "broker", ""].map((t, i) =>
          h(`th${i >= 3 && i <= 7 || i === 9 || i === 10 ? ".num" : ""}${[2, 3, 8, 9, 10].includes(i) ? ".hide-narrow" : ""}`, { text: t })))),
        h("tbody", rows))),
        // The last drain's answer, kept across re-renders (one per stats event).
        h("p.error", { id: "drain-result", role: "alert", text: state.drainError || "" }), h("p.okmsg", { id: "drain-ok", text: state.drainOk || "" })),
    );
    if (focused) {
      const b = view.querySelector(`[data-drain="${CSS.escape(focused)}"]`);
      if (b) b.focus();
    }
  }
  async function drain(n) {
    const total = PROTOCOLS.reduce((a, p) => a + n.connections[p], 0);
    const ok = await confirmAction(`Drain node ${n.node_id}? Its ${total} connection(s) are told to reconnect to other nodes; the node refuses new held connections and reports not ready until it is restarted.`, `Drain ${n.node_id}`);
    if (!ok) return;
    const r = await call("drain", { node_id: n.node_id });
    state.drainError = r.ok ? "" : `Drain refused: ${errText(r)}`;
    state.drainOk = r.ok ? `Draining ${n.node_id}: ${r.body.connections} connection(s) being moved.` : "";
    if (state.page === "cluster") renderCluster();
  }

  // ---- channels page ----
  function renderChannels(view) {
    const q = new URLSearchParams(location.hash.split("?")[1] || "");
    const pattern = h("input", { type: "text", id: "pattern", placeholder: "pattern: chat:* or room:?", value: q.get("pattern") || "", "aria-label": "channel pattern" });
    const err = h("p.error", { role: "alert" });
    const body = h("tbody");
    const info = h("span.hint");
    const prev = h("button.quiet", { type: "button" }, "← Prev");
    const next = h("button.quiet", { type: "button" }, "Next →");
    let list = [];
    let page = 0;
    const show = () => {
      const slice = list.slice(page * PAGE, page * PAGE + PAGE);
      body.replaceChildren(...slice.map((c) => h("tr", { "data-channel": c.channel },
        h("td.mono", h("a", { href: `#/channel/${encodeURIComponent(c.channel)}`, text: c.channel })),
        h("td.num", { text: String(c.subscribers) }))));
      if (!slice.length) body.append(h("tr", h("td", { colspan: 2, class: "hint", text: "No channel with subscribers matches." })));
      const pages = Math.max(1, Math.ceil(list.length / PAGE));
      info.textContent = `page ${page + 1} of ${pages} · ${list.length} channel(s)`;
      prev.disabled = page === 0;
      next.disabled = page + 1 >= pages;
    };
    prev.onclick = () => (page--, show());
    next.onclick = () => (page++, show());
    const load = async (e) => {
      if (e) e.preventDefault();
      err.textContent = "";
      const r = await call(`channels?${new URLSearchParams({ pattern: pattern.value.trim(), limit: 1000 })}`);
      if (!r.ok) return (err.textContent = errText(r)), (list = []), show();
      list = r.body.channels;
      page = 0;
      show();
      if (r.body.truncated) err.textContent = "Only the first 1000 channels by name are listed: narrow the pattern.";
      if (r.body.missing_nodes.length) err.textContent += ` Nodes that did not answer: ${r.body.missing_nodes.join(", ")}.`;
    };
    const open = h("form.row", { onsubmit: (e) => (e.preventDefault(), (location.hash = `#/channel/${encodeURIComponent(openName.value.trim())}`)) });
    const openName = h("input", { type: "text", id: "open-channel", placeholder: "open a channel by name", "aria-label": "channel name" });
    open.append(openName, h("button", { type: "submit" }, "Open"));
    view.append(h("section.card", h("h1", { text: "Channels" }),
      h("form.row", { id: "channels-form", onsubmit: load }, pattern, h("button", { type: "submit" }, "Filter")),
      h("p.hint", { text: "Cluster-wide: channels with live subscribers on some node, summed over nodes; * any run, ? one character." }),
      err, h("div.scroll", h("table", { id: "channels" }, h("thead", h("tr", h("th", { text: "channel" }), h("th.num", { text: "subscribers" }))), body)),
      h("div.pager", prev, next, info)),
      h("section.card", h("h2", { text: "Open a channel" }), open));
    load();
  }

  // ---- channel page ----
  function stopTail() {
    if (state.tail) state.tail.close();
    state.tail = null;
  }
  function renderChannel(view, channel) {
    const tailList = h("ul");
    const tailState = h("span.badge.warn", { id: "tail-state", text: "connecting" });
    const add = (kind, text) => {
      tailList.prepend(h("li", { "data-kind": kind }, h("span.ev", { text: `${new Date().toLocaleTimeString()} ${kind}` }), h("span.mono", { text })));
      while (tailList.children.length > TAIL_MAX) tailList.lastChild.remove();
    };
    // The live tail is a real subscription: an EventSource to this node's client port, through
    // the same /sse endpoint, hub and outbox as any client.
    const url = `${location.protocol}//${location.hostname}:${state.session.client_port}/sse?${new URLSearchParams({ channel })}`;
    const es = new EventSource(url);
    state.tail = es;
    es.addEventListener("subscribed", () => {
      tailState.className = "badge ok";
      tailState.textContent = "live";
      loadPresence(); // now with the tail itself
    });
    es.addEventListener("message", (ev) => {
      try {
        const m = JSON.parse(ev.data);
        add("message", `${m.id}  ${JSON.stringify(m.data)}`);
      } catch {
        add("message", ev.data);
      }
    });
    for (const k of ["gap", "join", "leave", "reconnect", "error"])
      es.addEventListener(k, (ev) => ev.data && add(k, ev.data));
    es.onerror = () => {
      tailState.className = "badge bad";
      tailState.textContent = es.readyState === EventSource.CLOSED ? "refused (see docs/console.md: live tail)" : "reconnecting";
    };

    // Publish form: the text goes to the API as it is, so a bad value gets the API's error.
    const data = h("textarea", { id: "publish-data", "aria-label": "message data (JSON)", spellcheck: "false" });
    data.value = '{"text": "hello"}';
    const hint = h("span.hint", { id: "json-hint" });
    const checkJson = () => {
      try {
        JSON.parse(data.value);
        const size = new Blob([data.value]).size;
        const max = state.session.max_message_bytes;
        hint.textContent = `valid JSON, ${size} bytes${size > max ? `: over the ${max}-byte limit` : ` (limit ${max})`}`;
      } catch (e) {
        hint.textContent = `not valid JSON yet: ${e.message}`;
      }
    };
    data.addEventListener("input", checkJson);
    checkJson();
    const pubErr = h("p.error", { id: "publish-error", role: "alert" });
    const pubOk = h("p.okmsg", { id: "publish-ok" });
    const publish = async (e) => {
      e.preventDefault();
      pubErr.textContent = pubOk.textContent = "";
      const body = `{"channel":${JSON.stringify(channel)},"data":${data.value.trim() === "" ? "null" : data.value}}`;
      const r = await call("publish", body);
      if (r.ok) pubOk.textContent = `Published: cursor ${r.body.cursor}${r.body.duplicate ? " (duplicate)" : ""}`;
      else pubErr.textContent = errText(r);
    };
    data.addEventListener("keydown", (e) => e.key === "Enter" && (e.ctrlKey || e.metaKey) && publish(e));

    // History with cursors and gaps.
    const since = h("input", { type: "text", id: "history-since", placeholder: "since cursor (empty: oldest retained)", "aria-label": "since cursor" });
    const hist = h("tbody");
    const histInfo = h("p.hint");
    const histErr = h("p.error", { role: "alert" });
    let nextCursor = "";
    const loadHistory = async (from) => {
      histErr.textContent = "";
      const r = await call(`history?${new URLSearchParams({ channel, since: from, limit: 50 })}`);
      if (!r.ok) return (histErr.textContent = errText(r));
      nextCursor = r.body.cursor;
      hist.replaceChildren(...r.body.messages.map((m) => h("tr", h("td.mono", { text: m.cursor }), h("td.hide-narrow", { text: new Date(m.ts).toLocaleString() }), h("td.mono", { text: JSON.stringify(m.data) }))));
      if (r.body.gap) hist.prepend(h("tr", { "data-gap": "" }, h("td", { colspan: 3 }, h("span.badge.bad", { text: "gap" }), " messages after this cursor were evicted before they could be read")));
      histInfo.textContent = `${r.body.messages.length} message(s) after ${from || "the oldest retained"}; next page from cursor ${nextCursor}`;
    };

    // Presence (namespaces with presence = true).
    const pres = h("tbody");
    const presErr = h("p.error", { role: "alert" });
    const loadPresence = async () => {
      presErr.textContent = "";
      const r = await call(`presence?${new URLSearchParams({ channel })}`);
      if (!r.ok) return pres.replaceChildren(), (presErr.textContent = errText(r));
      pres.replaceChildren(...r.body.clients.map((c) => h("tr", h("td.mono", { text: c.client }), h("td", { text: c.user || "(anonymous)" }), h("td", { text: c.node }), h("td", { text: c.protocol }), h("td.hide-narrow", { text: new Date(c.since_unix_ms).toLocaleTimeString() }))));
      if (!r.body.clients.length) pres.append(h("tr", h("td", { colspan: 5, class: "hint", text: "Nobody (polling clients are not listed)." })));
    };

    view.append(
      h("h1", h("a", { href: "#/channels", text: "Channels" }), " / ", h("span.mono", { id: "channel-name", text: channel })),
      h("div.grid",
        h("section.card", h("div.row", h("h2", { text: "Live tail" }), tailState), h("p.hint", { text: `a real subscription: GET ${url}` }), h("div.tail", { id: "tail" }, tailList)),
        h("section.card", h("h2", { text: "Publish" }),
          h("form", { id: "publish-form", onsubmit: publish }, h("label", { for: "publish-data", text: "data (any JSON value)" }), data,
            h("div.row", h("button", { type: "submit" }, "Publish"), hint), pubErr, pubOk),
          h("p.hint", { text: "Ctrl+Enter publishes. Errors are the API's own (channel name, JSON, size)." }))),
      h("section.card", h("h2", { text: "History" }),
        h("form.row", { onsubmit: (e) => (e.preventDefault(), loadHistory(since.value.trim())) }, since, h("button", { type: "submit" }, "Load"),
          h("button.quiet", { type: "button", onclick: () => ((since.value = nextCursor), loadHistory(nextCursor)) }, "Next page →")),
        histErr, histInfo, h("div.scroll", h("table", { id: "history" }, h("thead", h("tr", h("th", { text: "cursor" }), h("th.hide-narrow", { text: "time" }), h("th", { text: "data" }))), hist))),
      h("section.card", h("div.row", h("h2", { text: "Presence" }), h("button.quiet", { type: "button", onclick: loadPresence }, "Refresh")),
        presErr, h("div.scroll", h("table", { id: "presence" }, h("thead", h("tr", ["client", "user", "node", "protocol", "since"].map((t, i) => h(`th${i === 4 ? ".hide-narrow" : ""}`, { text: t })))), pres)),
        h("p.hint", { text: "Join and leave events of join_leave namespaces appear in the live tail." })),
    );
    loadHistory("");
    loadPresence();
  }

  // ---- users page ----
  function renderUsers(view) {
    const out = h("p.okmsg", { id: "user-result" });
    const err = h("p.error", { id: "user-error", role: "alert" });
    const field = (id, label, extra = {}) => [h("label", { for: id, text: label }), h("input", { type: "text", id, ...extra })];
    const v = (id) => $(`#${id}`, view).value.trim();
    const act = async (what, method, body, warn) => {
      out.textContent = err.textContent = "";
      if (warn && !(await confirmAction(warn, what))) return;
      const r = await call(method, body);
      if (!r.ok) return (err.textContent = `${what}: ${errText(r)}`);
      out.textContent = `${what}: ${r.body.connections} connection(s)${r.body.missing_nodes.length ? `; nodes that did not answer: ${r.body.missing_nodes.join(", ")}` : ""}.`;
    };
    const form = (title, fields, buttons) => h("section.card", h("h2", { text: title }), h("form", { onsubmit: (e) => e.preventDefault() }, fields, h("div.row", buttons)));
    const btn = (label, f, cls = "") => h(`button${cls}`, { type: "button", onclick: f }, label);
    // Connections of a user, cluster-wide (Connections).
    const conns = h("tbody");
    const connErr = h("p.error", { role: "alert" });
    const connInfo = h("p.hint", { id: "connections-info" });
    const lookup = async () => {
      connErr.textContent = connInfo.textContent = "";
      const user = v("cx-user");
      const r = await call(`connections?${new URLSearchParams({ user })}`);
      if (!r.ok) return conns.replaceChildren(), (connErr.textContent = errText(r));
      conns.replaceChildren(...r.body.clients.map((c) => h("tr", h("td.mono", { text: c.client }), h("td", { text: c.node }), h("td", { text: c.protocol }),
        h("td.hide-narrow", { text: new Date(c.since_unix_ms).toLocaleTimeString() }), h("td.mono.hide-narrow", { text: c.info == null ? "" : JSON.stringify(c.info) }))));
      connInfo.textContent = `${r.body.clients.length} connection(s) of ${user}${r.body.missing_nodes.length ? `; nodes that did not answer: ${r.body.missing_nodes.join(", ")}` : ""}`;
      for (const id of ["dc-user", "uc-user", "ru-user"]) if (!v(id)) $(`#${id}`, view).value = user;
    };
    view.append(
      h("h1", { text: "Users" }),
      h("section.card", h("h2", { text: "Connections of a user" }),
        h("form.row", { id: "connections-form", onsubmit: (e) => (e.preventDefault(), lookup()) }, field("cx-user", "user"), h("button", { type: "submit" }, "Look up")),
        connErr, connInfo,
        h("div.scroll", h("table", { id: "connections" }, h("thead", h("tr", ["client", "node", "protocol", "since", "info"].map((t, i) => h(`th${i > 2 ? ".hide-narrow" : ""}`, { text: t })))), conns))),
      h("p.hint", { text: "Actions reach every connection of the user on every node (WebSocket, SSE and held long-polls)." }),
      err, out,
      h("div.grid",
        form("Disconnect", [field("dc-user", "user"), field("dc-reason", "reason (optional)"),
          h("label.inline", h("input", { type: "checkbox", id: "dc-reconnect" }), "let clients reconnect")],
          btn("Disconnect", () => act("Disconnect", "disconnect", { user: v("dc-user"), reason: v("dc-reason"), reconnect: $("#dc-reconnect", view).checked }, `Disconnect every connection of user ${v("dc-user")}?`), ".danger")),
        form("Channels of a user", [field("uc-user", "user"), field("uc-channel", "channel")],
          [btn("Subscribe", () => act("Subscribe", "subscribe", { user: v("uc-user"), channel: v("uc-channel") })),
            btn("Unsubscribe", () => act("Unsubscribe", "unsubscribe", { user: v("uc-user"), channel: v("uc-channel") }), ".quiet")]),
        form("Revoke a token", [field("rt-jti", "token id (jti)")],
          btn("Revoke token", () => act("RevokeToken", "revoke_token", { jti: v("rt-jti") }, `Revoke token ${v("rt-jti")} for 24 hours on every node?`), ".danger")),
        form("Revoke a user's tokens", [field("ru-user", "user")],
          btn("Revoke user", () => act("RevokeUser", "revoke_user", { user: v("ru-user") }, `Revoke every token of ${v("ru-user")} issued until now (24 hours)?`), ".danger"))),
    );
  }

  start();
})();
