//! Reconnect storm: N WebSocket clients of one channel go away together, messages are
//! published while they are away, and all come back at once resuming from their last cursor
//! (spread over the given nodes). Measures the time until every client has caught up, counts
//! lost and duplicated messages (each client must get exactly the missed ones, in order), and
//! the broker history reads the nodes made for it (`herald_history_reads_total`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{client_ws_config, connect_from, now_us, peers::payloads};

/// Settings of one storm.
pub(crate) struct Storm {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) grpc: String,
    pub(crate) clients: usize,
    pub(crate) missed: u64,
    pub(crate) sources: Vec<std::net::IpAddr>,
    pub(crate) pids: Vec<u32>,
    pub(crate) admins: Vec<SocketAddr>,
}

/// Sum of `herald_history_reads_total` over the nodes' admin ports.
async fn history_reads(admins: &[SocketAddr]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for a in admins {
        let text = reqwest::get(format!("http://{a}/metrics"))
            .await?
            .text()
            .await?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("herald_history_reads_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("herald_history_reads_total missing")?;
    }
    Ok(total)
}

async fn publish(
    client: &mut herald_proto::v1::herald_client::HeraldClient<tonic::transport::Channel>,
    channel: &str,
    seq: u64,
) -> anyhow::Result<String> {
    let data = format!("{{\"hseq\":{seq},\"hts\":{}}}", now_us());
    let r = client
        .publish(herald_proto::v1::PublishRequest {
            channel: channel.to_owned(),
            data: bytes::Bytes::from(data),
            idempotency_key: String::new(),
        })
        .await?;
    Ok(r.into_inner().cursor)
}

/// Opens `/ws?channel=..[&since=..]` and reads until `want` payloads arrived (returns their
/// sequences) or 60 s pass.
async fn client(
    src: std::net::IpAddr,
    addr: SocketAddr,
    channel: &str,
    since: Option<&str>,
    want: u64,
    go: Option<Arc<tokio::sync::Barrier>>,
) -> anyhow::Result<(Vec<u64>, Instant)> {
    let stream = connect_from(src, addr).await;
    if let Some(go) = go {
        // Every client connects its TCP first (a failed one still counts in), then all send
        // their requests together.
        go.wait().await;
    }
    let stream = stream?;
    let mut url = format!("ws://{addr}/ws?channel={channel}");
    if let Some(s) = since {
        url.push_str(&format!("&since={s}"));
    }
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_ws_config())).await?;
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = Vec::new();
    while (seqs.len() as u64) < want {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("catch-up timed out")?
            .context("closed")??;
        if let Message::Text(t) = msg {
            if t.contains("\"gap\"") {
                bail!("gap reported: {t}");
            }
            payloads(t.as_str(), &mut found);
            seqs.extend(found.drain(..).map(|(s, _)| s));
        }
    }
    Ok((seqs, Instant::now()))
}

pub(crate) async fn run(s: Storm) -> anyhow::Result<()> {
    let channel = format!("storm-{}", now_us());
    let mut grpc = herald_proto::v1::herald_client::HeraldClient::connect(s.grpc.clone()).await?;
    // A first message: every client's resume point is its cursor.
    let first = publish(&mut grpc, &channel, 0).await?;
    for seq in 1..=s.missed {
        publish(&mut grpc, &channel, seq).await?;
    }
    // All clients come back at once with the cursor of the first message.
    let cpu = || s.pids.iter().map(|p| crate::cpu_seconds(*p)).sum::<f64>();
    let cpu0 = cpu();
    let reads0 = history_reads(&s.admins).await?;
    let go = Arc::new(tokio::sync::Barrier::new(s.clients));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(s.clients);
    for i in 0..s.clients {
        let (src, addr, channel, first, go) = (
            s.sources[i % s.sources.len()],
            s.addrs[i % s.addrs.len()],
            channel.clone(),
            first.clone(),
            go.clone(),
        );
        let missed = s.missed;
        tasks.push(tokio::spawn(async move {
            client(src, addr, &channel, Some(&first), missed, Some(go)).await
        }));
    }
    let (mut caught_up, mut lost, mut dups, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut last = started;
    let mut times = Vec::new();
    for t in tasks {
        match t.await? {
            Ok((seqs, at)) => {
                let want: Vec<u64> = (1..=s.missed).collect();
                if seqs == want {
                    caught_up += 1;
                } else {
                    let mut sorted = seqs.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    dups += (seqs.len() - sorted.len()) as u64;
                    lost += s.missed.saturating_sub(sorted.len() as u64);
                }
                last = last.max(at);
                times.push(at.duration_since(started).as_secs_f64() * 1000.0);
            }
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("client failed: {e:#}");
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let cpu = cpu() - cpu0;
    let reads = history_reads(&s.admins).await? - reads0;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "reconnect_storm", "clients": s.clients, "missed_per_client": s.missed,
            "nodes": s.addrs.len(), "broker_history_reads": reads,
            "caught_up_exactly": caught_up, "failed": failed, "lost": lost, "duplicates": dups,
            "all_caught_up_ms": last.duration_since(started).as_secs_f64() * 1000.0,
            "catch_up_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "server_cpu_seconds": cpu,
        })
    );
    Ok(())
}
