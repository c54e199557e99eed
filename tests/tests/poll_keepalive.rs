//! `/poll` on keep-alive connections, as browsers and poll clients use it: several polls
//! (interval and held) on one connection, other requests after a poll on the same socket,
//! a client closing while its poll is held, bad input, and a drain answering held polls.
//! Polls are served outside hyper (`rawpoll`), so these pin down the HTTP/1.1 that path
//! speaks.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_e2e::{
    Node, Publisher, channel, eventually, http1::Conn, metric_value, poll_cursor, poll_msgs, query,
    within,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Waits until `n` long-polls are held (their live-feed subscriptions are in place).
async fn held(node: &Node, n: f64) {
    eventually(
        Duration::from_secs(10),
        "the long-poll held",
        || async move { (metric_value(node, "herald_subscriptions").await == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_and_held_polls_share_one_keep_alive_connection() {
    let node = Node::start(&[]).await;
    let ch = channel("ka");
    let mut p = Publisher::connect(&node).await;
    let mut c = Conn::open(node.http).await;

    let a = c.request(&format!("/poll?{}", query(&[&ch], None))).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(!a.closes(), "a poll keeps the connection: {a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let start = poll_cursor(&a.json());

    let m1 = p.publish_msg(&ch, json!({"n": 1})).await;
    let a = c
        .request(&format!("/poll?{}", query(&[&ch], Some(&start))))
        .await;
    assert_eq!(poll_msgs(&a.json()), [m1], "{a:?}");
    let at = poll_cursor(&a.json());
    for extra in ["", "&wait=0"] {
        let a = c
            .request(&format!("/poll?{}{extra}", query(&[&ch], Some(&at))))
            .await;
        assert_eq!(poll_msgs(&a.json()), [], "nothing new{extra}");
        assert_eq!(poll_cursor(&a.json()), at, "same position{extra}");
    }

    // Held on the same connection, answered by a publish.
    c.get(&format!("/poll?{}&wait=20", query(&[&ch], Some(&at))), "")
        .await;
    held(&node, 1.0).await;
    let m2 = p.publish_msg(&ch, json!({"n": 2})).await;
    let a = c.answer().await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        poll_msgs(&a.json()),
        [m2],
        "the held poll carries the message"
    );
    let at = poll_cursor(&a.json());

    // Held until its wait runs out; then more polls on the same connection.
    let a = c
        .request(&format!("/poll?{}&wait=1", query(&[&ch], Some(&at))))
        .await;
    assert_eq!(poll_msgs(&a.json()), [], "{a:?}");
    assert_eq!(poll_cursor(&a.json()), at);

    // Pipelined: two polls in one write, two answers in order.
    let q = query(&[&ch], Some(&at));
    c.send_raw(
        format!(
            "GET /poll?{q} HTTP/1.1\r\nHost: h\r\n\r\nGET /poll?{q}&wait=1 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let m3 = p.publish_msg(&ch, json!({"n": 3})).await;
    for _ in 0..2 {
        let a = c.answer().await;
        assert_eq!(a.status, 200, "{a:?}");
        let got = poll_msgs(&a.json());
        assert!(
            got.is_empty() || got == [m3.clone()],
            "pipelined poll: {a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_after_a_poll_are_served_on_the_same_connection() {
    let node = Node::start(&[]).await;
    let ch = channel("ka-other");
    let poll_path = format!("/poll?{}", query(&[&ch], None));

    // A CORS preflight after a poll, then polls again (now served by hyper), then a 404.
    let mut c = Conn::open(node.http).await;
    assert_eq!(c.request(&poll_path).await.status, 200);
    c.send_raw(
        format!(
            "OPTIONS {poll_path} HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example\r\n\
             Access-Control-Request-Method: GET\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer().await;
    assert!(a.status < 300, "preflight: {a:?}");
    assert_eq!(a.header("access-control-allow-origin"), Some("*"), "{a:?}");
    let a = c.request(&poll_path).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.json()["cursor"].is_string(), "{a:?}");
    let a = c.request("/no-such-path").await;
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.json()["error"]["code"], "not_found");

    // A poll and a preflight pipelined in one write: the preflight's bytes, read with the
    // poll's head, reach hyper intact.
    let mut c = Conn::open(node.http).await;
    c.send_raw(
        format!(
            "GET {poll_path} HTTP/1.1\r\nHost: h\r\n\r\nOPTIONS {poll_path} HTTP/1.1\r\nHost: h\r\n\
             Origin: https://app.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.answer().await.status, 200);
    let a = c.answer().await;
    assert_eq!(a.header("access-control-allow-origin"), Some("*"), "{a:?}");

    // A poll with a body (odd, but valid HTTP) goes to hyper, which serves it.
    let mut c = Conn::open(node.http).await;
    assert_eq!(c.request(&poll_path).await.status, 200);
    c.send_raw(
        format!("GET {poll_path} HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
    )
    .await;
    let a = c.answer().await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(c.request(&poll_path).await.status, 200);

    // A WebSocket upgrade right after a poll, on the same socket.
    let mut c = Conn::open(node.http).await;
    assert_eq!(c.request(&poll_path).await.status, 200);
    let url = format!("ws://{}/ws", node.http);
    let (mut ws, _) = within(
        Duration::from_secs(10),
        "the WebSocket handshake",
        tokio_tungstenite::client_async(url, c.into_stream()),
    )
    .await
    .expect("WebSocket upgrade after a poll");
    ws.send(Message::text(
        json!({"op": "subscribe", "channels": [ch]}).to_string(),
    ))
    .await
    .unwrap();
    within(Duration::from_secs(10), "subscribed", async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m
                && t.contains("\"subscribed\"")
            {
                return;
            }
        }
        panic!("the WebSocket ended before subscribed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closing_a_held_poll_is_counted_gone() {
    let node = Node::start(&[("HERALD_POLL_CLIENT_WINDOW", "1s")]).await;
    let ch = channel("ka-gone");
    let longpolls = "herald_connections{protocol=\"longpoll\"}";
    let mut c = Conn::open(node.http).await;
    c.get(&format!("/poll?{}&wait=50", query(&[&ch], None)), "")
        .await;
    held(&node, 1.0).await;
    assert_eq!(metric_value(&node, longpolls).await, 1.0);

    drop(c);
    // Well before the 50 s wait: the subscription goes, and the client leaves the gauge
    // once its window passes.
    held(&node, 0.0).await;
    eventually(
        Duration::from_secs(10),
        "the long-poll gauge back to 0",
        || {
            let node = &node;
            async move { (metric_value(node, longpolls).await == 0.0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_polls_get_json_errors_and_good_ones_follow() {
    let node = Node::start(&[]).await;
    let ch = channel("ka-bad");
    let mut c = Conn::open(node.http).await;
    for (target, code) in [
        ("/poll?channel=a%20b".to_owned(), "invalid_channel"),
        (format!("/poll?channel={ch}&wait=61"), "invalid_wait"),
        (format!("/poll?channel={ch}&wait=abc"), "invalid_wait"),
        ("/poll?wait=5".to_owned(), "missing_channel"),
        ("/poll".to_owned(), "missing_channel"),
        (
            format!("/poll?channel={ch}&since=garbage"),
            "invalid_cursor",
        ),
    ] {
        let a = c.request(&target).await;
        assert_eq!(a.status, 400, "{target}: {a:?}");
        assert_eq!(a.json()["error"]["code"], code, "{target}: {a:?}");
        assert!(!a.closes(), "{target}: a refused poll keeps the connection");
    }
    let a = c.request(&format!("/poll?channel={ch}")).await;
    assert_eq!(a.status, 200, "a good poll after bad ones: {a:?}");

    // An oversized head: 431 JSON, then closed; first on a fresh connection, then after a poll.
    let big = format!(
        "GET /poll?channel={ch} HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "x".repeat(20 << 10)
    );
    for after_a_poll in [false, true] {
        let mut c = Conn::open(node.http).await;
        if after_a_poll {
            assert_eq!(c.request(&format!("/poll?channel={ch}")).await.status, 200);
        }
        c.send_raw(big.as_bytes()).await;
        let a = c.answer().await;
        assert_eq!(a.status, 431, "{a:?}");
        assert_eq!(a.json()["error"]["code"], "request_head_too_large");
        c.expect_closed().await;
    }

    // A malformed head: 400 JSON, then closed.
    for after_a_poll in [false, true] {
        let mut c = Conn::open(node.http).await;
        if after_a_poll {
            assert_eq!(c.request(&format!("/poll?channel={ch}")).await.status, 200);
        }
        c.send_raw(format!("GET /poll?channel={ch} HTTP/1.1\r\nno colon\r\n\r\n").as_bytes())
            .await;
        let a = c.answer().await;
        assert_eq!(a.status, 400, "{a:?}");
        assert_eq!(a.json()["error"]["code"], "invalid_request");
        c.expect_closed().await;
    }

    // HTTP/1.0 is answered in kind and closed.
    let mut c = Conn::open(node.http).await;
    c.send_raw(format!("GET /poll?channel={ch} HTTP/1.0\r\n\r\n").as_bytes())
        .await;
    let a = c.answer().await;
    assert!(a.status_line.starts_with("HTTP/1.0 200"), "{a:?}");
    c.expect_closed().await;

    // `Connection: close` is honoured.
    let mut c = Conn::open(node.http).await;
    c.get(&format!("/poll?channel={ch}"), "Connection: close\r\n")
        .await;
    let a = c.answer().await;
    assert!(a.closes(), "{a:?}");
    c.expect_closed().await;
    assert!(
        node.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_held_polls_and_closes_keep_alive_connections() {
    let mut node = Node::start(&[("HERALD_DRAIN_TIMEOUT", "5s")]).await;
    let ch = channel("ka-drain");
    // One connection idle after a poll, one holding a poll it started after another.
    let mut idle = Conn::open(node.http).await;
    assert_eq!(
        idle.request(&format!("/poll?channel={ch}")).await.status,
        200
    );
    let mut c = Conn::open(node.http).await;
    let a = c.request(&format!("/poll?channel={ch}")).await;
    let at = poll_cursor(&a.json());
    c.get(&format!("/poll?{}&wait=50", query(&[&ch], Some(&at))), "")
        .await;
    held(&node, 1.0).await;

    node.sigterm();
    let a = c.answer().await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(poll_msgs(&a.json()), [], "{a:?}");
    assert_eq!(poll_cursor(&a.json()), at, "{a:?}");
    assert!(a.closes(), "a draining node closes after the answer: {a:?}");
    c.expect_closed().await;
    idle.expect_closed().await;
    let status = node.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after drain: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_keep_cors_and_disabled_transports_on_a_keep_alive_connection() {
    let node = Node::start(&[
        ("HERALD_DISABLED_TRANSPORTS", "longpoll"),
        ("HERALD_CORS_ORIGINS", "https://app.example"),
    ])
    .await;
    let ch = channel("ka-cors");
    let mut c = Conn::open(node.http).await;
    for _ in 0..2 {
        c.get(
            &format!("/poll?channel={ch}"),
            "Origin: https://app.example\r\n",
        )
        .await;
        let a = c.answer().await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{a:?}"
        );
        assert!(
            a.header("vary").is_some_and(|v| v.contains("origin")),
            "{a:?}"
        );
        c.get(
            &format!("/poll?channel={ch}"),
            "Origin: https://elsewhere.example\r\n",
        )
        .await;
        let a = c.answer().await;
        assert_eq!(a.header("access-control-allow-origin"), None, "{a:?}");

        let a = c.request(&format!("/poll?channel={ch}&wait=5")).await;
        assert_eq!(a.status, 403, "{a:?}");
        assert_eq!(a.json()["error"]["code"], "transport_disabled", "{a:?}");
        assert!(!a.closes(), "{a:?}");
    }
}
