//! `herald-bench publish`: publishes per second through the gRPC API, unary calls (many in
//! flight) or `PublishStream` (bidirectional, flow-controlled by the server), or through the
//! HTTP/JSON API (`POST /api/v1/publish` on kept-alive HTTP/1.1 connections, one request in
//! flight per connection), for a fixed duration. Every publish must succeed; errors are
//! counted and reported.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use clap::ValueEnum;
use herald_proto::v1::{
    PublishRequest, PublishStreamRequest, herald_client::HeraldClient,
    publish_stream_response::Outcome,
};
use tokio::time::Instant;
use tonic::transport::Channel;

/// How to publish.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// One `Publish` call per message, `--concurrency` calls in flight.
    Unary,
    /// `PublishStream`, `--concurrency` streams.
    Stream,
    /// `POST /api/v1/publish` on `--api`, `--concurrency` kept-alive connections each with
    /// one request in flight.
    Http,
}

/// Settings of one run.
pub(crate) struct PublishBench {
    pub(crate) grpc: String,
    pub(crate) api: String,
    pub(crate) mode: Mode,
    pub(crate) concurrency: usize,
    pub(crate) duration: Duration,
    pub(crate) channels: usize,
    pub(crate) size: usize,
    pub(crate) connections: usize,
}

fn payload(i: u64, size: usize) -> Bytes {
    let head = format!("{{\"i\":{i},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = head;
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

pub(crate) async fn run(b: PublishBench) -> anyhow::Result<()> {
    // `--grpc a,b,c`: the calls or streams are spread over several nodes (a hot channel
    // published from many places).
    let mut clients = Vec::new();
    for _ in 0..if b.mode == Mode::Http {
        0
    } else {
        b.connections.max(1)
    } {
        for endpoint in b.grpc.split(',').filter(|e| !e.is_empty()) {
            let channel = Channel::from_shared(endpoint.to_owned())
                .context("--grpc")?
                .connect()
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            clients.push(HeraldClient::new(channel));
        }
    }
    anyhow::ensure!(
        b.mode == Mode::Http || !clients.is_empty(),
        "--grpc names no endpoint"
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(b.concurrency.max(1))
        .build()
        .context("HTTP client")?;
    let url = format!("{}/api/v1/publish", b.api.trim_end_matches('/'));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let names: Arc<Vec<String>> = Arc::new(
        (0..b.channels.max(1))
            .map(|i| format!("bench-pub-{i}"))
            .collect(),
    );
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + b.duration;
    let mut tasks = Vec::new();
    for t in 0..b.concurrency.max(1) {
        let mut client = clients.get(t % clients.len().max(1)).cloned();
        let (http, url) = (http.clone(), url.clone());
        let (names, ok, failed, size) = (names.clone(), ok.clone(), failed.clone(), b.size);
        let first_error = first_error.clone();
        let note = move |error: String| {
            if let Ok(mut first) = first_error.lock() {
                first.get_or_insert(error);
            }
        };
        tasks.push(tokio::spawn(async move {
            match b.mode {
                Mode::Unary => {
                    let mut i = t as u64;
                    while Instant::now() < deadline {
                        let req = PublishRequest {
                            channel: names[(i as usize) % names.len()].clone(),
                            data: payload(i, size),
                            idempotency_key: String::new(),
                        };
                        let Some(client) = client.as_mut() else {
                            return;
                        };
                        match client.publish(req).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                note(e.to_string());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        i += 1_000_003;
                    }
                }
                Mode::Stream => {
                    let (tx, rx) = tokio::sync::mpsc::channel(4096);
                    let producer = tokio::spawn({
                        let names = names.clone();
                        async move {
                            let mut i = 0u64;
                            while Instant::now() < deadline {
                                let req = PublishStreamRequest {
                                    sequence: i,
                                    channel: names[(i as usize + t) % names.len()].clone(),
                                    data: payload(i, size),
                                    idempotency_key: String::new(),
                                };
                                if tx.send(req).await.is_err() {
                                    break;
                                }
                                i += 1;
                            }
                        }
                    });
                    let Some(client) = client.as_mut() else {
                        return;
                    };
                    let results = client
                        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await;
                    let mut results = match results {
                        Ok(r) => r.into_inner(),
                        Err(e) => {
                            eprintln!("PublishStream: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    while let Ok(Some(r)) = results.message().await {
                        match r.outcome {
                            Some(Outcome::Cursor(_)) => ok.fetch_add(1, Ordering::Relaxed),
                            other => {
                                note(format!("{other:?}"));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    let _ = producer.await;
                }
                Mode::Http => {
                    let mut i = t as u64;
                    while Instant::now() < deadline {
                        let name = &names[(i as usize) % names.len()];
                        let data = payload(i, size);
                        let mut body = Vec::with_capacity(data.len() + name.len() + 24);
                        body.extend_from_slice(b"{\"channel\":\"");
                        body.extend_from_slice(name.as_bytes());
                        body.extend_from_slice(b"\",\"data\":");
                        body.extend_from_slice(&data);
                        body.push(b'}');
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                ok.fetch_add(1, Ordering::Relaxed)
                            }
                            Ok(r) => {
                                let status = r.status();
                                note(format!("{status}: {}", r.text().await.unwrap_or_default()));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(e) => {
                                note(e.to_string());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        i += 1_000_003;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let result = serde_json::json!({
        "mode": format!("{:?}", b.mode).to_lowercase(),
        "concurrency": b.concurrency,
        "connections": b.connections,
        "channels": b.channels,
        "size": b.size,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "published": ok,
        "failed": failed,
        "publishes_per_second": (ok as f64 / elapsed).round(),
    });
    println!("{result}");
    if failed > 0 {
        let first = first_error
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_default();
        anyhow::bail!("{failed} publishes failed; first: {first}");
    }
    Ok(())
}
