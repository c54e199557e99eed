// Compiled (not run) by scripts/check-browser.sh: the examples of docs/sdk.md type-check
// against herald.d.ts.
import herald, {
  decodePositions, encodePositions, subscribe, type DisconnectEvent, type HeraldMessage, type PresenceEvent, type StateEvent,
} from "../herald.js";

const sub = subscribe(["http://a:8080", "http://b:8080"], ["news"], {
  transports: ["sse", "longpoll"],
  since: "0",
  onMessage: (m: HeraldMessage) => console.log(m.channel, m.id, m.data, m.ts),
  onGap: (g) => console.warn(g.channel),
  onState: (s: StateEvent) => console.log(s.state, s.transport, s.url, s.delay),
});
sub.addEventListener("message", (e) => console.log(e.detail.id));
sub.addEventListener("state", (e) => console.log(e.detail.state === "connected"));
sub.add("chat:2");
sub.remove(["news"]);
const c: string | undefined = sub.cursor;
const at: Record<string, string> = sub.positions;
console.log(c, at["chat:2"], herald.TRANSPORTS);
// Resume later from a saved position token, or from per-channel cursors.
subscribe("", ["news", "chat:2"], { since: c });
subscribe("", ["news", "chat:2"], { since: { news: "1795467571318347" } });
const token: string = encodePositions({ news: "10", "chat:2": "12" });
const back: Record<string, string> | null = decodePositions(token, ["news", "chat:2"]);
console.log(back, herald.encodePositions(new Map([["a", "1"]])));
sub.close();

// Client auth: a static token, or a function fetching one from the app's backend.
subscribe("", ["chat:1"], { token: "eyJ..." });
subscribe("", ["chat:1"], {
  token: async () => (await fetch("/api/herald-token")).text(),
  onError: (e) => console.warn(e.code),
});

// Presence, join/leave and server endings (docs/presence.md).
const room = subscribe("", ["room:1"], {
  token: "eyJ...",
  onJoin: (j: PresenceEvent) => console.log(j.channel, j.client, j.user, j.info),
  onDisconnect: (d: DisconnectEvent) => console.log(d.code, d.reason, d.reconnect),
});
const me: string | null = room.clientId;
room.addEventListener("join", (e) => console.log(e.detail.client === me, e.detail.user));
room.addEventListener("leave", (e) => console.log(e.detail.channel, e.detail.info));
room.addEventListener("disconnect", (e) => {
  const again: boolean = e.detail.reconnect;
  console.log(again || room.state === "closed", e.detail.code === "token_revoked");
});
room.addEventListener("subscribed", (e) => console.log(e.detail.channels, e.detail.cursor, e.detail.server));
room.addEventListener("unsubscribed", (e) => console.log(e.detail.channels, e.detail.reason));

// Client publishes and RPC (docs/sdk.md, "Publishing").
import { HeraldError, type Published } from "../herald.js";
const chat = subscribe("", ["chat:lobby"], { token: "eyJ...", requestTimeout: 5000 });
chat.publish("chat:lobby", { text: "hi" }).then((p: Published) => console.log(p.channel, p.cursor));
chat.publish("chat:lobby", 1).catch((e: unknown) => {
  if (e instanceof HeraldError) console.log(e.code, e.message, e.detail);
});
chat.rpc<{ ok: boolean }>("echo", { x: 1 }).then((r) => console.log(r.ok));
