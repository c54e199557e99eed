//! Exact resume under an adversary, on every held protocol and both brokers.
//!
//! One client subscribes to 16 channels (or one, where said) while 16 publishers publish to
//! them concurrently
//! over gRPC (`{"ch": i, "n": k}`, k = 0..N on channel i). The client breaks its connection
//! abruptly at random moments (after a random number of frames, after a random 20-300 ms,
//! or right after asking to resume), at least [`MIN_BREAKS`] times, and each time reconnects
//! and resumes from exactly what the protocol tells it to send back
//! (docs/protocol.md, "Resume: one position per channel"):
//!
//! - WebSocket: per channel, the `id` of the last message received on it, else the cursor it
//!   first subscribed at, as `{"op":"subscribe","channels":[..],"since":{"chan":"id",..}}`;
//! - SSE: the last `id:` line seen, as `Last-Event-ID` (what `EventSource` does; the token
//!   is not parsed);
//! - long-poll: the `cursor` of the last reply fully received, requests being aborted at
//!   random (while messages flow, 1-50 ms in, racing the answer; afterwards 20-300 ms into
//!   the wait).
//!
//! With NATS, publishers use node A, the client starts on node B and each reconnect goes to
//! a randomly chosen node of the two. At the end every channel must have received exactly
//! 0..N in order (with the published ids), nothing missing, nothing repeated, no gap.
//! Only per-channel order is asserted: the protocol promises nothing across channels.
//!
//! The break schedule comes from a seeded generator whose seed is printed
//! (`HERALD_E2E_SEED=<seed>` replays it). `HERALD_E2E_WS_RESUME=last-id` makes the WebSocket
//! client resume the old way (one `since`: the last id received on the connection), which
//! is how the per-connection resume of the previous protocol was shown to lose messages.
//! SSE and long-poll need no such switch: `Last-Event-ID` and the poll `cursor` are sent
//! back the same way on both protocols.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use herald_e2e::{
    Msg, Node, SseClient, StatusCode, WsClient, channel,
    cluster::{nats_node, start_nats},
    metric_value, poll, poll_msgs, query,
    resume::{Ledger, Publishers, Rng, seed},
    within,
};
use serde_json::{Value, json};

/// Channels, one publisher each (the cases with one channel aside).
const CHANNELS: usize = 16;
/// Messages per channel.
const PER_CHANNEL: usize = 500;
/// Each publisher publishes one message per period (16 channels: about 1300 messages/s in
/// all when the machine keeps up).
const PUBLISH_PERIOD: Duration = Duration::from_millis(12);
/// Client-initiated breaks per run, at least.
const MIN_BREAKS: usize = 25;
/// A whole case, at most.
const CASE_LIMIT: Duration = Duration::from_secs(120);
/// Final drain: once every channel's last message arrived, how long to keep listening for
/// repeats.
const TRAILING_QUIET: Duration = Duration::from_millis(700);
/// Final drain: how long after publishing ended to wait for the last messages before
/// concluding they will not come (only reached when something is missing).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// Final drain: longest single wait for a frame.
const SLICE: Duration = Duration::from_secs(2);

const HISTORY: [(&str, &str); 2] = [
    ("HERALD_HISTORY_SIZE", "100000"),
    ("HERALD_HISTORY_TTL", "1h"),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Broker {
    /// One node on the embedded memory broker.
    Memory,
    /// nats-server with two nodes: publishers on A, client starting on B, reconnecting to
    /// either.
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    WebSocket,
    Sse,
    LongPoll,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Adversary {
    /// Breaks the connection at random moments, at least [`MIN_BREAKS`] times.
    Breaks,
    /// Never breaks: one connection receives everything live.
    None,
}

/// How a WebSocket client resumes (`HERALD_E2E_WS_RESUME`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum WsResume {
    /// The protocol: per channel, its last id (or where it was subscribed).
    PerChannel,
    /// The previous protocol's advice, kept to show it loses messages: one `since`, the
    /// last id received on the connection.
    LastIdOnConnection,
}

fn ws_resume() -> WsResume {
    match std::env::var("HERALD_E2E_WS_RESUME").as_deref() {
        Ok("last-id") => WsResume::LastIdOnConnection,
        Ok("per-channel") | Err(_) => WsResume::PerChannel,
        Ok(other) => panic!("HERALD_E2E_WS_RESUME={other:?}: expected per-channel or last-id"),
    }
}

/// When the client breaks its current connection.
#[derive(Debug, Clone, Copy)]
enum Break {
    /// Before reading anything: right after sending the WebSocket subscribe command, or
    /// right after the SSE response head.
    AtOnce,
    /// After this many frames (or 300 ms, whichever first).
    AfterFrames(u64),
    /// After this long.
    After(Duration),
}

/// A poll reply's `cursor`, sent back as it is (a cursor or a position token: opaque).
fn reply_cursor(body: &Value) -> String {
    body["cursor"]
        .as_str()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| panic!("poll reply without a cursor: {body}"))
        .to_owned()
}

/// A held connection.
enum Conn {
    Ws(WsClient),
    Sse(SseClient),
}

impl Conn {
    /// The next frame as (type or event name, SSE `id:` line, JSON), `None` at the end of
    /// the connection. Cancel-safe.
    async fn next(&mut self) -> Option<(String, Option<String>, Value)> {
        match self {
            Conn::Ws(ws) => {
                let v = ws.next_json_or_end().await?;
                let ty = v["type"].as_str().unwrap_or_default().to_owned();
                Some((ty, None, v))
            }
            Conn::Sse(sse) => {
                let ev = sse.next_event().await?;
                let v = ev.json();
                Some((ev.event, ev.id, v))
            }
        }
    }
}

struct Client<'a> {
    protocol: Protocol,
    ws_resume: WsResume,
    nodes: &'a [Node],
    /// Index into `nodes` of the first connection.
    home: usize,
    names: Vec<String>,
    rng: Rng,
    ledger: Ledger,
    conn: Option<Conn>,
    /// Connections (or long-poll requests) opened.
    connections: usize,
    /// Connections the client dropped (or requests it aborted).
    breaks: usize,
    /// Connections the server ended (slow consumer, ...).
    server_ends: usize,
    /// WebSocket: the cursor of the first `subscribed`.
    ws_start: Option<String>,
    /// WebSocket: per channel, its last message id, else `ws_start`.
    ws_positions: BTreeMap<String, String>,
    /// SSE: the last `id:` line seen.
    last_event_id: Option<String>,
    /// Long-poll: the cursor of the last reply fully received.
    poll_cursor: Option<String>,
}

impl<'a> Client<'a> {
    fn node(&mut self) -> &'a Node {
        let i = if self.connections == 0 {
            self.home
        } else {
            self.rng.index(self.nodes.len())
        };
        self.connections += 1;
        &self.nodes[i]
    }

    fn plan(&mut self) -> Break {
        if self.rng.one_in(10) {
            Break::AtOnce
        } else if self.rng.one_in(2) {
            Break::AfterFrames(self.rng.between(1, 300))
        } else {
            Break::After(Duration::from_millis(self.rng.between(20, 300)))
        }
    }

    /// The WebSocket subscribe command: no `since` the first time, then the resume.
    fn ws_subscribe(&self) -> Value {
        let mut cmd = json!({"op": "subscribe", "channels": self.names});
        if self.ws_start.is_some() {
            cmd["since"] = match self.ws_resume {
                WsResume::PerChannel => json!(self.ws_positions),
                WsResume::LastIdOnConnection => match self.ledger.last_id() {
                    Some(id) => json!(id.to_string()),
                    None => json!(self.ws_start),
                },
            };
        }
        cmd
    }

    /// Opens a connection resuming from what the client holds (nothing the first time).
    async fn open(&mut self) -> Conn {
        let node = self.node();
        self.ledger.new_connection();
        match self.protocol {
            Protocol::WebSocket => {
                let mut ws = WsClient::connect(node, "").await;
                ws.send_json(self.ws_subscribe()).await;
                Conn::Ws(ws)
            }
            Protocol::Sse => {
                let q = query(&self.names(), None);
                let headers: Vec<(&str, &str)> = match &self.last_event_id {
                    Some(id) => vec![("Last-Event-ID", id.as_str())],
                    None => Vec::new(),
                };
                Conn::Sse(SseClient::connect(node, &q, &headers).await)
            }
            Protocol::LongPoll => unreachable!("long-poll holds no connection"),
        }
    }

    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// Handles one WebSocket frame or SSE event.
    fn frame(&mut self, kind: &str, id: Option<String>, v: &Value) {
        if id.is_some() {
            self.last_event_id = id;
        }
        match kind {
            "subscribed" => {
                if self.ws_start.is_none() && self.protocol == Protocol::WebSocket {
                    let c = v["cursor"]
                        .as_str()
                        .unwrap_or_else(|| panic!("subscribed without a cursor: {v}"))
                        .to_owned();
                    for name in &self.names {
                        self.ws_positions.insert(name.clone(), c.clone());
                    }
                    self.ws_start = Some(c);
                }
            }
            "message" => {
                let m = Msg::from_json(v);
                self.ws_positions
                    .insert(m.channel.clone(), m.id.to_string());
                self.ledger.record(&m);
            }
            "gap" => self.ledger.gap(v["channel"].as_str().unwrap_or("?")),
            "pong" | "reconnect" => {}
            "error" if self.protocol == Protocol::Sse => {
                // The stream ends after it (slow consumer); the client resumes.
            }
            "error" => panic!(
                "the server refused the resume command {} with {v}",
                self.ws_subscribe()
            ),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }

    /// Subscribes before anything is published; the connection stays open.
    async fn start(&mut self) {
        if self.protocol == Protocol::LongPoll {
            let node = self.node();
            self.ledger.new_connection();
            let (status, body) = poll(node, &query(&self.names(), None)).await;
            assert_eq!(status, StatusCode::OK, "first poll: {body}");
            assert!(poll_msgs(&body).is_empty(), "nothing published yet: {body}");
            self.poll_cursor = Some(reply_cursor(&body));
            return;
        }
        let mut conn = self.open().await;
        let (kind, id, v) = within(herald_e2e::TIMEOUT, "the first subscribed", conn.next())
            .await
            .expect("the connection ended before subscribed");
        assert_eq!(kind, "subscribed", "first frame: {v}");
        self.frame(&kind, id, &v);
        self.conn = Some(conn);
    }

    /// Breaks and resumes until publishing is over and at least [`MIN_BREAKS`] breaks
    /// happened.
    async fn run(&mut self, publishing_over: impl Fn() -> bool) {
        while !(publishing_over() && self.breaks >= MIN_BREAKS) {
            if self.protocol == Protocol::LongPoll {
                // While messages flow a long-poll is answered within milliseconds: abort
                // half of them within 1-50 ms, racing the answer. Afterwards every request
                // waits, and is aborted 20-300 ms into its wait.
                let abort = if publishing_over() {
                    Some(self.rng.between(20, 300))
                } else if self.rng.one_in(2) {
                    Some(self.rng.between(1, 50))
                } else {
                    None
                };
                self.long_poll(abort.map(Duration::from_millis), 5).await;
            } else {
                let plan = self.plan();
                self.held(plan).await;
            }
        }
    }

    /// One held connection (the open one, else a new one) until the planned break.
    async fn held(&mut self, plan: Break) {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let c = self.open().await;
                if let Break::AtOnce = plan {
                    self.breaks += 1;
                    return; // dropped with the resume just sent
                }
                c
            }
        };
        let (limit, frames) = match plan {
            Break::AtOnce => (Duration::ZERO, u64::MAX),
            Break::AfterFrames(n) => (Duration::from_millis(300), n),
            Break::After(d) => (d, u64::MAX),
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = 0;
        loop {
            match tokio::time::timeout_at(deadline, conn.next()).await {
                Err(_) => break,
                Ok(None) => {
                    self.server_ends += 1;
                    return;
                }
                Ok(Some((kind, id, v))) => {
                    self.frame(&kind, id, &v);
                    seen += 1;
                    if seen >= frames {
                        break;
                    }
                }
            }
        }
        self.breaks += 1;
        drop(conn); // abruptly: no close frame, no end of request
    }

    /// One poll (`wait` seconds at most) from the last cursor, aborted (the request future
    /// dropped) after `abort` if it has not been answered by then.
    async fn long_poll(&mut self, abort: Option<Duration>, wait: u32) {
        let node = self.node();
        let since = self
            .poll_cursor
            .clone()
            .expect("a cursor from the first poll");
        let q = format!("{}&wait={wait}", query(&self.names(), Some(&since)));
        let reply = match abort {
            Some(d) => tokio::time::timeout(d, poll(node, &q)).await.ok(),
            None => Some(poll(node, &q).await),
        };
        let Some((status, body)) = reply else {
            self.breaks += 1;
            return;
        };
        assert_eq!(status, StatusCode::OK, "GET /poll?{q}: {body}");
        self.ledger.new_connection();
        if body["gap"] != false {
            for g in body["gaps"].as_array().into_iter().flatten() {
                self.ledger.gap(g.as_str().unwrap_or("?"));
            }
            if body["gaps"].as_array().is_none_or(Vec::is_empty) {
                self.ledger.gap(&format!("(unnamed) {body}"));
            }
        }
        for m in poll_msgs(&body) {
            self.ledger.record(&m);
        }
        self.poll_cursor = Some(reply_cursor(&body));
    }

    /// After publishing: resume once more and take everything still owed.
    async fn drain(&mut self, publishing_over: impl Fn() -> bool) {
        if self.protocol == Protocol::LongPoll {
            loop {
                let over = publishing_over();
                let before = self.ledger.received();
                // Once publishing is over, interval polls until one comes back empty.
                self.long_poll(None, if over { 0 } else { 5 }).await;
                if over && self.ledger.received() == before {
                    return;
                }
            }
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.open().await,
        };
        let mut give_up = None;
        loop {
            let now = tokio::time::Instant::now();
            if give_up.is_none() && publishing_over() {
                give_up = Some(now + GIVE_UP_AFTER);
            }
            let complete = self.ledger.complete();
            // Waits in slices shorter than the helpers' own frame timeout.
            let until = match give_up {
                _ if complete => now + TRAILING_QUIET,
                Some(t) => t.min(now + SLICE),
                None => now + SLICE,
            };
            match tokio::time::timeout_at(until, conn.next()).await {
                Err(_) if complete => return,
                Err(_) if give_up.is_some_and(|t| t <= until) => return,
                Err(_) => {}
                Ok(None) => {
                    self.server_ends += 1;
                    conn = self.open().await;
                }
                Ok(Some((kind, id, v))) => self.frame(&kind, id, &v),
            }
        }
    }
}

/// The scenario: see the module docs.
///
/// Every live message that finds a WebSocket (or a one-channel SSE stream) idle is written to
/// its socket by the fan-out itself (docs: ARCHITECTURE.md, "direct writes"): the node counts
/// them, and the case checks that this path was taken, not only the outbox's.
async fn exact_resume(
    name: &str,
    broker: Broker,
    protocol: Protocol,
    adversary: Adversary,
    channels: usize,
) {
    let started = Instant::now();
    let seed = seed(name);
    let nats = (broker == Broker::Nats).then(start_nats);
    let nodes = match &nats {
        None => vec![Node::start(&HISTORY).await],
        Some(nats) => vec![
            nats_node(nats, "a", &HISTORY).await,
            nats_node(nats, "b", &HISTORY).await,
        ],
    };
    let names: Vec<String> = (0..channels)
        .map(|i| channel(&format!("exact{i}")))
        .collect();
    let ws_resume = ws_resume();
    let mut client = Client {
        protocol,
        ws_resume,
        nodes: &nodes,
        home: nodes.len() - 1,
        names: names.clone(),
        rng: Rng::new(seed),
        ledger: Ledger::new(&names, PER_CHANNEL),
        conn: None,
        connections: 0,
        breaks: 0,
        server_ends: 0,
        ws_start: None,
        ws_positions: BTreeMap::new(),
        last_event_id: None,
        poll_cursor: None,
    };

    let published = within(CASE_LIMIT, name, async {
        client.start().await;
        let publishers = Publishers::start(&nodes[0], &names, PER_CHANNEL, PUBLISH_PERIOD).await;
        if adversary == Adversary::Breaks {
            client.run(|| publishers.finished()).await;
        }
        client.drain(|| publishers.finished()).await;
        publishers.join().await
    })
    .await;

    println!(
        "{name}: {broker:?}, {protocol:?}{}: {} messages received of {}, {} connections, \
         {} breaks by the client, {} ends by the server, {} cross-channel id inversions on \
         a connection (allowed), {:.1} s",
        if protocol == Protocol::WebSocket && adversary == Adversary::Breaks {
            format!(" ({ws_resume:?})")
        } else {
            String::new()
        },
        client.ledger.received(),
        channels * PER_CHANNEL,
        client.connections,
        client.breaks,
        client.server_ends,
        client.ledger.cross_channel_inversions(),
        started.elapsed().as_secs_f64(),
    );
    let mut direct = 0.0;
    for node in &nodes {
        direct += metric_value(node, "herald_direct_writes_total").await;
    }
    println!("{name}: {direct} messages written to the socket by the fan-out (direct writes)");
    let problems = client.ledger.problems(&published);
    assert!(
        problems.is_empty(),
        "{name} (seed {seed}): {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    if adversary == Adversary::Breaks {
        assert!(client.breaks >= MIN_BREAKS, "only {} breaks", client.breaks);
    }
    if protocol == Protocol::WebSocket || (protocol == Protocol::Sse && channels == 1) {
        assert!(
            direct > 0.0,
            "{name}: the direct-write path was never taken"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_resuming_per_channel_on_the_memory_broker_loses_and_repeats_nothing() {
    exact_resume(
        "websocket_memory",
        Broker::Memory,
        Protocol::WebSocket,
        Adversary::Breaks,
        CHANNELS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_resuming_from_last_event_id_on_the_memory_broker_loses_and_repeats_nothing() {
    exact_resume(
        "sse_memory",
        Broker::Memory,
        Protocol::Sse,
        Adversary::Breaks,
        CHANNELS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_aborted_mid_wait_on_the_memory_broker_loses_and_repeats_nothing() {
    exact_resume(
        "long_poll_memory",
        Broker::Memory,
        Protocol::LongPoll,
        Adversary::Breaks,
        CHANNELS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_resuming_per_channel_on_either_nats_node_loses_and_repeats_nothing() {
    exact_resume(
        "websocket_nats",
        Broker::Nats,
        Protocol::WebSocket,
        Adversary::Breaks,
        CHANNELS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_resuming_from_last_event_id_on_either_nats_node_loses_and_repeats_nothing() {
    exact_resume(
        "sse_nats",
        Broker::Nats,
        Protocol::Sse,
        Adversary::Breaks,
        CHANNELS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_aborted_mid_wait_on_either_nats_node_loses_and_repeats_nothing() {
    exact_resume(
        "long_poll_nats",
        Broker::Nats,
        Protocol::LongPoll,
        Adversary::Breaks,
        CHANNELS,
    )
    .await;
}

/// One channel: SSE events then carry the message's own id, and the fan-out writes them
/// straight to the idle stream's socket, on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_on_one_channel_written_directly_on_either_nats_node_loses_and_repeats_nothing() {
    exact_resume(
        "sse_one_channel_nats",
        Broker::Nats,
        Protocol::Sse,
        Adversary::Breaks,
        1,
    )
    .await;
}

/// Live fan-out may interleave channels in any order on one connection (the count of
/// cross-channel inversions is printed); the protocol owes per-channel order only, and that
/// is all this checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unbroken_websocket_owes_per_channel_order_only_and_gets_every_message_once() {
    exact_resume(
        "websocket_unbroken",
        Broker::Memory,
        Protocol::WebSocket,
        Adversary::None,
        CHANNELS,
    )
    .await;
}
