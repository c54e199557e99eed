//! Backend hooks (docs/hooks.md), end to end: real `herald serve` nodes calling the real
//! `hook_backend` process (a scripted application backend) over HTTP/JSON and over gRPC, driven
//! by real WebSocket, SSE, poll and HTTP clients. Every case runs against both transports:
//! allow, refuse and modify on connect, subscribe and publish; RPC; a slow backend (timeout), a
//! backend that is down, and one answering garbage each give their documented refusal, and the
//! node stays healthy.

use std::time::{Duration, Instant};

use herald_e2e::{HookBackend, Node, SseClient, WsClient, get, metric_value, post};
use serde_json::{Value, json};

type Backend = HookBackend;

fn backend() -> Backend {
    HookBackend::start(env!("CARGO_BIN_EXE_hook_backend"))
}

/// `app`: subscribe and publish hooks; `open`: client publishes without hooks.
fn config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("herald.toml"),
        "[namespaces.app]\nsubscribe_hook = true\npublish = true\npublish_hook = true\n\n[namespaces.open]\npublish = true\n",
    )
    .expect("writing the config");
    dir
}

async fn node(dir: &tempfile::TempDir, target: &str) -> Node {
    let conf = dir.path().join("herald.toml").display().to_string();
    Node::start(&[
        ("HERALD_CONFIG", &conf),
        ("HERALD_HOOKS_TARGET", target),
        ("HERALD_HOOKS_TIMEOUT", "400ms"),
        ("HERALD_CONNECT_HOOK", "true"),
        ("HERALD_RPC_HOOK", "true"),
    ])
    .await
}

/// One node per transport, on the same backend.
async fn nodes(b: &Backend, dir: &tempfile::TempDir) -> Vec<(&'static str, Node)> {
    vec![
        (
            "http",
            node(dir, &format!("http://{}/herald", b.http)).await,
        ),
        ("grpc", node(dir, &format!("grpc://{}", b.grpc)).await),
    ]
}

fn ws_url(node: &Node, query: &str) -> String {
    format!("{}/ws?{query}", node.ws_url().trim_end_matches("/ws"))
}

/// Sends a command with `id` and returns the answer carrying that id.
async fn ask(c: &mut WsClient, mut cmd: Value, id: &str) -> Value {
    cmd["id"] = id.into();
    c.send_json(cmd).await;
    loop {
        let v = c.next_json().await;
        if v["id"] == id {
            return v;
        }
    }
}

#[tokio::test]
async fn connect_hook_allows_names_and_refuses_on_every_transport() {
    let b = backend();
    let dir = config();
    for (kind, node) in nodes(&b, &dir).await {
        // The backend names the user from the token it was given (`as:alice`): later calls
        // carry that user, with the client id the connection got.
        b.forget().await;
        let mut c = WsClient::connect(&node, "channel=app:room&token=as:alice").await;
        let sub = c.expect_type("subscribed").await;
        let client = sub["client"].as_str().expect("client id").to_owned();
        let calls = b.calls().await;
        let connect = calls
            .iter()
            .find(|c| c["hook"] == "connect")
            .expect("a connect call");
        assert_eq!(connect["token"], "as:alice", "{kind}: {connect}");
        assert_eq!(connect["client"], client.as_str(), "{kind}: {connect}");
        assert_eq!(connect["protocol"], "websocket", "{kind}: {connect}");
        assert_eq!(
            connect["channels"],
            json!(["app:room"]),
            "{kind}: {connect}"
        );
        let subscribe = calls
            .iter()
            .find(|c| c["hook"] == "subscribe")
            .expect("a subscribe call");
        assert_eq!(subscribe["user"], "alice", "{kind}: {subscribe}");
        assert_eq!(subscribe["channel"], "app:room", "{kind}: {subscribe}");

        // Forwarded headers: the allow-listed ones only.
        b.forget().await;
        let url = ws_url(&node, "channel=open:x");
        let ok =
            WsClient::try_connect_with(&url, &[("cookie", "sid=as:bob"), ("x-secret", "s3")]).await;
        assert!(ok.is_ok(), "{kind}: cookie connect");
        let calls = b.calls().await;
        let connect = &calls[0];
        assert_eq!(
            connect["headers"]["cookie"], "sid=as:bob",
            "{kind}: {connect}"
        );
        assert!(
            connect["headers"].get("x-secret").is_none(),
            "{kind}: {connect}"
        );
        assert_eq!(
            calls.iter().filter(|c| c["hook"] == "subscribe").count(),
            0,
            "open: no subscribe hook"
        );

        // Refusals, failures: the documented status and code on each transport.
        let cases = [
            ("refuse", 403, "forbidden_by_app"),
            ("slow", 503, "hook_timeout"),
            ("garbage", 503, "hook_bad_answer"),
            ("status503", 503, "hook_unavailable"),
        ];
        for (token, status, code) in cases {
            let t0 = Instant::now();
            let r = WsClient::try_connect_with(
                &ws_url(&node, &format!("channel=open:x&token={token}")),
                &[],
            )
            .await;
            let (s, body) = r
                .err()
                .unwrap_or_else(|| panic!("{kind}/{token}: websocket accepted"));
            assert_eq!(
                (s, body["error"]["code"].as_str()),
                (status, Some(code)),
                "{kind}/{token}: {body}"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{kind}/{token}: took {:?}",
                t0.elapsed()
            );
            for path in ["sse", "poll"] {
                let url = format!("{}/{path}?channel=open:x&token={token}", node.http_url());
                let (s, _, body) = get(&url, &[]).await;
                assert_eq!(
                    (s.as_u16(), body["error"]["code"].as_str()),
                    (status, Some(code)),
                    "{kind}/{token}/{path}: {body}"
                );
            }
        }
        // The node is fine afterwards, and counted the failures.
        let (s, _, ready) = get(&format!("{}/readyz", node.admin_url()), &[]).await;
        assert_eq!(s, 200, "{kind}: {ready}");
        let mut again = WsClient::connect(&node, "channel=open:y").await;
        again.expect_type("subscribed").await;
        let timeouts = metric_value(
            &node,
            "herald_hook_calls_total{hook=\"connect\",outcome=\"error_timeout\"}",
        )
        .await;
        assert!(
            timeouts >= 3.0,
            "{kind}: {timeouts} connect timeouts counted"
        );
    }
}

#[tokio::test]
async fn subscribe_hook_decides_in_its_namespace_only() {
    let b = backend();
    let dir = config();
    for (kind, node) in nodes(&b, &dir).await {
        let mut c = WsClient::connect(&node, "token=as:carol").await;
        c.send_json(json!({"op":"subscribe","channels":["app:fine","open:z"]}))
            .await;
        let ok = c.expect_type("subscribed").await;
        assert_eq!(
            ok["channels"],
            json!(["app:fine", "open:z"]),
            "{kind}: {ok}"
        );
        c.send_json(json!({"op":"subscribe","channels":["app:refuse-me"]}))
            .await;
        let e = c.expect_type("error").await;
        assert_eq!(e["code"], "forbidden_by_app", "{kind}: {e}");
        assert_eq!(e["channels"], json!(["app:refuse-me"]), "{kind}: {e}");
        c.send_json(json!({"op":"subscribe","channels":["app:slow"]}))
            .await;
        let e = c.expect_type("error").await;
        assert_eq!(e["code"], "hook_timeout", "{kind}: {e}");
        // SSE and polls ask too.
        let (s, _, body) = get(
            &format!("{}/sse?channel=app:refuse-2", node.http_url()),
            &[],
        )
        .await;
        assert_eq!(
            (s.as_u16(), body["error"]["code"].as_str()),
            (403, Some("forbidden_by_app")),
            "{kind}: {body}"
        );
        let (s, _, body) = get(
            &format!("{}/poll?channel=app:garbage", node.http_url()),
            &[],
        )
        .await;
        assert_eq!(
            (s.as_u16(), body["error"]["code"].as_str()),
            (503, Some("hook_bad_answer")),
            "{kind}: {body}"
        );
        let mut sse = SseClient::connect(&node, "channel=app:fine", &[]).await;
        sse.expect_event("subscribed").await;
    }
}

#[tokio::test]
async fn publish_hook_allows_modifies_takes_over_or_refuses() {
    let b = backend();
    let dir = config();
    for (kind, node) in nodes(&b, &dir).await {
        let ch = format!("app:pub-{kind}");
        let mut reader = WsClient::connect(&node, &format!("channel={ch}")).await;
        reader.expect_type("subscribed").await;
        let mut c = WsClient::connect(&node, "token=as:dan").await;
        // Unchanged, then modified by the backend: subscribers get what the backend allowed.
        let v = ask(
            &mut c,
            json!({"op":"publish","channel":ch,"data":{"n":1}}),
            "p1",
        )
        .await;
        assert_eq!(v["type"], "published", "{kind}: {v}");
        let v = ask(
            &mut c,
            json!({"op":"publish","channel":ch,"data":{"n":2,"modify":true}}),
            "p2",
        )
        .await;
        assert_eq!(v["type"], "published", "{kind}: {v}");
        let got = reader.next_msgs(2).await;
        assert_eq!(got[0].data, json!({"n":1}), "{kind}");
        assert_eq!(
            got[1].data,
            json!({"n":2,"modify":true,"modified_by":"backend"}),
            "{kind}"
        );
        // The app publishes it itself: no cursor, nothing stored by Herald.
        let v = ask(
            &mut c,
            json!({"op":"publish","channel":format!("app:self-{kind}"),"data":1}),
            "p3",
        )
        .await;
        assert_eq!(
            (v["type"].as_str(), &v["cursor"], v["by"].as_str()),
            (Some("published"), &Value::Null, Some("app")),
            "{kind}: {v}"
        );
        // Refused, and failures.
        for (channel, code) in [
            ("app:refuse", "forbidden_by_app"),
            ("app:slow", "hook_timeout"),
            ("app:garbage", "hook_bad_answer"),
        ] {
            let v = ask(
                &mut c,
                json!({"op":"publish","channel":channel,"data":1}),
                channel,
            )
            .await;
            assert_eq!(
                (v["type"].as_str(), v["code"].as_str()),
                (Some("error"), Some(code)),
                "{kind}/{channel}: {v}"
            );
        }
        // Over HTTP, the same hook.
        let url = format!("{}/publish?token=as:dan", node.http_url());
        let (s, v) = post(
            &url,
            &[],
            &json!({"channel": ch, "data": {"modify": true}}).to_string(),
        )
        .await;
        assert_eq!(s, 200, "{kind}: {v}");
        assert_eq!(
            reader.next_msg().await.data["modified_by"],
            "backend",
            "{kind}"
        );
        let (s, v) = post(&url, &[], r#"{"channel":"app:refuse","data":1}"#).await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (403, Some("forbidden_by_app")),
            "{kind}: {v}"
        );
        // Nothing refused reached the subscriber: the next message is the next allowed one.
        let v = ask(
            &mut c,
            json!({"op":"publish","channel":ch,"data":"last"}),
            "p9",
        )
        .await;
        assert_eq!(v["type"], "published", "{kind}: {v}");
        assert_eq!(reader.next_msg().await.data, json!("last"), "{kind}");
    }
}

#[tokio::test]
async fn rpc_goes_to_the_backend_and_back_on_the_same_socket() {
    let b = backend();
    let dir = config();
    for (kind, node) in nodes(&b, &dir).await {
        let mut c = WsClient::connect(&node, "token=as:erin").await;
        let v = ask(
            &mut c,
            json!({"op":"rpc","method":"echo","data":{"x":[1,2]}}),
            "r1",
        )
        .await;
        assert_eq!(
            (v["type"].as_str(), &v["result"]),
            (Some("rpc"), &json!({"x":[1,2]})),
            "{kind}: {v}"
        );
        for (method, code) in [
            ("refuse", "rpc_refused"),
            ("nope", "unknown_method"),
            ("slow", "hook_timeout"),
            ("garbage", "hook_bad_answer"),
        ] {
            let v = ask(
                &mut c,
                json!({"op":"rpc","method":method,"data":null}),
                method,
            )
            .await;
            assert_eq!(
                (v["type"].as_str(), v["code"].as_str(), v["op"].as_str()),
                (Some("error"), Some(code), Some("rpc")),
                "{kind}/{method}: {v}"
            );
        }
        let v = ask(&mut c, json!({"op":"rpc","method":"bad method!"}), "r2").await;
        assert_eq!(v["code"], "bad_command", "{kind}: {v}");
        let (s, v) = post(
            &format!("{}/rpc?token=as:erin", node.http_url()),
            &[],
            r#"{"method":"echo","data":"hi"}"#,
        )
        .await;
        assert_eq!(
            (s.as_u16(), &v["result"]),
            (200, &json!("hi")),
            "{kind}: {v}"
        );
        let calls = b.calls().await;
        let rpc = calls
            .iter()
            .rev()
            .find(|c| c["hook"] == "rpc")
            .expect("an rpc call");
        assert_eq!(
            (rpc["user"].as_str(), rpc["protocol"].as_str()),
            (Some("erin"), Some("http")),
            "{kind}: {rpc}"
        );
    }
}

#[tokio::test]
async fn a_backend_that_is_down_refuses_and_nothing_hangs() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dir = config();
    for target in [
        format!("http://127.0.0.1:{port}/herald"),
        format!("grpc://127.0.0.1:{port}"),
    ] {
        let node = node(&dir, &target).await;
        let t0 = Instant::now();
        let r = WsClient::try_connect_with(&ws_url(&node, "channel=open:x"), &[]).await;
        let (s, body) = r.err().unwrap_or_else(|| panic!("{target}: accepted"));
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (503, Some("hook_unavailable")),
            "{target}: {body}"
        );
        let (s, v) = post(
            &format!("{}/publish", node.http_url()),
            &[],
            r#"{"channel":"open:x","data":1}"#,
        )
        .await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (503, Some("hook_unavailable")),
            "{target}: {v}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{target}: {:?}",
            t0.elapsed()
        );
        let (s, _, _) = get(&format!("{}/readyz", node.admin_url()), &[]).await;
        assert_eq!(
            s, 200,
            "{target}: the node stays ready (hooks are not a dependency of /readyz)"
        );
        assert!(
            metric_value(
                &node,
                "herald_requests_refused_total{reason=\"hook_failed\"}"
            )
            .await
                >= 2.0
        );
    }
}
