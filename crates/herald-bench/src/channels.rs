//! `herald-bench channels`: many channels with a few subscribers each, one steady total publish
//! rate spread over them.
//!
//! Channel `c` of `N` gets `k(c)` subscriptions (a fixed `k`, or 1-5 spread evenly over the
//! channels); subscriptions are packed `--channels-per-connection` to a connection (Herald only;
//! Nchan subscribes one channel per connection here), and the `k` subscriptions of a channel
//! land on different connections. Publish `i` goes to channel `i % N` with per-channel sequence
//! `i / N + 1`; its payload carries `"hch"` (the channel index), `"hseq"` and `"hts"` (send
//! time, µs), so every reader knows what it got without parsing the envelope. Herald is
//! published through one gRPC `PublishStream`, Nchan through `--publishers` kept-alive HTTP
//! connections (a channel always on the same one, so its order holds).
//!
//! Reported: p50/p90/p99/max publish-to-delivery latency; lost and duplicated deliveries counted
//! against acknowledged publishes only (a delivery of a publish that was not acknowledged is
//! counted apart); server CPU (utime + stime of every `--pid`) per delivery while publishing
//! and draining, and while subscribing; server RSS (each `--pid`) before the connections, once
//! they are all subscribed, and at the end, with the growth per connection, per subscription and
//! per channel. Bounded: opening stops after 300 s, publishing after `--duration`, draining
//! after 2 s without progress (30 s at most).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::ValueEnum;
use futures_util::StreamExt;
use herald_proto::v1::{
    PublishStreamRequest, herald_client::HeraldClient, publish_stream_response::Outcome,
};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, time::Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    client_ws_config, connect_from, cpu_seconds, now_us,
    peers::{self, Sub, Target},
    rss_kb,
};

/// Subscriber transport(s).
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum Transport {
    Ws,
    Sse,
    /// Connections alternate: even WebSocket, odd SSE.
    Mix,
}

/// Settings of one run.
pub(crate) struct Channels {
    pub(crate) target: Target,
    pub(crate) transport: Transport,
    /// Client addresses; connection `j` goes to `addrs[j % len]`.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Herald gRPC endpoint.
    pub(crate) grpc: String,
    /// A peer's HTTP publish address.
    pub(crate) publish_addr: Option<SocketAddr>,
    pub(crate) channels: usize,
    /// Fewest and most subscriptions per channel (spread evenly in between).
    pub(crate) subscribers: (usize, usize),
    pub(crate) per_connection: usize,
    /// Total publishes per second over all channels.
    pub(crate) rate: u64,
    pub(crate) duration: Duration,
    pub(crate) size: usize,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) pids: Vec<u32>,
    /// Concurrent HTTP publishers (peers).
    pub(crate) publishers: usize,
    pub(crate) json: Option<std::path::PathBuf>,
}

/// `"1"` or `"1-5"`.
pub(crate) fn parse_subscribers(spec: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
    let (a, b): (usize, usize) = (
        a.parse().context("--subscribers")?,
        b.parse().context("--subscribers")?,
    );
    if a == 0 || b < a || b > 100 {
        bail!("--subscribers must be K or A-B with 1 <= A <= B <= 100");
    }
    Ok((a, b))
}

/// Subscriptions of channel `c`: `lo..=hi` spread evenly (every value equally often).
fn subs_of(c: usize, (lo, hi): (usize, usize)) -> usize {
    lo + c % (hi - lo + 1)
}

/// The channels of each connection. Round `r` lists every channel with more than `r`
/// subscriptions, so a channel's subscriptions are a whole round apart and never share a
/// connection (as long as a round is longer than a connection).
fn layout(channels: usize, subs: (usize, usize), per_connection: usize) -> Vec<Vec<u32>> {
    let mut entries = Vec::new();
    for r in 0..subs.1 {
        entries.extend(
            (0..channels)
                .filter(|&c| subs_of(c, subs) > r)
                .map(|c| c as u32),
        );
    }
    entries
        .chunks(per_connection.max(1))
        .map(<[u32]>::to_vec)
        .collect()
}

/// The first unsigned number after `key` in `text` (only quotes, backslashes, colons and
/// spaces in between) and where it ends.
fn number_after(text: &str, key: &str) -> Option<(u64, usize)> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    if !rest[..start]
        .chars()
        .all(|c| matches!(c, '"' | '\\' | ':' | ' '))
    {
        return None;
    }
    let digits = &rest[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    Some((digits[..end].parse().ok()?, at + start + end))
}

/// Every `(hch, hseq, hts)` in `text`, in order. The keys are matched with their quotes and
/// colon: an SSE `id:` position token (base36 text) may well contain `hts` or `hch`.
fn triples(text: &str, out: &mut Vec<(u32, u32, u64)>) {
    let mut rest = text;
    while let Some((ch, used)) = number_after(rest, "\"hch\":") {
        rest = &rest[used..];
        let Some((seq, used)) = number_after(rest, "\"hseq\":") else {
            break;
        };
        rest = &rest[used..];
        let Some((ts, used)) = number_after(rest, "\"hts\":") else {
            break;
        };
        rest = &rest[used..];
        out.push((ch as u32, seq as u32, ts));
    }
}

/// Opens one Herald connection subscribed to every channel in `names`.
async fn open_herald(
    sse: bool,
    src: IpAddr,
    addr: SocketAddr,
    names: &[String],
) -> anyhow::Result<Sub> {
    let query: Vec<String> = names.iter().map(|n| format!("channel={n}")).collect();
    let query = query.join("&");
    let deadline = Instant::now() + Duration::from_secs(60);
    if sse {
        let mut stream = connect_from(src, addr).await?;
        let req = format!(
            "GET /sse?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                if !seen.starts_with(b"HTTP/1.1 200") {
                    bail!("sse refused: {}", String::from_utf8_lossy(&seen));
                }
                if let Some(at) = seen[end..]
                    .windows(17)
                    .position(|w| w == b"event: subscribed")
                {
                    // Keep whatever follows the `subscribed` event for the reader.
                    let from = end + at;
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
    let stream = connect_from(src, addr).await?;
    let url = format!("ws://{addr}/ws?{query}");
    let (mut ws, _) = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_ws_config())),
    )
    .await
    .context("websocket handshake timed out")??;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no `subscribed` in time")?
            .context("closed before subscribed")??;
        if let WsMessage::Text(t) = msg
            && t.as_str().contains("\"subscribed\"")
        {
            return Ok(Sub::Ws(Box::new(ws)));
        }
    }
}

/// Reads the next frame or bytes of `sub` and appends the triples found; `Ok(false)` at the end.
async fn next_triples(sub: &mut Sub, out: &mut Vec<(u32, u32, u64)>) -> anyhow::Result<bool> {
    match sub {
        Sub::Ws(ws) => match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                triples(t.as_str(), out);
                Ok(true)
            }
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e.into()),
            None => Ok(false),
        },
        Sub::Sse { stream, buf } => {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") {
                triples(&String::from_utf8_lossy(&buf[..end]), out);
                buf.drain(..end + 2);
            }
            Ok(true)
        }
    }
}

/// What one connection received, per channel index: the sequences, and each latency.
#[derive(Default)]
struct Got {
    seqs: HashMap<u32, Vec<u32>>,
    latencies_us: Vec<u64>,
    /// Deliveries of a channel this connection did not subscribe to (must stay 0).
    foreign: u64,
    /// How the connection ended before the run did (closed, or an error), if it did.
    ended: Option<String>,
}

fn name(run: u64, c: u32) -> String {
    format!("ch-{run}-{c}")
}

fn payload(c: u32, seq: u32, pad: &str) -> String {
    format!(
        "{{\"hch\":{c},\"hseq\":{seq},\"hts\":{},\"p\":\"{pad}\"}}",
        now_us()
    )
}

fn rss_all(pids: &[u32]) -> Vec<u64> {
    pids.iter().copied().map(rss_kb).collect()
}

fn cpu_all(pids: &[u32]) -> f64 {
    pids.iter().copied().map(cpu_seconds).sum()
}

pub(crate) async fn run(b: Channels) -> anyhow::Result<()> {
    if b.channels == 0 || b.addrs.is_empty() || b.sources.is_empty() {
        bail!("--channels, --addr and --sources must not be empty");
    }
    if b.target != Target::Herald && b.per_connection != 1 {
        bail!("peers are driven with one channel per connection");
    }
    let run = now_us() / 1000 % 100_000_000;
    let conns = layout(b.channels, b.subscribers, b.per_connection);
    let subscriptions: usize = conns.iter().map(Vec::len).sum();
    eprintln!(
        "{} channels, {subscriptions} subscriptions on {} connections",
        b.channels,
        conns.len()
    );

    // Open and subscribe every connection.
    let rss0 = rss_all(&b.pids);
    let cpu_open0 = cpu_all(&b.pids);
    let opening = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let failed = Arc::new(AtomicU64::new(0));
    let mut opens = Vec::with_capacity(conns.len());
    for (j, chans) in conns.iter().enumerate() {
        let sse = match b.transport {
            Transport::Ws => false,
            Transport::Sse => true,
            Transport::Mix => j % 2 == 1,
        };
        let (src, addr) = (b.sources[j % b.sources.len()], b.addrs[j % b.addrs.len()]);
        let names: Vec<String> = chans.iter().map(|&c| name(run, c)).collect();
        let (sem, failed, target) = (sem.clone(), failed.clone(), b.target);
        opens.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let opened = if target == Target::Herald {
                open_herald(sse, src, addr, &names).await
            } else {
                peers::open(target, sse, src, addr, &names[0]).await
            };
            opened.inspect_err(|e| {
                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("open failed: {e:#}");
                }
            })
        }));
    }
    let mut subs = Vec::with_capacity(conns.len());
    for o in opens {
        match tokio::time::timeout_at(opening + Duration::from_secs(300), o).await {
            Ok(Ok(Ok(sub))) => subs.push(Some(sub)),
            _ => subs.push(None),
        }
    }
    let open_secs = opening.elapsed().as_secs_f64();
    let opened = subs.iter().filter(|s| s.is_some()).count();
    if opened == 0 {
        bail!("no connection opened");
    }
    let cpu_open = cpu_all(&b.pids) - cpu_open0;
    eprintln!(
        "{opened} of {} connections subscribed in {open_secs:.1} s",
        conns.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // let allocations settle
    let rss1 = rss_all(&b.pids);

    // Readers.
    let done = Arc::new(tokio::sync::Notify::new());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(subs.len());
    for (j, (sub, chans)) in subs.into_iter().zip(&conns).enumerate() {
        let Some(mut sub) = sub else { continue };
        let mine: Vec<u32> = chans.clone();
        let (done, delivered) = (done.clone(), delivered.clone());
        readers.push((
            j,
            tokio::spawn(async move {
                let mut got = Got::default();
                for &c in &mine {
                    got.seqs.insert(c, Vec::new());
                }
                let finished = done.notified();
                tokio::pin!(finished);
                let mut found = Vec::new();
                loop {
                    tokio::select! {
                        more = next_triples(&mut sub, &mut found) => {
                            if !matches!(more, Ok(true)) {
                                got.ended = Some(format!("{more:?}"));
                                break;
                            }
                            let now = now_us();
                            for (c, seq, ts) in found.drain(..) {
                                delivered.fetch_add(1, Ordering::Relaxed);
                                got.latencies_us.push(now.saturating_sub(ts));
                                match got.seqs.get_mut(&c) {
                                    Some(v) => v.push(seq),
                                    None => got.foreign += 1,
                                }
                            }
                        }
                        () = &mut finished => break,
                    }
                }
                got
            }),
        ));
    }

    // Publish.
    let total = (b.rate as f64 * b.duration.as_secs_f64()) as usize;
    let acked: Arc<Vec<AtomicBool>> =
        Arc::new((0..total).map(|_| AtomicBool::new(false)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(b.size.saturating_sub(60));
    let n = b.channels;
    let cpu0 = cpu_all(&b.pids);
    let cpu0_by_pid: Vec<f64> = b.pids.iter().copied().map(cpu_seconds).collect();
    let start = Instant::now();
    // Sends publish `i` (channel, sequence, payload) to the transport.
    let mut senders: Vec<tokio::sync::mpsc::Sender<(usize, String, String)>> = Vec::new();
    let mut workers = Vec::new();
    if b.target == Target::Herald {
        let mut client = HeraldClient::connect(b.grpc.clone())
            .await
            .with_context(|| format!("connecting to {}", b.grpc))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String, String)>(4096);
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(async move {
            while let Some((i, channel, data)) = rx.recv().await {
                let req = PublishStreamRequest {
                    sequence: i as u64,
                    channel,
                    data: Bytes::from(data),
                    idempotency_key: String::new(),
                };
                if req_tx.send(req).await.is_err() {
                    break;
                }
            }
        });
        let mut results = client
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await?
            .into_inner();
        let (acked, errors) = (acked.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while let Ok(Some(r)) = results.message().await {
                match r.outcome {
                    Some(Outcome::Cursor(_)) => {
                        if let Some(a) = acked.get(r.sequence as usize) {
                            a.store(true, Ordering::Relaxed);
                        }
                    }
                    other => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("publish failed: {other:?}");
                        }
                    }
                }
            }
        }));
        senders.push(tx);
    } else {
        let addr = b.publish_addr.unwrap_or(b.addrs[0]);
        for _ in 0..b.publishers.max(1) {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String, String)>(4096);
            let mut http = peers::HttpPublisher::new(b.target, addr);
            let (acked, errors) = (acked.clone(), errors.clone());
            workers.push(tokio::spawn(async move {
                while let Some((i, channel, data)) = rx.recv().await {
                    match http.publish(&channel, &data).await {
                        Ok(()) => acked[i].store(true, Ordering::Relaxed),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("publish failed: {e:#}");
                            }
                        }
                    }
                }
            }));
            senders.push(tx);
        }
    }
    let mut i = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while i < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * b.rate as f64) as usize + 1).min(total);
        while i < due {
            let c = (i % n) as u32;
            let seq = (i / n + 1) as u32;
            let tx = &senders[c as usize % senders.len()];
            if tx
                .send((i, name(run, c), payload(c, seq, &pad)))
                .await
                .is_err()
            {
                bail!("publisher ended early");
            }
            i += 1;
        }
    }
    drop(senders);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let publish_secs = start.elapsed().as_secs_f64();

    // Drain: until every acknowledged publish reached every subscription, or no progress for 2 s.
    let acked_n: Vec<bool> = acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let expected: u64 = acked_n
        .iter()
        .enumerate()
        .filter(|(_, a)| **a)
        .map(|(i, _)| subs_of(i % n, b.subscribers) as u64)
        .sum();
    let drain_secs = crate::settle(&delivered, expected).await;
    let cpu = cpu_all(&b.pids) - cpu0;
    let cpu_by_pid: Vec<f64> = b
        .pids
        .iter()
        .zip(&cpu0_by_pid)
        .map(|(&p, c0)| ((cpu_seconds(p) - c0) * 100.0).round() / 100.0)
        .collect();
    let rss2 = rss_all(&b.pids);
    done.notify_waiters();

    // Count.
    let (mut received, mut lost, mut dups, mut unacked, mut foreign) = (0u64, 0u64, 0u64, 0u64, 0);
    let mut lat = Vec::new();
    // A few of the losses, to tell a pattern: (connection, transport, channel, missing sequences).
    let mut lost_sample = Vec::new();
    for (j, r) in readers {
        let got = r.await?;
        foreign += got.foreign;
        lat.extend(got.latencies_us);
        for (c, mut seqs) in got.seqs {
            received += seqs.len() as u64;
            seqs.sort_unstable();
            let before = seqs.len();
            seqs.dedup();
            dups += (before - seqs.len()) as u64;
            let mut hit = 0u64;
            for &s in &seqs {
                let i = (s as usize - 1) * n + c as usize;
                if acked_n.get(i).copied().unwrap_or(false) {
                    hit += 1;
                } else {
                    unacked += 1;
                }
            }
            let want = (c as usize..total)
                .step_by(n)
                .filter(|&i| acked_n[i])
                .count() as u64;
            lost += want.saturating_sub(hit);
            if want > hit && lost_sample.len() < 10 {
                let missing: Vec<usize> = (c as usize..total)
                    .step_by(n)
                    .filter(|&i| acked_n[i] && seqs.binary_search(&((i / n + 1) as u32)).is_err())
                    .map(|i| i / n + 1)
                    .collect();
                let sse = match b.transport {
                    Transport::Ws => false,
                    Transport::Sse => true,
                    Transport::Mix => j % 2 == 1,
                };
                lost_sample.push(serde_json::json!({"connection": j,
                    "transport": if sse { "sse" } else { "ws" }, "channel": c,
                    "missing": missing, "received": seqs, "ended_early": got.ended}));
            }
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    };
    let acked_count = acked_n.iter().filter(|a| **a).count();
    let grow = |a: &[u64], b: &[u64]| -> Vec<i64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| *y as i64 - *x as i64)
            .collect()
    };
    let opened_grow: i64 = grow(&rss0, &rss1).iter().sum();
    let per = |kb: i64, count: usize| (kb as f64 * 1024.0 / count.max(1) as f64).round();
    let result = serde_json::json!({
        "scenario": "channels", "target": b.target.name(),
        "protocol": format!("{:?}", b.transport).to_lowercase(),
        "channels": n, "subscribers_per_channel": format!("{}-{}", b.subscribers.0, b.subscribers.1),
        "subscriptions": subscriptions, "connections": conns.len(), "connections_opened": opened,
        "channels_per_connection": b.per_connection, "nodes": b.addrs.len(),
        "open_seconds": (open_secs * 100.0).round() / 100.0,
        "server_cpu_seconds_subscribing": cpu_open,
        "rate": b.rate,
        "published": acked_count, "publish_errors": errors.load(Ordering::Relaxed),
        "publish_rate_achieved": (acked_count as f64 / publish_secs).round(),
        "deliveries": received, "expected_deliveries": expected,
        "lost": lost, "duplicates": dups, "unacknowledged_delivered": unacked,
        "foreign": foreign, "lost_sample": lost_sample, "drain_seconds": (drain_secs * 100.0).round() / 100.0,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "server_cpu_seconds": cpu, "server_cpu_seconds_by_pid": cpu_by_pid,
        "server_cpu_us_per_delivery": if received > 0 { cpu * 1e6 / received as f64 } else { 0.0 },
        "server_rss_kb": {"before": rss0, "subscribed": rss1, "end": rss2},
        "rss_growth_bytes": {
            "per_connection": per(opened_grow, opened),
            "per_subscription": per(opened_grow, subscriptions),
            "per_channel": per(opened_grow, n),
            "per_channel_by_pid": grow(&rss0, &rss1).iter().map(|&g| per(g, n)).collect::<Vec<_>>(),
        },
    });
    println!("{result}");
    if let Some(path) = b.json {
        std::fs::write(path, result.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_subscriptions_never_share_a_connection() {
        let conns = layout(1000, (1, 5), 20);
        let total: usize = conns.iter().map(Vec::len).sum();
        assert_eq!(total, (0..1000).map(|c| subs_of(c, (1, 5))).sum::<usize>());
        assert_eq!(total, 3000);
        for chans in &conns {
            let mut sorted = chans.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), chans.len());
        }
    }

    #[test]
    fn one_subscriber_per_channel_is_one_round() {
        let conns = layout(10, (1, 1), 1);
        assert_eq!(conns.len(), 10);
        assert!(conns.iter().enumerate().all(|(j, c)| c == &[j as u32]));
    }

    #[test]
    fn finds_triples_in_herald_and_nchan_frames() {
        let mut out = Vec::new();
        triples(
            r#"{"type":"message","channel":"ch-1-7","id":"9","data":{"hch":7,"hseq":3,"hts":17,"p":"x"}}"#,
            &mut out,
        );
        triples(
            "id: 9\nevent: message\ndata: {\"hch\":2,\"hseq\":5,\"hts\":19}\n\nid: 10\ndata: {\"hch\":2,\"hseq\":6,\"hts\":20}",
            &mut out,
        );
        assert_eq!(out, [(7, 3, 17), (2, 5, 19), (2, 6, 20)]);
    }

    #[test]
    fn a_position_token_that_spells_a_key_is_not_read_as_one() {
        let mut out = Vec::new();
        triples(
            "id: 41_hchx_1.hts9\nevent: message\ndata: {\"channel\":\"c\",\"data\":{\"hch\":4,\"hseq\":1,\"hts\":5}}\n\n\
             id: 42_hchx_1.hts9\nevent: message\ndata: {\"channel\":\"c\",\"data\":{\"hch\":4,\"hseq\":2,\"hts\":6}}",
            &mut out,
        );
        assert_eq!(out, [(4, 1, 5), (4, 2, 6)]);
    }

    #[test]
    fn subscriber_spec() {
        assert_eq!(parse_subscribers("1").ok(), Some((1, 1)));
        assert_eq!(parse_subscribers("1-5").ok(), Some((1, 5)));
        assert!(parse_subscribers("0").is_err());
        assert!(parse_subscribers("5-1").is_err());
    }
}
