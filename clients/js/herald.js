// Herald browser SDK: live messages over WebSocket, SSE, long-poll or interval poll, with
// fallback down the transport list, reconnect with backoff and jitter over a list of nodes,
// and exact resume from one position per channel; join/leave events and the server's
// endings and channel changes (docs/presence.md). No dependencies. Protocol:
// docs/protocol.md; guide: docs/sdk.md.

export const TRANSPORTS = ["websocket", "sse", "longpoll", "poll"];

const DEFAULTS = {
  transports: TRANSPORTS,
  since: undefined, // where every channel resumes from: a cursor ("0": all retained history),
  // a position token, or {channel: cursor}
  backoffMin: 500, // ms, first reconnect delay (before jitter)
  backoffMax: 15000, // ms, cap of the exponential backoff
  climbInterval: 60000, // ms on a lower transport before trying the best one again; 0: never
  connectTimeout: 8000, // ms a transport may take to be subscribed before it counts as failed
  longPollWait: 25, // s, `wait` of a long-poll
  pollInterval: 2000, // ms between interval polls
  token: undefined, // JWT, or a function returning one (or a promise): called before each connect
  requestTimeout: 10000, // ms a publish() or rpc() waits for its answer
};

/** A refused or failed publish()/rpc(): `code` is the server's error code. */
export class HeraldError extends Error {
  constructor(code, message, detail = {}) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
    this.detail = detail;
  }
}

// Cursors are decimal u64 strings (they can exceed 2^53: compared as strings, added as BigInt).
const after = (a, b) => a.length > b.length || (a.length === b.length && a > b);

// --- position tokens (docs/protocol.md, "Resume: one position per channel") ----------------
//   token = base [ "_" hash *( "_" entry ) ], entry = base36(index) "." base36(delta)
// base: the lowest position; hash: FNV-1a 32 of the sorted, distinct names joined by "\n";
// channel i of the sorted names stands at base + delta if an entry names it, else at base.

// Names are ASCII, so the default (UTF-16) sort is bytewise and char codes are the bytes.
const sorted = (names) => [...new Set(names)].sort();

const setHash = (names) => {
  let h = 0x811c9dc5;
  for (const ch of names.join("\n")) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193);
  return (h >>> 0).toString(36);
};

const parse36 = (s) => [...s].reduce((n, d) => n * 36n + BigInt(parseInt(d, 36)), 0n);

/**
 * The position token of `positions` ({channel: cursor} or a Map): a plain cursor when every
 * channel stands at the same one ("0" for none).
 */
export function encodePositions(positions) {
  const pos = new Map(positions instanceof Map ? positions : Object.entries(positions));
  const names = sorted(pos.keys());
  const at = names.map((c) => BigInt(pos.get(c)));
  const base = at.reduce((m, v) => (v < m ? v : m), at[0] ?? 0n);
  let entries = "";
  at.forEach((v, i) => v > base && (entries += `_${i.toString(36)}.${(v - base).toString(36)}`));
  return entries ? `${base}_${setHash(names)}${entries}` : `${base}`;
}

/**
 * The per-channel positions ({channel: cursor}) a cursor or position token gives `channels`;
 * null when it is malformed or a token of another channel set.
 */
export function decodePositions(token, channels) {
  const names = sorted(channels);
  const [head, hash, ...entries] = String(token).split("_");
  if (!/^\d{1,20}$/.test(head)) return null;
  const base = BigInt(head);
  const at = names.map(() => base);
  if (hash !== undefined) {
    if (hash !== setHash(names) || !entries.length) return null;
    let prev = -1;
    for (const e of entries) {
      const m = /^([0-9a-z]{1,13})\.([0-9a-z]{1,13})$/.exec(e);
      const i = m ? Number(parse36(m[1])) : -1;
      const delta = m ? parse36(m[2]) : 0n;
      if (i <= prev || i >= names.length || delta < 1n) return null;
      at[(prev = i)] += delta;
    }
  }
  return Object.fromEntries(names.map((c, i) => [c, `${at[i]}`]));
}

export class Subscription extends EventTarget {
  constructor(urls, channels, options = {}) {
    super();
    this.urls = (Array.isArray(urls) ? urls : [urls]).map((u) => u || location.origin);
    this.options = { ...DEFAULTS, ...options };
    this.channels = new Set(channels);
    // channel -> position: the last id delivered on it, else where it was subscribed. Also
    // the de-duplication floor: a message not after its channel's position is dropped.
    this._pos = new Map();
    this._gapped = new Set(); // channels whose next message follows a gap: taken as it is
    this._sseId = undefined; // last SSE id (a position token of `_sseSet`)
    this.state = "idle";
    this.transport = null;
    this.url = null;
    this.clientId = null; // the node's id of the connection (WebSocket, SSE); null when polling
    this._ti = 0; // index in options.transports
    this._ui = 0; // index in urls
    this._failures = 0; // consecutive failed attempts, for backoff
    this._drains = 0; // consecutive drains without a connection in between, for backoff
    this._conn = null; // { close(), send?(cmd) }
    this._timer = null;
    this._gen = 0; // bumps on every attempt; callbacks of old attempts are ignored
    // onMessage, onGap, onState, onError, onJoin, onLeave, onDisconnect, onSubscribed,
    // onUnsubscribed: listeners of the event of that name.
    for (const [key, f] of Object.entries(this.options))
      if (/^on[A-Z]/.test(key) && typeof f === "function") this.addEventListener(key.slice(2).toLowerCase(), (e) => f(e.detail));
    const since = this.options.since;
    if (since != null) {
      const each = typeof since === "object" ? since : decodePositions(since, [...this.channels]);
      if (each) this._setPositions(each);
      else queueMicrotask(() => this._emit("error", { code: "invalid_cursor", message: `since: ${since}` }));
    }
    queueMicrotask(() => this._connect());
  }

  /** Where each channel stands: {channel: cursor}; channels not listed start from now. */
  get positions() {
    return Object.fromEntries(this._pos);
  }

  /**
   * The positions as one string (a position token; with one channel, its last id): pass it as
   * `since` to resume the same channels elsewhere. Undefined before any position is known.
   */
  get cursor() {
    return this._since([...this.channels]);
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
    for (const c of gone) this._pos.delete(c), this._gapped.delete(c);
    this._changed({ op: "unsubscribe", channels: gone });
  }

  /** Stops for good. */
  close() {
    this._stop();
    this._setState("closed");
  }

  /**
   * Publishes `data` (any JSON value) to `channel`, where its namespace allows client
   * publishes and the token's `publish` claim grants it: over the WebSocket while connected
   * on one, else `POST /publish` on the current node. Resolves to {channel, cursor}; rejects
   * with a HeraldError (`code`: publish_forbidden, publish_rate_exceeded, ...).
   */
  publish(channel, data) {
    return this._request({ op: "publish", channel, data }, "publish", { channel, data }, (f) => ({
      channel: f.channel,
      cursor: f.cursor,
    }));
  }

  /**
   * Calls `method` of the application's backend through the node's RPC hook (docs/hooks.md)
   * with `data`; resolves to the backend's result, rejects with a HeraldError.
   */
  rpc(method, data = null) {
    return this._request({ op: "rpc", method, data }, "rpc", { method, data }, (f) => f.result);
  }

  // --- internals -------------------------------------------------------------------------

  async _request(cmd, path, body, answer) {
    if (this.state === "closed") throw new HeraldError("closed", "the subscription is closed");
    const conn = this._conn;
    if (this.transport === "websocket" && this.state === "connected" && conn && conn.request)
      return answer(await conn.request(cmd, this.options.requestTimeout));
    // No WebSocket: the node's HTTP endpoint, with the token in the Authorization header.
    const base = this.url || this.urls[0];
    const url = new URL(path, base.endsWith("/") ? base : base + "/");
    let token = this.options.token;
    if (typeof token === "function") token = await token();
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), this.options.requestTimeout);
    let res, reply;
    try {
      res = await fetch(url, { method: "POST", headers, body: JSON.stringify(body), signal: ctl.signal, cache: "no-store" });
      reply = await res.json().catch(() => ({}));
    } catch (e) {
      throw new HeraldError(ctl.signal.aborted ? "timeout" : "network_error", String(e));
    } finally {
      clearTimeout(timer);
    }
    if (!res.ok) {
      const e = reply.error || {};
      throw new HeraldError(e.code || `http_${res.status}`, e.message, { status: res.status, ...e });
    }
    return answer(reply);
  }

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
    // SSE, a held long-poll and a WebSocket still connecting: reopen with the positions.
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

  _setPositions(each) {
    for (const [c, p] of each instanceof Map ? each : Object.entries(each)) this.channels.has(c) && this._pos.set(c, String(p));
  }

  // The position token of `channels`; those without a position stand at the highest known
  // one (everything published since then). Undefined when none has a position: from now.
  _since(channels) {
    let top;
    for (const c of channels) {
      const p = this._pos.get(c);
      if (p !== undefined && (top === undefined || after(p, top))) top = p;
    }
    if (top === undefined) return undefined;
    return encodePositions(new Map(channels.map((c) => [c, this._pos.get(c) ?? top])));
  }

  _endpoint(path, channels = [], since, extra = {}) {
    const u = new URL(path, this.url.endsWith("/") ? this.url : this.url + "/");
    if (path === "ws") u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams();
    if (this._token) q.set("token", this._token);
    for (const c of channels) q.append("channel", c);
    if (since !== undefined) q.set("since", since);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    u.search = q;
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
    // An SSE id is only as fresh as the last SSE stream: another transport moves on without it.
    if (this.transport !== "sse") this._sseId = undefined;
    this._connected = false;
    this.clientId = null;
    this._setState("connecting");
    const live = () => gen === this._gen;
    const h = {
      // Live delivery is in place; channels (all when not given) without a position stand
      // at `cursor`, the server's "now". `d`: the frame or event; `d.server`: the server
      // added `channels` to this connection, so they join the set (a reconnect keeps them).
      subscribed: (cursor, channels = this.channels, d = {}) => {
        if (!live()) return;
        if (d.client) this.clientId = d.client;
        if (d.server) channels.forEach((c) => this.channels.add(c));
        if (cursor) for (const c of channels) this.channels.has(c) && !this._pos.has(c) && this._pos.set(c, cursor);
        if (d.server) this._emit("subscribed", { channels, cursor, server: true });
        if (this._connected) return;
        this._connected = true;
        this._failures = 0;
        this._drains = 0;
        clearTimeout(this._timer);
        this._setState("connected");
        if (this._ti > 0 && this.options.climbInterval > 0)
          this._climb = setTimeout(() => live() && this._retry("climb"), this.options.climbInterval);
      },
      message: (m) => live() && this._deliver(m),
      gap: (channel) => {
        if (!live() || !this.channels.has(channel)) return;
        this._gapped.add(channel);
        this._emit("gap", { channel });
      },
      // A cursor or position token for `channels` (a poll reply, an SSE id): every one of them
      // stands there now.
      positions: (token, channels) => {
        const each = live() && token && decodePositions(token, channels);
        if (each) this._setPositions(each);
      },
      // The connection ended: `how` is "drain" (node asked us to go), "slow" (reconnect here)
      // or "fail".
      end: (how) => live() && this._ended(how),
      error: (detail) => live() && this._emit("error", detail),
      // The server removed `channels` from this connection: a reconnect leaves them out.
      unsubscribed: (d) => {
        const gone = live() ? (d.channels || []).filter((c) => this.channels.delete(c)) : [];
        for (const c of gone) this._pos.delete(c), this._gapped.delete(c);
        if (gone.length) this._emit("unsubscribed", { channels: gone, reason: d.reason });
      },
      // join / leave: ephemeral, they move no position.
      presence: (type, { channel, client, user, info }) =>
        live() && this.channels.has(channel) && this._emit(type, { channel, client, user, info }),
      // The server ended the connection (disconnected, or the token revoked): reconnect and
      // resume as after a drain, or stop for good.
      over: (d) => {
        if (!live()) return;
        const reconnect = d.reconnect === true;
        this._emit("disconnect", { code: d.code, reason: d.reason || d.message, reconnect });
        if (live()) reconnect ? this._ended("drain") : this.close();
      },
      live,
    };
    this._timer = setTimeout(() => live() && !this._connected && this._ended("fail"), this.options.connectTimeout);
    this._conn = OPEN[this.transport](this, h);
  }

  _deliver(m) {
    const c = m.channel;
    if (!this.channels.has(c)) return;
    const p = this._pos.get(c);
    // Not after the channel's position: a duplicate. After a gap the old position may be one
    // the server never issued, so the next message is taken as it is.
    if (!this._gapped.delete(c) && p !== undefined && !after(m.id, p)) return;
    this._pos.set(c, m.id);
    this._emit("message", m);
  }

  _ended(how) {
    const wasConnected = this._connected;
    this._stop();
    if (how === "slow") return this._schedule(0);
    if (wasConnected || how === "drain") {
      // It worked and stopped: the node went away. Same transport, next node: at once after
      // a drain, but with backoff when drains follow each other without a connection in
      // between (every node left in the list is draining, or one URL leads to it again).
      this._ui = (this._ui + 1) % this.urls.length;
      if (how === "drain") return this._schedule(this._drains++);
      return this._schedule(this._failures++);
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
    // publish()/rpc() awaiting their answer, by request id.
    const pending = new Map();
    let nextId = 0;
    const settle = (f) => {
      const p = pending.get(f.id);
      if (!p) return false;
      pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.type === "error") p.reject(new HeraldError(f.code, f.message, f));
      else p.resolve(f);
      return true;
    };
    const abandon = (code, message) => {
      for (const p of pending.values()) clearTimeout(p.timer), p.reject(new HeraldError(code, message));
      pending.clear();
    };
    // Subscribe with each channel's position; channels without one start from now.
    ws.onopen = () => {
      const since = Object.fromEntries([...sub.channels].filter((c) => sub._pos.has(c)).map((c) => [c, sub._pos.get(c)]));
      ws.send(JSON.stringify({ op: "subscribe", channels: [...sub.channels], since }));
    };
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
      else if (f.id != null && (f.type === "published" || f.type === "rpc" || (f.type === "error" && f.op))) settle(f);
      else if (f.type === "subscribed") h.subscribed(f.cursor, f.channels, f);
      else if (f.type === "authenticated") f.client && (sub.clientId = f.client);
      else if (f.type === "unsubscribed") h.unsubscribed(f);
      else if (f.type === "join" || f.type === "leave") h.presence(f.type, f);
      else if (f.type === "gap") h.gap(f.channel);
      else if (f.type === "reconnect") end("drain");
      else if (f.type === "disconnect") h.over(f);
      else if (f.type === "error") {
        h.error(f);
        if (f.code === "token_revoked") h.over(f);
        else if (f.channels && !sub._connected) end("fail"); // our subscribe was refused
      }
    };
    // 4001: the token expired; reconnecting at once fetches a fresh one. 4002/4003: the
    // server disconnected us, 4004: the token was revoked (normally after their frame).
    ws.onclose = (e) => {
      abandon("connection_lost", "the connection closed before the answer: the request may or may not have been carried out");
      if (e.code > 4001 && e.code < 4005)
        h.over({ code: e.code > 4003 ? "token_revoked" : "disconnected", reconnect: e.code === 4003 });
      else end(e.code === 1012 ? "drain" : e.code === 1013 || e.code === 4001 ? "slow" : "fail");
    };
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
      request: (cmd, timeout) =>
        new Promise((resolve, reject) => {
          if (ws.readyState !== 1) return reject(new HeraldError("not_connected", "the WebSocket is not open"));
          const id = `r${++nextId}`;
          const timer = setTimeout(() => pending.delete(id) && reject(new HeraldError("timeout", "no answer in time")), timeout);
          pending.set(id, { resolve, reject, timer });
          ws.send(JSON.stringify({ ...cmd, id }));
        }),
      close: () => {
        ended = true;
        abandon("closed", "the connection was closed before the answer");
        clearTimeout(refresh);
        ws.onclose = ws.onmessage = ws.onopen = null;
        ws.close();
      },
    };
  },

  // Every SSE id is the position token of the whole stream. The browser's own reconnect would
  // send the last one as Last-Event-ID; we reopen ourselves (possibly on another node) with it
  // as `since`, or, if the channels changed or another transport ran since, with a token of
  // the positions.
  sse(sub, h) {
    const channels = [...sub.channels];
    let set = sorted(channels).join("\n");
    const since = sub._sseId && sub._sseSet === set ? sub._sseId : sub._since(channels);
    const es = new EventSource(sub._endpoint("sse", channels, since));
    const data = (e) => {
      try {
        return JSON.parse(e.data);
      } catch {
        return {};
      }
    };
    const seen = (e) => h.live() && e.lastEventId && ((sub._sseId = e.lastEventId), (sub._sseSet = set));
    // The server changed the stream's channels: its ids no longer name our URL's set, so a
    // reopen builds `since` from the positions, with the new set.
    const moved = () => ((set = null), (sub._sseId = undefined));
    es.addEventListener("subscribed", (e) => {
      const d = data(e);
      if (d.server) moved();
      else seen(e), h.positions(e.lastEventId, channels); // where the stream starts, for every channel
      h.subscribed(d.cursor, d.channels, d);
    });
    es.addEventListener("unsubscribed", (e) => (moved(), h.unsubscribed(data(e))));
    for (const t of ["join", "leave"]) es.addEventListener(t, (e) => h.presence(t, data(e)));
    es.addEventListener("disconnect", (e) => h.over(data(e)));
    es.addEventListener("message", (e) => {
      h.message(data(e)); // its own id moves its channel's position
      seen(e);
    });
    es.addEventListener("gap", (e) => h.gap(data(e).channel));
    es.addEventListener("reconnect", () => h.end("drain"));
    es.addEventListener("error", (e) => {
      if (e.data) {
        const d = data(e);
        h.error(d);
        if (d.code === "token_revoked") return h.over(d);
        return h.end(d.code === "slow_consumer" || d.code === "token_expired" ? "slow" : "fail");
      }
      h.end("fail"); // network error or refused: we reconnect ourselves, with our cursor
    });
    return { close: () => es.close() }; // closed by us: the browser does not reconnect it
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
      const channels = [...sub.channels];
      let reply;
      try {
        const url = sub._endpoint("poll", channels, sub._since(channels), { wait });
        const res = await fetch(url, { signal: ctl.signal, cache: "no-store" });
        if (!res.ok) {
          const { error, ...body } = await res.json().catch(() => ({}));
          const e = { ...body, ...error }; // {"error":{"code",..}}; a 409 may be flat
          // 409: the server disconnected this user (a held long-poll).
          if (res.status === 409) return h.over(e);
          h.error({ status: res.status, ...e });
          if (e.code === "token_expired") return h.end("slow");
          if (e.code === "token_revoked") return h.over(e);
          throw new Error(`HTTP ${res.status}`);
        }
        reply = await res.json();
      } catch {
        return h.end("fail");
      }
      if (!h.live()) return;
      for (const c of reply.gaps || []) h.gap(c);
      for (const m of reply.messages || []) h.message(m);
      // `cursor`: a consistent cut over the request's channels (a cursor or a token).
      h.positions(reply.cursor, channels);
      // The node is draining: go on from these positions on another node.
      if (reply.reconnect === "draining") return h.end("drain");
      h.subscribed();
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
 * `gap`, `state`, `error`, `join`, `leave`, `disconnect`, `subscribed` and `unsubscribed`
 * events (payload in `event.detail`).
 */
export function subscribe(urls, channels, options) {
  return new Subscription(urls, channels, options);
}

export default { subscribe, Subscription, HeraldError, TRANSPORTS, encodePositions, decodePositions };
