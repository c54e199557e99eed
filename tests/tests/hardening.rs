//! Production hardening, end to end with the real binary (and a real nats-server):
//!
//! - secure by default: without API keys the control plane listens on loopback only; an
//!   explicit non-loopback address needs a key or `HERALD_API_INSECURE=true`;
//! - up before the broker: `/healthz` at once, `/readyz` 503 with a reason, ready within 2 s
//!   of NATS appearing;
//! - limits from the OS: past the descriptor-derived connection limit new clients get 503
//!   while health, metrics and gRPC keep answering, and freed slots serve new clients;
//! - trusted proxies: the per-IP rate applies to the forwarded client, and only behind a
//!   trusted proxy.

use std::time::{Duration, Instant};

use herald_e2e::{
    Node, Publisher, SseClient, StatusCode, TIMEOUT, WsClient,
    cluster::{self, start_nats},
    eventually,
    harden::{Launch, admin_get, connect_from, exchange, health, in_netns, listening},
    metric_value, query, within,
};
use serde_json::json;

fn env<'a>(pairs: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// A non-loopback address put on the namespace's `lo` (TEST-NET-1, never routed).
const OUTSIDE: &str = "192.0.2.77";

async fn in_namespace(extra: &[(&str, &str)]) -> Node {
    let node = Launch {
        env: env(extra),
        netns: Some(vec![OUTSIDE]),
        ..Default::default()
    }
    .start()
    .await
    .unwrap_or_else(|(s, log)| panic!("node exited ({s}):\n{log}"));
    let pid = node.pid();
    eventually(TIMEOUT, "all four ports listening", || async move {
        let ports: Vec<u16> = listening(pid).iter().map(|a| a.port()).collect();
        [8080, 50051, 8081, 9464]
            .iter()
            .all(|p| ports.contains(p))
            .then_some(())
    })
    .await;
    node
}

#[tokio::test]
async fn without_keys_the_control_plane_stays_on_this_machine() {
    // The quick start: `herald serve` with nothing set, here in its own network namespace
    // (so the default ports are free) that also has a non-loopback address.
    let node = in_namespace(&[]).await;
    let l = listening(node.pid());
    assert!(
        l.contains(&"127.0.0.1:50051".parse().unwrap()),
        "gRPC on loopback: {l:?}"
    );
    assert!(
        !l.iter().any(|a| a.port() == 50051 && !a.ip().is_loopback()),
        "gRPC on no other address: {l:?}"
    );
    assert!(
        l.contains(&"127.0.0.1:8081".parse().unwrap())
            && !l.iter().any(|a| a.port() == 8081 && !a.ip().is_loopback()),
        "the HTTP/JSON API on loopback only: {l:?}"
    );
    assert!(
        l.contains(&"0.0.0.0:8080".parse().unwrap()),
        "clients on every address: {l:?}"
    );
    assert!(
        node.log().contains("listens on loopback only"),
        "{}",
        node.log()
    );
    let (ok, out) = in_netns(node.pid(), &["publish", "news", r#"{"text":"hello"}"#], &[]);
    assert!(ok && out.contains("cursor"), "publish over loopback: {out}");
    let outside = format!("http://{OUTSIDE}:50051");
    let (ok, out) = in_netns(
        node.pid(),
        &["publish", "news", "{}"],
        &[("HERALD_GRPC_URL", &outside)],
    );
    assert!(!ok, "the API must not answer on {OUTSIDE}: {out}");
    drop(node);

    // Asked for a non-loopback address without a key: refused at start-up, with the fix.
    let (status, log) = Launch {
        env: env(&[("HERALD_GRPC_ADDR", "0.0.0.0:0")]),
        ..Default::default()
    }
    .start()
    .await
    .map(|_| ())
    .expect_err("a keyless API on 0.0.0.0 must not start");
    assert!(!status.success());
    assert!(
        log.contains("HERALD_API_INSECURE") && log.contains("HERALD_API_KEYS"),
        "{log}"
    );

    // Explicitly insecure: served on every address, no key needed.
    let node = in_namespace(&[("HERALD_API_INSECURE", "true")]).await;
    assert!(listening(node.pid()).contains(&"0.0.0.0:50051".parse().unwrap()));
    assert!(listening(node.pid()).contains(&"0.0.0.0:8081".parse().unwrap()));
    let (ok, out) = in_netns(
        node.pid(),
        &["publish", "news", "{}"],
        &[("HERALD_GRPC_URL", &outside)],
    );
    assert!(ok, "insecure API on {OUTSIDE}: {out}");
    drop(node);

    // With a key: every address, and every RPC needs the key.
    let key = "hardening-key-0123456789abcdef";
    let node = in_namespace(&[("HERALD_API_KEYS", key)]).await;
    assert!(listening(node.pid()).contains(&"0.0.0.0:50051".parse().unwrap()));
    assert!(listening(node.pid()).contains(&"0.0.0.0:8081".parse().unwrap()));
    let (ok, out) = in_netns(
        node.pid(),
        &["publish", "news", "{}"],
        &[("HERALD_GRPC_URL", &outside)],
    );
    assert!(
        !ok && out.to_lowercase().contains("api key"),
        "no key: {out}"
    );
    let (ok, out) = in_netns(
        node.pid(),
        &["publish", "news", "{}"],
        &[("HERALD_GRPC_URL", &outside), ("HERALD_API_KEY", key)],
    );
    assert!(ok, "with the key: {out}");
}

#[tokio::test]
async fn a_node_started_before_nats_serves_health_then_becomes_ready() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    // A nats-server whose port and store exist, but which is not running yet.
    let mut nats = tokio::task::spawn_blocking(start_nats).await.unwrap();
    nats.kill();
    let url = nats.url();
    let started = Instant::now();
    let node = Launch {
        env: env(&[
            ("HERALD_BROKER", "nats"),
            ("HERALD_NATS_URL", &url),
            ("HERALD_NATS_STORAGE", "memory"),
        ]),
        ..Default::default()
    }
    .start()
    .await
    .unwrap_or_else(|(s, log)| panic!("node exited ({s}):\n{log}"));
    let healthy_after = started.elapsed();
    assert!(
        healthy_after < Duration::from_secs(5),
        "/healthz took {healthy_after:?}"
    );

    // Not ready, and it says why.
    let (status, body) = admin_get(&node, "/readyz").await.expect("/readyz answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["broker"], "connecting", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("NATS") && reason.contains(&url), "{v}");
    assert_eq!(
        metric_value(&node, "herald_broker_connected").await,
        0.0,
        "metrics answer while waiting"
    );
    // gRPC answers: health NOT_SERVING, a publish UNAVAILABLE.
    let mut health_client = HealthClient::new(cluster::grpc_channel(&node).await);
    let s = health_client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("gRPC health answers")
        .into_inner()
        .status;
    assert_eq!(s, ServingStatus::NotServing as i32);
    let mut p = Publisher::connect(&node).await;
    let e = p.try_publish("news", "{}").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    // Clients are told to come back.
    let (status, _, body) =
        herald_e2e::get(&format!("{}/sse?channel=news", node.http_url()), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "broker_unavailable");
    // Still not ready a few retries later (the backoff is bounded at 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        admin_get(&node, "/readyz").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // NATS appears: ready within 2 s.
    let mut nats = tokio::task::spawn_blocking(move || {
        nats.restart();
        nats
    })
    .await
    .unwrap();
    let up = Instant::now();
    eventually(Duration::from_secs(2), "ready within 2 s of NATS", || {
        let node = &node;
        async move { (admin_get(node, "/readyz").await?.0 == StatusCode::OK).then_some(()) }
    })
    .await;
    let ready_after = up.elapsed();
    let s = health_client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(s, ServingStatus::Serving as i32);

    // Publishes and subscriptions work, on every protocol.
    let ch = herald_e2e::channel("public:late");
    let mut ws = WsClient::connect(&node, "").await;
    ws.subscribe(&[&ch], None).await;
    let mut sse = SseClient::connect(&node, &query(&[&ch], None), &[]).await;
    sse.expect_event("subscribed").await;
    let want = p.publish_msg(&ch, json!({"n": 1})).await;
    assert_eq!(ws.next_msg().await, want);
    assert_eq!(sse.next_msg().await, want);
    eprintln!(
        "measured: /healthz 200 {healthy_after:?} after spawn (NATS down); ready {ready_after:?} after nats-server reported healthy"
    );
    nats.kill();
}

/// The descriptor limit used by the connection-limit test (`HERALD_E2E_NOFILE` overrides, to
/// measure other limits).
fn nofile() -> u64 {
    std::env::var("HERALD_E2E_NOFILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

const WS_HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn past_the_descriptor_limit_clients_get_503_and_the_node_keeps_answering() {
    let limit = nofile();
    let node = Launch {
        nofile: Some(limit),
        ..Default::default()
    }
    .start()
    .await
    .unwrap_or_else(|(s, log)| panic!("node exited ({s}):\n{log}"));
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("file descriptors"))
        .unwrap_or_else(|| panic!("the chosen limit is logged:\n{log}"));
    let capacity: usize = line
        .split("up to ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no client connection count in {line:?}"));
    assert!(
        capacity < limit as usize && capacity > limit as usize / 2,
        "{line}"
    );

    // Fill the node: WebSockets and SSE streams, alternately, on one channel.
    let ch = herald_e2e::channel("public:full");
    let q = query(&[&ch], None);
    let t0 = Instant::now();
    let (mut ws, mut sse) = (Vec::new(), Vec::new());
    for i in 0..capacity {
        if i % 2 == 0 {
            let mut c = WsClient::connect(&node, &q).await;
            c.expect_type("subscribed").await;
            ws.push(c);
        } else {
            let mut c = SseClient::connect(&node, &q, &[]).await;
            c.expect_event("subscribed").await;
            sse.push(c);
        }
    }
    let filled = t0.elapsed();
    // Every further client is refused with 503 too_many_connections, whatever it asks.
    let extra = 40;
    for i in 0..extra {
        let mut s = connect_from("127.0.0.1", node.http).await;
        let request = match i % 3 {
            0 => WS_HANDSHAKE.to_owned(),
            1 => format!("GET /sse?{q} HTTP/1.1\r\nHost: t\r\n\r\n"),
            _ => format!("GET /poll?{q} HTTP/1.1\r\nHost: t\r\n\r\n"),
        };
        let (status, text) = exchange(&mut s, &request, TIMEOUT).await;
        assert_eq!(status, 503, "extra client {i}: {text}");
        assert!(text.contains("too_many_connections"), "{text}");
        assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");
    }
    // Health, readiness, metrics and gRPC keep answering.
    assert_eq!(health(&node).await, Some(StatusCode::OK));
    assert_eq!(admin_get(&node, "/readyz").await.unwrap().0, StatusCode::OK);
    let refused = metric_value(
        &node,
        "herald_requests_refused_total{reason=\"too_many_connections\"}",
    )
    .await;
    assert!(refused >= extra as f64, "refusals counted: {refused}");
    let open_fds = metric_value(&node, "process_open_fds").await;
    assert!(open_fds < limit as f64, "{open_fds} descriptors open");
    let mut p = Publisher::connect(&node).await;
    let want = p.publish_msg(&ch, json!({"full": true})).await;
    let mut stats = cluster::control(&node, None).await;
    let s = within(
        TIMEOUT,
        "Stats",
        stats.stats(herald_proto::v1::StatsRequest {}),
    )
    .await
    .expect("Stats answers")
    .into_inner();
    assert!(!s.nodes.is_empty());
    // Held clients still receive.
    assert_eq!(ws[0].next_msg().await, want);
    assert_eq!(ws.last_mut().unwrap().next_msg().await, want);
    assert_eq!(sse[0].next_msg().await, want);

    // Clients leave: new ones are served at once.
    for c in ws.drain(..10) {
        c.close().await;
    }
    drop(sse.drain(..10));
    let t1 = Instant::now();
    for _ in 0..20 {
        eventually(TIMEOUT, "a freed slot serves a new client", || {
            let node = &node;
            let q = &q;
            async move {
                let mut s = connect_from("127.0.0.1", node.http).await;
                let (status, _) = exchange(
                    &mut s,
                    &format!("GET /poll?{q} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
                    TIMEOUT,
                )
                .await;
                (status == 200).then_some(())
            }
        })
        .await;
    }
    let mut fresh = WsClient::connect(&node, &q).await;
    fresh.expect_type("subscribed").await;
    let want = p.publish_msg(&ch, json!({"after": true})).await;
    assert_eq!(fresh.next_msg().await, want);
    let log = node.log();
    assert!(!log.contains("accept failed"), "{log}");
    assert!(
        log.contains("client connection limit reached"),
        "the limit is logged: {log}"
    );
    eprintln!(
        "measured: RLIMIT_NOFILE {limit}: {capacity} client connections held (filled in {filled:?}), {extra} more refused with 503; /healthz, /readyz, /metrics, gRPC Publish and Stats answered at the limit ({open_fds} descriptors open); 20 new clients served {:?} after 20 left",
        t1.elapsed()
    );
}

#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let node = Launch {
        nofile: Some(2048),
        nofile_soft: Some(256),
        ..Default::default()
    }
    .start()
    .await
    .unwrap_or_else(|(s, log)| panic!("node exited ({s}):\n{log}"));
    let log = node.log();
    assert!(
        log.contains("soft limit 2048 (was 256); 102 kept for admin, gRPC, NATS and files; up to 1946 client connections"),
        "{log}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["2048", "2048"], "{line}");
    // Too low to leave room for clients: a clear start-up error.
    let (status, log) = Launch {
        nofile: Some(60),
        ..Default::default()
    }
    .start()
    .await
    .map(|_| ())
    .expect_err("60 descriptors are too few");
    assert!(!status.success());
    assert!(
        log.contains("RLIMIT_NOFILE") && log.contains("HERALD_FD_RESERVE"),
        "{log}"
    );
}

/// `count` requests, each on its own connection from `source`, with extra header lines.
async fn statuses(
    node: &Node,
    source: &str,
    count: usize,
    request: impl Fn(usize) -> String,
) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..count {
        let mut s = connect_from(source, node.http).await;
        out.push(exchange(&mut s, &request(i), TIMEOUT).await.0);
    }
    out
}

fn tally(statuses: &[u16], ok: u16) -> (usize, usize) {
    (
        statuses.iter().filter(|s| **s == ok).count(),
        statuses.iter().filter(|s| **s == 429).count(),
    )
}

#[tokio::test]
async fn behind_trusted_proxies_the_rate_limit_applies_per_real_client() {
    // Rate 2/s, burst 4; only 127.0.0.3 is a proxy.
    let node = Launch {
        env: env(&[
            ("HERALD_CONNECTION_RATE_PER_IP", "2"),
            ("HERALD_TRUSTED_PROXIES", "127.0.0.3/32"),
        ]),
        ..Default::default()
    }
    .start()
    .await
    .unwrap_or_else(|(s, log)| panic!("node exited ({s}):\n{log}"));
    let ch = herald_e2e::channel("public:px");
    let q = query(&[&ch], None);
    let poll = |xff: &str| {
        format!(
            "GET /poll?{q} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        )
    };

    // An untrusted peer cannot spread itself over spoofed addresses.
    let got = statuses(&node, "127.0.0.2", 10, |i| poll(&format!("203.0.113.{i}"))).await;
    let (ok, limited) = tally(&got, 200);
    assert!(
        (4..=5).contains(&ok) && ok + limited == 10,
        "untrusted: {got:?}"
    );

    // Behind the proxy, on one keep-alive connection: client A is limited (whatever it put
    // on the left of the header), client B is not, and the connection stays open.
    let mut conn = connect_from("127.0.0.3", node.http).await;
    let mut got = Vec::new();
    for i in 0..10 {
        let req = format!(
            "GET /poll?{q} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.{i}, 198.51.100.7\r\n\r\n"
        );
        got.push(exchange(&mut conn, &req, TIMEOUT).await.0);
    }
    let (ok, limited) = tally(&got, 200);
    assert!(
        (4..=5).contains(&ok) && ok + limited == 10,
        "client A through the proxy: {got:?}"
    );
    let req = format!("GET /poll?{q} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.8\r\n\r\n");
    let (status, text) = exchange(&mut conn, &req, TIMEOUT).await;
    assert_eq!(status, 200, "client B on the same proxy connection: {text}");

    // The proxy's SSE streams (served on the raw path) and WebSockets, per client.
    let sse = |i: usize| {
        format!(
            "GET /sse?{q} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.{}\r\n\r\n",
            9 + i / 10
        )
    };
    let got = statuses(&node, "127.0.0.3", 20, sse).await;
    let first: Vec<u16> = got[..10].to_vec();
    let second: Vec<u16> = got[10..].to_vec();
    for (who, got) in [("C", &first), ("D", &second)] {
        let (ok, limited) = tally(got, 200);
        assert!(
            (4..=5).contains(&ok) && ok + limited == 10,
            "SSE client {who}: {got:?}"
        );
    }
    let ws =
        |_: usize| WS_HANDSHAKE.replace("\r\n\r\n", "\r\nX-Forwarded-For: 198.51.100.30\r\n\r\n");
    let got = statuses(&node, "127.0.0.3", 10, ws).await;
    let (ok, limited) = tally(&got, 101);
    assert!(
        (4..=5).contains(&ok) && ok + limited == 10,
        "WebSocket client: {got:?}"
    );

    // Poll clients ("presence") are the real clients: two behind the proxy count as two, an
    // untrusted peer with spoofed headers as one.
    let ch2 = herald_e2e::channel("public:presence");
    let q2 = query(&[&ch2], None);
    let series = "herald_connections{protocol=\"poll\"}";
    let before = metric_value(&node, series).await;
    for (source, xff) in [
        ("127.0.0.3", "198.51.100.40"),
        ("127.0.0.3", "198.51.100.41"),
        ("127.0.0.4", "198.51.100.42"),
        ("127.0.0.4", "198.51.100.43"),
    ] {
        let mut s = connect_from(source, node.http).await;
        let req = format!(
            "GET /poll?{q2} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(exchange(&mut s, &req, TIMEOUT).await.0, 200);
    }
    assert_eq!(metric_value(&node, series).await - before, 3.0);

    // Logs name the real client and the proxy; spoofed entries never appear.
    let log = node.log();
    assert!(
        log.contains("client=198.51.100.7") && log.contains("proxy=127.0.0.3"),
        "{log}"
    );
    assert!(!log.contains("client=6.6.6."), "{log}");
    assert!(!log.contains("client=203.0.113."), "{log}");
    assert!(log.contains("client=127.0.0.2"), "{log}");
}

#[tokio::test]
async fn the_forwarded_header_when_the_proxies_use_it() {
    let node = Launch {
        env: env(&[
            ("HERALD_CONNECTION_RATE_PER_IP", "2"),
            ("HERALD_TRUSTED_PROXIES", "127.0.0.0/30"),
            ("HERALD_FORWARDED_HEADER", "forwarded"),
        ]),
        ..Default::default()
    }
    .start()
    .await
    .unwrap_or_else(|(s, log)| panic!("node exited ({s}):\n{log}"));
    let ch = herald_e2e::channel("public:fwd");
    let q = query(&[&ch], None);
    // X-Forwarded-For is not read: varying it does not help client 198.51.100.20.
    let got = statuses(&node, "127.0.0.3", 10, |i| {
        format!(
            "GET /poll?{q} HTTP/1.1\r\nHost: t\r\nForwarded: for=6.6.6.{i}, for=198.51.100.20;proto=https, for=127.0.0.2\r\nX-Forwarded-For: 203.0.113.{i}\r\nConnection: close\r\n\r\n"
        )
    })
    .await;
    let (ok, limited) = tally(&got, 200);
    assert!((4..=5).contains(&ok) && ok + limited == 10, "{got:?}");
    let got = statuses(&node, "127.0.0.3", 1, |_| {
        format!("GET /poll?{q} HTTP/1.1\r\nHost: t\r\nForwarded: for=\"[2001:db8::1]:443\"\r\nConnection: close\r\n\r\n")
    })
    .await;
    assert_eq!(got, [200], "another client");
    assert!(
        node.log().contains("client=198.51.100.20"),
        "{}",
        node.log()
    );
}
