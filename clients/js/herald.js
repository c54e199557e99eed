// Herald browser SDK: live messages over WebSocket, SSE, long-poll or interval poll, with
// fallback down the transport list, reconnect with backoff and jitter over a list of nodes,
// and exact resume by cursor. No dependencies. Protocol: docs/protocol.md; guide: docs/sdk.md.

export const TRANSPORTS = ["websocket", "sse", "longpoll", "poll"];

const DEFAULTS = {
  transports: TRANSPORTS,
  since: undefined, // cursor to resume from; "0" for all retained history
  backoffMin: 500, // ms, first reconnect delay (before jitter)
  backoffMax: 15000, // ms, cap of the exponential backoff
  climbInterval: 60000, // ms on a lower transport before trying the best one again; 0: never
  connectTimeout: 8000, // ms a transport may take to be subscribed before it counts as failed
  longPollWait: 25, // s, `wait` of a long-poll
  pollInterval: 2000, // ms between interval polls
  token: undefined, // JWT, or a function returning one (or a promise): called before each connect
};

// Cursors are opaque but totally ordered; today they are decimal integers.
const after = (a, b) =>
  /^\d+$/.test(a) && /^\d+$/.test(b) ? a.length > b.length || (a.length === b.length && a > b) : a > b;

export class Subscription extends EventTarget {
  constructor(urls, channels, options = {}) {
    super();
    this.urls = (Array.isArray(urls) ? urls : [urls]).map((u) => u || location.origin);
    this.options = { ...DEFAULTS, ...options };
    this.channels = new Set(channels);
    this.cursor = this.options.since; // last id received (or the server's cursor)
    this.lastIds = new Map(); // channel -> last id delivered, to drop duplicates
    this.state = "idle";
    this.transport = null;
    this.url = null;
    this._ti = 0; // index in options.transports
    this._ui = 0; // index in urls
    this._failures = 0; // consecutive failed attempts, for backoff
    this._conn = null; // { close(), send?(cmd) }
    this._timer = null;
    this._gen = 0; // bumps on every attempt; callbacks of old attempts are ignored
    for (const [ev, key] of [["message", "onMessage"], ["gap", "onGap"], ["state", "onState"], ["error", "onError"]])
      if (typeof this.options[key] === "function") this.addEventListener(ev, (e) => this.options[key](e.detail));
    queueMicrotask(() => this._connect());
  }

  /** Adds channels at run time (new channels start from now on WebSocket). */
  add(...names) {
    const fresh = names.flat().filter((c) => !this.channels.has(c));
    if (!fresh.length) return;
    fresh.forEach((c) => this.channels.add(c));
    this._changed({ op: "subscribe", channels: fresh });
  }

  /** Removes channels at run time. */
  remove(...names) {
    const gone = names.flat().filter((c) => this.channels.delete(c));
    if (!gone.length) return;
    gone.forEach((c) => this.lastIds.delete(c));
    this._changed({ op: "unsubscribe", channels: gone });
  }

  /** Stops for good. */
  close() {
    this._stop();
    this._setState("closed");
  }

  // --- internals -------------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, transport: this.transport, url: this.url, ...extra });
  }

  _changed(cmd) {
    if (this.state === "closed") return;
    if (this._conn && this._conn.send && this.state === "connected") this._conn.send(cmd);
    // SSE, a held long-poll and a WebSocket still connecting carry their channels in the
    // URL: reopen with the cursor.
    else if (this._conn && this.transport !== "poll") this._reopen();
    // interval polls read `channels` on every request
  }

  _stop() {
    this._gen++;
    clearTimeout(this._timer);
    clearTimeout(this._climb);
    if (this._conn) this._conn.close();
    this._conn = null;
  }

  // Same transport and node again, at once (SSE channel change, slow consumer).
  _reopen() {
    this._stop();
    this._connect();
  }

  _query(extra = {}) {
    const q = new URLSearchParams();
    if (this._token) q.set("token", this._token);
    for (const c of this.channels) q.append("channel", c);
    if (this.cursor !== undefined && this.cursor !== null) q.set("since", this.cursor);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return q.toString();
  }

  _endpoint(path, extra) {
    const u = new URL(path, this.url.endsWith("/") ? this.url : this.url + "/");
    if (path === "ws") u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.search = this._query(extra);
    return u.toString();
  }

  async _connect() {
    if (this.state === "closed") return;
    const gen = ++this._gen;
    const t = this.options.token;
    if (typeof t === "function") {
      try {
        this._token = await t();
      } catch (e) {
        this._emit("error", { code: "token_unavailable", message: String(e) });
        return gen === this._gen && this._ended("fail");
      }
      if (gen !== this._gen) return;
    } else this._token = t;
    this.transport = this.options.transports[this._ti];
    this.url = this.urls[this._ui];
    this._connected = false;
    this._setState("connecting");
    const live = () => gen === this._gen;
    const h = {
      subscribed: (cursor) => {
        if (!live()) return;
        if ((this.cursor === undefined || this.cursor === null) && cursor) this.cursor = cursor;
        if (this._connected) return;
        this._connected = true;
        this._failures = 0;
        clearTimeout(this._timer);
        this._setState("connected");
        if (this._ti > 0 && this.options.climbInterval > 0)
          this._climb = setTimeout(() => live() && this._retry("climb"), this.options.climbInterval);
      },
      message: (m) => live() && this._deliver(m),
      gap: (channel) => live() && this.channels.has(channel) && this._emit("gap", { channel }),
      cursor: (c) => {
        if (live() && c) this.cursor = c;
      },
      // The connection ended: `how` is "drain" (node asked us to go), "slow" (reconnect here)
      // or "fail".
      end: (how) => live() && this._ended(how),
      error: (detail) => live() && this._emit("error", detail),
      live,
    };
    this._timer = setTimeout(() => live() && !this._connected && this._ended("fail"), this.options.connectTimeout);
    this._conn = OPEN[this.transport](this, h);
  }

  _deliver(m) {
    if (!this.channels.has(m.channel)) return;
    const last = this.lastIds.get(m.channel);
    this.cursor = m.id;
    if (last !== undefined && !after(m.id, last)) return; // duplicate after a resume
    this.lastIds.set(m.channel, m.id);
    this._emit("message", m);
  }

  _ended(how) {
    const wasConnected = this._connected;
    this._stop();
    if (how === "slow") return this._schedule(0);
    if (wasConnected || how === "drain") {
      // It worked and stopped: the node went away. Same transport, next node.
      this._ui = (this._ui + 1) % this.urls.length;
      return this._schedule(how === "drain" ? 0 : this._failures++);
    }
    // Never subscribed: this transport is blocked here, or the node is down. Next transport;
    // after the last one, the next node from the best transport, with backoff.
    this._ti++;
    if (this._ti >= this.options.transports.length) {
      this._ti = 0;
      this._ui = (this._ui + 1) % this.urls.length;
      return this._schedule(++this._failures);
    }
    this._schedule(0);
  }

  _retry(why) {
    // Try the best transport again on the same node; failures fall back down the list.
    this._stop();
    this._ti = 0;
    this._setState("reconnecting", { reason: why, delay: 0 });
    this._connect();
  }

  _schedule(attempt) {
    const { backoffMin, backoffMax } = this.options;
    const base = attempt === 0 ? 50 : Math.min(backoffMax, backoffMin * 2 ** (attempt - 1));
    const delay = Math.round(base / 2 + Math.random() * base); // jitter: 50%..150%
    this.transport = this.options.transports[this._ti];
    this.url = this.urls[this._ui];
    this._setState("reconnecting", { delay });
    this._timer = setTimeout(() => this._connect(), delay);
  }
}

const OPEN = {
  websocket(sub, h) {
    const ws = new WebSocket(sub._endpoint("ws"));
    let ended = false;
    const end = (how) => {
      if (!ended) (ended = true), h.end(how);
    };
    ws.onmessage = (e) => {
      let f;
      try {
        f = JSON.parse(e.data);
      } catch {
        return;
      }
      if (f.type === "message") h.message(f);
      else if (f.type === "subscribed") h.subscribed(f.cursor);
      else if (f.type === "gap") h.gap(f.channel);
      else if (f.type === "reconnect") end("drain");
      else if (f.type === "error") h.error(f);
    };
    // 4001: the token expired; reconnecting at once fetches a fresh one.
    ws.onclose = (e) => end(e.code === 1012 ? "drain" : e.code === 1013 || e.code === 4001 ? "slow" : "fail");
    // With a token function, refresh at 80% of each token's life without reconnecting.
    let refresh;
    const plan = (token) => {
      const exp = expOf(token);
      if (exp && typeof sub.options.token === "function")
        refresh = setTimeout(async () => {
          try {
            const next = await sub.options.token();
            if (h.live() && ws.readyState === 1) ws.send(JSON.stringify({ op: "refresh", token: next }));
            plan(next);
          } catch {} // the server closes with 4001 at expiry and we reconnect then
        }, Math.max(1000, (exp * 1000 - Date.now()) * 0.8));
    };
    plan(sub._token);
    ws.onerror = () => {};
    return {
      send: (cmd) => ws.readyState === 1 && ws.send(JSON.stringify(cmd)),
      close: () => {
        ended = true;
        clearTimeout(refresh);
        ws.onclose = ws.onmessage = null;
        ws.close();
      },
    };
  },

  sse(sub, h) {
    const es = new EventSource(sub._endpoint("sse"));
    const data = (e) => {
      try {
        return JSON.parse(e.data);
      } catch {
        return {};
      }
    };
    es.addEventListener("subscribed", (e) => h.subscribed(data(e).cursor));
    es.addEventListener("message", (e) => h.message(data(e)));
    es.addEventListener("gap", (e) => h.gap(data(e).channel));
    es.addEventListener("reconnect", () => h.end("drain"));
    es.addEventListener("error", (e) => {
      if (e.data) {
        const d = data(e);
        h.error(d);
        return h.end(d.code === "slow_consumer" || d.code === "token_expired" ? "slow" : "fail");
      }
      h.end("fail"); // network error or refused: we reconnect ourselves, with our cursor
    });
    return { close: () => es.close() };
  },

  longpoll: (sub, h) => poll(sub, h, true),
  poll: (sub, h) => poll(sub, h, false),
};

// The `exp` claim of a JWT (seconds), or undefined.
function expOf(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp;
  } catch {
    return undefined;
  }
}

function poll(sub, h, long) {
  const ctl = new AbortController();
  let timer;
  let first = true; // the first request answers at once: it proves the transport works
  (async () => {
    while (h.live()) {
      const wait = long && !first ? sub.options.longPollWait : 0;
      first = false;
      let reply;
      try {
        const res = await fetch(sub._endpoint("poll", { wait }), { signal: ctl.signal, cache: "no-store" });
        if (!res.ok) {
          const body = await res.json().catch(() => ({}));
          h.error({ status: res.status, ...(body.error || {}) });
          if (body.error && body.error.code === "token_expired") return h.end("slow");
          throw new Error(`HTTP ${res.status}`);
        }
        reply = await res.json();
      } catch {
        return h.end("fail");
      }
      if (!h.live()) return;
      for (const c of reply.gaps || []) h.gap(c);
      for (const m of reply.messages || []) h.message(m);
      h.cursor(reply.cursor);
      h.subscribed(reply.cursor);
      const more = (reply.messages || []).length >= 1000;
      if (!long && !more) await new Promise((ok) => (timer = setTimeout(ok, sub.options.pollInterval)));
    }
  })();
  return {
    close: () => {
      clearTimeout(timer);
      ctl.abort();
    },
  };
}

/**
 * Subscribes to `channels` on the first reachable node of `urls` (a base URL or a list; ""
 * means this page's origin). Returns a {@link Subscription}: an EventTarget with `message`,
 * `gap`, `state` and `error` events (payload in `event.detail`).
 */
export function subscribe(urls, channels, options) {
  return new Subscription(urls, channels, options);
}

export default { subscribe, Subscription, TRANSPORTS };
