//! `herald-bench`: a bounded, self-stopping load generator for Herald.
//!
//! - `idle`: opens N WebSocket or SSE connections spread over source addresses, holds them,
//!   and reports the server's RSS per connection (from `/proc/PID/status`).
//! - `fanout`: N WebSocket subscribers on one channel, publishes through gRPC at a fixed
//!   rate with a timestamp and sequence in every payload, and reports deliveries per second,
//!   latency percentiles, lost and duplicated messages, and server CPU per delivery.
//! - `publish`: publishes per second through gRPC, unary or `PublishStream`, or through the
//!   HTTP/JSON API (`--mode http`, kept-alive connections).
//! - `storm`: N WebSocket clients resume one channel at once (over one or more nodes), with
//!   the broker reads it cost (from each node's metrics).
//! - `catchup`: a resume N messages back: time to the first message, backlog rate, and
//!   progress with short-lived connections.
//! - `channels`: many channels with a few subscribers each at a steady total publish rate:
//!   latency, loss, server CPU per delivery and memory per channel (also against Nchan).
//! - `longpoll-idle`: N held long-polls, server RSS per held request (see `poll.rs`).
//! - `poll-load`: K keep-alive clients polling a quiet channel, server CPU per poll.
//! - `presence`: N connections with client tokens in a presence namespace over one or more
//!   nodes: RSS per connection, `Presence`/`PresenceStats` latency, NATS traffic at rest and
//!   during churn, join/leave events delivered (see `presence.rs`).
//! - `presence-kv`: the write load of the alternative presence store (a JetStream KV bucket
//!   refreshed by every node) on a nats-server, with async-nats alone (see `presence_kv.rs`).
//!
//! `idle`, `fanout`, `channels`, `longpoll-idle` and `poll-load` also drive the peers
//! (`--target nchan|socketio|pushpin`) with the same clients and measurements, so figures can be
//! compared in one run (scripts/bench-peers.sh, scripts/bench-channels.sh).

mod catchup;
mod channels;
mod peers;
mod poll;
mod presence;
mod presence_kv;
mod publish;
mod storm;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::{
    net::{TcpSocket, TcpStream},
    time::Instant,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Proto {
    Ws,
    Sse,
}

#[derive(Subcommand)]
// Parsed once at start; the size of the largest variant (`presence`) does not matter.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Hold N idle connections and report server RSS per connection.
    Idle {
        /// Server under load.
        #[arg(long, value_enum, default_value = "herald")]
        target: peers::Target,
        /// Server client address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, value_enum)]
        protocol: Proto,
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.9.
        #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
        sources: String,
        /// PID of each server process (RSS is summed); repeat for multi-process servers.
        #[arg(long, required = true)]
        pid: Vec<u32>,
        /// How long to hold once all are open.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// Number of distinct channels the connections subscribe to.
        #[arg(long, default_value_t = 100)]
        channels: usize,
    },
    /// Fan-out: N subscribers on one channel, publishing at a fixed rate.
    Fanout {
        /// Server under load.
        #[arg(long, value_enum, default_value = "herald")]
        target: peers::Target,
        /// Subscriber transport.
        #[arg(long, value_enum, default_value = "ws")]
        protocol: Proto,
        #[arg(long)]
        addr: Vec<SocketAddr>,
        /// gRPC endpoint (Herald), e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "")]
        grpc: String,
        /// HTTP publish address of a peer (default: the first --addr).
        #[arg(long)]
        publish_addr: Option<SocketAddr>,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Publishes per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Payload padding so each message is about this many bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
        sources: String,
        /// PID of each server process (for CPU and RSS); repeat for several nodes.
        #[arg(long)]
        pid: Vec<u32>,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Reconnect storm: N WebSocket clients resume at once with a cursor after missing
    /// messages; time until all caught up, lost and duplicated messages.
    Storm {
        /// Client address of a node; repeat for several (clients are spread over them).
        #[arg(long, required = true)]
        addr: Vec<SocketAddr>,
        /// gRPC endpoint, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        grpc: String,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Messages published while the clients are away.
        #[arg(long, default_value_t = 50)]
        missed: u64,
        #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
        sources: String,
        /// PID of each server process (CPU); repeat for several.
        #[arg(long)]
        pid: Vec<u32>,
        /// Admin address of each node (its broker reads are read from /metrics).
        #[arg(long)]
        admin: Vec<SocketAddr>,
    },
    /// Catch-up: resume one channel N messages back; time to the first message, rate of the
    /// whole backlog, and progress with short-lived connections.
    Catchup {
        #[arg(long)]
        addr: SocketAddr,
        /// gRPC endpoint, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        grpc: String,
        /// Backlog size.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Lifetime of each short connection, ms.
        #[arg(long, default_value_t = 150)]
        connection_ms: u64,
        /// PID of the server (CPU).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Many channels, a few subscribers each, one steady total publish rate spread over them.
    Channels {
        /// Server under load (herald or nchan).
        #[arg(long, value_enum, default_value = "herald")]
        target: peers::Target,
        /// Subscriber transport.
        #[arg(long, value_enum, default_value = "ws")]
        protocol: channels::Transport,
        /// Client address of a node; repeat for several (connections are spread over them).
        #[arg(long, required = true)]
        addr: Vec<SocketAddr>,
        /// gRPC endpoint (Herald), e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "")]
        grpc: String,
        /// HTTP publish address of a peer (default: the first --addr).
        #[arg(long)]
        publish_addr: Option<SocketAddr>,
        #[arg(long, default_value_t = 10_000)]
        channels: usize,
        /// Subscriptions per channel: K, or A-B for an even spread (e.g. 1-5).
        #[arg(long, default_value = "1")]
        subscribers: String,
        /// Channels each connection subscribes to (Herald only).
        #[arg(long, default_value_t = 1)]
        channels_per_connection: usize,
        /// Total publishes per second, spread round robin over the channels.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Approximate payload bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
        sources: String,
        /// PID of each server process (CPU, RSS), nats-server included; repeat for several.
        #[arg(long)]
        pid: Vec<u32>,
        /// Kept-alive HTTP publish connections (peers).
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Hold N long-polls (each re-issued when answered) and report server RSS per held poll.
    LongpollIdle {
        /// Server under load (herald or nchan).
        #[arg(long, value_enum, default_value = "herald")]
        target: peers::Target,
        /// Server client address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.9.
        #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
        sources: String,
        /// PID of each server process (RSS is summed).
        #[arg(long, required = true)]
        pid: Vec<u32>,
        /// How long to hold once all are sent.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// Number of distinct channels the polls wait on.
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Herald's `wait` (seconds, 1-60).
        #[arg(long, default_value_t = 25)]
        wait: u64,
    },
    /// K keep-alive clients polling a quiet channel for a bounded time: polls per second and
    /// server CPU per poll.
    PollLoad {
        /// Server under load (herald or nchan).
        #[arg(long, value_enum, default_value = "herald")]
        target: peers::Target,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Polls per second over all clients; 0 = as fast as the server answers.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Measured time (after the warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "127.0.0.2-127.0.0.9")]
        sources: String,
        /// PID of each server process (CPU is summed).
        #[arg(long, required = true)]
        pid: Vec<u32>,
    },
    /// Users and presence: connections with client tokens in a presence namespace, RSS per
    /// connection, Presence/PresenceStats latency, NATS traffic at rest and during churn.
    Presence {
        /// Client addresses of the nodes, comma-separated (connection g goes to node g % n).
        #[arg(long, value_delimiter = ',', required = true)]
        addr: Vec<SocketAddr>,
        /// gRPC endpoints, comma-separated; queries go to the first, the check asks each.
        #[arg(long, value_delimiter = ',')]
        grpc: Vec<String>,
        #[arg(long, value_enum, default_value = "ws")]
        protocol: channels::Transport,
        /// Connections this process opens.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        /// Index of this process's first connection in the whole run.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Connections of the whole run, every process [default: offset + connections].
        #[arg(long, default_value_t = 0)]
        total: usize,
        #[arg(long, default_value_t = 200)]
        channels: usize,
        /// Distinct users (`sub`); connection g is user g % users.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Namespace of the channels (needs `presence = true` on the nodes).
        #[arg(long, default_value = "room")]
        namespace: String,
        /// HS256 secret the nodes verify (HERALD_AUTH_HMAC_SECRET).
        #[arg(long, env = "HERALD_BENCH_SECRET", default_value = "")]
        secret: String,
        /// No token: anonymous connections (the namespace must allow them).
        #[arg(long)]
        anonymous: bool,
        /// Approximate bytes of the `info` claim.
        #[arg(long, default_value_t = 48)]
        info_bytes: usize,
        /// Connections 0..K (of the whole run) also join --big-channel.
        #[arg(long, default_value_t = 0)]
        big: usize,
        /// The big channel (its namespace needs presence; join/leave there reaches every member).
        #[arg(long, default_value = "hall:big")]
        big_channel: String,
        #[arg(long, default_value = "127.0.1.2-127.0.1.60")]
        sources: String,
        /// PID of each node (RSS, CPU); repeat.
        #[arg(long)]
        pid: Vec<u32>,
        /// PID of nats-server (CPU).
        #[arg(long)]
        nats_pid: Option<u32>,
        /// nats-server monitoring base URL, e.g. http://127.0.0.1:8222 (/varz).
        #[arg(long)]
        nats_monitor: Option<String>,
        /// Sum of the nodes' VmRSS (KB) before any load generator connected.
        #[arg(long)]
        rss_baseline_kb: Option<u64>,
        /// Connections held by other processes (for RSS per connection).
        #[arg(long, default_value_t = 0)]
        held_elsewhere: usize,
        /// Ask every --grpc for PresenceStats of every channel and sum.
        #[arg(long)]
        check: bool,
        /// Presence and PresenceStats calls on random channels (each).
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Calls of each on the big channel.
        #[arg(long, default_value_t = 50)]
        big_queries: usize,
        /// Quiet window for NATS traffic and CPU at rest (0: skip).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        steady: Duration,
        /// Reconnects per second (0: no churn).
        #[arg(long, default_value_t = 0)]
        churn_rate: u64,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        churn_duration: Duration,
        /// Only open and hold (another process measures).
        #[arg(long)]
        hold_only: bool,
        /// Longest hold with --hold-only.
        #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// With --hold-only: where to write opened/events every 500 ms.
        #[arg(long)]
        status_file: Option<std::path::PathBuf>,
        /// With --hold-only: stop once this file exists.
        #[arg(long)]
        stop_file: Option<std::path::PathBuf>,
        /// Status files of the holding processes (events they received); repeat.
        #[arg(long)]
        peer_status: Vec<std::path::PathBuf>,
        /// Shared run id (token ids) [default: from the clock].
        #[arg(long)]
        run_id: Option<u64>,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The alternative presence store on NATS: a JetStream KV bucket refreshed by every node;
    /// write ceiling, paced refresh + churn (ack latency, nats-server CPU), channel listings.
    PresenceKv {
        /// NATS URL, e.g. nats://127.0.0.1:24222.
        #[arg(long)]
        nats: String,
        /// PID of nats-server (CPU, RSS).
        #[arg(long)]
        nats_pid: Option<u32>,
        #[arg(long, default_value = "PRESENCE_BENCH")]
        bucket: String,
        /// Entries (channel, connection) kept.
        #[arg(long, default_value_t = 100_000)]
        entries: usize,
        #[arg(long, default_value_t = 10_000)]
        channels: usize,
        /// How often each entry is rewritten.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        refresh: Duration,
        /// Leaves + joins per second (each a delete marker and a new entry).
        #[arg(long, default_value_t = 100)]
        churn: u64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Entry expiry (the bucket's max_age).
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        max_age: Duration,
        /// JetStream memory storage instead of file.
        #[arg(long)]
        memory: bool,
        /// Writes in flight at most.
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// Channel listings during the paced step.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Publishes per second through gRPC (unary calls or PublishStream) or the HTTP/JSON API.
    Publish {
        /// gRPC endpoint, e.g. http://127.0.0.1:50051; several separated by commas spread the
        /// calls or streams over several nodes.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        grpc: String,
        /// HTTP/JSON API base URL, for `--mode http`.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        api: String,
        #[arg(long, value_enum, default_value = "stream")]
        mode: publish::Mode,
        /// Unary: calls in flight; stream: streams.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections the calls or streams are spread over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Distinct channels published to (round robin).
        #[arg(long, default_value_t = 100)]
        channels: usize,
        /// Approximate payload bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
}

fn sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
    let a: Ipv4Addr = a.parse().context("--sources start")?;
    let b: Ipv4Addr = b.parse().context("--sources end")?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 250 {
        bail!("--sources must be a small ascending range like 127.0.0.2-127.0.0.9");
    }
    Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
}

async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src, 0))?;
    let stream = socket.connect(dst).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// utime + stime of the process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
async fn idle(
    target: peers::Target,
    addr: SocketAddr,
    protocol: Proto,
    n: usize,
    srcs: Vec<IpAddr>,
    pids: Vec<u32>,
    hold: Duration,
    channels: usize,
) -> anyhow::Result<()> {
    let rss = |pids: &[u32]| pids.iter().copied().map(rss_kb).sum::<u64>();
    let before = rss(&pids);
    let started = Instant::now();
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let src = srcs[i % srcs.len()];
        let channel = format!("idle-{}", i % channels.max(1));
        let (opened, failed, stop, sem) =
            (opened.clone(), failed.clone(), stop.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let held = peers::open(target, protocol == Proto::Sse, src, addr, &channel).await;
            drop(permit);
            match held {
                Ok(conn) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    stop.notified().await;
                    drop(conn);
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("connect failed: {e:#}");
                    }
                }
            }
        }));
    }
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(hold).await;
    let after = rss(&pids);
    let ok = opened.load(Ordering::Relaxed);
    let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / ok.max(1) as f64;
    let proto = if protocol == Proto::Ws {
        "websocket"
    } else {
        "sse"
    };
    println!(
        "{}",
        serde_json::json!({
            "scenario": "idle", "target": target.name(), "protocol": proto, "connections": ok,
            "failed": failed.load(Ordering::Relaxed),
            "connect_seconds": connect_time.as_secs_f64(),
            "rss_before_kb": before, "rss_after_kb": after,
            "rss_per_connection_bytes": per_conn.round(),
        })
    );
    stop.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

#[derive(Default)]
struct SubResult {
    latencies_us: Vec<u64>,
    received: u64,
    lost: u64,
    dups: u64,
    next: u64,
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    target: peers::Target,
    protocol: Proto,
    addrs: Vec<SocketAddr>,
    grpc: String,
    publish_addr: Option<SocketAddr>,
    subscribers: usize,
    rate: u64,
    duration: Duration,
    size: usize,
    srcs: Vec<IpAddr>,
    pids: Vec<u32>,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let channel = format!("fanout-{}", now_us());
    let published = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut subs = Vec::new();
    let opening = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut opens = Vec::new();
    for i in 0..subscribers {
        let (src, channel, sem) = (srcs[i % srcs.len()], channel.clone(), sem.clone());
        let addr = addrs[i % addrs.len()];
        opens.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            peers::open(target, protocol == Proto::Sse, src, addr, &channel).await
        }));
    }
    for o in opens {
        subs.push(o.await??);
    }
    eprintln!("{subscribers} subscribers in {:?}", opening.elapsed());
    let mut readers = Vec::new();
    for mut sub in subs {
        let (published, done, delivered) = (published.clone(), done.clone(), delivered.clone());
        readers.push(tokio::spawn(async move {
            let mut r = SubResult {
                next: 1,
                ..Default::default()
            };
            let finished = done.notified();
            tokio::pin!(finished);
            let mut found = Vec::new();
            loop {
                tokio::select! {
                    more = sub.next_payloads(&mut found) => {
                        if !matches!(more, Ok(true)) { break }
                        let now = now_us();
                        for (seq, t) in found.drain(..) {
                            r.received += 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                            r.latencies_us.push(now.saturating_sub(t));
                            if seq == r.next { r.next += 1 }
                            else if seq > r.next { r.lost += seq - r.next; r.next = seq + 1 }
                            else { r.dups += 1 }
                        }
                    }
                    () = &mut finished => break,
                }
            }
            let acked = published.load(Ordering::Relaxed);
            r.lost += (acked + 1).saturating_sub(r.next);
            r
        }));
    }
    let cpu0: f64 = pids.iter().copied().map(cpu_seconds).sum();
    let mut grpc_client = if target == peers::Target::Herald {
        Some(herald_proto::v1::herald_client::HeraldClient::connect(grpc).await?)
    } else {
        None
    };
    let mut http = peers::HttpPublisher::new(target, publish_addr.unwrap_or(addrs[0]));
    let pad = "x".repeat(size.saturating_sub(40));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut errors = 0u64;
    for seq in 1..=total {
        let due = start + period.mul_f64((seq - 1) as f64);
        tokio::time::sleep_until(due).await;
        let data = format!("{{\"hseq\":{seq},\"hts\":{},\"p\":\"{pad}\"}}", now_us());
        let sent = match &mut grpc_client {
            Some(client) => {
                let req = herald_proto::v1::PublishRequest {
                    channel: channel.clone(),
                    data: bytes::Bytes::from(data),
                    idempotency_key: String::new(),
                };
                client
                    .publish(req)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
            None => http.publish(&channel, &data).await,
        };
        match sent {
            Ok(()) => {
                published.store(seq, Ordering::Relaxed);
            }
            Err(e) => {
                errors += 1;
                if errors < 3 {
                    eprintln!("publish failed: {e:#}");
                }
            }
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    // Let in-flight deliveries land (bounded); what is still missing then counts as lost.
    let expected = published.load(Ordering::Relaxed) * subscribers as u64;
    let drain_secs = settle(&delivered, expected).await;
    let cpu1: f64 = pids.iter().copied().map(cpu_seconds).sum();

    done.notify_waiters();
    let mut all = Vec::new();
    let (mut received, mut lost, mut dups) = (0, 0, 0);
    for r in readers {
        let r = r.await?;
        received += r.received;
        lost += r.lost;
        dups += r.dups;
        all.extend(r.latencies_us);
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        all[((all.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    };
    let server_cpu = cpu1 - cpu0;
    let result = serde_json::json!({
        "scenario": "fanout", "target": target.name(),
        "protocol": if protocol == Proto::Sse { "sse" } else { "websocket" },
        "subscribers": subscribers, "rate": rate,
        "publish_rate_achieved": (published.load(Ordering::Relaxed) as f64 / publish_secs * 10.0).round() / 10.0,
        "published": published.load(Ordering::Relaxed), "publish_errors": errors,
        "deliveries": received,
        // Over publishing plus draining: a server that falls behind is not credited for the
        // publish rate, only for what it delivered.
        "deliveries_per_second": (received as f64 / (publish_secs + drain_secs)).round(),
        "drain_seconds": drain_secs,
        "lost": lost, "duplicates": dups,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_delivery": if received > 0 { server_cpu * 1e6 / received as f64 } else { 0.0 },
        "server_rss_kb": pids.iter().copied().map(rss_kb).collect::<Vec<_>>(), "nodes": addrs.len(),
    });
    println!("{result}");
    if let Some(path) = json {
        std::fs::write(path, result.to_string())?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Idle {
            target,
            addr,
            protocol,
            connections,
            sources: s,
            pid,
            hold,
            channels,
        } => {
            idle(
                target,
                addr,
                protocol,
                connections,
                sources(&s)?,
                pid,
                hold,
                channels,
            )
            .await
        }
        Cmd::Fanout {
            target,
            protocol,
            addr,
            grpc,
            publish_addr,
            subscribers,
            rate,
            duration,
            size,
            sources: s,
            pid,
            json,
        } => {
            fanout(
                target,
                protocol,
                addr,
                grpc,
                publish_addr,
                subscribers,
                rate,
                duration,
                size,
                sources(&s)?,
                pid,
                json,
            )
            .await
        }
        Cmd::Storm {
            addr,
            grpc,
            clients,
            missed,
            sources: s,
            pid,
            admin,
        } => {
            storm::run(storm::Storm {
                addrs: addr,
                grpc,
                clients,
                missed,
                sources: sources(&s)?,
                pids: pid,
                admins: admin,
            })
            .await
        }
        Cmd::Catchup {
            addr,
            grpc,
            messages,
            connection_ms,
            pid,
        } => {
            catchup::run(catchup::Catchup {
                addr,
                grpc,
                messages,
                connection_ms,
                pid,
            })
            .await
        }
        Cmd::Channels {
            target,
            protocol,
            addr,
            grpc,
            publish_addr,
            channels,
            subscribers,
            channels_per_connection,
            rate,
            duration,
            size,
            sources: s,
            pid,
            publishers,
            json,
        } => {
            channels::run(channels::Channels {
                target,
                transport: protocol,
                addrs: addr,
                grpc,
                publish_addr,
                channels,
                subscribers: channels::parse_subscribers(&subscribers)?,
                per_connection: channels_per_connection,
                rate,
                duration,
                size,
                sources: sources(&s)?,
                pids: pid,
                publishers,
                json,
            })
            .await
        }
        Cmd::LongpollIdle {
            target,
            addr,
            connections,
            sources: s,
            pid,
            hold,
            channels,
            wait,
        } => {
            poll::held(poll::HeldPolls {
                target,
                addr,
                connections,
                sources: sources(&s)?,
                pids: pid,
                hold,
                channels,
                wait,
            })
            .await
        }
        Cmd::PollLoad {
            target,
            addr,
            clients,
            rate,
            duration,
            warmup,
            sources: s,
            pid,
        } => {
            poll::load(poll::PollLoad {
                target,
                addr,
                clients,
                duration,
                rate,
                sources: sources(&s)?,
                pids: pid,
                warmup,
            })
            .await
        }
        Cmd::Presence {
            addr,
            grpc,
            protocol,
            connections,
            offset,
            total,
            channels,
            users,
            namespace,
            secret,
            anonymous,
            info_bytes,
            big,
            big_channel,
            sources: s,
            pid,
            nats_pid,
            nats_monitor,
            rss_baseline_kb,
            held_elsewhere,
            check,
            queries,
            big_queries,
            steady,
            churn_rate,
            churn_duration,
            hold_only,
            hold,
            status_file,
            stop_file,
            peer_status,
            run_id,
            json,
        } => {
            if !anonymous && secret.len() < 32 {
                bail!("--secret (HERALD_BENCH_SECRET) of at least 32 bytes, or --anonymous");
            }
            presence::run(presence::Presence {
                addrs: addr,
                grpc,
                transport: protocol,
                connections,
                offset,
                total,
                channels,
                users,
                namespace,
                secret,
                anonymous,
                info_bytes,
                big,
                big_channel,
                sources: sources(&s)?,
                pids: pid,
                nats_pid,
                nats_monitor,
                rss_baseline_kb,
                held_elsewhere,
                check,
                queries,
                big_queries,
                steady,
                churn_rate,
                churn_duration,
                hold_only,
                hold,
                status_file,
                stop_file,
                peer_status,
                run_id,
                json,
            })
            .await
        }
        Cmd::PresenceKv {
            nats,
            nats_pid,
            bucket,
            entries,
            channels,
            refresh,
            churn,
            duration,
            max_age,
            memory,
            window,
            queries,
            json,
        } => {
            presence_kv::run(presence_kv::PresenceKv {
                nats,
                nats_pid,
                bucket,
                entries,
                channels,
                refresh,
                churn,
                duration,
                max_age,
                memory,
                window,
                queries,
                json,
            })
            .await
        }
        Cmd::Publish {
            grpc,
            api,
            mode,
            concurrency,
            connections,
            duration,
            channels,
            size,
        } => {
            publish::run(publish::PublishBench {
                grpc,
                api,
                mode,
                concurrency,
                duration,
                channels,
                size,
                connections,
            })
            .await
        }
    }
}

/// Lets in-flight deliveries land: waits until `delivered` reaches `expected`, or nothing
/// arrived for 2 s (bounded to 30 s; what is still missing then counts as lost). Returns the
/// seconds it waited.
async fn settle(delivered: &AtomicU64, expected: u64) -> f64 {
    let settle = Instant::now();
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    while delivered.load(Ordering::Relaxed) < expected && settle.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    settle.elapsed().as_secs_f64()
}
