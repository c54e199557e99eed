//! Measures what application integration costs (docs/benchmarks.md, "Client publishes and
//! hooks"): the round trip of a client publish over the WebSocket (`publish` command to its
//! `published` answer, and to the message reaching a subscriber on the same node or, over
//! NATS, on another node), of `POST /publish`, and how many WebSocket connections per second
//! a node accepts with no connect hook and with one against the `hook_backend` process (HTTP
//! and gRPC).
//!
//! ```sh
//! cargo build --release -p herald -p herald-e2e --bins && \
//!   HERALD_BIN=target/release/herald cargo run --release -p herald-e2e --example integration_costs
//! ```
//!
//! Prints one JSON line per measurement. A measurement, not a test: nothing is asserted.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use herald_e2e::{
    Node, WsClient,
    cluster::{nats_node, start_nats},
    post,
};
use serde_json::{Value, json};

const ROUNDS: usize = 2000;
const CONNECTS: usize = 2000;
const CONNECT_CONCURRENCY: usize = 8;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(what: &str, mut ms: Vec<f64>) {
    let n = ms.len();
    println!(
        "{}",
        json!({"what": what, "n": n, "p50_ms": pct(&mut ms, 0.5), "p99_ms": pct(&mut ms, 0.99), "max_ms": pct(&mut ms, 1.0)})
    );
}

fn config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("herald.toml"),
        "[namespaces.chat]\npublish = true\n",
    )
    .expect("config");
    dir
}

/// `publish` commands one at a time: to the answer, and to the copy a subscriber gets.
async fn ws_round_trips(what: &str, publisher: &Node, reader: &Node) {
    let channel = herald_e2e::channel("chat:rtt");
    let mut sub = WsClient::connect(reader, &format!("channel={channel}")).await;
    sub.expect_type("subscribed").await;
    let mut c = WsClient::connect(publisher, "").await;
    let (mut answered, mut delivered) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let t0 = Instant::now();
        c.send_json(json!({"op":"publish","channel":channel,"data":{"i":i},"id":i}))
            .await;
        let v = c.expect_type("published").await;
        answered.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(v["id"], i);
        let m = sub.next_msg().await;
        delivered.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(m.data["i"], i);
    }
    summary(
        &format!("{what}: websocket publish to its answer"),
        answered,
    );
    summary(
        &format!("{what}: websocket publish to a subscriber"),
        delivered,
    );
}

async fn http_round_trips(what: &str, node: &Node) {
    let url = format!("{}/publish", node.http_url());
    let mut ms = Vec::new();
    for i in 0..ROUNDS {
        let t0 = Instant::now();
        let (s, _) = post(
            &url,
            &[],
            &json!({"channel":"chat:http-rtt","data":{"i":i}}).to_string(),
        )
        .await;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(s, 200);
    }
    summary(&format!("{what}: POST /publish"), ms);
}

/// WebSocket connects (handshake to `subscribed`), `CONNECT_CONCURRENCY` at a time.
async fn connect_rate(what: &str, node: &Node) {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONNECT_CONCURRENCY {
        let url = node.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            for _ in 0..CONNECTS / CONNECT_CONCURRENCY {
                let t = Instant::now();
                let mut c =
                    WsClient::connect_url(&format!("{url}?channel=chat:c{w}&token=as:u{w}")).await;
                c.expect_type("subscribed").await;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                c.close().await;
            }
            ms
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = all.len();
    println!(
        "{}",
        json!({"what": format!("{what}: websocket connects"), "n": n, "per_s": n as f64 / secs,
               "p50_ms": pct(&mut all, 0.5), "p99_ms": pct(&mut all, 0.99)})
    );
}

#[tokio::main]
async fn main() {
    let dir = config();
    let conf = dir.path().join("herald.toml").display().to_string();
    let base = [
        ("HERALD_CONFIG", conf.as_str()),
        ("HERALD_CLIENT_PUBLISH_RATE", "1000000"),
    ];

    let node = Node::start(&base).await;
    ws_round_trips("memory broker, one node", &node, &node).await;
    http_round_trips("memory broker, one node", &node).await;
    connect_rate("no connect hook", &node).await;
    drop(node);

    let nats = start_nats();
    let a = nats_node(&nats, "ic-a", &base).await;
    let b = nats_node(&nats, "ic-b", &base).await;
    ws_round_trips("nats, publisher on node a", &a, &a).await;
    ws_round_trips("nats, publisher on node a, subscriber on node b", &a, &b).await;
    http_round_trips("nats", &a).await;
    drop((a, b));

    // target/<profile>/examples/integration_costs -> target/<profile>/hook_backend
    let bin = std::env::var("HOOK_BACKEND").unwrap_or_else(|_| {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
        dir.join("hook_backend").display().to_string()
    });
    let mut backend = Command::new(bin)
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("hook_backend");
    let mut line = String::new();
    BufReader::new(backend.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("addresses");
    let addrs: Value = serde_json::from_str(&line).expect("json");
    for (kind, target) in [
        (
            "http",
            format!("http://{}/herald", addrs["http"].as_str().expect("http")),
        ),
        (
            "grpc",
            format!("grpc://{}", addrs["grpc"].as_str().expect("grpc")),
        ),
    ] {
        let mut env = base.to_vec();
        env.push(("HERALD_HOOKS_TARGET", &target));
        env.push(("HERALD_CONNECT_HOOK", "true"));
        let node = Node::start(&env).await;
        connect_rate(&format!("connect hook over {kind}"), &node).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = backend.kill();
    let _ = backend.wait();
}
