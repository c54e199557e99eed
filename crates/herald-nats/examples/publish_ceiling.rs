//! What one nats-server (JetStream, file storage) on this machine can store per second, without
//! Herald around it, in the shapes Herald's publish path could take:
//!
//! - `pipelined`: a window of async publishes in flight, no per-subject ordering check (the
//!   ceiling of the server and the client library);
//! - `chained`: one publish in flight per subject, each carrying
//!   `Nats-Expected-Last-Subject-Sequence` of the one before (what a chain link needs when it is
//!   computed by the publisher), subjects in parallel;
//! - `chained+tip`: as `chained`, plus a second stored write per publish (a side stream of
//!   per-subject tips, as Herald wrote before tip writes were coalesced).
//!
//! ```text
//! cargo run --release -p herald-nats --example publish_ceiling [subjects] [seconds]
//! CEILING_STORAGE=memory cargo run ...   # JetStream memory storage instead of file
//! ```
//!
//! Figures only: nothing is asserted. Needs `/usr/sbin/nats-server`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{self, message::PublishMessage, stream},
};
use bytes::Bytes;
use herald_nats::testing::NatsServer;

const WINDOW: usize = 1024;

async fn setup(url: &str, tag: &str) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client.clone());
    for (name, subjects, per_subject) in [
        (format!("C_{tag}"), format!("c{tag}.>"), 100),
        (format!("T_{tag}"), format!("t{tag}.>"), 1),
    ] {
        js.create_stream(stream::Config {
            name,
            subjects: vec![subjects.clone()],
            max_messages_per_subject: per_subject,
            max_age: Duration::from_secs(300),
            allow_direct: true,
            republish: (per_subject > 1).then(|| stream::Republish {
                source: subjects,
                destination: format!("l{tag}.>"),
                headers_only: false,
            }),
            storage: if std::env::var("CEILING_STORAGE").as_deref() == Ok("memory") {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            ..Default::default()
        })
        .await
        .expect("stream");
    }
    (client, js)
}

fn payload() -> Bytes {
    Bytes::from(format!("{{\"p\":\"{}\"}}", "x".repeat(90)))
}

async fn pipelined(url: &str, subjects: usize, run: Duration) -> f64 {
    let (_c, js) = setup(url, "p").await;
    let data = payload();
    let (tx, mut rx) = tokio::sync::mpsc::channel(WINDOW);
    let start = Instant::now();
    let acker = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(ack) = rx.recv().await {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await.expect("ack");
            n += 1;
        }
        n
    });
    let mut i = 0usize;
    while start.elapsed() < run {
        let mut h = HeaderMap::new();
        h.insert("Herald-Prev", "12345");
        h.insert("Herald-Ts", "1700000000000000");
        let m = PublishMessage::build().payload(data.clone()).headers(h);
        let ack = js
            .send_publish(format!("cp.{}", i % subjects), m)
            .await
            .expect("send");
        tx.send(ack).await.expect("acker");
        i += 1;
    }
    drop(tx);
    let n = acker.await.expect("acker");
    n as f64 / start.elapsed().as_secs_f64()
}

async fn chained(url: &str, subjects: usize, run: Duration, tip: bool) -> f64 {
    let tag = if tip { "t" } else { "c" };
    let (client, js) = setup(url, tag).await;
    let data = payload();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..subjects {
        let (js, client, data, done) = (js.clone(), client.clone(), data.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = 0u64;
            let subject = format!("c{tag}.{s}");
            while start.elapsed() < run {
                let mut h = HeaderMap::new();
                h.insert("Herald-Prev", last.to_string());
                h.insert("Nats-Expected-Last-Subject-Sequence", last.to_string());
                h.insert("Herald-Ts", "1700000000000000");
                let m = PublishMessage::build().payload(data.clone()).headers(h);
                let ack = js
                    .send_publish(subject.clone(), m)
                    .await
                    .expect("send")
                    .await
                    .expect("ack");
                last = ack.sequence;
                if tip {
                    client
                        .publish(format!("t{tag}.{s}"), last.to_string().into())
                        .await
                        .expect("tip");
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let subjects: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let run = Duration::from_secs(secs);
    let server = NatsServer::start();
    let url = server.url();
    let storage = std::env::var("CEILING_STORAGE").unwrap_or_else(|_| "file".into());
    println!("{subjects} subjects, {secs} s per shape, {storage} storage, 100-byte payloads");
    println!(
        "pipelined ({WINDOW} in flight): {:.0}/s",
        pipelined(&url, subjects, run).await
    );
    println!(
        "chained (1 in flight per subject): {:.0}/s",
        chained(&url, subjects, run, false).await
    );
    println!(
        "chained+tip (a stored tip write each): {:.0}/s",
        chained(&url, subjects, run, true).await
    );
}
