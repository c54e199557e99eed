//! `herald-bench presence-kv`: what the alternative presence mechanism, kept in JetStream,
//! would cost, without building it into Herald: the write load it would put on a nats-server,
//! made with async-nats alone.
//!
//! The alternative: every node writes one entry per (channel, connection) into a JetStream KV
//! bucket (a stream `KV_<bucket>` on `$KV.<bucket>.>`, one message kept per key, `max_age` as
//! the entries' expiry; nats-server 2.9 has no per-message TTL, so expiry is bucket-wide),
//! refreshes each entry every `--refresh` so that a dead node's entries expire, writes a new
//! entry on join and a delete marker on leave; `Presence(channel)` reads the last entry of every
//! key under `<channel>.`.
//!
//! Steps:
//! 1. fill: `--entries` entries written flat out (`--window` writes in flight): the store's
//!    ceiling for these writes on this machine;
//! 2. steady: for `--duration`, `entries / refresh` refresh writes per second plus `--churn`
//!    leaves and joins per second (a delete marker and a new entry each), paced; ack latency,
//!    the rate reached, nats-server CPU, the stream's size at the end;
//! 3. queries after step 2: `--queries` channel listings one at a time (an ephemeral consumer
//!    filtered on `$KV.<bucket>.<channel>.>` delivering the last message per subject, read to
//!    its end): latency, nats-server CPU per listing.
//!
//! Bounded: each step stops at its count or duration; acks wait at most 30 s.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::{
    HeaderMap,
    jetstream::{self, consumer, context::PublishAckFuture, stream},
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::{sync::mpsc, time::Instant};

use crate::cpu_seconds;

/// Settings of one run.
pub(crate) struct PresenceKv {
    pub(crate) nats: String,
    pub(crate) nats_pid: Option<u32>,
    pub(crate) bucket: String,
    pub(crate) entries: usize,
    pub(crate) channels: usize,
    pub(crate) refresh: Duration,
    pub(crate) churn: u64,
    pub(crate) duration: Duration,
    pub(crate) max_age: Duration,
    pub(crate) memory: bool,
    pub(crate) window: usize,
    pub(crate) queries: usize,
    pub(crate) json: Option<std::path::PathBuf>,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn channel_of(id: u64, channels: usize) -> u64 {
    mix(id) % channels.max(1) as u64
}

fn key(bucket: &str, id: u64, channels: usize) -> String {
    format!("$KV.{bucket}.room_{}.c{id}", channel_of(id, channels))
}

/// A presence entry as a node would store it (about 160 bytes).
fn entry(id: u64) -> Bytes {
    let user = id % 50_000;
    Bytes::from(format!(
        "{{\"client\":\"5f1c2a9b0d3e-{id}\",\"user\":\"u{user}\",\"info\":{{\"name\":\"User {user}\",\"pad\":\"xxxxxxxxxxxxxxxx\"}},\"node\":\"node-{}\",\"protocol\":\"websocket\",\"since_unix_ms\":1795467571318}}",
        id % 6
    ))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn percentiles(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        (v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 10.0).round() / 100.0
    };
    serde_json::json!({"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0),
        "count": v.len()})
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Awaits acks in order; returns each write's latency (µs) and the failures.
fn acker(
    mut rx: mpsc::Receiver<(Instant, PublishAckFuture)>,
) -> tokio::task::JoinHandle<(Vec<u64>, u64)> {
    tokio::spawn(async move {
        let (mut lat, mut failed) = (Vec::new(), 0u64);
        while let Some((sent, ack)) = rx.recv().await {
            match tokio::time::timeout(Duration::from_secs(30), ack).await {
                Ok(Ok(_)) => lat.push(sent.elapsed().as_micros() as u64),
                _ => {
                    failed += 1;
                }
            }
        }
        (lat, failed)
    })
}

async fn put(
    js: &jetstream::Context,
    tx: &mpsc::Sender<(Instant, PublishAckFuture)>,
    subject: String,
    body: Bytes,
    delete: bool,
) -> anyhow::Result<()> {
    let sent = Instant::now();
    let ack = if delete {
        let mut h = HeaderMap::new();
        h.insert("KV-Operation", "DEL");
        js.publish_with_headers(subject, h, Bytes::new()).await?
    } else {
        js.publish(subject, body).await?
    };
    tx.send((sent, ack))
        .await
        .map_err(|_| anyhow::anyhow!("acker ended"))?;
    Ok(())
}

/// Lists one channel the way `Presence` would: last entry per key under the channel.
async fn list(stream: &stream::Stream, bucket: &str, channel: u64) -> anyhow::Result<u64> {
    let mut c = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("$KV.{bucket}.room_{channel}.>"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .context("creating the listing consumer")?;
    let pending = c.info().await?.num_pending;
    let mut got = 0u64;
    if pending > 0 {
        let mut batch = c
            .fetch()
            .max_messages(pending as usize)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some();
            got += u64::from(!deleted);
        }
    }
    let name = c.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(got)
}

pub(crate) async fn run(b: PresenceKv) -> anyhow::Result<()> {
    if b.entries == 0 || b.refresh.is_zero() {
        bail!("--entries and --refresh must not be zero");
    }
    let client = async_nats::connect(&b.nats)
        .await
        .with_context(|| format!("connecting to {}", b.nats))?;
    let js = jetstream::new(client);
    let name = format!("KV_{}", b.bucket);
    let _ = js.delete_stream(&name).await;
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("$KV.{}.>", b.bucket)],
            max_messages_per_subject: 1,
            max_age: b.max_age,
            storage: if b.memory {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .context("creating the bucket's stream")?;
    let nats_cpu = || b.nats_pid.map(cpu_seconds).unwrap_or(0.0);
    let nats_rss = || b.nats_pid.map(crate::rss_kb).unwrap_or(0);
    let rss0 = nats_rss();
    let load0 = loadavg();

    // 1. Fill, flat out.
    let (tx, rx) = mpsc::channel(b.window.max(1));
    let acks = acker(rx);
    let cpu0 = nats_cpu();
    let t = Instant::now();
    for id in 0..b.entries as u64 {
        put(&js, &tx, key(&b.bucket, id, b.channels), entry(id), false).await?;
    }
    drop(tx);
    let (lat, failed) = acks.await?;
    let fill_secs = t.elapsed().as_secs_f64();
    let fill_cpu = nats_cpu() - cpu0;
    let fill = serde_json::json!({
        "writes": b.entries, "failed": failed, "seconds": round2(fill_secs),
        "writes_per_s": (lat.len() as f64 / fill_secs).round(),
        "ack_latency_ms": percentiles(lat),
        "nats_cpu_us_per_write": (fill_cpu * 1e6 / b.entries as f64).round(),
        "nats_cpu_percent": round2(fill_cpu / fill_secs * 100.0),
        "nats_rss_kb": [rss0, nats_rss()], "loadavg": loadavg(),
    });
    eprintln!("fill: {fill}");

    // 2. Steady refresh + churn, paced.
    let refresh_rate = b.entries as f64 / b.refresh.as_secs_f64();
    let rate = refresh_rate + 2.0 * b.churn as f64;
    let total = (rate * b.duration.as_secs_f64()) as u64;
    let (tx, rx) = mpsc::channel(b.window.max(1));
    let acks = acker(rx);
    // Slots of live entries: refreshes walk them in order; a churn replaces one at random.
    let mut slots: Vec<u64> = (0..b.entries as u64).collect();
    let mut next_id = b.entries as u64;
    let churn_every = if b.churn > 0 {
        (rate / (2.0 * b.churn as f64)).max(1.0) as u64
    } else {
        u64::MAX
    };
    let cpu0 = nats_cpu();
    let t = Instant::now();
    let (mut i, mut refreshed, mut pick) = (0u64, 0usize, 99u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut behind_max = 0u64;
    while i < total {
        tick.tick().await;
        let due = ((t.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        behind_max = behind_max.max(due.saturating_sub(i));
        while i < due {
            if i % churn_every == churn_every - 1 {
                // A leave (delete marker) and a join (new entry), counted as two writes.
                pick = mix(pick);
                let s = (pick % slots.len() as u64) as usize;
                let old = slots[s];
                put(
                    &js,
                    &tx,
                    key(&b.bucket, old, b.channels),
                    Bytes::new(),
                    true,
                )
                .await?;
                slots[s] = next_id;
                put(
                    &js,
                    &tx,
                    key(&b.bucket, next_id, b.channels),
                    entry(next_id),
                    false,
                )
                .await?;
                next_id += 1;
                i += 2;
            } else {
                let id = slots[refreshed % slots.len()];
                put(&js, &tx, key(&b.bucket, id, b.channels), entry(id), false).await?;
                refreshed += 1;
                i += 1;
            }
        }
    }
    drop(tx);
    let (lat, failed) = acks.await?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = nats_cpu() - cpu0;
    let mut stored = js.get_stream(&name).await?;
    let info = stored.info().await?.state.clone();
    let steady_rss = nats_rss();

    // 3. Listings, one at a time, on the full bucket (no writes meanwhile).
    let (mut qlat, mut qentries, mut qerrors) = (Vec::new(), 0u64, 0u64);
    let mut pick = 7u64;
    let qcpu0 = nats_cpu();
    for _ in 0..b.queries {
        pick = mix(pick);
        let t = Instant::now();
        match list(&stream, &b.bucket, pick % b.channels.max(1) as u64).await {
            Ok(n) => {
                qlat.push(t.elapsed().as_micros() as u64);
                qentries += n;
            }
            Err(e) => {
                qerrors += 1;
                if qerrors < 3 {
                    eprintln!("listing failed: {e:#}");
                }
            }
        }
    }
    let qcpu = nats_cpu() - qcpu0;
    let qn = qlat.len().max(1) as f64;
    let result = serde_json::json!({
        "scenario": "presence-kv", "storage": if b.memory { "memory" } else { "file" },
        "entries": b.entries, "channels": b.channels, "refresh_s": b.refresh.as_secs_f64(),
        "max_age_s": b.max_age.as_secs_f64(), "churn_per_s": b.churn, "window": b.window,
        "loadavg_start": load0,
        "fill": fill,
        "steady": {
            "rate_asked": rate.round(), "writes": lat.len(), "failed": failed,
            "seconds": round2(secs), "writes_per_s": (lat.len() as f64 / secs).round(),
            "most_behind": behind_max,
            "ack_latency_ms": percentiles(lat),
            "nats_cpu_percent": round2(cpu / secs * 100.0),
            "nats_cpu_us_per_write": (cpu * 1e6 / total.max(1) as f64).round(),
            "loadavg": loadavg(),
        },
        "queries": {"latency_ms": percentiles(qlat), "errors": qerrors,
            "mean_entries": round2(qentries as f64 / qn),
            "nats_cpu_us_per_query": (qcpu * 1e6 / qn).round(), "loadavg": loadavg()},
        "stream_after_steady": {"messages": info.messages, "bytes": info.bytes,
            "subjects": info.subjects_count, "nats_rss_kb": steady_rss},
    });
    println!("{result}");
    if let Some(path) = &b.json {
        std::fs::write(path, result.to_string())?;
    }
    let _ = js.delete_stream(&name).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_subjects() {
        let k = key("PRES", 12, 10_000);
        assert!(k.starts_with("$KV.PRES.room_"));
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '$' | '.' | '_'))
        );
        assert!(entry(123).len() < 200);
    }
}
