//! Client authorization on all four protocols, origin checks, namespaces, and abuse that
//! must stay bounded while well-behaved clients keep being served.
//!
//! Tokens are signed here the way an application's auth service would: HS256 with the
//! node's secret, RS256 and ES256 with the test keys whose public halves the node reads
//! from a JWKS file (`crates/herald-auth/testdata`).

use std::{path::PathBuf, time::Duration};

use base64::Engine;
use herald_e2e::{
    Node, Publisher, SseClient, StatusCode, TIMEOUT, WsClient, WsEnd, channel, encode, get,
    metric_value, poll, poll_cursor, poll_msgs, within,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

const SECRET: &str = "e2e-secret-0123456789abcdef-0123456789";
const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "herald";

fn testdata(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/herald-auth/testdata")
        .join(file)
}

fn now() -> i64 {
    herald_auth::now_secs() as i64
}

/// Claims an application would issue; `patch` edits them before signing.
fn claims(channels: &[&str], patch: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({"sub": "u1", "channels": channels, "iat": now(), "exp": now() + 3600,
        "iss": ISSUER, "aud": AUDIENCE});
    patch(&mut c);
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("signing a test token")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The refusal table: label, token, channel asked for, HTTP status, error code.
fn refusals(
    granted: &str,
    other: &str,
) -> Vec<(&'static str, Option<String>, String, u16, &'static str)> {
    let ok = claims(&[granted], |_| {});
    let rsa_pub = std::fs::read(testdata("rsa.pub.pem")).expect("rsa.pub.pem");
    vec![
        ("no token", None, granted.to_owned(), 401, "token_required"),
        (
            "bad signature",
            Some(sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
                &ok,
            )),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
        (
            "expired",
            Some(hs256(&claims(&[granted], |c| {
                c["exp"] = json!(now() - 3600)
            }))),
            granted.to_owned(),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            Some(hs256(&claims(&[granted], |c| {
                c["nbf"] = json!(now() + 3600)
            }))),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
        (
            "wrong channel",
            Some(hs256(&ok)),
            other.to_owned(),
            403,
            "channel_forbidden",
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(ok.to_string().as_bytes())
            )),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
        (
            "HS256 signed with the RSA public key",
            Some(sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &EncodingKey::from_secret(&rsa_pub),
                &ok,
            )),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
        (
            "wrong issuer",
            Some(hs256(&claims(&[granted], |c| {
                c["iss"] = json!("https://evil.test")
            }))),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
        (
            "wrong audience",
            Some(hs256(&claims(&[granted], |c| c["aud"] = json!("other")))),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
        (
            "garbage",
            Some("not.a.jwt".into()),
            granted.to_owned(),
            401,
            "token_invalid",
        ),
    ]
}

fn check_refusal(label: &str, proto: &str, status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{proto} {label}: status (body {body})");
    assert_eq!(body["error"]["code"], code, "{proto} {label}: body {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{proto} {label}: no message in {body}"
    );
}

async fn auth_node(extra: &[(&str, &str)]) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("herald.toml");
    std::fs::write(
        &cfg,
        "[namespaces.public]\nanonymous = true\n\n[namespaces.short]\nanonymous = true\nhistory_size = 2\n\n[namespaces.brief]\nanonymous = true\nhistory_ttl = \"1s\"\n",
    )
    .expect("writing the config file");
    let jwks = testdata("jwks.json");
    let mut env: Vec<(&str, &str)> = vec![
        ("HERALD_AUTH_HMAC_SECRET", SECRET),
        ("HERALD_AUTH_JWKS_FILE", jwks.to_str().expect("utf-8 path")),
        ("HERALD_AUTH_ISSUER", ISSUER),
        ("HERALD_AUTH_AUDIENCE", AUDIENCE),
        ("HERALD_AUTH_LEEWAY", "0s"),
        ("HERALD_CONFIG", cfg.to_str().expect("utf-8 path")),
    ];
    env.extend_from_slice(extra);
    (Node::start(&env).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_refuses_what_the_token_does_not_grant() {
    let (node, _dir) = auth_node(&[]).await;
    let base = node.http_url();
    let room1 = channel("chat:room1");
    let room2 = channel("chat:room2");
    let granted = room1.clone();
    let mut p = Publisher::connect(&node).await;

    for (label, token, ch, want, code) in refusals(&granted, &room2) {
        let q = format!("channel={}", encode(&ch));
        let tq = token
            .as_ref()
            .map(|t| format!("&token={}", encode(t)))
            .unwrap_or_default();
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();

        // WebSocket: token and channel in the handshake URL; refused before the upgrade.
        match WsClient::try_connect_with(&format!("{}?{q}{tq}", node.ws_url()), &[]).await {
            Ok(_) => panic!("websocket {label}: the handshake was accepted"),
            Err((status, body)) => check_refusal(label, "websocket", status, &body, want, code),
        }
        // WebSocket: token in the Authorization header.
        match WsClient::try_connect_with(&format!("{}?{q}", node.ws_url()), &headers).await {
            Ok(_) => panic!("websocket (header) {label}: accepted"),
            Err((status, body)) => {
                check_refusal(label, "websocket header", status, &body, want, code)
            }
        }
        // SSE with ?token= (EventSource) and with the header.
        let (status, _, body) = get(&format!("{base}/sse?{q}{tq}"), &[]).await;
        check_refusal(label, "sse", status.as_u16(), &body, want, code);
        let (status, _, body) = get(&format!("{base}/sse?{q}"), &headers).await;
        check_refusal(label, "sse header", status.as_u16(), &body, want, code);
        // Interval poll and long-poll with the header, and ?token=.
        for extra in ["", "&wait=5"] {
            let (status, _, body) = get(&format!("{base}/poll?{q}{extra}"), &headers).await;
            check_refusal(
                label,
                &format!("poll{extra}"),
                status.as_u16(),
                &body,
                want,
                code,
            );
            let (status, _, body) = get(&format!("{base}/poll?{q}{extra}{tq}"), &[]).await;
            check_refusal(
                label,
                &format!("poll{extra} ?token"),
                status.as_u16(),
                &body,
                want,
                code,
            );
        }
        // WebSocket: token in the first command, then a subscribe.
        let mut ws = WsClient::connect(&node, "").await;
        if let Some(t) = &token {
            ws.send_json(json!({"op": "auth", "token": t})).await;
            let reply = ws.next_json().await;
            if want == 401 {
                assert_eq!(reply["type"], "error", "ws auth {label}: {reply}");
                assert_eq!(reply["code"], code, "ws auth {label}: {reply}");
            } else {
                assert_eq!(reply["type"], "authenticated", "ws auth {label}: {reply}");
            }
        }
        ws.send_json(json!({"op": "subscribe", "channels": [ch]}))
            .await;
        let reply = ws.next_json().await;
        assert_eq!(reply["type"], "error", "ws subscribe {label}: {reply}");
        let sub_code = if want == 403 {
            "channel_forbidden"
        } else {
            "token_required"
        };
        assert_eq!(reply["code"], sub_code, "ws subscribe {label}: {reply}");
        ws.ping().await; // still open after a refusal
    }

    // Valid tokens of each algorithm are accepted on every protocol and deliver messages.
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(testdata("rsa.pem")).expect("rsa.pem"))
        .expect("rsa key");
    let ec = EncodingKey::from_ec_pem(&std::fs::read(testdata("ec.pem")).expect("ec.pem"))
        .expect("ec key");
    let ok = claims(&["chat:*"], |_| {});
    for (alg, token) in [
        ("HS256", hs256(&ok)),
        ("RS256", sign(Algorithm::RS256, Some("rsa-1"), &rsa, &ok)),
        ("ES256", sign(Algorithm::ES256, None, &ec, &ok)),
    ] {
        let q = format!("channel={}", encode(&granted));
        let bearer = format!("Bearer {token}");
        let mut ws = WsClient::try_connect_with(
            &format!("{}?{q}&token={}", node.ws_url(), encode(&token)),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{alg} websocket refused: {e:?}"));
        ws.expect_type("subscribed").await;
        let mut sse = SseClient::connect(&node, &q, &[("authorization", &bearer)]).await;
        assert_eq!(
            sse.next_event().await.expect("subscribed").event,
            "subscribed"
        );
        let (status, _, start) =
            get(&format!("{base}/poll?{q}"), &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::OK, "{alg} poll: {start}");
        let since = poll_cursor(&start);
        let data = json!({"alg": alg});
        p.publish(&granted, &data).await;
        assert_eq!(ws.next_msg().await.data, data, "{alg} websocket");
        let ev = sse.next_event().await.expect("an SSE message");
        assert_eq!(ev.json()["data"], data, "{alg} sse");
        let (status, _, body) = get(
            &format!(
                "{base}/poll?{q}&since={since}&wait=5&token={}",
                encode(&token)
            ),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{alg} long-poll: {body}");
        assert_eq!(poll_msgs(&body)[0].data, data, "{alg} long-poll");
    }

    // Anonymous clients read the public namespace, and nothing else.
    let public = channel("public:news");
    let (status, body) = poll(&node, &format!("channel={}", encode(&public))).await;
    assert_eq!(status, StatusCode::OK, "anonymous public poll: {body}");
    let (status, body) = poll(&node, &format!("channel={}", encode(&room1))).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "anonymous chat poll: {body}"
    );

    // A client granted room1 only never sees a room2 message, even when it asks.
    let only1 = hs256(&claims(&[&granted], |_| {}));
    let mut ws = WsClient::connect(&node, "").await;
    ws.send_json(json!({"op": "auth", "token": only1})).await;
    ws.expect_type("authenticated").await;
    ws.subscribe(&[&granted], None).await;
    ws.send_json(json!({"op": "subscribe", "channels": [room2]}))
        .await;
    assert_eq!(ws.expect_type("error").await["code"], "channel_forbidden");
    for i in 0..5 {
        p.publish(&room2, &json!({"secret": i})).await;
    }
    let marker = json!({"marker": true});
    p.publish(&granted, &marker).await;
    let m = ws.next_msg().await;
    assert_eq!((m.channel.as_str(), &m.data), (granted.as_str(), &marker));

    // Refusals are counted.
    assert!(
        metric_value(
            &node,
            "herald_requests_refused_total{reason=\"unauthorized\"}"
        )
        .await
            > 0.0
    );
    assert!(metric_value(&node, "herald_requests_refused_total{reason=\"forbidden\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_refresh() {
    let (node, _dir) = auth_node(&[]).await;
    let ch = channel("chat:live");
    let other = channel("chat:other");
    let mut p = Publisher::connect(&node).await;
    let short =
        |secs: i64, chans: &[&str]| hs256(&claims(chans, |c| c["exp"] = json!(now() + secs)));

    // Not refreshed: told and closed with 4001 once the token runs out.
    let mut lapsing = WsClient::connect(&node, "").await;
    lapsing
        .send_json(json!({"op": "auth", "token": short(2, &[&ch])}))
        .await;
    lapsing.expect_type("authenticated").await;
    lapsing.subscribe(&[&ch], None).await;

    // Refreshed before expiry: stays, keeps receiving; a narrower grant drops the channel it
    // no longer covers; a token of another user is refused and changes nothing.
    let mut refreshed = WsClient::connect(&node, "").await;
    refreshed
        .send_json(json!({"op": "auth", "token": short(2, &[&ch, &other])}))
        .await;
    refreshed.expect_type("authenticated").await;
    refreshed.subscribe(&[&ch, &other], None).await;
    let stranger = hs256(&claims(&[&ch], |c| c["sub"] = json!("u2")));
    refreshed
        .send_json(json!({"op": "refresh", "token": stranger}))
        .await;
    let e = refreshed.expect_type("error").await;
    assert_eq!(e["code"], "token_invalid", "{e}");
    refreshed
        .send_json(json!({"op": "refresh", "token": short(3600, &[&ch])}))
        .await;
    let a = refreshed.expect_type("authenticated").await;
    assert_eq!(a["user"], "u1");
    let u = refreshed.expect_type("unsubscribed").await;
    assert_eq!(u["channels"], json!([other]), "{u}");

    // SSE: the stream ends with a token_expired error event.
    let mut sse = SseClient::connect(
        &node,
        &format!(
            "channel={}&token={}",
            encode(&ch),
            encode(&short(2, &[&ch]))
        ),
        &[],
    )
    .await;
    assert_eq!(
        sse.next_event().await.expect("subscribed").event,
        "subscribed"
    );

    let (texts, end) = lapsing.read_to_end(Duration::from_secs(8)).await;
    assert!(
        matches!(&end, WsEnd::Close(4001, _)),
        "lapsed websocket ended with {end:?}"
    );
    assert!(
        texts.iter().any(|t| t["code"] == "token_expired"),
        "no token_expired frame: {texts:?}"
    );
    let mut last = None;
    while let Some(ev) = within(TIMEOUT, "sse end", sse.next_event()).await {
        last = Some(ev);
    }
    let last = last.expect("an event before the end");
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "token_expired");

    // Past the first token's expiry, the refreshed connection still gets messages, and none
    // of the dropped channel.
    p.publish(&other, &json!({"dropped": true})).await;
    let data = json!({"after": "refresh"});
    p.publish(&ch, &data).await;
    let m = refreshed.next_msg().await;
    assert_eq!((m.channel.as_str(), &m.data), (ch.as_str(), &data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_bound_history_and_origins_are_checked() {
    let (node, _dir) = auth_node(&[
        ("HERALD_WS_ORIGINS", "https://app.example"),
        ("HERALD_CORS_ORIGINS", "https://app.example"),
    ])
    .await;
    let mut p = Publisher::connect(&node).await;

    // history_size = 2 in the "short" namespace: a client 5 behind is told of a gap and gets
    // the newest 2; a client 2 behind gets both without a gap.
    let short = channel("short:feed");
    let (_, start) = poll(&node, &format!("channel={}", encode(&short))).await;
    let since = poll_cursor(&start);
    let mut cursors = Vec::new();
    for i in 0..5 {
        cursors.push(p.publish(&short, &json!({"n": i})).await);
    }
    let (status, body) = poll(&node, &format!("channel={}&since={since}", encode(&short))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["gaps"], json!([short]), "{body}");
    let got: Vec<Value> = poll_msgs(&body).into_iter().map(|m| m.data).collect();
    assert_eq!(got, [json!({"n": 3}), json!({"n": 4})]);
    let (_, body) = poll(
        &node,
        &format!("channel={}&since={}", encode(&short), cursors[2]),
    )
    .await;
    assert_eq!(body["gaps"], json!([]), "{body}");
    assert_eq!(poll_msgs(&body).len(), 2);
    let mut ws = WsClient::try_connect_with(
        &format!("{}?channel={}&since={since}", node.ws_url(), encode(&short)),
        &[],
    )
    .await
    .expect("anonymous websocket on a public namespace");
    ws.expect_type("subscribed").await;
    assert_eq!(ws.expect_type("gap").await["channel"], short.as_str());
    assert_eq!(ws.next_msg().await.data, json!({"n": 3}));

    // history_ttl = 1s in the "brief" namespace: after 1.5 s a resume is a gap with nothing
    // retained, while a fresh message is still served.
    let brief = channel("brief:feed");
    let (_, start) = poll(&node, &format!("channel={}", encode(&brief))).await;
    let since = poll_cursor(&start);
    p.publish(&brief, &json!({"old": true})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, body) = poll(&node, &format!("channel={}&since={since}", encode(&brief))).await;
    assert_eq!(body["gaps"], json!([brief]), "{body}");
    assert!(poll_msgs(&body).is_empty(), "{body}");
    let next = poll_cursor(&body);
    p.publish(&brief, &json!({"new": true})).await;
    let (_, body) = poll(&node, &format!("channel={}&since={next}", encode(&brief))).await;
    assert_eq!(body["gaps"], json!([]), "{body}");
    assert_eq!(poll_msgs(&body)[0].data, json!({"new": true}));

    // WebSocket origins: foreign browsers are refused; the app and non-browser clients pass.
    let url = format!("{}?channel={}", node.ws_url(), encode(&short));
    match WsClient::try_connect_with(&url, &[("origin", "https://evil.example")]).await {
        Ok(_) => panic!("a foreign origin opened a WebSocket"),
        Err((status, body)) => check_refusal(
            "evil origin",
            "websocket",
            status,
            &body,
            403,
            "origin_forbidden",
        ),
    }
    assert!(
        WsClient::try_connect_with(&url, &[("origin", "https://app.example")])
            .await
            .is_ok()
    );
    assert!(WsClient::try_connect_with(&url, &[]).await.is_ok());
    // CORS on SSE/poll: only the allowed origin is echoed.
    let q = format!("{}/poll?channel={}", node.http_url(), encode(&short));
    let (_, h, _) = get(&q, &[("origin", "https://evil.example")]).await;
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
    let (_, h, _) = get(&q, &[("origin", "https://app.example")]).await;
    assert_eq!(
        h.get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or("")),
        Some("https://app.example")
    );
    assert!(
        metric_value(
            &node,
            "herald_requests_refused_total{reason=\"origin_forbidden\"}"
        )
        .await
            >= 1.0
    );
}

/// Opens a connection from `source` and sends `request`; returns what the server answered
/// before closing (bounded by `limit`).
async fn raw_exchange(node: &Node, source: &str, request: &[u8], limit: Duration) -> String {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("binding the source address");
    let mut stream = within(TIMEOUT, "connect", socket.connect(node.http))
        .await
        .expect("connecting");
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > 64 << 10 {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket and an SSE subscriber from a well-behaved address both get a fresh message.
async fn still_serving(node: &Node, p: &mut Publisher, what: &str) {
    let ch = channel("public:canary");
    let q = format!("channel={}", encode(&ch));
    let mut ws = WsClient::connect(node, &q).await;
    ws.expect_type("subscribed").await;
    let mut sse = SseClient::connect(node, &q, &[]).await;
    assert_eq!(
        sse.next_event().await.expect("subscribed").event,
        "subscribed"
    );
    let data = json!({"canary": what});
    p.publish(&ch, &data).await;
    assert_eq!(ws.next_msg().await.data, data, "websocket after {what}");
    assert_eq!(
        sse.next_event().await.expect("message").json()["data"],
        data,
        "sse after {what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_stays_bounded_and_others_are_served() {
    let (node, _dir) = auth_node(&[
        ("HERALD_CONNECTION_RATE_PER_IP", "20"),
        ("HERALD_HEADER_READ_TIMEOUT", "2s"),
        ("HERALD_ANONYMOUS", "true"),
    ])
    .await;
    let mut p = Publisher::connect(&node).await;
    let base = node.http_url();

    // 10,000 channels in one query: a 60 KB URL is over the 16 KiB head limit, answered 431
    // before any parsing; 1,000 channels fit the head and are refused as too many, before
    // any name is validated.
    let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
    let many = names(10_000).join(",");
    for path in ["sse", "poll"] {
        let (status, _, _) = get(&format!("{base}/{path}?channel={many}"), &[]).await;
        assert_eq!(
            status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "/{path}"
        );
    }
    let thousand = names(1000).join(",");
    for path in ["sse", "poll"] {
        let (status, _, body) = get(&format!("{base}/{path}?channel={thousand}"), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "/{path}: {body}");
        assert_eq!(body["error"]["code"], "too_many_channels");
    }
    match WsClient::try_connect_with(&format!("{}?channel={thousand}", node.ws_url()), &[]).await {
        Ok(_) => panic!("1,000 channels accepted"),
        Err((status, body)) => {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["error"]["code"], "too_many_channels");
        }
    }
    // Over WebSocket: 5,000 names in a command get an error frame; 10,000 (78 KB) exceed
    // the 64 KiB frame limit and close the socket with 1009.
    let mut ws = WsClient::connect(&node, "").await;
    ws.send_json(json!({"op": "subscribe", "channels": names(5000)}))
        .await;
    assert_eq!(ws.expect_type("error").await["code"], "too_many_channels");
    ws.ping().await;
    // Over the cap in two commands (60 + 60 of 100): refused once, counted once.
    let series = r#"herald_requests_refused_total{reason="too_many_channels"}"#;
    let before = metric_value(&node, series).await;
    ws.subscribe(
        &names(60).iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    )
    .await;
    let more: Vec<String> = (60..120).map(|i| format!("c{i}")).collect();
    ws.send_json(json!({"op": "subscribe", "channels": more}))
        .await;
    assert_eq!(ws.expect_type("error").await["code"], "too_many_channels");
    assert_eq!(
        metric_value(&node, series).await - before,
        1.0,
        "one refusal, counted once"
    );
    ws.send_json(json!({"op": "subscribe", "channels": names(10_000)}))
        .await;
    let (_, end) = ws.read_to_end(TIMEOUT).await;
    assert!(matches!(end, WsEnd::Close(1009, _)), "{end:?}");
    still_serving(&node, &mut p, "10,000 channels").await;

    // Giant headers: 64 KiB of header is answered 431 and the connection closed.
    let giant = format!(
        "GET /poll?channel=a HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let answer = raw_exchange(&node, "127.0.0.1", giant.as_bytes(), TIMEOUT).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "giant header answered {answer:?}"
    );
    still_serving(&node, &mut p, "giant headers").await;

    // Slow handshakes: 200 connections dribbling headers are cut at the header timeout,
    // while others are served meanwhile.
    let mut slow = Vec::new();
    for i in 0..200 {
        let path = if i % 2 == 0 { "sse" } else { "poll?wait=30&" };
        // Spread over addresses so the per-IP connection rate does not turn them away.
        let socket = TcpSocket::new_v4().expect("socket");
        let source = format!("127.0.1.{}:0", i + 1);
        socket.bind(source.parse().expect("addr")).expect("bind");
        let mut s = socket.connect(node.http).await.expect("connect");
        s.write_all(format!("GET /{path}channel=a HTTP/1.1\r\nhost: x\r\n").as_bytes())
            .await
            .expect("partial request");
        slow.push(s);
    }
    still_serving(&node, &mut p, "slow handshakes").await;
    let started = std::time::Instant::now();
    let mut cut = 0;
    for mut s in slow {
        let mut buf = [0u8; 1024];
        // Keep dribbling: one header byte, then see whether the server hung up.
        let _ = s.write_all(b"x").await;
        match tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => cut += 1,
            Err(_) => {}
        }
    }
    assert_eq!(
        cut, 200,
        "slow connections still open after the header timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        metric_value(
            &node,
            "herald_requests_refused_total{reason=\"header_timeout\"}"
        )
        .await
            >= 200.0
    );
    assert!(
        metric_value(
            &node,
            "herald_requests_refused_total{reason=\"request_head_too_large\"}"
        )
        .await
            >= 3.0,
        "the 10,000-channel URLs and the giant header"
    );

    // A flood of new connections from one address: past the burst it gets 429 JSON; another
    // address is unaffected.
    let request = b"GET /poll?channel=public:x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut limited = 0;
    let flood_started = std::time::Instant::now();
    for _ in 0..120 {
        let answer = raw_exchange(&node, "127.0.0.7", request, Duration::from_secs(2)).await;
        if answer.starts_with("HTTP/1.1 429") {
            assert!(answer.contains("\"rate_limited\""), "{answer}");
            limited += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    // Burst 40 (twice the rate), then 20 per second.
    let admitted = 120 - limited;
    let allowed = 40.0 + 20.0 * flood_started.elapsed().as_secs_f64() + 1.0;
    assert!(
        limited > 0 && f64::from(admitted) <= allowed,
        "{admitted} of 120 rapid connections admitted; the limit allows {allowed:.0}"
    );
    let answer = raw_exchange(&node, "127.0.0.8", request, Duration::from_secs(2)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another address: {answer}"
    );
    still_serving(&node, &mut p, "a connection flood").await;
    assert_eq!(
        metric_value(
            &node,
            "herald_requests_refused_total{reason=\"rate_limited\"}"
        )
        .await,
        f64::from(limited)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_heads_are_checked_like_any_other_request() {
    let node = Node::start(&[]).await;
    let ch = channel("raw");
    // HTTP/1.0 clients get an unframed stream (no chunked encoding), closed by the server.
    let answer = raw_exchange(
        &node,
        "127.0.0.1",
        format!("GET /sse?channel={ch} HTTP/1.0\r\n\r\n").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    assert!(answer.contains("\r\n\r\nretry: 2000\n"), "{answer}");
    // HTTP/1.1 streams are chunked.
    let answer = raw_exchange(
        &node,
        "127.0.0.1",
        format!("GET /sse?channel={ch} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("transfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(answer.contains("event: subscribed"), "{answer}");
    // A body on the GET, a malformed head, an oversized head: JSON errors, then close.
    for (request, status, code) in [
        (
            format!("GET /sse?channel={ch} HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"),
            "400",
            "invalid_request",
        ),
        (
            format!("GET /sse?channel={ch} HTTP/1.1\r\nbad header line\r\n\r\n"),
            "400",
            "invalid_request",
        ),
        (
            format!(
                "GET /sse?channel={ch} HTTP/1.1\r\nx-big: {}\r\n\r\n",
                "a".repeat(20 << 10)
            ),
            "431",
            "request_head_too_large",
        ),
        (
            "GET /sse?channel=a%20b HTTP/1.1\r\nhost: x\r\n\r\n".to_owned(),
            "400",
            "invalid_channel",
        ),
    ] {
        let answer = raw_exchange(&node, "127.0.0.1", request.as_bytes(), TIMEOUT).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:.80}: {answer}"
        );
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["error"]["code"], code, "{answer}");
    }
}
