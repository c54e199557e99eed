//! The admin metrics a dashboard relies on, and CORS on `/sse` and `/poll`.

use std::time::{Duration, Instant};

use herald_e2e::{
    Node, Publisher, SseClient, StatusCode, WsClient, channel, eventually, get, metric,
    metric_value, metrics, query,
};
use serde_json::json;

const PROTOCOLS: [&str; 4] = ["websocket", "sse", "longpoll", "poll"];

fn connections(protocol: &str) -> String {
    format!("herald_connections{{protocol=\"{protocol}\"}}")
}

/// Waits until `series` has the value `want`.
async fn until_value(node: &Node, series: &str, want: f64) {
    eventually(
        Duration::from_secs(10),
        &format!("{series} == {want}"),
        || async { (metric_value(node, series).await == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauges_follow_clients() {
    let node = Node::start(&[]).await;

    // Every protocol series exists from start-up, at 0.
    let text = metrics(&node).await;
    for p in PROTOCOLS {
        assert_eq!(
            metric(&text, &connections(p)),
            Some(0.0),
            "{} at start-up in:\n{text}",
            connections(p)
        );
        let slow = format!("herald_slow_consumer_disconnects_total{{protocol=\"{p}\"}}");
        assert!(metric(&text, &slow).is_some(), "{slow} missing");
    }

    // One WebSocket: the gauge is 1 while it is open, 0 after.
    let ch = channel("gauge");
    let mut ws = WsClient::connect(&node, "").await;
    ws.subscribe(&[&ch], None).await;
    until_value(&node, &connections("websocket"), 1.0).await;
    ws.close().await;
    until_value(&node, &connections("websocket"), 0.0).await;

    // One SSE stream likewise.
    let mut sse = SseClient::connect(&node, &query(&[&ch], None), &[]).await;
    sse.expect_event("subscribed").await;
    until_value(&node, &connections("sse"), 1.0).await;
    drop(sse);
    // The node notices the SSE client left when it next writes to it.
    let mut p = Publisher::connect(&node).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(&node, &connections("sse")).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the sse gauge did not return to 0"
        );
        p.publish(&ch, &json!("tick")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One long-poll client (one address, one channel set) counts as one connection while
    // its request is held.
    let lp = channel("gauge-lp");
    let (_, body) = herald_e2e::poll(&node, &query(&[&lp], None)).await;
    let since = herald_e2e::poll_cursor(&body);
    let url = format!(
        "{}/poll?{}&wait=3",
        node.http_url(),
        query(&[&lp], Some(&since))
    );
    let held = tokio::spawn(async move { get(&url, &[]).await.0 });
    // Held: it has joined the channel's live feed (the only subscription now).
    eventually(Duration::from_secs(10), "the long-poll held", || async {
        (metric_value(&node, "herald_subscriptions").await >= 1.0).then_some(())
    })
    .await;
    assert!(!held.is_finished(), "the long-poll is held");
    assert_eq!(
        metric_value(&node, &connections("longpoll")).await,
        1.0,
        "one held long-poll from one client is one connection"
    );
    assert_eq!(held.await.expect("long-poll task"), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_any_origin_by_default() {
    let node = Node::start(&[]).await;
    let ch = channel("cors");
    let origin = ("Origin", "https://app.example");
    let (status, headers, _) = get(
        &format!("{}/poll?{}", node.http_url(), query(&[&ch], None)),
        &[origin],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers.contains_key("access-control-allow-origin"),
        "/poll allow-origin: {headers:?}"
    );
    let sse = SseClient::connect(&node, &query(&[&ch], None), &[origin]).await;
    assert!(
        sse.headers.contains_key("access-control-allow-origin"),
        "/sse allow-origin: {:?}",
        sse.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origin_list_is_enforced() {
    let node = Node::start(&[("HERALD_CORS_ORIGINS", "https://ok.example")]).await;
    let ch = channel("cors");
    let url = format!("{}/poll?{}", node.http_url(), query(&[&ch], None));

    let (status, headers, _) = get(&url, &[("Origin", "https://ok.example")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://ok.example"),
        "listed origin: {headers:?}"
    );

    let (status, headers, _) = get(&url, &[("Origin", "https://evil.example")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "unlisted origin must get no allow-origin: {headers:?}"
    );
    let sse = SseClient::connect(
        &node,
        &query(&[&ch], None),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert!(
        !sse.headers.contains_key("access-control-allow-origin"),
        "/sse, unlisted origin: {:?}",
        sse.headers
    );
}

/// A poll without `Origin` (a server-side client, a native app) skips the CORS layer's
/// per-request work on the raw poll path, with the headers the layer would have added read
/// off the layer at start-up. Its answer must carry the same CORS headers as the router's
/// `/poll`, which answers a poll that follows another request on a keep-alive connection: for
/// the default (any origin) and for an origin list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_without_origin_gets_the_cors_layers_headers_on_both_paths() {
    use herald_e2e::http1::{Answer, Conn};
    fn cors_headers(a: &Answer) -> Vec<(String, String)> {
        let mut h: Vec<_> = a
            .headers
            .iter()
            .filter(|(n, _)| n == "vary" || n.starts_with("access-control-"))
            .cloned()
            .collect();
        h.sort();
        h
    }
    for (env, allow_origin) in [
        (vec![], Some("*")),
        (vec![("HERALD_CORS_ORIGINS", "https://ok.example")], None),
    ] {
        let node = Node::start(&env).await;
        let target = format!("/poll?{}", query(&[&channel("cors-fast")], None));

        let mut raw = Conn::open(node.http).await;
        let fast = raw.request(&target).await;
        assert_eq!(fast.status, 200, "{fast:?}");

        let mut routed = Conn::open(node.http).await;
        let other = routed.request("/no-such-endpoint").await;
        assert_eq!(other.status, 404, "served by the router: {other:?}");
        let layered = routed.request(&target).await;
        assert_eq!(layered.status, 200, "{layered:?}");

        let (fast, layered) = (cors_headers(&fast), cors_headers(&layered));
        assert!(
            fast.iter()
                .any(|(n, v)| n == "vary" && v.contains("origin")),
            "{env:?}: the answer varies by origin: {fast:?}"
        );
        assert_eq!(
            fast.iter()
                .find(|(n, _)| n == "access-control-allow-origin")
                .map(|(_, v)| v.as_str()),
            allow_origin,
            "{env:?}: {fast:?}"
        );
        assert_eq!(fast, layered, "{env:?}: raw path against the router's");
    }
}
