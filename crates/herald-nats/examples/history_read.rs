//! Measures history reads on a real nats-server (file storage): direct gets only (the read
//! before batching) against the batched read `NatsBroker::history` does now.
//!
//! ```text
//! cargo run --release -p herald-nats --example history_read [messages]
//! ```
//!
//! Publishes `messages` (default 20,000) to one channel, then as many again to a channel that
//! alternates with another one, and prints for each: the first page of 500 from the oldest
//! message, every message in pages of 1000, the first page of 500 from later starting points,
//! and short tails (a page of up to 1000 when only a few messages follow the cursor). Figures
//! only: nothing is asserted. Needs `/usr/sbin/nats-server`.

use std::time::{Duration, Instant};

use herald_core::{
    Broker, ChannelName, Cursor, HistoryLimits, HistoryPage, HistoryQuery, Payload, PublishRequest,
};
use herald_nats::{HistoryWay, NatsBroker, NatsBrokerConfig, StorageKind, testing::NatsServer};

const RUNS: usize = 3;

fn name(way: HistoryWay) -> &'static str {
    match way {
        HistoryWay::DirectGet => "direct gets",
        HistoryWay::Batched => "batched",
        HistoryWay::Unfiltered => "unfiltered",
    }
}

async fn read(
    b: &NatsBroker,
    way: HistoryWay,
    c: &ChannelName,
    after: u64,
    limit: usize,
) -> HistoryPage {
    let q = HistoryQuery {
        after: Cursor(after),
        limit,
    };
    b.history_by(c, q, way).await.expect("history read")
}

async fn publish(b: &NatsBroker, c: &ChannelName, i: usize) -> u64 {
    let json = format!(r#"{{"n":{i},"text":"a message of about eighty bytes, like a chat line"}}"#);
    b.publish(PublishRequest {
        channel: c.clone(),
        data: Payload::from_json(json, 1 << 20).expect("json"),
        idempotency_key: None,
    })
    .await
    .expect("publish")
    .cursor
    .0
}

/// Smallest and median of `RUNS` timings of `f`.
async fn time<F, Fut>(mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut all = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        f().await;
        all.push(t.elapsed());
    }
    all.sort();
    (all[0], all[RUNS / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Prints the figures for channel `c`, whose messages are at sequences `seqs`.
async fn measure(b: &NatsBroker, c: &ChannelName, seqs: &[u64]) {
    let n = seqs.len();
    for way in [HistoryWay::DirectGet, HistoryWay::Batched] {
        let (min, med) = time(|| async {
            let p = read(b, way, c, 0, 500).await;
            assert_eq!(p.messages.len(), 500.min(n));
        })
        .await;
        println!(
            "  first page of 500, {n} back, {:<11}: min {}, median {}",
            name(way),
            ms(min),
            ms(med)
        );
    }
    for way in [HistoryWay::DirectGet, HistoryWay::Batched] {
        let (min, med) = time(|| async {
            let mut after = 0;
            let mut total = 0;
            loop {
                let p = read(b, way, c, after, 1000).await;
                assert!(!p.gap);
                let Some(last) = p.messages.last() else { break };
                after = last.cursor.0;
                total += p.messages.len();
            }
            assert_eq!(total, n);
        })
        .await;
        println!(
            "  all {n} in pages of 1000,  {:<11}: min {} ({:.0} msg/s), median {} ({:.0} msg/s)",
            name(way),
            ms(min),
            n as f64 / min.as_secs_f64(),
            ms(med),
            n as f64 / med.as_secs_f64()
        );
    }
    let mut line =
        String::from("  first page of 500 from message k (batched; direct in brackets):");
    for k in [n / 8, n / 4, 3 * n / 8, n / 2, 3 * n / 4] {
        let after = seqs[k - 1];
        let (_, direct) = time(|| async {
            read(b, HistoryWay::DirectGet, c, after, 500).await;
        })
        .await;
        let (_, batched) = time(|| async {
            read(b, HistoryWay::Batched, c, after, 500).await;
        })
        .await;
        line += &format!(" k={k}: {} ({})", ms(batched), ms(direct));
    }
    println!("{line}");
    let mut line = String::from("  tail of t messages, limit 1000 (batched; direct in brackets):");
    for t in [1, 4, 8, 9, 16, 32, 128] {
        let after = seqs[n - t - 1];
        let (_, direct) = time(|| async {
            assert_eq!(
                read(b, HistoryWay::DirectGet, c, after, 1000)
                    .await
                    .messages
                    .len(),
                t
            );
        })
        .await;
        let (_, batched) = time(|| async {
            assert_eq!(
                read(b, HistoryWay::Batched, c, after, 1000)
                    .await
                    .messages
                    .len(),
                t
            );
        })
        .await;
        line += &format!(" t={t}: {} ({})", ms(batched), ms(direct));
    }
    println!("{line}");
    println!("  consumers so far: {:?}", b.history_stats());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("a number of messages"))
        .unwrap_or(20_000);
    let server = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats-server");
    let broker = NatsBroker::connect(NatsBrokerConfig {
        urls: vec![server.url()],
        history: HistoryLimits {
            max_messages: n,
            max_age: Duration::from_secs(3600),
        },
        storage: StorageKind::File,
        ..Default::default()
    })
    .await
    .expect("connect");

    let one = ChannelName::new("bench.one").expect("name");
    let t = Instant::now();
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        seqs.push(publish(&broker, &one, i).await);
    }
    println!(
        "one channel: {n} messages published in {:.1} s (file storage)",
        t.elapsed().as_secs_f64()
    );
    measure(&broker, &one, &seqs).await;

    let mixed = ChannelName::new("bench.mixed").expect("name");
    let other = ChannelName::new("bench.other").expect("name");
    let t = Instant::now();
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        seqs.push(publish(&broker, &mixed, i).await);
        publish(&broker, &other, i).await;
    }
    println!(
        "two channels alternating: {n} messages each published in {:.1} s; read one of them",
        t.elapsed().as_secs_f64()
    );
    measure(&broker, &mixed, &seqs).await;
}
