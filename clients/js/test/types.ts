// Compiled (not run) by scripts/check-browser.sh: the examples of docs/sdk.md type-check
// against herald.d.ts.
import herald, { subscribe, type HeraldMessage, type StateEvent } from "../herald.js";

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
console.log(c, herald.TRANSPORTS);
sub.close();

// Client auth: a static token, or a function fetching one from the app's backend.
subscribe("", ["chat:1"], { token: "eyJ..." });
subscribe("", ["chat:1"], {
  token: async () => (await fetch("/api/herald-token")).text(),
  onError: (e) => console.warn(e.code),
});
