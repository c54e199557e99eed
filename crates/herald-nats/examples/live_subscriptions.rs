//! What per-channel live subscriptions cost: an edge node holds one core NATS subscription per
//! channel with local interest (`NatsBroker::subscribe`), so 10,000 or 100,000 channels on a node
//! mean as many subscriptions on the server and as many feed tasks in the node.
//!
//! ```text
//! cargo run --release -p herald-nats --example live_subscriptions \
//!     [single|cluster] [per-channel|wildcard] [COUNT...]
//! ```
//!
//! (Default: every combination, 10,000 and 100,000.) This process's RSS growth is meaningful only for the
//! first measurement of a process (the allocator keeps what earlier ones freed): run one mode and
//! one count per process for that figure.
//!
//! For each count and way of subscribing (`LiveInterest`), on a fresh single nats-server (file
//! storage) and then on a fresh 3-server cluster (the broker on server 0): subscribes COUNT channels 256 at a time (each returns after
//! the server registered the interest, as the edge needs); prints the time, nats-server RSS and
//! CPU, this process's RSS, and on the cluster how long until the other servers know every
//! subscription (route interest propagation, from `/subsz`). Then checks delivery on a sample
//! of channels, churns (drops and re-subscribes channels, 64 at a time, for 5 s) and drops them
//! all. Figures only: nothing is asserted. Needs `/usr/sbin/nats-server`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use herald_core::{Broker, ChannelName, LiveEvent, Payload, PublishRequest, Subscription};
use herald_nats::{
    LiveInterest, NatsBroker, NatsBrokerConfig, StorageKind,
    testing::{NatsCluster, NatsServer},
};

/// Subscriptions in flight at once while subscribing (the edge opens connections ~256 at a time).
const IN_FLIGHT: usize = 256;
/// Subscriptions in flight while churning.
const CHURN_IN_FLIGHT: usize = 64;
const CHURN_FOR: Duration = Duration::from_secs(5);

fn proc_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resident set, KiB.
fn rss_kb(pid: Option<u32>) -> u64 {
    match pid {
        Some(p) => proc_field(&format!("/proc/{p}/status"), "VmRSS:"),
        None => proc_field("/proc/self/status", "VmRSS:"),
    }
}

/// utime + stime, seconds.
fn cpu(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// `num_subscriptions` from a server's `/subsz` (its own clients' and its routes' interest).
fn server_subs(monitor: u16) -> u64 {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, monitor)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /subsz HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["num_subscriptions"].as_u64())
        .unwrap_or(0)
}

fn channel(run: &str, i: usize) -> ChannelName {
    ChannelName::new(&format!("live-{run}-{i}")).expect("channel name")
}

/// Subscribes every channel, `IN_FLIGHT` at a time; the subscriptions come back in `names`'
/// order (failures left out and counted).
async fn subscribe_all(b: &NatsBroker, names: Vec<ChannelName>) -> (Vec<Subscription>, usize) {
    let results: Vec<_> = stream::iter(names)
        .map(|c| async move { b.subscribe(&c).await })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    (results.into_iter().flatten().collect(), failed)
}

struct Servers {
    /// Pid and monitor port of each server; the broker talks to the first.
    nodes: Vec<(Option<u32>, u16)>,
    url: String,
}

fn mb(kb: i64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

async fn measure(count: usize, servers: &Servers, label: &str, live_interest: LiveInterest) {
    let config = NatsBrokerConfig {
        urls: vec![servers.url.clone()],
        storage: StorageKind::File,
        live_interest,
        ..Default::default()
    };
    // Subscriptions each server holds for this node once all are subscribed.
    let on_server = match live_interest {
        LiveInterest::PerChannel => count as u64,
        LiveInterest::Wildcard => 1,
    };
    let label = format!("{label}, {live_interest:?}");
    let broker = NatsBroker::connect(config).await.expect("connect");
    let run = format!("{}", std::process::id());
    let rss = || -> Vec<i64> {
        servers
            .nodes
            .iter()
            .map(|(p, _)| rss_kb(*p) as i64)
            .collect()
    };
    let cpus = || -> f64 { servers.nodes.iter().map(|(p, _)| cpu(*p)).sum() };
    let base_subs: Vec<u64> = servers.nodes.iter().map(|(_, m)| server_subs(*m)).collect();
    let (rss0, me0, cpu0, mycpu0) = (rss(), rss_kb(None) as i64, cpus(), cpu(None));

    let t = Instant::now();
    let names: Vec<ChannelName> = (0..count).map(|i| channel(&run, i)).collect();
    let (mut subs, failed) = subscribe_all(&broker, names).await;
    let took = t.elapsed();
    // Until every server knows every subscription (the others learn them over routes).
    let mut propagated = Vec::new();
    for (i, (_, monitor)) in servers.nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while server_subs(*monitor) < base_subs[i] + on_server && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        propagated.push(t.elapsed());
    }
    let (cpu1, mycpu1) = (cpus(), cpu(None));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, me1) = (rss(), rss_kb(None) as i64);
    let per = |a: i64, b: i64| (b - a) as f64 * 1024.0 / count as f64;
    println!(
        "[{label}] {count} subscriptions ({failed} failed): {:.2} s ({:.0}/s); every server knows them after {}",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        propagated
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    for (i, (a, b)) in rss0.iter().zip(&rss1).enumerate() {
        println!(
            "    nats-server {i}: RSS {} -> {} (+{:.0} B per subscription)",
            mb(*a),
            mb(*b),
            per(*a, *b)
        );
    }
    println!(
        "    nats-server CPU {:.2} s ({:.1} µs per subscription); this process RSS {} -> {} (+{:.0} B per subscription), CPU {:.2} s ({:.1} µs each)",
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e6 / count as f64,
        mb(me0),
        mb(me1),
        per(me0, me1),
        mycpu1 - mycpu0,
        (mycpu1 - mycpu0) * 1e6 / count as f64,
    );

    // Delivery on a sample (only meaningful when none failed: then subs[i] is channel i).
    let sample = 200.min(subs.len());
    let stride = subs.len() / sample.max(1);
    let t = Instant::now();
    let mut got = 0;
    for i in 0..sample {
        broker
            .publish(PublishRequest {
                channel: channel(&run, i * stride),
                data: Payload::from_json("{\"x\":1}".to_owned(), 1024).expect("json"),
                idempotency_key: None,
            })
            .await
            .expect("publish");
    }
    for i in 0..sample {
        let next = tokio::time::timeout(Duration::from_secs(5), subs[i * stride].next()).await;
        if let Ok(Some(LiveEvent::Message(_))) = next {
            got += 1;
        }
    }
    println!(
        "    delivery check: {got} of {sample} sampled channels got their message ({:.2} s)",
        t.elapsed().as_secs_f64()
    );

    // Churn: drop the oldest subscription, subscribe a new channel, CHURN_IN_FLIGHT at a time.
    let (cpu_c0, mycpu_c0) = (cpus(), cpu(None));
    let t = Instant::now();
    let mut next = count;
    let mut churned = 0usize;
    while t.elapsed() < CHURN_FOR {
        let batch: Vec<ChannelName> = (next..next + CHURN_IN_FLIGHT)
            .map(|i| channel(&run, i))
            .collect();
        next += CHURN_IN_FLIGHT;
        let dropped = subs.len().min(CHURN_IN_FLIGHT);
        subs.drain(..dropped);
        let (fresh, _) = subscribe_all(&broker, batch).await;
        churned += fresh.len();
        subs.extend(fresh);
    }
    let secs = t.elapsed().as_secs_f64();
    let (cpu_c1, mycpu_c1) = (cpus(), cpu(None));
    println!(
        "    churn: {:.0} unsubscribe+subscribe pairs/s for {secs:.1} s; nats-server CPU {:.1} µs, this process {:.1} µs per pair",
        churned as f64 / secs,
        (cpu_c1 - cpu_c0) * 1e6 / churned.max(1) as f64,
        (mycpu_c1 - mycpu_c0) * 1e6 / churned.max(1) as f64,
    );

    // Drop them all: until every server has forgotten them.
    let t = Instant::now();
    drop(subs);
    for (i, (_, monitor)) in servers.nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let left = u64::from(live_interest == LiveInterest::Wildcard);
        while server_subs(*monitor) > base_subs[i] + left && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!(
        "    all dropped and forgotten by every server after {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |word: &str| args.iter().any(|a| a == word);
    let servers_modes: Vec<&str> = match (has("single"), has("cluster")) {
        (true, false) => vec!["single"],
        (false, true) => vec!["cluster"],
        _ => vec!["single", "cluster"],
    };
    let interests = match (has("per-channel"), has("wildcard")) {
        (true, false) => vec![LiveInterest::PerChannel],
        (false, true) => vec![LiveInterest::Wildcard],
        _ => vec![LiveInterest::PerChannel, LiveInterest::Wildcard],
    };
    let counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    for &count in &counts {
        for &interest in &interests {
            if servers_modes.contains(&"single") {
                let server = tokio::task::spawn_blocking(NatsServer::start)
                    .await
                    .expect("server");
                let servers = Servers {
                    nodes: vec![(server.pid(), server.monitor_port())],
                    url: server.url(),
                };
                measure(count, &servers, "1 server", interest).await;
            }
            if servers_modes.contains(&"cluster") {
                let cluster = tokio::task::spawn_blocking(NatsCluster::start)
                    .await
                    .expect("cluster");
                let servers = Servers {
                    nodes: cluster
                        .nodes
                        .iter()
                        .map(|n| (n.pid(), n.monitor_port()))
                        .collect(),
                    url: cluster.nodes[0].url(),
                };
                measure(count, &servers, "3-server cluster", interest).await;
            }
        }
    }
}
