//! Catch-up: a backlog of N messages on one channel, then a WebSocket client resumes from
//! before all of them. Measures the time to the first message and the rate of the whole
//! backlog; then the same backlog read by a client whose connections last only
//! `--connection-ms` each (every one resuming from the last id it saw), to show that short
//! connections still make progress.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use herald_proto::v1::{
    PublishRequest, PublishStreamRequest, herald_client::HeraldClient,
    publish_stream_response::Outcome,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{client_ws_config, now_us};

/// Settings of one catch-up run.
pub(crate) struct Catchup {
    pub(crate) addr: SocketAddr,
    pub(crate) grpc: String,
    pub(crate) messages: u64,
    pub(crate) connection_ms: u64,
    pub(crate) pid: Option<u32>,
}

/// Publishes `n` messages `{"hseq":i}` to `channel` through one `PublishStream`.
async fn backlog(grpc: &str, channel: &str, n: u64) -> anyhow::Result<()> {
    let mut client = HeraldClient::connect(grpc.to_owned()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let channel = channel.to_owned();
    let producer = tokio::spawn(async move {
        for i in 1..=n {
            let req = PublishStreamRequest {
                sequence: i,
                channel: channel.clone(),
                data: bytes::Bytes::from(format!("{{\"hseq\":{i}}}")),
                idempotency_key: String::new(),
            };
            if tx.send(req).await.is_err() {
                break;
            }
        }
    });
    let mut results = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut ok = 0;
    while let Some(r) = results.message().await? {
        match r.outcome {
            Some(Outcome::Cursor(_)) => ok += 1,
            other => bail!("publish failed: {other:?}"),
        }
        if ok == n {
            break;
        }
    }
    producer.await?;
    Ok(())
}

/// One connection resuming from `since`: reads until `until` (or all `want`), returns the
/// sequences and ids received in order and when the first arrived.
async fn session(
    addr: SocketAddr,
    channel: &str,
    since: &str,
    want: u64,
    until: Option<Instant>,
) -> anyhow::Result<(Vec<(u64, String)>, Option<Duration>)> {
    let started = Instant::now();
    let url = format!("ws://{addr}/ws?channel={channel}&since={since}");
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_ws_config())).await?;
    let mut got = Vec::new();
    let mut first = None;
    let deadline = until.unwrap_or(started + Duration::from_secs(120));
    while (got.len() as u64) < want {
        let Ok(frame) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break; // this connection's time is up
        };
        let Message::Text(t) = frame.context("closed")?? else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str())?;
        match v["type"].as_str() {
            Some("message") => {
                first.get_or_insert_with(|| started.elapsed());
                let seq = v["data"]["hseq"].as_u64().context("hseq")?;
                let id = v["id"].as_str().context("id")?.to_owned();
                got.push((seq, id));
            }
            Some("gap") => bail!("gap reported: {t}"),
            _ => {}
        }
    }
    Ok((got, first))
}

pub(crate) async fn run(c: Catchup) -> anyhow::Result<()> {
    let channel = format!("catchup-{}", now_us());
    let mut grpc = HeraldClient::connect(c.grpc.clone()).await?;
    // The resume point: a message before the backlog.
    let start = grpc
        .publish(PublishRequest {
            channel: channel.clone(),
            data: bytes::Bytes::from_static(b"{\"hseq\":0}"),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner()
        .cursor;
    let t = Instant::now();
    backlog(&c.grpc, &channel, c.messages).await?;
    let publish_s = t.elapsed().as_secs_f64();

    let cpu0 = c.pid.map(crate::cpu_seconds).unwrap_or(0.0);
    let t = Instant::now();
    let (got, first) = session(c.addr, &channel, &start, c.messages, None).await?;
    let whole = t.elapsed();
    let cpu = c.pid.map(crate::cpu_seconds).unwrap_or(0.0) - cpu0;
    let exact = got.iter().map(|(s, _)| *s).eq(1..=c.messages);

    // Short connections: each resumes from the last id it saw.
    let t = Instant::now();
    let limit = t + Duration::from_secs(60);
    let mut since = start.clone();
    let mut short: Vec<u64> = Vec::new();
    let mut connections = 0u64;
    while (short.len() as u64) < c.messages && Instant::now() < limit {
        connections += 1;
        let until = Instant::now() + Duration::from_millis(c.connection_ms);
        let want = c.messages - short.len() as u64;
        let (part, _) = session(c.addr, &channel, &since, want, Some(until)).await?;
        if let Some((_, id)) = part.last() {
            since = id.clone();
        }
        short.extend(part.into_iter().map(|(s, _)| s));
    }
    let short_s = t.elapsed().as_secs_f64();
    let short_exact = short.iter().copied().eq(1..=c.messages);

    println!(
        "{}",
        serde_json::json!({
            "scenario": "catch_up", "backlog": c.messages, "publish_s": publish_s,
            "first_message_ms": first.map(|d| d.as_secs_f64() * 1000.0),
            "whole_backlog_ms": whole.as_secs_f64() * 1000.0,
            "messages_per_s": c.messages as f64 / whole.as_secs_f64(),
            "exact": exact, "server_cpu_seconds": cpu,
            "short_connections": {"connection_ms": c.connection_ms, "connections": connections,
                "received": short.len(), "exact": short_exact, "seconds": short_s},
        })
    );
    if !exact || !short_exact {
        bail!("the catch-up was not exact");
    }
    Ok(())
}
