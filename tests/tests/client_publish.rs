//! Publishes from clients (docs/protocol.md, "Publishing from clients"), end to end: a real
//! `herald serve` on the memory broker and two on a real `nats-server`; WebSocket clients send
//! `publish` commands, SSE and polling clients `POST /publish`, and every accepted message is
//! checked where subscribers read it: live, on another node, and in history.

use std::time::Duration;

use herald_e2e::{
    Msg, Node, SseClient, WsClient, assert_messages,
    cluster::{nats_node, start_nats},
    metric_value, poll, poll_msgs, post,
};
use serde_json::{Value, json};

const SECRET: &str = "client-publish-secret-0123456789abcdef";

/// `chat` takes client publishes; `news` does not; `open` takes them without a token.
fn config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("herald.toml"),
        "[namespaces.chat]\npublish = true\n\n[namespaces.news]\n\n[namespaces.open]\nanonymous = true\n",
    )
    .expect("writing the config");
    dir
}

fn env(dir: &tempfile::TempDir, rate: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "HERALD_CONFIG",
            dir.path().join("herald.toml").display().to_string(),
        ),
        ("HERALD_AUTH_HMAC_SECRET", SECRET.to_owned()),
        ("HERALD_CLIENT_PUBLISH_RATE", rate.to_owned()),
        ("HERALD_CLIENT_PUBLISH_MAX_BYTES", "1024".to_owned()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn token(user: &str, publish: &[&str]) -> String {
    let now = herald_auth::now_secs();
    herald_auth::mint_hs256(
        SECRET.as_bytes(),
        &herald_auth::MintClaims {
            sub: user.into(),
            channels: vec!["*".into()],
            publish: publish.iter().map(|p| (*p).to_owned()).collect(),
            iat: now,
            exp: now + 3600,
            nbf: None,
            iss: None,
            aud: None,
            jti: None,
            info: None,
        },
    )
    .expect("minting a token")
}

async fn ws(node: &Node, channel: &str, token: &str) -> WsClient {
    let mut c = WsClient::connect(node, &format!("channel={channel}&token={token}")).await;
    c.expect_type("subscribed").await;
    c
}

/// Sends a `publish` command and returns the answer that carries its id (messages on the
/// same connection may arrive before it; they are returned too).
async fn ws_publish(c: &mut WsClient, id: &str, channel: &str, data: Value) -> (Value, Vec<Value>) {
    c.send_json(json!({"op": "publish", "id": id, "channel": channel, "data": data}))
        .await;
    let mut others = Vec::new();
    loop {
        let v = c.next_json().await;
        if v["id"] == id && (v["type"] == "published" || v["type"] == "error") {
            return (v, others);
        }
        others.push(v);
    }
}

async fn http_publish(
    node: &Node,
    token: Option<&str>,
    body: &str,
) -> (reqwest::StatusCode, Value) {
    let url = format!("{}/publish", node.http_url());
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    post(&url, &headers, body).await
}

#[tokio::test]
async fn websocket_publishes_follow_the_namespace_the_grant_and_the_limits() {
    let dir = config();
    let env = env(&dir, "1000");
    let node = Node::start(&pairs(&env)).await;
    let alice = token("alice", &["chat:{sub}-*", "chat:lobby"]);
    let mut reader = ws(&node, "chat:lobby", &token("reader", &[])).await;
    let mut c = ws(&node, "chat:lobby", &alice).await;

    // Allowed: answered with the cursor, delivered to every subscriber with that cursor.
    let (ok, _) = ws_publish(&mut c, "r1", "chat:lobby", json!({"text": "hi"})).await;
    assert_eq!(ok["type"], "published", "{ok}");
    assert_eq!(ok["channel"], "chat:lobby");
    let cursor = ok["cursor"].as_str().expect("a cursor").to_owned();
    let got = reader.next_msg().await;
    assert_messages(
        &[got],
        &[herald_e2e::expected(
            "chat:lobby",
            &cursor,
            &json!({"text": "hi"}),
        )],
        "the subscriber's copy",
    );
    // A channel of the grant's `{sub}` pattern, not subscribed: stored all the same.
    let (ok, _) = ws_publish(&mut c, "r2", "chat:alice-notes", json!([1, 2])).await;
    assert_eq!(ok["type"], "published", "{ok}");

    // Refusals carry the request id and a code; the connection stays usable.
    let cases: &[(&str, Value, &str)] = &[
        (
            "chat:bob-notes",
            json!({"op":"publish","channel":"chat:bob-notes","data":1}),
            "publish_forbidden",
        ),
        (
            "news:x",
            json!({"op":"publish","channel":"news:x","data":1}),
            "publish_disabled",
        ),
        (
            "big",
            json!({"op":"publish","channel":"chat:lobby","data":"x".repeat(2000)}),
            "message_too_large",
        ),
        (
            "nodata",
            json!({"op":"publish","channel":"chat:lobby"}),
            "invalid_data",
        ),
        (
            "badname",
            json!({"op":"publish","channel":"chat lobby","data":1}),
            "invalid_channel",
        ),
    ];
    for (id, cmd, code) in cases {
        let mut cmd = cmd.clone();
        cmd["id"] = (*id).into();
        c.send_json(cmd).await;
        let v = c.expect_type("error").await;
        assert_eq!(v["code"], *code, "{id}: {v}");
        assert_eq!(v["id"], *id, "{id}: {v}");
        assert_eq!(v["op"], "publish", "{id}: {v}");
    }
    // A bad id is a bad command (no id to echo).
    c.send_json(json!({"op":"publish","channel":"chat:lobby","data":1,"id":{"x":1}}))
        .await;
    assert_eq!(c.expect_type("error").await["code"], "bad_command");

    // A token without any publish grant, and no token at all.
    let mut reader_only = ws(&node, "chat:lobby", &token("carol", &[])).await;
    let (v, _) = ws_publish(&mut reader_only, "x", "chat:lobby", json!(1)).await;
    assert_eq!(v["code"], "publish_forbidden", "{v}");
    let mut anon = WsClient::connect(&node, "channel=open:a").await;
    anon.expect_type("subscribed").await;
    let (v, _) = ws_publish(&mut anon, "y", "chat:lobby", json!(1)).await;
    assert_eq!(v["code"], "token_required", "{v}");

    // Nothing refused reached the subscriber: the next message it sees is the next accepted.
    let (ok, _) = ws_publish(&mut c, "r3", "chat:lobby", json!("after")).await;
    let next = reader.next_msg().await;
    assert_eq!(next.data, json!("after"));
    assert_eq!(
        next.id,
        herald_e2e::cursor(ok["cursor"].as_str().expect("cursor"))
    );

    let text = herald_e2e::metrics(&node).await;
    assert_eq!(
        herald_e2e::metric(
            &text,
            "herald_client_publishes_total{outcome=\"ok\",transport=\"websocket\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        herald_e2e::metric(
            &text,
            "herald_client_publishes_total{outcome=\"publish_forbidden\",transport=\"websocket\"}"
        ) >= Some(2.0)
    );
}

#[tokio::test]
async fn a_fast_websocket_publisher_is_limited_and_what_passes_keeps_its_order() {
    let dir = config();
    let env = env(&dir, "5");
    let node = Node::start(&pairs(&env)).await;
    let mut reader = ws(&node, "chat:race", &token("reader", &[])).await;
    let mut c = ws(&node, "chat:race", &token("fast", &["chat:*"])).await;
    // 40 publishes at once: the burst (10) passes, the rest is refused, in any interleaving
    // with the answers.
    for i in 0..40 {
        c.send_json(json!({"op":"publish","channel":"chat:race","data":{"n": i},"id": i}))
            .await;
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut answers = 0;
    while answers < 40 {
        let v = c.next_json().await;
        match v["type"].as_str() {
            Some("published") => {
                answers += 1;
                accepted.push((
                    v["id"].as_u64().expect("id"),
                    v["cursor"].as_str().expect("cursor").to_owned(),
                ));
            }
            Some("error") => {
                answers += 1;
                assert_eq!(v["code"], "publish_rate_exceeded", "{v}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        (10..=12).contains(&accepted.len()),
        "accepted {}",
        accepted.len()
    );
    assert_eq!(refused, 40 - accepted.len());
    // Stored in the order sent: cursors grow with the request ids.
    let mut sorted = accepted.clone();
    sorted.sort_by_key(|(id, _)| *id);
    let cursors: Vec<u64> = sorted.iter().map(|(_, c)| herald_e2e::cursor(c)).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{sorted:?}");
    // The subscriber gets exactly those, in that order.
    let got = reader.next_msgs(accepted.len()).await;
    let want: Vec<Msg> = sorted
        .iter()
        .map(|(id, c)| herald_e2e::expected("chat:race", c, &json!({"n": id})))
        .collect();
    assert_messages(&got, &want, "the limited publisher's messages");
    // The rate refills: after a second, publishing works again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (v, _) = ws_publish(&mut c, "later", "chat:race", json!(0)).await;
    assert_eq!(v["type"], "published", "{v}");
}

#[tokio::test]
async fn http_publishes_follow_the_same_rules() {
    let dir = config();
    let env = env(&dir, "3");
    let node = Node::start(&pairs(&env)).await;
    let reader_token = token("reader", &[]);
    let mut sse = SseClient::connect(
        &node,
        &format!("channel=chat:http&token={reader_token}"),
        &[],
    )
    .await;
    sse.expect_event("subscribed").await;
    let dave = token("dave", &["chat:*"]);

    let (status, body) = http_publish(
        &node,
        Some(&dave),
        r#"{"channel":"chat:http","data":{"a":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cursor = body["cursor"].as_str().expect("cursor").to_owned();
    let got = sse.next_msg().await;
    assert_messages(
        &[got],
        &[herald_e2e::expected("chat:http", &cursor, &json!({"a": 1}))],
        "SSE copy",
    );
    // The token may also come in the query, as for /sse.
    let url = format!("{}/publish?token={dave}", node.http_url());
    let (status, body) = post(&url, &[], r#"{"channel":"chat:http","data":2}"#).await;
    assert_eq!(status, 200, "{body}");

    let carol = token("carol", &[]);
    let cases: &[(Option<&str>, &str, u16, &str)] = &[
        (
            None,
            r#"{"channel":"chat:http","data":1}"#,
            401,
            "token_required",
        ),
        (
            Some(&carol),
            r#"{"channel":"chat:http","data":1}"#,
            403,
            "publish_forbidden",
        ),
        (
            Some("not-a-jwt"),
            r#"{"channel":"chat:http","data":1}"#,
            401,
            "token_invalid",
        ),
        (
            Some(&carol),
            r#"{"channel":"news:x","data":1}"#,
            403,
            "publish_disabled",
        ),
        (
            Some(&carol),
            r#"{"channel":"chat:http"}"#,
            400,
            "invalid_data",
        ),
        (
            Some(&carol),
            r#"{"channel":"chat http","data":1}"#,
            400,
            "invalid_channel",
        ),
        (
            Some(&carol),
            r#"{"channel":"chat:http","data":1,"extra":true}"#,
            400,
            "bad_command",
        ),
        (Some(&carol), r#"not json"#, 400, "bad_command"),
    ];
    for (token, body, status, code) in cases {
        let (s, b) = http_publish(&node, *token, body).await;
        assert_eq!(s.as_u16(), *status, "{body}: {b}");
        assert_eq!(b["error"]["code"], *code, "{body}: {b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{b}"
        );
    }
    let big = format!(r#"{{"channel":"chat:http","data":"{}"}}"#, "x".repeat(3000));
    let (s, b) = http_publish(&node, Some(&dave), &big).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["code"], "message_too_large", "{b}");

    // Per user: dave used 2 of his burst of 6 (and 1 on the big one); a few more pass, then 429.
    let mut codes = Vec::new();
    for i in 0..10 {
        let (s, b) = http_publish(
            &node,
            Some(&dave),
            &format!(r#"{{"channel":"chat:http","data":{i}}}"#),
        )
        .await;
        codes.push((
            s.as_u16(),
            b["error"]["code"].as_str().unwrap_or("").to_owned(),
        ));
    }
    assert!(codes.iter().any(|(s, _)| *s == 200), "{codes:?}");
    assert!(
        codes
            .iter()
            .any(|(s, c)| *s == 429 && c == "publish_rate_exceeded"),
        "{codes:?}"
    );
    // The accepted ones are in history like any message: a poll from the start has them all.
    let accepted = 2 + codes.iter().filter(|(s, _)| *s == 200).count();
    let (status, body) = poll(
        &node,
        &format!("channel=chat:http&since=0&token={reader_token}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(poll_msgs(&body).len(), accepted, "{body}");
    assert!(
        metric_value(
            &node,
            "herald_client_publishes_total{outcome=\"ok\",transport=\"http\"}"
        )
        .await
            >= accepted as f64
    );
}

#[tokio::test]
async fn client_publishes_cross_nodes_over_nats_and_resume_like_any_message() {
    let nats = start_nats();
    let dir = config();
    let env = env(&dir, "1000");
    let a = nats_node(&nats, "pub-a", &pairs(&env)).await;
    let b = nats_node(&nats, "pub-b", &pairs(&env)).await;
    let reader_token = token("reader", &[]);
    let channel = herald_e2e::channel("chat:x");
    let mut far =
        SseClient::connect(&b, &format!("channel={channel}&token={reader_token}"), &[]).await;
    far.expect_event("subscribed").await;
    let mut c = ws(&a, &channel, &token("erin", &["chat:*"])).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let data = json!({"i": i});
        let (v, _) = ws_publish(&mut c, &format!("p{i}"), &channel, data.clone()).await;
        assert_eq!(v["type"], "published", "{v}");
        sent.push(herald_e2e::expected(
            &channel,
            v["cursor"].as_str().expect("cursor"),
            &data,
        ));
        if i % 5 == 4 {
            // Some over HTTP to the other node, interleaved.
            let body = json!({"channel": channel, "data": {"http": i}}).to_string();
            let (s, v) = http_publish(&b, Some(&token("erin", &["chat:*"])), &body).await;
            assert_eq!(s, 200, "{v}");
            sent.push(herald_e2e::expected(
                &channel,
                v["cursor"].as_str().expect("cursor"),
                &json!({"http": i}),
            ));
        }
    }
    let got = far.next_msgs(sent.len()).await;
    assert_messages(&got, &sent, "node b's SSE subscriber");
    // Resume on node a from the fifth message: exactly the rest, no gap. Node a may not have
    // heard of node b's last publish yet when the first poll comes: poll on from each reply's
    // cursor, as a client does, until the last cursor.
    let mut from = sent[4].id.to_string();
    let mut got = Vec::new();
    let last = sent.last().expect("sent").id;
    for _ in 0..50 {
        let (status, body) = poll(
            &a,
            &format!("channel={channel}&since={from}&token={reader_token}&wait=2"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["gap"], false, "{body}");
        got.extend(poll_msgs(&body));
        from = body["cursor"].as_str().expect("cursor").to_owned();
        if got.last().is_some_and(|m| m.id >= last) {
            break;
        }
    }
    assert_messages(&got, &sent[5..], "resume on node a");
}

#[tokio::test]
async fn a_publish_rate_above_the_command_flood_limit_is_honoured() {
    // Commands are limited to 50/s (burst 200) against floods; publishes are commands too, so
    // the flood limit follows a higher publish rate instead of closing the connection (1008)
    // of a client that stays within it.
    let dir = config();
    let env = env(&dir, "300");
    let node = Node::start(&pairs(&env)).await;
    let mut c = ws(&node, "chat:fast", &token("quick", &["chat:*"])).await;
    for i in 0..400 {
        let (v, _) = ws_publish(&mut c, &format!("q{i}"), "chat:fast", json!(i)).await;
        assert_eq!(v["type"], "published", "publish {i}: {v}");
    }
}
