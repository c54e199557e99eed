//! The NATS backbone end to end: several real `herald serve` processes on real `nats-server`
//! processes, driven by real clients. A message published on any node reaches subscribers on
//! every node, a client resumes on any node, and NATS outages neither crash nor hang a node.

use std::time::Duration;

use herald_e2e::*;
use herald_nats::testing::{NatsCluster, NatsServer};
use serde_json::{Value, json};

/// Starts a Herald node on the NATS at `urls` with an id and extra settings.
async fn nats_node(urls: &str, id: &str, extra: &[(&str, &str)]) -> Node {
    let mut env = vec![
        ("HERALD_BROKER", "nats"),
        ("HERALD_NATS_URL", urls),
        ("HERALD_NODE_ID", id),
    ];
    env.extend_from_slice(extra);
    Node::start(&env).await
}

/// Long-polls `node` from `since` until `n` messages arrived; returns them.
async fn long_poll_until(node: &Node, channels: &[&str], since: &str, n: usize) -> Vec<Msg> {
    let mut got = Vec::new();
    let mut cursor = since.to_owned();
    within(
        Duration::from_secs(30),
        "long-poll collects every message",
        async {
            while got.len() < n {
                let (status, body) =
                    poll(node, &format!("{}&wait=5", query(channels, Some(&cursor)))).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["gap"], false, "{body}");
                got.extend(poll_msgs(&body));
                cursor = poll_cursor(&body);
            }
        },
    )
    .await;
    got
}

/// Interval-polls `node` from `since` until `n` messages arrived.
async fn interval_poll_until(node: &Node, channels: &[&str], since: &str, n: usize) -> Vec<Msg> {
    let mut got = Vec::new();
    let mut cursor = since.to_owned();
    within(
        Duration::from_secs(30),
        "interval poll collects every message",
        async {
            while got.len() < n {
                let (status, body) = poll(node, &query(channels, Some(&cursor))).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["gap"], false, "{body}");
                got.extend(poll_msgs(&body));
                cursor = poll_cursor(&body);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    got
}

fn kill9(node: &Node) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &node.pid().to_string()])
        .status()
        .expect("running kill -KILL");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_node_reaches_every_protocol_on_the_others() {
    publish_reaches_every_protocol(["per-channel"; 3]).await;
}

/// The same with live interest as one wildcard subscription on some nodes
/// (`HERALD_NATS_LIVE_INTEREST=wildcard`), next to a node subscribing per channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_wildcard_live_interest_deliver_the_same() {
    publish_reaches_every_protocol(["wildcard", "wildcard", "per-channel"]).await;
}

async fn publish_reaches_every_protocol(interest: [&str; 3]) {
    let nats = NatsServer::start();
    let url = nats.url();
    let mode = |i: usize| [("HERALD_NATS_LIVE_INTEREST", interest[i])];
    let n1 = nats_node(&url, "n1", &mode(0)).await;
    let n2 = nats_node(&url, "n2", &mode(1)).await;
    let n3 = nats_node(&url, "n3", &mode(2)).await;
    let ch = channel("fanout");
    let chs = [ch.as_str()];

    let mut ws = WsClient::connect(&n2, "").await;
    let sub = ws.subscribe(&chs, None).await;
    let start = sub["cursor"]
        .as_str()
        .expect("subscribed cursor")
        .to_owned();
    let mut sse = SseClient::connect(&n3, &query(&chs, None), &[]).await;
    sse.expect_event("subscribed").await;

    let mut publisher = Publisher::connect(&n1).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(
            publisher
                .publish_msg(&ch, json!({"i": i, "from": "n1"}))
                .await,
        );
    }
    assert_messages(&ws.next_msgs(sent.len()).await, &sent, "websocket on n2");
    assert_messages(&sse.next_msgs(sent.len()).await, &sent, "sse on n3");
    let lp = long_poll_until(&n2, &chs, &start, sent.len()).await;
    assert_messages(&lp, &sent, "long-poll on n2");
    let ip = interval_poll_until(&n3, &chs, &start, sent.len()).await;
    assert_messages(&ip, &sent, "interval poll on n3");

    // Exactly once: nothing more arrives on the held connections.
    ws.ping().await;
    let (status, body) = poll(&n3, &query(&chs, Some(&sent[19].id.to_string()))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(poll_msgs(&body).is_empty(), "no repeat: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_with_exactly_the_missed_messages() {
    let nats = NatsServer::start();
    let url = nats.url();
    let n1 = nats_node(&url, "n1", &[]).await;
    let n2 = nats_node(&url, "n2", &[]).await;
    let ch = channel("failover");
    let chs = [ch.as_str()];

    let mut ws = WsClient::connect(&n2, &query(&chs, None)).await;
    ws.expect_type("subscribed").await;
    let mut sse = SseClient::connect(&n2, &query(&chs, None), &[]).await;
    sse.expect_event("subscribed").await;

    let mut publisher = Publisher::connect(&n1).await;
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(publisher.publish_msg(&ch, json!({"before": i})).await);
    }
    assert_messages(&ws.next_msgs(5).await, &before, "websocket before the kill");
    let sse_seen = sse.next_msgs(5).await;
    assert_messages(&sse_seen, &before, "sse before the kill");

    kill9(&n2);
    let mut missed = Vec::new();
    for i in 0..7 {
        missed.push(publisher.publish_msg(&ch, json!({"missed": i})).await);
    }
    let last = before[4].id.to_string();

    let mut ws = WsClient::connect(&n1, "").await;
    ws.subscribe(&chs, Some(&last)).await;
    assert_messages(
        &ws.next_msgs(missed.len()).await,
        &missed,
        "websocket resumed on n1",
    );
    ws.ping().await; // nothing else queued before the pong: no duplicate

    let mut sse = SseClient::connect(&n1, &query(&chs, None), &[("Last-Event-ID", &last)]).await;
    sse.expect_event("subscribed").await;
    assert_messages(
        &sse.next_msgs(missed.len()).await,
        &missed,
        "sse resumed on n1",
    );

    let (status, body) = poll(&n1, &query(&chs, Some(&last))).await;
    assert_eq!(status, StatusCode::OK);
    assert_messages(&poll_msgs(&body), &missed, "poll resumed on n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_fails_fast_keeps_clients_and_recovers_by_itself() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let n1 = nats_node(&url, "n1", &[]).await;
    let n2 = nats_node(&url, "n2", &[]).await;
    let ch = channel("outage");
    let chs = [ch.as_str()];
    let mut ws = WsClient::connect(&n2, &query(&chs, None)).await;
    ws.expect_type("subscribed").await;
    let mut publisher = Publisher::connect(&n1).await;
    let first = publisher.publish_msg(&ch, json!({"n": 1})).await;
    assert_messages(
        &ws.next_msgs(1).await,
        std::slice::from_ref(&first),
        "before the outage",
    );

    nats.kill();
    let ready = |node: &Node| {
        let url = format!("{}/readyz", node.admin_url());
        async move { Some(get(&url, &[]).await.0) }
    };
    eventually(TIMEOUT, "readyz turns false on both nodes", || async {
        (ready(&n1).await == Some(StatusCode::SERVICE_UNAVAILABLE)
            && ready(&n2).await == Some(StatusCode::SERVICE_UNAVAILABLE))
        .then_some(())
    })
    .await;
    // Publishes are refused promptly (the harness bounds each call by TIMEOUT) with
    // UNAVAILABLE, for as long as NATS is away (about 5 s here).
    let outage = tokio::time::Instant::now();
    let mut refused = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        let err = publisher
            .try_publish(&ch, json!({"during": refused}).to_string())
            .await
            .expect_err("a publish while NATS is down must fail");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        refused += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused >= 3);
    ws.ping().await; // the client is still connected and served

    nats.restart();
    eventually(
        Duration::from_secs(30),
        "readyz true again on both nodes",
        || async {
            (ready(&n1).await == Some(StatusCode::OK) && ready(&n2).await == Some(StatusCode::OK))
                .then_some(())
        },
    )
    .await;
    let after = publisher.publish_msg(&ch, json!({"n": 2})).await;
    // The subscriber gets the new message without reconnecting, and none of the refused ones.
    let got = ws.next_msgs(1).await;
    assert_messages(&got, std::slice::from_ref(&after), "after the outage");
    let (status, body) = poll(&n2, &query(&chs, Some(&first.id.to_string()))).await;
    assert_eq!(status, StatusCode::OK);
    assert_messages(
        &poll_msgs(&body),
        &[after],
        "no ghost of a refused publish in history",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_dies_under_load_and_no_subscriber_misses_or_repeats() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    // Each Herald node prefers a different NATS server, and knows all of them.
    let order = |first: usize| {
        (0..3)
            .map(|i| urls[(first + i) % 3].clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    let replicas = [
        ("HERALD_NATS_REPLICAS", "3"),
        ("HERALD_HISTORY_SIZE", "1000"),
    ];
    let n1 = nats_node(&order(0), "n1", &replicas).await;
    let n2 = nats_node(&order(1), "n2", &replicas).await;
    let n3 = nats_node(&order(2), "n3", &replicas).await;
    let ch = channel("replicas");
    let chs = [ch.as_str()];
    let mut ws = WsClient::connect(&n3, "").await;
    let start = ws.subscribe(&chs, None).await["cursor"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let mut sse_on_2 = SseClient::connect(&n2, &query(&chs, None), &[]).await;
    sse_on_2.expect_event("subscribed").await;

    let mut publisher = Publisher::connect(&n1).await;
    let mut acked: Vec<Msg> = Vec::new();
    // Publish until 150 are acknowledged, killing the server n2 prefers after 50: the nodes
    // fail over to the others and JetStream elects new leaders. Publishes refused meanwhile
    // (UNAVAILABLE) are simply not counted: they are never delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while acked.len() < 150 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing never recovered: {} acked",
            acked.len()
        );
        if acked.len() == 50 {
            cluster.nodes[1].kill(); // idempotent
        }
        let data = json!({"i": i});
        match publisher.try_publish(&ch, data.to_string()).await {
            Ok(c) => acked.push(expected(&ch, &c, &data)),
            Err(e) => eprintln!("publish {i} refused while NATS fails over: {e:?}"),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Every subscriber ends up with exactly the acknowledged messages, in order. A client
    // whose node lost its NATS link may have been told to reconnect: it resumes from its last
    // cursor, as a real client would.
    let ws_got = collect_resuming_ws(&n3, ws, &chs, &start, acked.len()).await;
    assert_messages(&ws_got, &acked, "websocket on n3");
    let lp = long_poll_until(&n2, &chs, &start, acked.len()).await;
    assert_messages(&lp, &acked, "long-poll on n2");
    let sse_got = sse_on_2.next_msgs(acked.len()).await;
    assert_messages(&sse_got, &acked, "sse on n2");
}

/// Reads `n` messages from `ws`; if the connection ends first, reconnects to `node` and
/// resumes from the last cursor seen.
async fn collect_resuming_ws(
    node: &Node,
    mut ws: WsClient,
    chs: &[&str],
    start: &str,
    n: usize,
) -> Vec<Msg> {
    let mut got: Vec<Msg> = Vec::new();
    within(
        Duration::from_secs(60),
        "websocket collects every message",
        async {
            while got.len() < n {
                let v: Value = ws.next_json().await;
                match v["type"].as_str() {
                    Some("message") => got.push(Msg::from_json(&v)),
                    Some("gap") => panic!("no gap expected: {v}"),
                    Some("reconnect") | Some("error") | None => {
                        let last = got.last().map_or(start.to_owned(), |m| m.id.to_string());
                        ws = WsClient::connect(node, "").await;
                        ws.subscribe(chs, Some(&last)).await;
                    }
                    _ => {}
                }
            }
        },
    )
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn related_and_hostile_names_stay_isolated_across_nodes() {
    let nats = NatsServer::start();
    let url = nats.url();
    let n1 = nats_node(&url, "n1", &[]).await;
    let n2 = nats_node(&url, "n2", &[]).await;
    let base = channel("iso");
    // "a.b" vs "a.c" vs "a..b": dots are NATS token separators; the mapping must keep them apart.
    let names: Vec<String> = [
        "a.b", "a.c", "a", "a.b.c", "a..b", ".a", "a.", "a:b", "a=b", "a@b",
    ]
    .iter()
    .map(|n| format!("{base}{n}"))
    .collect();
    let mut clients = Vec::new();
    for n in &names {
        let mut ws = WsClient::connect(&n2, "").await;
        ws.subscribe(&[n.as_str()], None).await;
        clients.push(ws);
    }
    let mut publisher = Publisher::connect(&n1).await;
    let mut sent = Vec::new();
    for n in &names {
        sent.push(publisher.publish_msg(n, json!({"to": n})).await);
    }
    for ((ws, n), m) in clients.iter_mut().zip(&names).zip(&sent) {
        let got = ws.next_msgs(1).await;
        assert_messages(&got, std::slice::from_ref(m), n);
        ws.ping().await; // and nothing else was queued for it
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limits_hold_cluster_wide_and_a_resume_beyond_them_is_a_gap() {
    let nats = NatsServer::start();
    let url = nats.url();
    let limits = [("HERALD_HISTORY_SIZE", "3")];
    let n1 = nats_node(&url, "n1", &limits).await;
    let n2 = nats_node(&url, "n2", &limits).await;
    let ch = channel("limits");
    let chs = [ch.as_str()];
    let mut publisher = Publisher::connect(&n1).await;
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(publisher.publish_msg(&ch, json!({"i": i})).await);
    }
    let first = sent[0].id.to_string();
    let (status, body) = poll(&n2, &query(&chs, Some(&first))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["gap"], true, "messages 2 and 3 were evicted: {body}");
    assert_messages(
        &poll_msgs(&body),
        &sent[3..],
        "the 3 retained, from the other node",
    );

    let mut ws = WsClient::connect(&n2, "").await;
    ws.send_json(json!({"op": "subscribe", "channels": chs, "since": first}))
        .await;
    ws.expect_type("subscribed").await;
    let gap = ws.expect_type("gap").await;
    assert_eq!(gap["channel"], ch.as_str());
    assert_messages(
        &ws.next_msgs(3).await,
        &sent[3..],
        "websocket after the gap",
    );

    let third = sent[2].id.to_string();
    let (_, body) = poll(&n2, &query(&chs, Some(&third))).await;
    assert_eq!(
        body["gap"], false,
        "nothing after the third message was lost: {body}"
    );
}
