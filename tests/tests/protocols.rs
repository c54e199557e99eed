//! Delivery, resume and gap signalling over each of the four client protocols, against a real
//! node (`HERALD_HISTORY_SIZE=3`, so a gap is easy to provoke).
//!
//! Every test: subscribe to two channels, publish alternately over gRPC, receive everything in
//! publish order; disconnect, publish more, resume from the last cursor and get exactly the
//! missed messages; then resume from a cursor older than the retained history and get the
//! gap signal followed by the retained messages.

use std::time::{Duration, Instant};

use herald_e2e::{
    Msg, Node, Publisher, SseClient, StatusCode, WsClient, assert_messages, channel, cursor, poll,
    poll_cursor, poll_msgs, query,
};
use serde_json::{Value, json};

const HISTORY: &str = "3";

async fn node() -> Node {
    Node::start(&[("HERALD_HISTORY_SIZE", HISTORY)]).await
}

/// Publishes `n` messages alternately to `a` and `b` (starting with `a`), data
/// `{"step": step, "n": i}`.
async fn publish_alternately(
    p: &mut Publisher,
    a: &str,
    b: &str,
    step: &str,
    n: usize,
) -> Vec<Msg> {
    let mut out = Vec::new();
    for i in 0..n {
        let ch = if i % 2 == 0 { a } else { b };
        out.push(p.publish_msg(ch, json!({"step": step, "n": i})).await);
    }
    out
}

/// Publishes 5 messages to `a` and 1 to `b` (so `a` evicts 2 with a history of 3) and
/// returns what a resume from before them should still get: `a`'s last 3 and `b`'s one,
/// in cursor order.
async fn publish_past_history(p: &mut Publisher, a: &str, b: &str) -> Vec<Msg> {
    let mut all = Vec::new();
    all.push(p.publish_msg(b, json!({"step": "gap", "b": 0})).await);
    for i in 0..5 {
        all.push(p.publish_msg(a, json!({"step": "gap", "a": i})).await);
    }
    // b's message and a's last three survive.
    let mut retained = vec![all[0].clone()];
    retained.extend(all[3..].iter().cloned());
    retained
}

fn last_id(msgs: &[Msg]) -> String {
    msgs.last().expect("some messages").id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_delivers_resumes_and_signals_gaps() {
    let node = node().await;
    let mut p = Publisher::connect(&node).await;
    let (a, b) = (channel("ws-a"), channel("ws-b"));

    // Live delivery, in publish order.
    let mut ws = WsClient::connect(&node, "").await;
    let sub = ws.subscribe(&[&a, &b], None).await;
    cursor(sub["cursor"].as_str().expect("subscribed carries a cursor"));
    let live = publish_alternately(&mut p, &a, &b, "live", 6).await;
    let got = ws.next_msgs(live.len()).await;
    assert_messages(&got, &live, "websocket live");
    ws.close().await;

    // Missed while away: exactly those on resume, then live again with no duplicate.
    let missed = publish_alternately(&mut p, &a, &b, "missed", 4).await;
    let mut ws = WsClient::connect(&node, "").await;
    ws.subscribe(&[&a, &b], Some(&last_id(&live))).await;
    let got = ws.next_msgs(missed.len()).await;
    assert_messages(&got, &missed, "websocket resume");
    let sentinel = p.publish_msg(&b, json!("sentinel")).await;
    assert_eq!(
        ws.next_msg().await,
        sentinel,
        "after the resume, the next frame is the next live message (no duplicate)"
    );
    ws.close().await;

    // A cursor older than what `a` retains: gap for `a` first, then what is retained.
    let old = sentinel.id.to_string();
    let retained = publish_past_history(&mut p, &a, &b).await;
    let q = query(&[&a, &b], Some(&old));
    let mut ws = WsClient::connect(&node, &q).await;
    ws.expect_type("subscribed").await;
    let gap = ws.expect_type("gap").await;
    assert_eq!(
        gap["channel"],
        a.as_str(),
        "gap names the evicted channel: {gap}"
    );
    let got = ws.next_msgs(retained.len()).await;
    assert_messages(&got, &retained, "websocket after gap");
    let sentinel = p.publish_msg(&a, json!("after-gap")).await;
    assert_eq!(ws.next_msg().await, sentinel, "live after the gap catch-up");
    ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_resumes_and_signals_gaps() {
    let node = node().await;
    let mut p = Publisher::connect(&node).await;
    let (a, b) = (channel("sse-a"), channel("sse-b"));

    let mut sse = SseClient::connect(&node, &query(&[&a, &b], None), &[]).await;
    let sub = sse.expect_event("subscribed").await;
    assert!(sse.retry.is_some(), "a retry: line precedes the events");
    cursor(sub.json()["cursor"].as_str().expect("subscribed cursor"));
    let live = publish_alternately(&mut p, &a, &b, "live", 6).await;
    let got = sse.next_msgs(live.len()).await;
    assert_messages(&got, &live, "sse live");
    let last = sse.last_id.clone().expect("message events carry ids");
    drop(sse);

    // Resume the way EventSource does: Last-Event-ID, the last id: line seen.
    let missed = publish_alternately(&mut p, &a, &b, "missed", 4).await;
    let mut sse = SseClient::connect(
        &node,
        &query(&[&a, &b], None),
        &[("Last-Event-ID", last.as_str())],
    )
    .await;
    sse.expect_event("subscribed").await;
    let got = sse.next_msgs(missed.len()).await;
    assert_messages(&got, &missed, "sse resume (Last-Event-ID)");
    let sentinel = p.publish_msg(&a, json!("sentinel")).await;
    assert_eq!(sse.next_msg().await, sentinel, "no duplicate after resume");
    drop(sse);

    // Gap, resuming with `since`.
    let old = sentinel.id.to_string();
    let retained = publish_past_history(&mut p, &a, &b).await;
    let mut sse = SseClient::connect(&node, &query(&[&a, &b], Some(&old)), &[]).await;
    sse.expect_event("subscribed").await;
    let gap = sse.expect_event("gap").await;
    assert_eq!(gap.json()["channel"], a.as_str(), "gap event: {gap:?}");
    let got = sse.next_msgs(retained.len()).await;
    assert_messages(&got, &retained, "sse after gap");
    let sentinel = p.publish_msg(&b, json!("after-gap")).await;
    assert_eq!(
        sse.next_msg().await,
        sentinel,
        "live after the gap catch-up"
    );
}

/// Polls `channels` from `since` until `n` messages arrived; returns them and the last cursor.
async fn poll_until(
    node: &Node,
    channels: &[&str],
    mut since: String,
    extra: &str,
    n: usize,
) -> (Vec<Msg>, String) {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages arrived by polling",
            got.len()
        );
        let (status, body) = poll(node, &format!("{}{extra}", query(channels, Some(&since)))).await;
        assert_eq!(status, StatusCode::OK, "poll: {body}");
        assert_eq!(body["gap"], false, "no gap expected: {body}");
        let msgs = poll_msgs(&body);
        let next = poll_cursor(&body);
        match msgs.last() {
            Some(m) => assert_eq!(cursor(&next), m.id, "cursor is the last message id"),
            None => assert_eq!(next, since, "an empty reply keeps the cursor"),
        }
        got.extend(msgs);
        since = next;
    }
    (got, since)
}

/// The shared poll scenario: `extra` is `&wait=5` for long-poll, empty for interval poll.
async fn poll_scenario(prefix: &str, extra: &str) {
    let node = node().await;
    let mut p = Publisher::connect(&node).await;
    let (a, b) = (
        channel(&format!("{prefix}-a")),
        channel(&format!("{prefix}-b")),
    );
    let chans = [a.as_str(), b.as_str()];

    // No since: "from now", the reply carries the current cursor.
    let (status, body) = poll(&node, &query(&chans, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(poll_msgs(&body), [], "from now: nothing yet");
    let start = poll_cursor(&body);

    // Live: a poller runs while the messages are published.
    let poller = {
        let (node_http, chans) = (node.http, [a.clone(), b.clone()]);
        let (start, extra) = (start.clone(), extra.to_owned());
        tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut since = start;
            let mut got: Vec<Msg> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while got.len() < 6 && Instant::now() < deadline {
                let url = format!(
                    "http://{node_http}/poll?{}{extra}",
                    query(&[&chans[0], &chans[1]], Some(&since))
                );
                let r = client.get(&url).send().await.expect("poll");
                assert_eq!(r.status(), 200);
                let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                assert_eq!(body["gap"], false, "{body}");
                got.extend(poll_msgs(&body));
                since = poll_cursor(&body);
                if extra.is_empty() {
                    // Interval polling: let time pass between polls, as a client would.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            got
        })
    };
    let live = publish_alternately(&mut p, &a, &b, "live", 6).await;
    let got = herald_e2e::within(Duration::from_secs(40), "the poller", poller)
        .await
        .expect("poller task");
    assert_messages(&got, &live, &format!("{prefix} live"));

    // Away, then resume from the last cursor: exactly the missed ones.
    let missed = publish_alternately(&mut p, &a, &b, "missed", 4).await;
    let (got, next) = poll_until(&node, &chans, last_id(&live), extra, missed.len()).await;
    assert_messages(&got, &missed, &format!("{prefix} resume"));
    let sentinel = p.publish_msg(&a, json!("sentinel")).await;
    let (got, _) = poll_until(&node, &chans, next, extra, 1).await;
    assert_eq!(
        got,
        std::slice::from_ref(&sentinel),
        "{prefix}: no duplicate after resume"
    );

    // Gap.
    let old = sentinel.id.to_string();
    let retained = publish_past_history(&mut p, &a, &b).await;
    let (status, body) = poll(&node, &format!("{}{extra}", query(&chans, Some(&old)))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["gap"], true, "{prefix}: gap reported: {body}");
    assert_eq!(body["gaps"], json!([a]), "{prefix}: gaps names the channel");
    let got = poll_msgs(&body);
    assert_messages(&got, &retained, &format!("{prefix} after gap"));
    assert_eq!(cursor(&poll_cursor(&body)), retained.last().unwrap().id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_delivers_resumes_and_signals_gaps() {
    poll_scenario("lp", "&wait=5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_poll_delivers_resumes_and_signals_gaps() {
    poll_scenario("ip", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_holds_until_a_message_or_the_wait() {
    let node = Node::start(&[]).await;
    let mut p = Publisher::connect(&node).await;
    let ch = channel("hold");
    let (_, body) = poll(&node, &query(&[&ch], None)).await;
    let head = poll_cursor(&body);

    // Held: started before the publish, answered only after it, with the message.
    let held = {
        let (http, q) = (node.http, query(&[&ch], Some(&head)));
        tokio::spawn(async move {
            let url = format!("http://{http}/poll?{q}&wait=5");
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let r = client.get(&url).send().await.expect("long-poll");
            let status = r.status();
            let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, body, Instant::now())
        })
    };
    // The request is in and has joined the channel's live feed: it is being held.
    herald_e2e::eventually(Duration::from_secs(10), "the long-poll held", || async {
        let v = herald_e2e::metric_value(&node, "herald_subscriptions").await;
        (v >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a wait=5 long-poll answered with nothing to say"
    );
    let publish_started = Instant::now();
    let m = p.publish_msg(&ch, json!({"held": true})).await;
    let (status, body, answered) = herald_e2e::within(Duration::from_secs(10), "held poll", held)
        .await
        .expect("long-poll task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(answered >= publish_started, "answered after the publish");
    assert_eq!(
        poll_msgs(&body),
        std::slice::from_ref(&m),
        "the held poll carries the message"
    );
    assert_eq!(cursor(&poll_cursor(&body)), m.id);

    // Nothing published: wait=1 runs out, empty list, same cursor.
    let since = m.id.to_string();
    let t = Instant::now();
    let (status, body) = poll(&node, &format!("{}&wait=1", query(&[&ch], Some(&since)))).await;
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "returned before wait elapsed"
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(poll_msgs(&body), [], "{body}");
    assert_eq!(poll_cursor(&body), since);
    assert_eq!(body["gap"], false);

    // Interval poll (no wait, and wait=0) answers at once.
    for extra in ["", "&wait=0"] {
        let (status, body) = poll(&node, &format!("{}{extra}", query(&[&ch], Some(&since)))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(poll_msgs(&body), [], "{body}");
        assert_eq!(poll_cursor(&body), since, "{body}");
    }
}
