//! `herald-bench presence`: what users and presence cost (docs/benchmarks.md, "Presence").
//!
//! Connection `g` of a run (`g` counts over every load-generator process: this one holds
//! `--offset .. --offset + --connections` of `--total`) belongs to user `u(g % --users)`, is
//! subscribed to channel `NS:<hash(g) % --channels>` (rooms of uneven size, like real ones) and,
//! for `g < --big`, also to `--big-channel` (by default `hall:big`, a namespace that keeps
//! presence without join/leave: a join there would go to every member); it goes to node `g % nodes` (`--addr` list) from source
//! address `g % sources`. Each carries its own HS256 token (`sub`, a small `info`, a `jti`),
//! unless `--anonymous`. Every connection is read for its whole life (WebSocket pongs, join and
//! leave events counted).
//!
//! Then, in order, each step optional:
//! 1. RSS: growth of the node processes' `VmRSS` (`--pid`, summed) over every connection held
//!    (`--held-elsewhere` by other processes; `--rss-baseline-kb` taken before any of them);
//! 2. check: `PresenceStats` of every channel on every `--grpc` node, summed (is every
//!    connection listed once, and by which nodes);
//! 3. queries: `--queries` sequential `Presence`, then `PresenceStats`, on random channels
//!    through the first `--grpc` (and `--big-queries` on the big channel): latency, entries, node
//!    CPU per call;
//! 4. steady: `--steady` of nothing: NATS traffic from the server's `/varz`
//!    (`--nats-monitor`), node and nats-server CPU;
//! 5. churn: `--churn-rate` reconnects per second for `--churn-duration` (a random connection
//!    of this process closes, a new one with a fresh token takes its place: one leave and one
//!    join): NATS traffic, CPU, and the join/leave events every process received against what
//!    cluster-wide and node-local delivery would give.
//!
//! `--hold-only` (the other load-generator processes): open, write `--status-file` (opened,
//! events received) every 500 ms, hold until `--stop-file` exists or `--hold` passed. The
//! measuring process reads their status files (`--peer-status`) at the churn window's edges.
//! Bounded: opening stops after 300 s, every gRPC call times out after 10 s, holding after
//! `--hold`.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use herald_proto::v1::{PresenceRequest, herald_client::HeraldClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{oneshot, watch},
    time::Instant,
};
use tokio_tungstenite::tungstenite::{Message as WsMessage, client::IntoClientRequest};
use tonic::transport::Channel;

use crate::{
    channels::Transport, client_ws_config, connect_from, cpu_seconds, now_us, peers::Sub, rss_kb,
};

/// Settings of one run.
pub(crate) struct Presence {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) grpc: Vec<String>,
    pub(crate) transport: Transport,
    pub(crate) connections: usize,
    pub(crate) offset: usize,
    /// Connections of the whole run (every process); 0: offset + connections.
    pub(crate) total: usize,
    pub(crate) channels: usize,
    pub(crate) users: usize,
    pub(crate) namespace: String,
    pub(crate) secret: String,
    pub(crate) anonymous: bool,
    pub(crate) info_bytes: usize,
    pub(crate) big: usize,
    pub(crate) big_channel: String,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) pids: Vec<u32>,
    pub(crate) nats_pid: Option<u32>,
    pub(crate) nats_monitor: Option<String>,
    pub(crate) rss_baseline_kb: Option<u64>,
    pub(crate) held_elsewhere: usize,
    pub(crate) check: bool,
    pub(crate) queries: usize,
    pub(crate) big_queries: usize,
    pub(crate) steady: Duration,
    pub(crate) churn_rate: u64,
    pub(crate) churn_duration: Duration,
    pub(crate) hold_only: bool,
    pub(crate) hold: Duration,
    pub(crate) status_file: Option<PathBuf>,
    pub(crate) stop_file: Option<PathBuf>,
    pub(crate) peer_status: Vec<PathBuf>,
    pub(crate) run_id: Option<u64>,
    pub(crate) json: Option<PathBuf>,
}

/// splitmix64: a fixed, well-spread hash (rooms of uneven size; random picks).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where connection `g` goes.
#[derive(Clone, Copy)]
struct Place {
    channel: usize,
    node: usize,
    user: usize,
}

fn place(g: usize, channels: usize, nodes: usize, users: usize) -> Place {
    Place {
        channel: (mix(g as u64) % channels.max(1) as u64) as usize,
        node: g % nodes.max(1),
        user: g % users.max(1),
    }
}

/// Join/leave events and endings seen by this process's connections.
#[derive(Default)]
struct Counts {
    joins: AtomicU64,
    leaves: AtomicU64,
    /// Connections the server ended (not closed by this process).
    ended: AtomicU64,
}

impl Counts {
    /// One WebSocket text frame (one event each; the server writes keys in any order).
    fn add_ws(&self, frame: &str) {
        if frame.contains("\"type\":\"message\"") {
            return;
        }
        if frame.contains("\"type\":\"join\"") {
            self.joins.fetch_add(1, Ordering::Relaxed);
        } else if frame.contains("\"type\":\"leave\"") {
            self.leaves.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Complete SSE events.
    fn add_sse(&self, text: &str) {
        let j = text.matches("event: join\n").count();
        let l = text.matches("event: leave\n").count();
        if j > 0 {
            self.joins.fetch_add(j as u64, Ordering::Relaxed);
        }
        if l > 0 {
            self.leaves.fetch_add(l as u64, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.joins.load(Ordering::Relaxed),
            self.leaves.load(Ordering::Relaxed),
        )
    }
}

/// What a connection needs to open.
struct Opener {
    addrs: Vec<SocketAddr>,
    sources: Vec<IpAddr>,
    transport: Transport,
    channels: usize,
    users: usize,
    namespace: String,
    secret: Vec<u8>,
    anonymous: bool,
    info_bytes: usize,
    big: usize,
    big_channel: String,
    run: u64,
    /// Tokens minted so far (each gets its own `jti`).
    minted: AtomicU64,
}

impl Opener {
    fn token(&self, g: usize) -> anyhow::Result<Option<String>> {
        if self.anonymous {
            return Ok(None);
        }
        let p = place(g, self.channels, self.addrs.len(), self.users);
        let now = herald_auth::now_secs();
        let name = format!("User {}", p.user);
        let pad = "x".repeat(self.info_bytes.saturating_sub(name.len() + 20));
        let claims = herald_auth::MintClaims {
            sub: format!("u{}", p.user),
            channels: vec![format!("{}:*", self.namespace), self.big_channel.clone()],
            publish: Vec::new(),
            iat: now,
            exp: now + 6 * 3600,
            nbf: None,
            iss: None,
            aud: None,
            jti: Some(format!(
                "{}-{g}-{}",
                self.run,
                self.minted.fetch_add(1, Ordering::Relaxed)
            )),
            info: Some(serde_json::json!({"name": name, "pad": pad})),
        };
        let t = herald_auth::mint_hs256(&self.secret, &claims).context("minting a token")?;
        Ok(Some(t))
    }

    fn names(&self, g: usize) -> Vec<String> {
        let p = place(g, self.channels, self.addrs.len(), self.users);
        let mut names = vec![format!("{}:{}", self.namespace, p.channel)];
        if g < self.big {
            names.push(self.big_channel.clone());
        }
        names
    }

    /// Opens connection `g` and returns it once `subscribed` (events seen on the way counted).
    async fn open(&self, g: usize, counts: &Counts) -> anyhow::Result<Sub> {
        let sse = match self.transport {
            Transport::Ws => false,
            Transport::Sse => true,
            Transport::Mix => g % 2 == 1,
        };
        let src = self.sources[g % self.sources.len()];
        let addr = self.addrs[g % self.addrs.len()];
        let token = self.token(g)?;
        let query: Vec<String> = self
            .names(g)
            .iter()
            .map(|n| format!("channel={n}"))
            .collect();
        let query = query.join("&");
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = connect_from(src, addr).await?;
        if sse {
            return open_sse(stream, addr, &query, token.as_deref(), deadline, counts).await;
        }
        let mut req = format!("ws://{addr}/ws?{query}").into_client_request()?;
        if let Some(t) = &token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let (mut ws, _) = tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::client_async_with_config(req, stream, Some(client_ws_config())),
        )
        .await
        .context("websocket handshake timed out")??;
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .context("no `subscribed` in time")?
                .context("closed before subscribed")??;
            if let WsMessage::Text(t) = msg {
                if t.as_str().contains("\"type\":\"subscribed\"") {
                    return Ok(Sub::Ws(Box::new(ws)));
                }
                if t.as_str().contains("\"type\":\"error\"") {
                    bail!("refused: {}", t.as_str());
                }
                counts.add_ws(t.as_str());
            }
        }
    }
}

async fn open_sse(
    mut stream: tokio::net::TcpStream,
    addr: SocketAddr,
    query: &str,
    token: Option<&str>,
    deadline: Instant,
    counts: &Counts,
) -> anyhow::Result<Sub> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "GET /sse?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            if !seen.starts_with(b"HTTP/1.1 200") {
                bail!("sse refused: {}", String::from_utf8_lossy(&seen));
            }
            if let Some(at) = seen[end..]
                .windows(17)
                .position(|w| w == b"event: subscribed")
            {
                let from = end + at;
                counts.add_sse(&String::from_utf8_lossy(&seen[end..from]));
                let tail = match seen[from..].windows(2).position(|w| w == b"\n\n") {
                    Some(e) => seen[from + e + 2..].to_vec(),
                    None => Vec::new(),
                };
                return Ok(Sub::Sse { stream, buf: tail });
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .context("sse not subscribed in time")??;
        if n == 0 {
            bail!("sse closed early: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one frame or chunk and counts the events in it; false when the connection ended.
async fn read_events(sub: &mut Sub, counts: &Counts) -> bool {
    match sub {
        Sub::Ws(ws) => match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                counts.add_ws(t.as_str());
                true
            }
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => false,
            Some(Ok(_)) => true,
        },
        Sub::Sse { stream, buf } => {
            buf.reserve(1024);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => false,
                Ok(_) => {
                    if let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") {
                        counts.add_sse(&String::from_utf8_lossy(&buf[..end + 2]));
                        buf.drain(..end + 2);
                    }
                    buf.shrink_to(1024);
                    true
                }
            }
        }
    }
}

/// Holds `sub` until the run stops (dropped) or this connection is told to close (a clean
/// WebSocket close, or the SSE socket shut).
async fn hold(
    mut sub: Sub,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
    mut close: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            alive = read_events(&mut sub, &counts) => {
                if !alive {
                    counts.ended.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = stop.changed() => return,
            _ = &mut close => {
                match &mut sub {
                    Sub::Ws(ws) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
                    }
                    Sub::Sse { stream, .. } => {
                        let _ = stream.shutdown().await;
                    }
                }
                return;
            }
        }
    }
}

/// This process's connections: each slot's closer (None while it is being reopened).
type Slots = Arc<Mutex<Vec<Option<oneshot::Sender<()>>>>>;

fn rss_sum(pids: &[u32]) -> u64 {
    pids.iter().copied().map(rss_kb).sum()
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().copied().map(cpu_seconds).sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// p50/p90/p99/max in ms of latencies in µs.
fn percentiles(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        (v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 10.0).round() / 100.0
    };
    serde_json::json!({"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0),
        "calls": v.len()})
}

/// nats-server's message counters from its monitoring endpoint.
#[derive(Clone, Copy, Default)]
struct Varz {
    in_msgs: f64,
    out_msgs: f64,
    in_bytes: f64,
    out_bytes: f64,
    mem: f64,
}

async fn varz(monitor: &Option<String>) -> Option<Varz> {
    let base = monitor.as_ref()?;
    let body = reqwest::get(format!("{base}/varz"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    Some(Varz {
        in_msgs: f("in_msgs"),
        out_msgs: f("out_msgs"),
        in_bytes: f("in_bytes"),
        out_bytes: f("out_bytes"),
        mem: f("mem"),
    })
}

fn varz_delta(a: Option<Varz>, b: Option<Varz>, secs: f64) -> serde_json::Value {
    let (Some(a), Some(b)) = (a, b) else {
        return serde_json::Value::Null;
    };
    let per = |x: f64| round2(x / secs.max(1e-9));
    serde_json::json!({
        "in_msgs": b.in_msgs - a.in_msgs, "out_msgs": b.out_msgs - a.out_msgs,
        "in_bytes": b.in_bytes - a.in_bytes, "out_bytes": b.out_bytes - a.out_bytes,
        "in_msgs_per_s": per(b.in_msgs - a.in_msgs), "out_msgs_per_s": per(b.out_msgs - a.out_msgs),
        "in_bytes_per_s": per(b.in_bytes - a.in_bytes), "out_bytes_per_s": per(b.out_bytes - a.out_bytes),
        "nats_mem_mb": (b.mem / 1048576.0).round(),
    })
}

/// Sums `(opened, joins, leaves, ended)` over the other processes' status files.
fn peers_status(files: &[PathBuf]) -> (u64, u64, u64, u64) {
    let mut sum = (0, 0, 0, 0);
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        sum.0 += n("opened");
        sum.1 += n("joins");
        sum.2 += n("leaves");
        sum.3 += n("ended");
    }
    sum
}

async fn grpc_clients(endpoints: &[String]) -> anyhow::Result<Vec<HeraldClient<Channel>>> {
    let mut out = Vec::new();
    for e in endpoints {
        let channel = Channel::from_shared(e.clone())
            .context("--grpc")?
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {e}"))?;
        out.push(HeraldClient::new(channel).max_decoding_message_size(256 << 20));
    }
    Ok(out)
}

pub(crate) async fn run(b: Presence) -> anyhow::Result<()> {
    if b.addrs.is_empty() || b.sources.is_empty() || b.channels == 0 {
        bail!("--addr, --sources and --channels must not be empty");
    }
    let total = if b.total == 0 {
        b.offset + b.connections
    } else {
        b.total
    };
    let run = b.run_id.unwrap_or_else(|| now_us() / 1000 % 100_000_000);
    let opener = Arc::new(Opener {
        addrs: b.addrs.clone(),
        sources: b.sources.clone(),
        transport: b.transport,
        channels: b.channels,
        users: b.users.max(1),
        namespace: b.namespace.clone(),
        secret: b.secret.clone().into_bytes(),
        anonymous: b.anonymous,
        info_bytes: b.info_bytes,
        big: b.big,
        big_channel: b.big_channel.clone(),
        run,
        minted: AtomicU64::new(0),
    });
    let load_start = loadavg();

    // 1. Open and hold.
    let rss0 = b.rss_baseline_kb.unwrap_or_else(|| rss_sum(&b.pids));
    let cpu_open0 = cpu_of(&b.pids);
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots: Slots = Arc::new(Mutex::new((0..b.connections).map(|_| None).collect()));
    let opening = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let failed = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let mut opens = Vec::with_capacity(b.connections);
    for j in 0..b.connections {
        let g = b.offset + j;
        let (opener, counts, sem, failed, opened, slots, stop_rx) = (
            opener.clone(),
            counts.clone(),
            sem.clone(),
            failed.clone(),
            opened.clone(),
            slots.clone(),
            stop_rx.clone(),
        );
        opens.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let sub = opener.open(g, &counts).await;
            drop(permit);
            match sub {
                Ok(sub) => {
                    let (tx, rx) = oneshot::channel();
                    if let Ok(mut s) = slots.lock() {
                        s[j] = Some(tx);
                    }
                    opened.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(hold(sub, counts, stop_rx, rx));
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("open failed: {e:#}");
                    }
                }
            }
        }));
    }
    for o in opens {
        let _ = tokio::time::timeout_at(opening + Duration::from_secs(300), o).await;
    }
    let open_secs = opening.elapsed().as_secs_f64();
    let own = opened.load(Ordering::Relaxed) as usize;
    let cpu_open = cpu_of(&b.pids) - cpu_open0;
    eprintln!(
        "{own} of {} connections subscribed in {open_secs:.1} s ({} failed)",
        b.connections,
        failed.load(Ordering::Relaxed)
    );

    if b.hold_only {
        return hold_only(&b, own, &counts, open_secs, stop_tx).await;
    }

    tokio::time::sleep(Duration::from_secs(3)).await; // let allocations settle
    let rss1 = rss_sum(&b.pids);
    let held = own + b.held_elsewhere;
    let rss_per_conn = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / held.max(1) as f64;
    let mut result = serde_json::json!({
        "scenario": "presence",
        "protocol": format!("{:?}", b.transport).to_lowercase(),
        "identity": if b.anonymous { "anonymous" } else { "token (sub, info, jti)" },
        "nodes": b.addrs.len(), "grpc": b.grpc, "channels": b.channels, "users": b.users,
        "big_channel_members": b.big, "big_channel": b.big_channel, "total": total,
        "connections": b.connections, "opened": own, "failed": failed.load(Ordering::Relaxed),
        "held_elsewhere": b.held_elsewhere,
        "open_seconds": round2(open_secs), "node_cpu_seconds_opening": round2(cpu_open),
        "rss_kb": {"before": rss0, "held": rss1, "by_pid": b.pids.iter().copied().map(rss_kb).collect::<Vec<_>>()},
        "rss_per_connection_bytes": rss_per_conn.round(),
        "loadavg": {"start": load_start, "held": loadavg()},
    });
    eprintln!("RSS per connection: {:.0} bytes over {held}", rss_per_conn);

    let clients = grpc_clients(&b.grpc).await?;

    // 2. Check: is every connection listed, and by which nodes.
    if b.check && !clients.is_empty() {
        let started = Instant::now();
        let mut per_node = Vec::new();
        for client in &clients {
            let sum = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            let plain = b.channels as u64;
            let n = plain + u64::from(b.big > 0);
            for _ in 0..16 {
                let (mut client, sum, errors, next, ns, big) = (
                    client.clone(),
                    sum.clone(),
                    errors.clone(),
                    next.clone(),
                    b.namespace.clone(),
                    b.big_channel.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let channel = if i < plain {
                            format!("{ns}:{i}")
                        } else {
                            big.clone()
                        };
                        match client.presence_stats(PresenceRequest { channel }).await {
                            Ok(r) => {
                                sum.fetch_add(r.into_inner().clients, Ordering::Relaxed);
                            }
                            Err(e) => {
                                if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("PresenceStats failed: {e}");
                                }
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            per_node.push(serde_json::json!({"listed": sum.load(Ordering::Relaxed),
                "errors": errors.load(Ordering::Relaxed)}));
        }
        let expected = total + b.big.min(total);
        result["check"] = serde_json::json!({
            "subscriptions_expected": expected, "per_grpc": per_node,
            "seconds": round2(started.elapsed().as_secs_f64()),
        });
        eprintln!("check: {}", result["check"]);
    }

    // 3. Query latency.
    if b.queries > 0 || b.big_queries > 0 {
        let mut client = clients
            .first()
            .cloned()
            .context("--grpc is needed for queries")?;
        let mut q = serde_json::Map::new();
        let mut pick = mix(run);
        let random_channels: Vec<String> = (0..b.queries)
            .map(|_| {
                pick = mix(pick);
                format!("{}:{}", b.namespace, pick % b.channels as u64)
            })
            .collect();
        let big = vec![b.big_channel.clone(); if b.big > 0 { b.big_queries } else { 0 }];
        for (label, list) in [("random", &random_channels), ("big", &big)] {
            if list.is_empty() {
                continue;
            }
            for stats in [false, true] {
                let cpu0 = cpu_of(&b.pids);
                let mut lat = Vec::with_capacity(list.len());
                let (mut entries, mut errors, mut users) = (0u64, 0u64, 0u64);
                for channel in list {
                    let req = PresenceRequest {
                        channel: channel.clone(),
                    };
                    let t = Instant::now();
                    let ok = if stats {
                        client.presence_stats(req).await.map(|r| {
                            let r = r.into_inner();
                            users += r.users;
                            r.clients
                        })
                    } else {
                        client
                            .presence(req)
                            .await
                            .map(|r| r.into_inner().clients.len() as u64)
                    };
                    lat.push(t.elapsed().as_micros() as u64);
                    match ok {
                        Ok(n) => entries += n,
                        Err(e) => {
                            errors += 1;
                            if errors < 3 {
                                eprintln!("query failed: {e}");
                            }
                        }
                    }
                }
                let calls = list.len().max(1) as f64;
                let cpu = cpu_of(&b.pids) - cpu0;
                let name = format!(
                    "{label}_{}",
                    if stats { "presence_stats" } else { "presence" }
                );
                q.insert(
                    name,
                    serde_json::json!({
                        "latency_ms": percentiles(lat), "errors": errors,
                        "mean_clients": round2(entries as f64 / calls),
                        "mean_users": stats.then(|| round2(users as f64 / calls)),
                        "node_cpu_us_per_call": (cpu * 1e6 / calls).round(),
                    }),
                );
            }
        }
        q.insert("loadavg".into(), loadavg().into());
        result["queries"] = serde_json::Value::Object(q);
        eprintln!("queries: {}", result["queries"]);
    }

    // 4. Steady state.
    if !b.steady.is_zero() {
        let (cpu0, nats0, v0, ev0) = (
            cpu_of(&b.pids),
            b.nats_pid.map(cpu_seconds),
            varz(&b.nats_monitor).await,
            counts.snapshot(),
        );
        let t = Instant::now();
        tokio::time::sleep(b.steady).await;
        let secs = t.elapsed().as_secs_f64();
        let (cpu1, nats1, v1, ev1) = (
            cpu_of(&b.pids),
            b.nats_pid.map(cpu_seconds),
            varz(&b.nats_monitor).await,
            counts.snapshot(),
        );
        result["steady"] = serde_json::json!({
            "seconds": round2(secs), "nats": varz_delta(v0, v1, secs),
            "node_cpu_percent": round2((cpu1 - cpu0) / secs * 100.0),
            "nats_cpu_percent": nats0.zip(nats1).map(|(a, z)| round2((z - a) / secs * 100.0)),
            "events_received": (ev1.0 - ev0.0) + (ev1.1 - ev0.1),
            "rss_kb": rss_sum(&b.pids), "loadavg": loadavg(),
        });
        eprintln!("steady: {}", result["steady"]);
    }

    // 5. Churn.
    if b.churn_rate > 0 && !b.churn_duration.is_zero() {
        result["churn"] = churn(&b, total, &opener, &counts, &slots, &stop_rx).await?;
        eprintln!("churn: {}", result["churn"]);
    }

    result["ended_by_server"] = counts.ended.load(Ordering::Relaxed).into();
    result["rss_kb"]["end"] = rss_sum(&b.pids).into();
    let _ = stop_tx.send(true);
    println!("{result}");
    if let Some(path) = &b.json {
        std::fs::write(path, result.to_string())?;
    }
    Ok(())
}

async fn hold_only(
    b: &Presence,
    own: usize,
    counts: &Counts,
    open_secs: f64,
    stop_tx: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let status = |done: bool| {
        let (j, l) = counts.snapshot();
        serde_json::json!({"opened": own, "joins": j, "leaves": l,
            "ended": counts.ended.load(Ordering::Relaxed), "open_seconds": round2(open_secs),
            "done": done})
    };
    loop {
        if let Some(f) = &b.status_file {
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, status(false).to_string())?;
            std::fs::rename(&tmp, f)?;
        }
        if started.elapsed() > b.hold || b.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_tx.send(true);
    println!("{}", status(true));
    Ok(())
}

/// Reconnects at `--churn-rate` per second for `--churn-duration`; what it cost.
async fn churn(
    b: &Presence,
    total: usize,
    opener: &Arc<Opener>,
    counts: &Arc<Counts>,
    slots: &Slots,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<serde_json::Value> {
    let nodes = b.addrs.len();
    // Members of each channel: all, and per node (every process), and this process's own.
    let mut all = vec![0u64; b.channels];
    let mut by_node = vec![0u64; b.channels * nodes];
    for g in 0..total {
        let p = place(g, b.channels, nodes, b.users);
        all[p.channel] += 1;
        by_node[p.channel * nodes + p.node] += 1;
    }
    let own: Vec<usize> = (0..b.connections)
        .filter(|j| b.offset + j >= b.big)
        .collect();
    if own.is_empty() {
        bail!("no connection of this process can churn (all are in the big channel)");
    }
    let (cpu0, nats0, v0, ev0) = (
        cpu_of(&b.pids),
        b.nats_pid.map(cpu_seconds),
        varz(&b.nats_monitor).await,
        counts.snapshot(),
    );
    let peers0 = peers_status(&b.peer_status);
    let started = Instant::now();
    let total_ops = (b.churn_rate as f64 * b.churn_duration.as_secs_f64()) as u64;
    let period = Duration::from_secs_f64(1.0 / b.churn_rate as f64);
    let (mut expect_cluster, mut expect_local) = (0u64, 0u64);
    let (done, failed, skipped) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let sem = Arc::new(tokio::sync::Semaphore::new(128));
    let mut pick = mix(b.offset as u64 ^ 0x5eed);
    let mut tasks = Vec::new();
    for op in 0..total_ops {
        tokio::time::sleep_until(started + period.mul_f64(op as f64)).await;
        pick = mix(pick);
        let j = own[(pick % own.len() as u64) as usize];
        let g = b.offset + j;
        let closer = slots.lock().ok().and_then(|mut s| s[j].take());
        let Some(closer) = closer else {
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let p = place(g, b.channels, nodes, b.users);
        // The leave reaches the other members, the join every member and the newcomer.
        let m = all[p.channel];
        let local = by_node[p.channel * nodes + p.node];
        expect_cluster += (m - 1) + m;
        expect_local += (local - 1) + local;
        let _ = closer.send(());
        let (opener, counts, slots, stop_rx, done, failed, sem) = (
            opener.clone(),
            counts.clone(),
            slots.clone(),
            stop_rx.clone(),
            done.clone(),
            failed.clone(),
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            match opener.open(g, &counts).await {
                Ok(sub) => {
                    let (tx, rx) = oneshot::channel();
                    if let Ok(mut s) = slots.lock() {
                        s[j] = Some(tx);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(hold(sub, counts, stop_rx, rx));
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("reconnect failed: {e:#}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, nats1, v1) = (
        cpu_of(&b.pids),
        b.nats_pid.map(cpu_seconds),
        varz(&b.nats_monitor).await,
    );
    // Events still on their way (other processes write their status every 500 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ev1 = counts.snapshot();
    let peers1 = peers_status(&b.peer_status);
    let ops = done.load(Ordering::Relaxed);
    let received_here = (ev1.0 - ev0.0) + (ev1.1 - ev0.1);
    let received_peers = (peers1.1 + peers1.2).saturating_sub(peers0.1 + peers0.2);
    Ok(serde_json::json!({
        "rate_asked": b.churn_rate, "seconds": round2(secs), "reconnects": ops,
        "failed": failed.load(Ordering::Relaxed), "skipped_busy": skipped.load(Ordering::Relaxed),
        "reconnects_per_s": round2(ops as f64 / secs),
        "nats": varz_delta(v0, v1, secs),
        "node_cpu_percent": round2((cpu1 - cpu0) / secs * 100.0),
        "node_cpu_us_per_reconnect": ((cpu1 - cpu0) * 1e6 / ops.max(1) as f64).round(),
        "nats_cpu_percent": nats0.zip(nats1).map(|(a, z)| round2((z - a) / secs * 100.0)),
        "events": {
            "received_this_process": received_here,
            "received_other_processes": received_peers,
            "received": received_here + received_peers,
            "expected_if_cluster_wide": expect_cluster,
            "expected_if_node_local": expect_local,
            "joins_this_process": ev1.0 - ev0.0, "leaves_this_process": ev1.1 - ev0.1,
        },
        "loadavg": loadavg(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_uneven_but_cover_every_channel() {
        let mut members = vec![0u32; 100];
        for g in 0..10_000 {
            members[place(g, 100, 6, 5000).channel] += 1;
        }
        assert!(members.iter().all(|&m| m > 50 && m < 150), "{members:?}");
        assert_eq!(members.iter().sum::<u32>(), 10_000);
    }

    #[test]
    fn counts_websocket_and_sse_events() {
        let c = Counts::default();
        c.add_ws(r#"{"channel":"room:1","client":"a-1","type":"join","user":"u1"}"#);
        c.add_ws(r#"{"type":"message","channel":"room:1","data":{"type":"join"}}"#);
        c.add_sse("event: leave\ndata: {\"channel\":\"room:1\"}\n\nevent: join\ndata: {}\n\n");
        assert_eq!(c.snapshot(), (2, 1));
    }
}
