//! SIGTERM drains: connected clients are told to reconnect elsewhere, held polls are
//! answered, and the process exits 0 within the grace period.

use std::time::Duration;

use herald_e2e::{
    Node, SseClient, StatusCode, WsClient, WsEnd, channel, eventually, metric_value, poll,
    poll_cursor, poll_msgs, query, within,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_to_reconnect_and_exits_cleanly() {
    let mut node = Node::start(&[("HERALD_DRAIN_TIMEOUT", "5s")]).await;
    let ch = channel("drain");

    let mut ws = WsClient::connect(&node, "").await;
    ws.subscribe(&[&ch], None).await;
    let mut sse = SseClient::connect(&node, &query(&[&ch], None), &[]).await;
    sse.expect_event("subscribed").await;
    let (_, body) = poll(&node, &query(&[&ch], None)).await;
    let since = poll_cursor(&body);
    let held = {
        let url = format!(
            "{}/poll?{}&wait=30",
            node.http_url(),
            query(&[&ch], Some(&since))
        );
        tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let r = client.get(&url).send().await.expect("held long-poll");
            let status = r.status();
            let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, body)
        })
    };
    // Every client is in: the node holds a WebSocket, an SSE stream and a long-poll.
    eventually(Duration::from_secs(10), "all three clients held", || {
        let node = &node;
        async move {
            let ws = metric_value(node, "herald_connections{protocol=\"websocket\"}").await;
            let sse = metric_value(node, "herald_connections{protocol=\"sse\"}").await;
            let lp = metric_value(node, "herald_connections{protocol=\"longpoll\"}").await;
            // Each has joined the channel's live feed (the long-poll registers first).
            let subs = metric_value(node, "herald_subscriptions").await;
            (ws >= 1.0 && sse >= 1.0 && lp >= 1.0 && subs >= 3.0).then_some(())
        }
    })
    .await;
    assert!(!held.is_finished(), "the long-poll is held");

    node.sigterm();

    // WebSocket: a reconnect frame, then close 1012.
    let (texts, end) = ws.read_to_end(Duration::from_secs(10)).await;
    assert!(
        texts.iter().any(|v| v["type"] == "reconnect"),
        "websocket got a reconnect frame: {texts:?}"
    );
    assert!(
        matches!(end, WsEnd::Close(1012, _)),
        "websocket closed with 1012: {end:?}"
    );

    // SSE: `event: reconnect`, then the stream ends.
    let ev = sse.expect_event("reconnect").await;
    assert_eq!(ev.json()["reason"], "draining", "{ev:?}");
    assert_eq!(
        sse.next_event().await,
        None,
        "the SSE stream ends after reconnect"
    );

    // The held long-poll is answered: 200, nothing new, same cursor.
    let (status, body) = within(Duration::from_secs(10), "the held long-poll", held)
        .await
        .expect("long-poll task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(poll_msgs(&body), [], "{body}");
    assert_eq!(poll_cursor(&body), since, "{body}");

    // Exit 0 within the grace period (5 s drain, asserted within 10 s).
    let status = node.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("the node did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status after drain: {status:?}");
}
