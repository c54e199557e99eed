//! Bad input on every surface is answered with the documented error, and the node keeps
//! serving: afterwards a fresh subscriber on each protocol still receives a published message.

use std::time::Duration;

use herald_e2e::{
    Message, Node, Publisher, SseClient, StatusCode, WsClient, WsEnd, assert_error, channel,
    cursor, encode, get, poll, poll_cursor, poll_msgs, query,
};
use serde_json::json;

/// Channel names the contract refuses, with a label for failure messages.
fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("256 chars", "a".repeat(256)),
        ("space", "a b".into()),
        ("star", "a*".into()),
        ("gt", "news.>".into()),
        ("non-ascii", "café".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_node_keeps_serving() {
    let node = Node::start(&[("HERALD_MAX_MESSAGE_BYTES", "1024")]).await;
    let mut p = Publisher::connect(&node).await;
    let base = node.http_url();

    // The longest valid name is fine.
    let (status, body) = poll(&node, &format!("channel={}", "a".repeat(255))).await;
    assert_eq!(status, StatusCode::OK, "255-char channel: {body}");

    // Invalid channel names on /sse and /poll: 400 invalid_channel.
    for (label, name) in bad_names() {
        for path in ["sse", "poll"] {
            let url = format!("{base}/{path}?channel={}", encode(&name));
            let (status, _, body) = get(&url, &[]).await;
            let msg = assert_error(
                status,
                &body,
                "invalid_channel",
                &format!("/{path} {label}"),
            );
            assert!(msg.contains("channel"), "/{path} {label}: {msg}");
        }
    }

    // Bad wait / since: 400 with their own codes.
    let ok = channel("ok");
    for (q, code) in [
        (format!("channel={ok}&wait=-1"), "invalid_wait"),
        (format!("channel={ok}&wait=1000"), "invalid_wait"),
        (format!("channel={ok}&since=garbage"), "invalid_cursor"),
    ] {
        let (status, body) = poll(&node, &q).await;
        assert_error(status, &body, code, &format!("/poll?{q}"));
    }
    let (status, _, body) = get(&format!("{base}/sse?channel={ok}&since=garbage"), &[]).await;
    assert_error(status, &body, "invalid_cursor", "/sse since=garbage");
    let (status, _, body) = get(
        &format!("{base}/sse?channel={ok}"),
        &[("Last-Event-ID", "garbage")],
    )
    .await;
    assert_error(
        status,
        &body,
        "invalid_cursor",
        "/sse Last-Event-ID: garbage",
    );

    // gRPC: INVALID_ARGUMENT naming the problem.
    let s = p.try_publish(&ok, "{not json").await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("JSON"),
        "non-JSON data: {}",
        s.message()
    );
    for (label, name) in bad_names() {
        let s = p.try_publish(&name, "1").await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{label}: {s:?}");
        assert!(s.message().contains("channel"), "{label}: {}", s.message());
    }
    let big = serde_json::to_string(&"x".repeat(2000)).unwrap();
    let s = p.try_publish(&ok, big).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("1024") && s.message().contains("limit"),
        "oversized data: {}",
        s.message()
    );

    // WebSocket: every bad command gets an error frame; the connection stays open.
    let mut ws = WsClient::connect(&node, "").await;
    for (label, name) in bad_names() {
        ws.send_json(json!({"op": "subscribe", "channels": [name]}))
            .await;
        let e = ws.expect_type("error").await;
        assert_eq!(e["code"], "invalid_channel", "ws subscribe {label}: {e}");
        ws.ping().await;
    }
    for (label, frame, code) in [
        ("not json", Message::text("this is not json"), "bad_command"),
        (
            "unknown op",
            Message::text(r#"{"op":"jump"}"#),
            "bad_command",
        ),
        (
            "bad since",
            Message::text(format!(
                r#"{{"op":"subscribe","channels":["{ok}"],"since":"x"}}"#
            )),
            "invalid_cursor",
        ),
        (
            "binary",
            Message::binary(b"{\"op\":\"ping\"}".to_vec()),
            "bad_command",
        ),
    ] {
        ws.send(frame).await;
        let e = ws.expect_type("error").await;
        assert_eq!(e["code"], code, "ws {label}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "ws {label}: {e}"
        );
        ws.ping().await;
    }
    // The same connection still subscribes and receives.
    ws.subscribe(&[&ok], None).await;
    let m = p.publish_msg(&ok, json!({"still": "open"})).await;
    assert_eq!(ws.next_msg().await, m);
    ws.close().await;

    // An oversized frame (> 64 KiB) closes the connection with 1009.
    let mut ws = WsClient::connect(&node, "").await;
    ws.ping().await;
    let huge = format!(
        r#"{{"op":"subscribe","channels":["{}"]}}"#,
        "a".repeat(70 << 10)
    );
    let _ = ws.try_send(Message::text(huge)).await;
    let (_, end) = ws.read_to_end(Duration::from_secs(10)).await;
    assert!(
        matches!(end, WsEnd::Close(1009, _)),
        "oversized frame: expected close 1009, got {end:?}"
    );

    // After all that, a fresh subscriber on each protocol still receives a message.
    let fresh = channel("fresh");
    let (_, body) = poll(&node, &query(&[&fresh], None)).await;
    let since = poll_cursor(&body);
    let mut ws = WsClient::connect(&node, "").await;
    ws.subscribe(&[&fresh], None).await;
    let mut sse = SseClient::connect(&node, &query(&[&fresh], None), &[]).await;
    sse.expect_event("subscribed").await;
    let m = p.publish_msg(&fresh, json!({"after": "abuse"})).await;
    assert_eq!(ws.next_msg().await, m, "websocket");
    assert_eq!(sse.next_msg().await, m, "sse");
    for extra in ["&wait=5", ""] {
        let (status, body) =
            poll(&node, &format!("{}{extra}", query(&[&fresh], Some(&since)))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(poll_msgs(&body), std::slice::from_ref(&m), "poll{extra}");
        assert_eq!(cursor(&poll_cursor(&body)), m.id);
    }
}
