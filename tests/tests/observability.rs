//! Observability end to end: a real Prometheus scrapes 2 Herald nodes on a real `nats-server`
//! while WebSocket, SSE, long-poll and poll clients receive messages, and every PromQL
//! expression of the Grafana dashboards and the alert rules is run through its HTTP API; a
//! renamed metric fails here. `promtool check metrics` lints `/metrics`. An OTLP receiver
//! shows one publish producing one connected trace across both nodes.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use herald_e2e::{
    cluster::{NatsServer, nats_node},
    observe::*,
    *,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// `$__rate_interval` for a 1 s scrape interval (Grafana: 4 × scrape interval at least).
const RATE_INTERVAL: &str = "10s";

/// How long metrics may take to show up in Prometheus (scrapes, rate windows filling).
const SETTLE: Duration = Duration::from_secs(90);

/// Keeps a long-poll client waiting on `node` until `stop`; returns how many messages it got.
fn long_poller(
    node: &Node,
    channel: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let (url_node, channel) = (node_handle(node), channel.to_owned());
    tokio::spawn(async move {
        let (mut since, mut n): (Option<String>, usize) = (None, 0);
        while !stop.is_cancelled() {
            let q = format!("{}&wait=2", query(&[&channel], since.as_deref()));
            let (status, body) = poll_url(&url_node, &q).await;
            assert_eq!(status, StatusCode::OK, "long-poll: {body}");
            n += poll_msgs(&body).len();
            since = Some(poll_cursor(&body));
        }
        n
    })
}

/// Interval-polls `node` every 200 ms until `stop`; returns how many messages it got.
fn interval_poller(
    node: &Node,
    channel: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    let (url_node, channel) = (node_handle(node), channel.to_owned());
    tokio::spawn(async move {
        let (mut since, mut n): (Option<String>, usize) = (None, 0);
        while !stop.is_cancelled() {
            let (status, body) = poll_url(&url_node, &query(&[&channel], since.as_deref())).await;
            assert_eq!(status, StatusCode::OK, "poll: {body}");
            n += poll_msgs(&body).len();
            since = Some(poll_cursor(&body));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        n
    })
}

/// What a polling task needs of a node (a `Node` cannot move into a task).
fn node_handle(node: &Node) -> String {
    node.http_url()
}

async fn poll_url(base: &str, q: &str) -> (StatusCode, Value) {
    let url = format!("{base}/poll?{q}");
    let (status, _headers, body) = get(&url, &[]).await;
    (status, body)
}

/// Reads WebSocket messages until `stop`, so its outbox keeps draining.
fn ws_reader(mut ws: WsClient, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            tokio::select! {
                v = ws.next_json_or_end() => match v {
                    Some(_) => n += 1,
                    None => return n,
                },
                () = stop.cancelled() => return n,
            }
        }
    })
}

/// Reads SSE events until `stop`.
fn sse_reader(mut sse: SseClient, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            tokio::select! {
                ev = sse.next_event() => match ev {
                    Some(_) => n += 1,
                    None => return n,
                },
                () = stop.cancelled() => return n,
            }
        }
    })
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("deploy/grafana");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("reading a dashboard");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            out.push((path, v));
        }
    }
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_live_metrics_of_two_nodes_on_nats() {
    let nats = NatsServer::start();
    let n1 = nats_node(&nats, "n1", &[]).await;
    let n2 = nats_node(&nats, "n2", &[]).await;
    let ch = channel("obs");
    let stop = CancellationToken::new();

    // Clients of all four protocols on both nodes.
    let mut readers = Vec::new();
    for node in [&n1, &n2] {
        let mut ws = WsClient::connect(node, &query(&[&ch], None)).await;
        ws.expect_type("subscribed").await;
        readers.push(ws_reader(ws, stop.clone()));
        let sse = SseClient::connect(node, &query(&[&ch], None), &[]).await;
        readers.push(sse_reader(sse, stop.clone()));
        readers.push(long_poller(node, &ch, stop.clone()));
        readers.push(interval_poller(node, &ch, stop.clone()));
    }

    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    let prom = Prometheus::start(&[n1.admin, n2.admin], &[rules]).await;

    // Messages flow through both nodes' gRPC APIs for the rest of the test; one request is
    // refused, so the gRPC error series exist.
    let publishing = {
        let (mut p1, mut p2) = (Publisher::connect(&n1).await, Publisher::connect(&n2).await);
        let bad = p1.try_publish(&ch, "not json").await;
        assert_eq!(
            bad.expect_err("invalid JSON is refused").code(),
            tonic::Code::InvalidArgument
        );
        let (ch, stop) = (ch.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let p = if n.is_multiple_of(2) {
                    &mut p1
                } else {
                    &mut p2
                };
                p.publish(&ch, &json!({ "n": n })).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };

    prom.wait_targets_up(2).await;
    // Every protocol has connected clients and deliveries, as Prometheus sees them.
    for (what, expr) in [
        (
            "connections",
            "sum by (protocol) (herald_connections{job=\"herald\"}) > 0",
        ),
        (
            "deliveries",
            "sum by (protocol) (rate(herald_messages_delivered_total{job=\"herald\"}[10s])) > 0",
        ),
    ] {
        eventually(
            SETTLE,
            &format!("{what} of all 4 protocols in Prometheus"),
            || {
                let prom = &prom;
                async move {
                    let v = prom.query(expr).await.ok()?;
                    let protocols: HashSet<String> = v
                        .iter()
                        .filter_map(|s| s["metric"]["protocol"].as_str().map(str::to_owned))
                        .collect();
                    (protocols.len() == 4).then_some(())
                }
            },
        )
        .await;
    }

    // Every expression of every dashboard parses and returns data.
    let mut exprs: Vec<(String, String)> = Vec::new();
    for (path, dash) in dashboards() {
        let name = path.file_name().map(|f| f.to_string_lossy().into_owned());
        for (place, expr) in dashboard_exprs(&dash) {
            exprs.push((
                format!("{} {place}", name.clone().unwrap_or_default()),
                grafana_subst(&expr, RATE_INTERVAL),
            ));
        }
    }
    assert!(
        exprs.len() >= 20,
        "only {} dashboard expressions",
        exprs.len()
    );

    // Every alert rule was loaded (Prometheus refuses to start on a rule that does not parse),
    // is evaluated without error, and its signal (the expression left of the threshold)
    // returns data on a healthy cluster.
    let loaded = eventually(SETTLE, "alert rules evaluated", || {
        let prom = &prom;
        async move {
            let rules = prom.rules().await;
            (!rules.is_empty() && rules.iter().all(|r| r.2 != "unknown")).then_some(rules)
        }
    })
    .await;
    let names: HashSet<&str> = loaded.iter().map(|r| r.0.as_str()).collect();
    for alert in [
        "HeraldNoReadyNode",
        "HeraldBrokerDown",
        "HeraldDeliveryLatencyHigh",
        "HeraldSlowConsumerStorm",
        "HeraldGrpcErrorRatioHigh",
    ] {
        assert!(names.contains(alert), "alert {alert} missing: {names:?}");
    }
    for (name, expr, health, error) in &loaded {
        assert_eq!(health, "ok", "rule {name} ({expr}): {error}");
        exprs.push((format!("alert {name}"), expr.clone()));
        exprs.push((
            format!("alert {name} signal"),
            alert_signal(expr).to_owned(),
        ));
    }

    // Rate windows fill a few scrapes after start-up: retry empty answers until SETTLE;
    // a query Prometheus rejects fails at once.
    let deadline = std::time::Instant::now() + SETTLE;
    let checked = loop {
        let mut empty = Vec::new();
        for (place, expr) in &exprs {
            match prom.query(expr).await {
                Err(e) => panic!("{place}: Prometheus rejects {expr}: {e}"),
                // An alert expression with its threshold is empty on a healthy cluster;
                // its signal must not be.
                Ok(v)
                    if v.is_empty()
                        && (!place.starts_with("alert ") || place.ends_with(" signal")) =>
                {
                    empty.push(format!("{place}: {expr}"))
                }
                Ok(_) => {}
            }
        }
        if empty.is_empty() {
            break exprs.len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no data after {SETTLE:?} for: {empty:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("{checked} dashboard and alert expressions returned data");

    // `/metrics` of both nodes, after traffic, passes promtool's lint.
    for node in [&n1, &n2] {
        let text = metrics(node).await;
        if let Err(e) = promtool_check_metrics(&text) {
            panic!("{e}\n--- /metrics ---\n{text}");
        }
    }

    stop.cancel();
    let published = within(TIMEOUT, "publisher stops", publishing)
        .await
        .expect("publisher task");
    assert!(published > 0);
    for r in readers {
        within(TIMEOUT, "client stops", r)
            .await
            .expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_is_one_connected_trace_across_both_nodes() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let nats = NatsServer::start();
    let n1 = nats_node(&nats, "n1", &otel).await;
    let n2 = nats_node(&nats, "n2", &otel).await;
    let ch = channel("trace");

    // n1: one WebSocket client. n2: two WebSocket clients and one SSE client, which must
    // make one delivery span per protocol, not one per client.
    let mut ws1 = WsClient::connect(&n1, &query(&[&ch], None)).await;
    ws1.expect_type("subscribed").await;
    let mut ws2a = WsClient::connect(&n2, &query(&[&ch], None)).await;
    ws2a.expect_type("subscribed").await;
    let mut ws2b = WsClient::connect(&n2, &query(&[&ch], None)).await;
    ws2b.expect_type("subscribed").await;
    let mut sse2 = SseClient::connect(&n2, &query(&[&ch], None), &[]).await;
    sse2.expect_event("subscribed").await;

    let mut publisher = Publisher::connect(&n1).await;
    let sent = publisher.publish_msg(&ch, json!({"traced": true})).await;
    for got in [
        ws1.next_msg().await,
        ws2a.next_msg().await,
        ws2b.next_msg().await,
        sse2.next_msg().await,
    ] {
        assert_messages(&[got], std::slice::from_ref(&sent), "traced message");
    }

    // The trace of that publish: rooted at the gRPC server span on n1.
    let want = |spans: &[ReceivedSpan]| -> Option<Vec<ReceivedSpan>> {
        let root = spans
            .iter()
            .find(|s| s.span.name == "herald.v1.Herald/Publish")?;
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id() == root.trace_id())
            .cloned()
            .collect();
        let count = |name: &str, instance: &str| {
            trace
                .iter()
                .filter(|s| s.span.name == name && s.instance == instance)
                .count()
        };
        (count("herald.broker.publish", "n1") == 1
            && count("herald.edge.receive", "n1") == 1
            && count("herald.edge.receive", "n2") == 1
            && count("herald.deliver websocket", "n1") == 1
            && count("herald.deliver websocket", "n2") == 1
            && count("herald.deliver sse", "n2") == 1)
            .then_some(trace)
    };
    let trace = eventually(
        Duration::from_secs(30),
        "the publish's spans at the receiver",
        || {
            let spans = receiver.spans();
            let got = want(&spans);
            async move { got }
        },
    )
    .await;

    // One connected tree: a single root, every other span's parent is in the trace.
    let ids: HashMap<String, &ReceivedSpan> = trace.iter().map(|s| (s.span_id(), s)).collect();
    let roots: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.parent_id().is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span: {trace:#?}");
    assert_eq!(roots[0].span.name, "herald.v1.Herald/Publish");
    assert_eq!(roots[0].instance, "n1");
    for s in &trace {
        if !s.parent_id().is_empty() {
            assert!(
                ids.contains_key(&s.parent_id()),
                "{} on {} has a parent outside the trace: {trace:#?}",
                s.span.name,
                s.instance
            );
        }
    }
    let parent_name = |s: &ReceivedSpan| ids[&s.parent_id()].span.name.clone();
    let instances: HashSet<&str> = trace.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(instances, HashSet::from(["n1", "n2"]), "spans both nodes");
    for s in &trace {
        match s.span.name.as_str() {
            "herald.broker.publish" => assert_eq!(parent_name(s), "herald.v1.Herald/Publish"),
            "herald.edge.receive" => assert_eq!(parent_name(s), "herald.broker.publish"),
            n if n.starts_with("herald.deliver ") => {
                assert_eq!(parent_name(s), "herald.edge.receive");
                assert_eq!(
                    ids[&s.parent_id()].instance,
                    s.instance,
                    "delivery under its own node's receive span"
                );
            }
            _ => {}
        }
    }
    let ws_n2 = trace
        .iter()
        .find(|s| s.span.name == "herald.deliver websocket" && s.instance == "n2")
        .expect("checked above");
    assert_eq!(ws_n2.attr("subscribers").as_deref(), Some("2"));

    // Log lines inside those spans carry the trace id.
    let trace_id = roots[0].trace_id();
    eventually(TIMEOUT, "the trace id in n2's log", || {
        let found = n2.log().contains(&format!("trace_id={trace_id}"));
        async move { found.then_some(()) }
    })
    .await;
}
