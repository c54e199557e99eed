//! Catch-up from the recent-message cache and from the broker: a reconnect storm costs a
//! handful of broker reads, and resumes near the head, served from memory while publishing
//! goes on and NATS restarts, deliver exactly what the broker holds after their position.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use herald_e2e::{
    Node, Publisher, TIMEOUT, WsClient, channel,
    cluster::{self, NatsServer},
    cursor, metric_value, query, within,
};
use herald_proto::v1::HistoryRequest;
use serde_json::{Value, json};
use tokio::time::Instant;

const READS: &str = "herald_history_reads_total";

/// A small seeded generator (xorshift64*), so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Rng, u64) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let seed = std::env::var("HERALD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        (Rng(seed), seed)
    }

    /// Uniform-enough in `lo..hi` (hi > lo).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (hi - lo)
    }
}
const HITS: &str = r#"herald_recent_cache_lookups_total{result="hit"}"#;

/// Every message the broker holds for `ch` (cursor, data), oldest first, through gRPC.
async fn broker_history(node: &Node, ch: &str) -> Vec<(u64, Value)> {
    let mut control = cluster::control(node, None).await;
    let mut since = String::new();
    let mut all = Vec::new();
    loop {
        let page = within(
            TIMEOUT,
            "History",
            control.history(HistoryRequest {
                channel: ch.to_owned(),
                since: since.clone(),
                limit: 10_000,
            }),
        )
        .await
        .expect("History")
        .into_inner();
        assert!(!page.gap, "history keeps everything in this test");
        if page.messages.is_empty() {
            return all;
        }
        for m in &page.messages {
            let data: Value = serde_json::from_slice(&m.data).expect("JSON data");
            all.push((cursor(&m.cursor), data));
        }
        since = page.cursor;
    }
}

/// Opens a WebSocket on `ch` resuming after `since` and reads messages for `window`;
/// `None` if the node refused (broker down).
async fn resume(node: &Node, ch: &str, since: u64, window: Duration) -> Option<Vec<u64>> {
    let url = format!(
        "{}?{}",
        node.ws_url(),
        query(&[ch], Some(&since.to_string()))
    );
    let mut ws = WsClient::try_connect_with(&url, &[]).await.ok()?;
    let mut got = Vec::new();
    let until = Instant::now() + window;
    loop {
        let frame = match tokio::time::timeout_at(until, ws.next_json_or_end()).await {
            Ok(Some(v)) => v,
            Ok(None) | Err(_) => break,
        };
        match frame["type"].as_str() {
            Some("message") => got.push(cursor(frame["id"].as_str().expect("id"))),
            Some("error") => return None, // e.g. broker unavailable during the restart
            Some("gap") => panic!("gap after {since} although history holds everything"),
            _ => {}
        }
    }
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_on_two_nats_nodes_costs_a_handful_of_broker_reads() {
    let nats = cluster::start_nats();
    let a = cluster::nats_node(&nats, "storm-a", &[]).await;
    let b = cluster::nats_node(&nats, "storm-b", &[]).await;
    let ch = channel("storm");
    let mut p = Publisher::connect(&a).await;
    let first = p.publish(&ch, &json!(0)).await;
    let mut missed = Vec::new();
    for n in 1..=50 {
        missed.push(cursor(&p.publish(&ch, &json!(n)).await));
    }
    let reads = metric_value(&a, READS).await + metric_value(&b, READS).await;
    let hits = metric_value(&a, HITS).await + metric_value(&b, HITS).await;

    // 1,000 clients come back at once, half on each node, all 50 messages behind.
    let clients = 1000;
    let nodes = Arc::new([a, b]);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (nodes, ch, first) = (nodes.clone(), ch.clone(), first.clone());
            tokio::spawn(async move {
                let node = &nodes[i % 2];
                let mut ws = WsClient::connect(node, &query(&[&ch], Some(&first))).await;
                ws.expect_type("subscribed").await;
                ws.next_msgs(50)
                    .await
                    .iter()
                    .map(|m| m.id)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.expect("client"),
            missed,
            "every client gets the 50, in order"
        );
    }
    let [a, b] = &*nodes;
    let reads = metric_value(a, READS).await + metric_value(b, READS).await - reads;
    let hits = metric_value(a, HITS).await + metric_value(b, HITS).await - hits;
    eprintln!("{clients} resumes: {reads} broker history reads, {hits} served from memory");
    assert!(
        reads <= 10.0,
        "{clients} resumes of one channel cost {reads} broker reads: a handful per node expected"
    );
    assert!(
        hits >= (clients - 10) as f64,
        "only {hits} resumes served from memory"
    );
}

/// A holder keeps the channel's feed (and its recent messages) on the node; a publisher
/// streams messages; a resumer reconnects again and again from random recent positions, each
/// time for a short window. Optionally NATS is restarted mid-way. Afterwards every resume
/// must have received exactly a prefix of what the broker holds after its position.
async fn resumes_match_the_broker(node: &Node, nats: Option<&mut NatsServer>) {
    let ch = channel("near-head");
    let mut holder = WsClient::connect(node, &query(&[&ch], None)).await;
    holder.expect_type("subscribed").await;
    let mut p = Publisher::connect(node).await;
    let mut published: Vec<u64> = Vec::new();
    for n in 0..20 {
        published.push(cursor(&p.publish(&ch, &json!(n)).await));
    }
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (done, ch) = (done.clone(), ch.clone());
        let mut p = Publisher::connect(node).await;
        tokio::spawn(async move {
            let mut n = 20u64;
            let mut ok = Vec::new();
            while !done.load(Ordering::Relaxed) {
                // Failures during a NATS outage are expected; the broker's history decides.
                if let Ok(c) = p.try_publish(&ch, n.to_string()).await {
                    ok.push(cursor(&c));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            ok
        })
    };
    let (mut rng, seed) = Rng::seeded();
    eprintln!("seed {seed} (HERALD_TEST_SEED replays it)");
    let mut runs: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut known = published.clone();
    let started = Instant::now();
    let mut restarted = nats.is_none();
    let mut nats = nats;
    while started.elapsed() < Duration::from_secs(8) {
        if !restarted && started.elapsed() > Duration::from_secs(3) {
            if let Some(n) = nats.as_deref_mut() {
                n.restart();
            }
            restarted = true;
        }
        // A position among the newest ~60 known (mostly inside the cached window).
        let history_now = broker_history_quick(node, &ch).await;
        if let Some(h) = history_now {
            known = h;
        }
        let back = rng.range(1, 60.min(known.len() as u64)) as usize;
        let since = known[known.len() - back];
        let window = Duration::from_millis(rng.range(30, 200));
        if let Some(got) = resume(node, &ch, since, window).await {
            runs.push((since, got));
        }
    }
    done.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let truth: Vec<u64> = broker_history(node, &ch)
        .await
        .iter()
        .map(|m| m.0)
        .collect();
    let served: usize = runs.iter().map(|r| r.1.len()).sum();
    eprintln!(
        "{} resumes, {served} messages checked against the broker",
        runs.len()
    );
    assert!(runs.len() >= 20, "only {} resumes ran", runs.len());
    for (since, got) in &runs {
        let after: Vec<u64> = truth.iter().copied().filter(|c| c > since).collect();
        assert!(
            after.starts_with(got),
            "resume after {since} got {got:?}, the broker holds {:?}",
            &after[..after.len().min(got.len() + 3)]
        );
    }
    drop(holder);
}

/// The broker's current cursors of `ch` (or `None` while it cannot answer).
async fn broker_history_quick(node: &Node, ch: &str) -> Option<Vec<u64>> {
    let mut control = cluster::control(node, None).await;
    let page = tokio::time::timeout(
        Duration::from_secs(2),
        control.history(HistoryRequest {
            channel: ch.to_owned(),
            since: String::new(),
            limit: 10_000,
        }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let all: Vec<u64> = page.messages.iter().map(|m| cursor(&m.cursor)).collect();
    (!all.is_empty()).then_some(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumes_near_the_head_deliver_exactly_what_the_memory_broker_holds() {
    let node = Node::start(&[("HERALD_HISTORY_SIZE", "100000")]).await;
    resumes_match_the_broker(&node, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumes_near_the_head_stay_exact_across_a_nats_restart() {
    let mut nats = cluster::start_nats();
    let node = cluster::nats_node(
        &nats,
        "near-head",
        &[
            ("HERALD_HISTORY_SIZE", "100000"),
            ("HERALD_NATS_STORAGE", "file"),
        ],
    )
    .await;
    let hits = metric_value(&node, HITS).await;
    resumes_match_the_broker(&node, Some(&mut nats)).await;
    assert!(
        metric_value(&node, HITS).await > hits,
        "some resumes were served from memory"
    );
}

/// Publishes `per_channel` messages to each of `channels`, interleaved, over 8 concurrent
/// unary publishers; returns every cursor per channel, in order.
async fn backlog(node: &Node, channels: &[String], per_channel: usize) -> Vec<Vec<u64>> {
    let mut tasks = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let mut p = Publisher::connect(node).await;
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_channel);
            for n in 0..per_channel {
                ids.push(cursor(&p.publish(&ch, &json!({"ch": i, "n": n})).await));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("publisher"));
    }
    all
}

/// A resume far back over several channels: several pages per channel, merged in cursor
/// order, every message once, on WebSocket and SSE.
async fn deep_resume(node: &Node) {
    let channels: Vec<String> = (0..3).map(|_| channel("deep")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut p = Publisher::connect(node).await;
    let start = p.publish(&channels[0], &json!("start")).await;
    let sent = backlog(node, &channels, 1200).await;
    let total: usize = sent.iter().map(Vec::len).sum();
    let mut want: Vec<u64> = sent.iter().flatten().copied().collect();
    want.sort_unstable();

    let mut ws = WsClient::connect(node, &query(&names, Some(&start))).await;
    ws.expect_type("subscribed").await;
    let got: Vec<u64> = ws.next_msgs(total).await.iter().map(|m| m.id).collect();
    assert_eq!(
        got, want,
        "WebSocket: every message once, merged in cursor order"
    );

    let mut sse = herald_e2e::SseClient::connect(node, &query(&names, Some(&start)), &[]).await;
    sse.expect_event("subscribed").await;
    let got: Vec<u64> = sse.next_msgs(total).await.iter().map(|m| m.id).collect();
    assert_eq!(got, want, "SSE: every message once, merged in cursor order");
    // The stream's last id resumes all three channels past everything.
    let last = sse.last_id.clone().expect("id lines");
    drop(sse);
    let after = p.publish(&channels[2], &json!("after")).await;
    let mut sse = herald_e2e::SseClient::connect(
        node,
        &query(&names, None),
        &[("Last-Event-ID", last.as_str())],
    )
    .await;
    sse.expect_event("subscribed").await;
    assert_eq!(sse.next_msg().await.id, cursor(&after), "nothing repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deep_resume_over_several_channels_streams_every_message_once_on_the_memory_broker() {
    let node = Node::start(&[("HERALD_HISTORY_SIZE", "100000")]).await;
    deep_resume(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deep_resume_over_several_channels_streams_every_message_once_on_nats() {
    let nats = cluster::start_nats();
    let node = cluster::nats_node(&nats, "deep", &[("HERALD_HISTORY_SIZE", "100000")]).await;
    deep_resume(&node).await;
}
