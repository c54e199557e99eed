//! The HTTP/JSON API (docs/http-api.md), end to end with the real binary: the same inputs
//! over gRPC and over HTTP give the same answers and the same errors; API keys are required
//! on both; a message published over HTTP reaches a WebSocket subscriber with the cursor the
//! call returned; bad HTTP input gets a clear JSON error, never a hang; and the OpenAPI
//! document matches what the node serves.

use std::time::Duration;

use bytes::Bytes;
use herald_e2e::{
    Node, StatusCode, TIMEOUT, WsClient, channel,
    cluster::{Control, control},
    query, within,
};
use herald_proto::v1::{
    self, BroadcastRequest, ChannelsRequest, DisconnectRequest, DrainNodeRequest, HistoryRequest,
    PresenceRequest, PublishRequest, RevokeTokenRequest, RevokeUserRequest, StatsRequest,
    UserChannelRequest, broadcast_result::Outcome,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const KEY: &str = "http-api-test-key-0123456789abcdef";

/// Longer than the API's 10 s body-read timeout, so a test sees its answer.
const SLOW: Duration = Duration::from_secs(20);

/// A config file where namespace `room` keeps presence (and `quiet` does not).
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("herald.toml"),
        "[namespaces.room]\npresence = true\n\n[namespaces.quiet]\n",
    )
    .expect("writing the config");
    dir
}

/// A node with API keys, a small message limit, a deep history and a presence namespace.
async fn node(dir: &tempfile::TempDir) -> Node {
    let config = dir.path().join("herald.toml").display().to_string();
    Node::start(&[
        ("HERALD_API_KEYS", KEY),
        ("HERALD_MAX_MESSAGE_BYTES", "1024"),
        ("HERALD_HISTORY_SIZE", "1000"),
        ("HERALD_CONFIG", &config),
    ])
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// What an HTTP call answered: status, headers, body text.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {:?}", self.status, self.text))
    }
}

/// One HTTP request to the API: `body` is sent as is, with `content_type` when given.
async fn send(
    node: &Node,
    method: &str,
    path_and_query: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let url = format!("{}{path_and_query}", node.api_url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    within(TIMEOUT, &format!("{method} {url}"), async {
        let mut req = client().request(method.clone(), &url);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap_or_default(),
        }
    })
    .await
}

/// `POST path` with a JSON body and the test key.
async fn post(node: &Node, path: &str, body: &Value) -> Answer {
    send(
        node,
        "POST",
        path,
        Some(KEY),
        Some("application/json"),
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// The HTTP status the API documents for a gRPC code (docs/http-api.md), written out here
/// independently of the server's table.
fn documented_status(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::Unauthenticated => "unauthenticated",
        Code::NotFound => "not_found",
        Code::FailedPrecondition => "failed_precondition",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unavailable => "unavailable",
        Code::OutOfRange => "out_of_range",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Ok => "ok",
        _ => "other",
    }
}

/// An outcome both transports can be compared on: the answer as JSON, or the error's code
/// name and message.
#[derive(Debug, Clone, PartialEq)]
enum Outcome2 {
    Ok(Value),
    Err { code: String, message: String },
}

/// What a gRPC answer looks like in the HTTP API's JSON (the documented mapping: proto
/// fields, `data` and presence `info` as JSON values).
fn grpc_json<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    to_json: impl FnOnce(T) -> Value,
) -> Outcome2 {
    match r {
        Ok(r) => Outcome2::Ok(to_json(r.into_inner())),
        Err(s) => Outcome2::Err {
            code: code_name(s.code()).to_owned(),
            message: s.message().to_owned(),
        },
    }
}

fn http_outcome(a: &Answer, context: &str) -> Outcome2 {
    let body = a.json();
    if a.status == StatusCode::OK {
        return Outcome2::Ok(body);
    }
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: error without code: {body}"))
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: error without message: {body}"))
        .to_owned();
    assert!(!message.is_empty(), "{context}: empty message");
    Outcome2::Err { code, message }
}

fn raw(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|_| json!({"unparsable": true}))
}

fn user_action(r: v1::UserActionResponse) -> Value {
    json!({"connections": r.connections, "missing_nodes": r.missing_nodes})
}

fn counts(c: Option<v1::ProtocolCounts>) -> Value {
    let c = c.unwrap_or_default();
    json!({"websocket": c.websocket, "sse": c.sse, "longpoll": c.longpoll, "poll": c.poll})
}

/// Sends one input over gRPC (the request built from the JSON by the test) and HTTP
/// (`POST /api/v1/<path>` with the JSON, or `raw_body` as is).
struct Both<'a> {
    node: &'a Node,
    grpc: Control,
}

/// A request's field as the proto3 default when absent.
fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}
fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_default()
}
fn data_of(v: &Value) -> Bytes {
    match v.get("data") {
        Some(d) => Bytes::from(d.to_string()),
        None => Bytes::new(),
    }
}

impl Both<'_> {
    async fn grpc(&mut self, path: &str, input: &Value, data: Option<Bytes>) -> Outcome2 {
        let c = &mut self.grpc;
        let data = data.unwrap_or_else(|| data_of(input));
        let t = TIMEOUT;
        match path {
            "publish" => grpc_json(
                within(
                    t,
                    path,
                    c.publish(PublishRequest {
                        channel: s(input, "channel"),
                        data,
                        idempotency_key: s(input, "idempotency_key"),
                    }),
                )
                .await,
                |r| json!({"cursor": r.cursor, "duplicate": r.duplicate}),
            ),
            "broadcast" => grpc_json(
                within(
                    t,
                    path,
                    c.broadcast(BroadcastRequest {
                        channels: input["channels"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|c| c.as_str().unwrap_or_default().to_owned())
                                    .collect()
                            })
                            .unwrap_or_default(),
                        data,
                        idempotency_key: s(input, "idempotency_key"),
                    }),
                )
                .await,
                |r| {
                    let results: Vec<Value> = r
                        .results
                        .into_iter()
                        .map(|x| {
                            let mut o = json!({"channel": x.channel, "duplicate": x.duplicate});
                            match x.outcome {
                                Some(Outcome::Cursor(c)) => o["cursor"] = json!(c),
                                Some(Outcome::Error(e)) => o["error"] = json!(e),
                                None => {}
                            }
                            o
                        })
                        .collect();
                    json!({ "results": results })
                },
            ),
            "history" => grpc_json(
                within(
                    t,
                    path,
                    c.history(HistoryRequest {
                        channel: s(input, "channel"),
                        since: s(input, "since"),
                        limit: n(input, "limit") as u32,
                    }),
                )
                .await,
                |r| {
                    let messages: Vec<Value> = r
                        .messages
                        .iter()
                        .map(|m| json!({"cursor": m.cursor, "data": raw(&m.data), "ts": m.ts}))
                        .collect();
                    json!({"messages": messages, "gap": r.gap, "cursor": r.cursor})
                },
            ),
            "channels" => grpc_json(
                within(
                    t,
                    path,
                    c.channels(ChannelsRequest {
                        pattern: s(input, "pattern"),
                        limit: n(input, "limit") as u32,
                    }),
                )
                .await,
                |r| {
                    let channels: Vec<Value> = r
                        .channels
                        .iter()
                        .map(|c| json!({"channel": c.channel, "subscribers": c.subscribers}))
                        .collect();
                    json!({"channels": channels, "truncated": r.truncated, "missing_nodes": r.missing_nodes})
                },
            ),
            "stats" => grpc_json(within(t, path, c.stats(StatsRequest {})).await, |r| {
                let nodes: Vec<Value> = r
                    .nodes
                    .into_iter()
                    .map(|n| {
                        json!({
                            "node_id": n.node_id, "version": n.version,
                            "uptime_seconds": n.uptime_seconds, "connections": counts(n.connections),
                            "subscriptions": n.subscriptions, "channels": n.channels,
                            "draining": n.draining,
                        })
                    })
                    .collect();
                let t = r.totals.unwrap_or_default();
                json!({"nodes": nodes, "totals": {
                    "nodes": t.nodes, "connections": counts(t.connections),
                    "subscriptions": t.subscriptions, "node_channels": t.node_channels,
                }})
            }),
            "presence" => grpc_json(
                within(
                    t,
                    path,
                    c.presence(PresenceRequest {
                        channel: s(input, "channel"),
                    }),
                )
                .await,
                |r| {
                    let clients: Vec<Value> = r
                        .clients
                        .into_iter()
                        .map(|c| {
                            json!({
                                "client": c.client, "user": c.user,
                                "info": if c.info.is_empty() { Value::Null } else { raw(c.info.as_bytes()) },
                                "node": c.node, "protocol": c.protocol, "since_unix_ms": c.since_unix_ms,
                            })
                        })
                        .collect();
                    json!({"clients": clients, "missing_nodes": r.missing_nodes})
                },
            ),
            "presence_stats" => grpc_json(
                within(
                    t,
                    path,
                    c.presence_stats(PresenceRequest {
                        channel: s(input, "channel"),
                    }),
                )
                .await,
                |r| json!({"clients": r.clients, "users": r.users, "missing_nodes": r.missing_nodes}),
            ),
            "disconnect" => grpc_json(
                within(
                    t,
                    path,
                    c.disconnect(DisconnectRequest {
                        user: s(input, "user"),
                        reconnect: input["reconnect"].as_bool().unwrap_or_default(),
                        reason: s(input, "reason"),
                    }),
                )
                .await,
                user_action,
            ),
            "subscribe" | "unsubscribe" => {
                let req = UserChannelRequest {
                    user: s(input, "user"),
                    channel: s(input, "channel"),
                };
                let r = if path == "subscribe" {
                    within(t, path, c.subscribe(req)).await
                } else {
                    within(t, path, c.unsubscribe(req)).await
                };
                grpc_json(r, user_action)
            }
            "revoke_token" => grpc_json(
                within(
                    t,
                    path,
                    c.revoke_token(RevokeTokenRequest {
                        jti: s(input, "jti"),
                        until: n(input, "until"),
                    }),
                )
                .await,
                user_action,
            ),
            "revoke_user" => grpc_json(
                within(
                    t,
                    path,
                    c.revoke_user(RevokeUserRequest {
                        user: s(input, "user"),
                        issued_before: n(input, "issued_before"),
                        until: n(input, "until"),
                    }),
                )
                .await,
                user_action,
            ),
            "drain" => grpc_json(
                within(
                    t,
                    path,
                    c.drain_node(DrainNodeRequest {
                        node_id: s(input, "node_id"),
                        rate: n(input, "rate") as u32,
                    }),
                )
                .await,
                |r| json!({"connections": r.connections}),
            ),
            other => panic!("no gRPC method for {other}"),
        }
    }

    /// The HTTP answer, its status checked against the documented table.
    async fn http(&self, path: &str, input: &Value, raw_body: Option<&str>) -> Outcome2 {
        let body = raw_body.map_or_else(|| input.to_string(), str::to_owned);
        let a = send(
            self.node,
            "POST",
            &format!("/api/v1/{path}"),
            Some(KEY),
            Some("application/json"),
            Some(body.into_bytes()),
        )
        .await;
        let outcome = http_outcome(&a, path);
        if let Outcome2::Err { code, .. } = &outcome {
            let expected = [
                Code::InvalidArgument,
                Code::Unauthenticated,
                Code::NotFound,
                Code::FailedPrecondition,
                Code::ResourceExhausted,
                Code::Unavailable,
            ]
            .into_iter()
            .find(|c| code_name(*c) == code)
            .map(documented_status);
            assert_eq!(
                Some(a.status.as_u16()),
                expected,
                "{path}: HTTP status of {code}: {}",
                a.text
            );
        }
        outcome
    }
}

/// Digit runs masked (times in messages, e.g. `now 1796...`, may tick between two calls).
fn mask_digits(s: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(ch);
        }
    }
    out
}

/// Replaces every `cursor` value by a placeholder, after checking it is a cursor, and drops
/// `uptime_seconds`: what two separate publishes legitimately differ in.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "uptime_seconds")
                .map(|(k, x)| {
                    if k == "cursor" {
                        let c = x
                            .as_str()
                            .unwrap_or_else(|| panic!("cursor {x} not a string"));
                        assert!(c.parse::<u64>().is_ok(), "cursor {c:?}");
                        (k.clone(), json!("<cursor>"))
                    } else {
                        (k.clone(), normalize(x))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// How a case is compared.
#[derive(Clone, Copy, PartialEq)]
enum Same {
    /// Identical answers (or identical code and message).
    Exactly,
    /// Identical once cursors are masked (two separate publishes).
    ButCursors,
    /// The same error code; the messages differ because the input had to be spelled
    /// differently (bad JSON inside a JSON body is a malformed body).
    Code,
}

#[tokio::test]
async fn grpc_and_http_give_the_same_answers_and_errors() {
    let dir = config_dir();
    let node = node(&dir).await;
    let mut both = Both {
        node: &node,
        grpc: control(&node, Some(KEY)).await,
    };
    // A channel with 150 messages, for history pages.
    let deep = channel("deep");
    for i in 0..150 {
        let p = both
            .grpc("publish", &json!({"channel": deep, "data": {"i": i}}), None)
            .await;
        assert!(matches!(p, Outcome2::Ok(_)), "{p:?}");
    }
    let ch = channel("same");
    let key = format!("k-{}", std::process::id());
    let past = herald_auth::now_secs() - 10;
    let big = json!("x".repeat(2000));
    type Case<'a> = (&'a str, &'a str, Value, Option<(&'a str, &'a str)>, Same);
    // (name, path, input, Some((raw gRPC data, raw HTTP body)) for inputs JSON cannot carry,
    // how to compare)
    let cases: Vec<Case> = vec![
        (
            "valid publish",
            "publish",
            json!({"channel": ch, "data": {"text": "hi", "n": [1, 2.5, null]}}),
            None,
            Same::ButCursors,
        ),
        (
            "publish of null",
            "publish",
            json!({"channel": ch, "data": null}),
            None,
            Same::ButCursors,
        ),
        (
            "publish without data",
            "publish",
            json!({"channel": ch}),
            None,
            Same::Exactly,
        ),
        (
            "bad channel",
            "publish",
            json!({"channel": "a b", "data": 1}),
            None,
            Same::Exactly,
        ),
        (
            "empty channel",
            "publish",
            json!({"channel": "", "data": 1}),
            None,
            Same::Exactly,
        ),
        (
            "wildcard channel",
            "publish",
            json!({"channel": "a.>", "data": 1}),
            None,
            Same::Exactly,
        ),
        (
            "too-large data",
            "publish",
            json!({"channel": ch, "data": big}),
            None,
            Same::Exactly,
        ),
        (
            "long idempotency key",
            "publish",
            json!({"channel": ch, "data": 1, "idempotency_key": "k".repeat(300)}),
            None,
            Same::Exactly,
        ),
        (
            "bad JSON data",
            "publish",
            json!({}),
            Some(("{nope", r#"{"channel":"ok","data":{nope}"#)),
            Same::Code,
        ),
        (
            "empty broadcast",
            "broadcast",
            json!({"channels": [], "data": 1}),
            None,
            Same::Exactly,
        ),
        (
            "broadcast with a bad channel",
            "broadcast",
            json!({"channels": ["ok", "b*d"], "data": 1}),
            None,
            Same::Exactly,
        ),
        (
            "broadcast listing a channel twice",
            "broadcast",
            json!({"channels": ["ok", "ok"], "data": 1}),
            None,
            Same::Exactly,
        ),
        (
            "valid broadcast",
            "broadcast",
            json!({"channels": [ch, format!("{ch}-2")], "data": {"b": true}}),
            None,
            Same::ButCursors,
        ),
        (
            "history without limit",
            "history",
            json!({"channel": deep}),
            None,
            Same::Exactly,
        ),
        (
            "history with limit",
            "history",
            json!({"channel": deep, "limit": 7}),
            None,
            Same::Exactly,
        ),
        (
            "history limit too large",
            "history",
            json!({"channel": deep, "limit": 10_001}),
            None,
            Same::Exactly,
        ),
        (
            "history with a bad since",
            "history",
            json!({"channel": deep, "since": "abc"}),
            None,
            Same::Exactly,
        ),
        (
            "history with a negative since",
            "history",
            json!({"channel": deep, "since": "-1"}),
            None,
            Same::Exactly,
        ),
        (
            "history of a bad channel",
            "history",
            json!({"channel": "a b"}),
            None,
            Same::Exactly,
        ),
        (
            "channels",
            "channels",
            json!({"pattern": "nothing-matches-*"}),
            None,
            Same::Exactly,
        ),
        (
            "channels with a bad pattern",
            "channels",
            json!({"pattern": "a b"}),
            None,
            Same::Exactly,
        ),
        (
            "channels limit too large",
            "channels",
            json!({"limit": 1_000_000}),
            None,
            Same::Exactly,
        ),
        ("stats", "stats", json!({}), None, Same::Exactly),
        (
            "presence without it",
            "presence",
            json!({"channel": "quiet:1"}),
            None,
            Same::Exactly,
        ),
        (
            "presence stats without it",
            "presence_stats",
            json!({"channel": "other"}),
            None,
            Same::Exactly,
        ),
        (
            "presence",
            "presence",
            json!({"channel": "room:1"}),
            None,
            Same::Exactly,
        ),
        (
            "presence stats",
            "presence_stats",
            json!({"channel": "room:1"}),
            None,
            Same::Exactly,
        ),
        (
            "presence of a bad channel",
            "presence",
            json!({"channel": "room 1"}),
            None,
            Same::Exactly,
        ),
        (
            "disconnect",
            "disconnect",
            json!({"user": "nobody", "reason": "bye"}),
            None,
            Same::Exactly,
        ),
        (
            "disconnect without user",
            "disconnect",
            json!({}),
            None,
            Same::Exactly,
        ),
        (
            "disconnect with a long reason",
            "disconnect",
            json!({"user": "u", "reason": "r".repeat(300)}),
            None,
            Same::Exactly,
        ),
        (
            "subscribe",
            "subscribe",
            json!({"user": "nobody", "channel": "news"}),
            None,
            Same::Exactly,
        ),
        (
            "subscribe to a bad channel",
            "subscribe",
            json!({"user": "nobody", "channel": "a b"}),
            None,
            Same::Exactly,
        ),
        (
            "unsubscribe",
            "unsubscribe",
            json!({"user": "nobody", "channel": "news"}),
            None,
            Same::Exactly,
        ),
        (
            "revoke with a past until",
            "revoke_token",
            json!({"jti": "j1", "until": past}),
            None,
            Same::Exactly,
        ),
        (
            "revoke too far ahead",
            "revoke_token",
            json!({"jti": "j1", "until": past + 40 * 86_400}),
            None,
            Same::Exactly,
        ),
        (
            "revoke a user without a name",
            "revoke_user",
            json!({}),
            None,
            Same::Exactly,
        ),
        (
            "unknown node drain",
            "drain",
            json!({"node_id": "no-such-node"}),
            None,
            Same::Exactly,
        ),
        (
            "drain without node",
            "drain",
            json!({}),
            None,
            Same::Exactly,
        ),
    ];
    let mut failures = Vec::new();
    for (name, path, input, raw_input, same) in &cases {
        let g = both
            .grpc(path, input, raw_input.map(|r| Bytes::from(r.0)))
            .await;
        let h = both.http(path, input, raw_input.map(|r| r.1)).await;
        let equal = match (same, &g, &h) {
            (
                Same::Exactly,
                Outcome2::Err {
                    code: a,
                    message: m,
                },
                Outcome2::Err {
                    code: b,
                    message: n,
                },
            ) => a == b && mask_digits(m) == mask_digits(n),
            (Same::Exactly, _, _) => g == h,
            (Same::ButCursors, Outcome2::Ok(a), Outcome2::Ok(b)) => normalize(a) == normalize(b),
            (Same::Code, Outcome2::Err { code: a, .. }, Outcome2::Err { code: b, .. }) => a == b,
            _ => false,
        };
        if !equal {
            failures.push(format!("{name}:\n  gRPC {g:?}\n  HTTP {h:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "gRPC and HTTP differ:\n{}",
        failures.join("\n")
    );

    // The cases mean what they say (not merely "equal"): a few spot checks on the HTTP side.
    let h = both.http("history", &json!({"channel": deep}), None).await;
    let Outcome2::Ok(page) = h else {
        panic!("{h:?}")
    };
    assert_eq!(
        page["messages"].as_array().map(Vec::len),
        Some(100),
        "default page"
    );
    assert_eq!(page["messages"][0]["data"], json!({"i": 0}));
    let h = both
        .http(
            "history",
            &json!({"channel": deep, "since": page["cursor"], "limit": 0}),
            None,
        )
        .await;
    let Outcome2::Ok(rest) = h else {
        panic!("{h:?}")
    };
    assert_eq!(
        rest["messages"].as_array().map(Vec::len),
        Some(50),
        "the rest"
    );
    for (path, input, code) in [
        (
            "publish",
            json!({"channel": "a b", "data": 1}),
            "invalid_argument",
        ),
        (
            "presence",
            json!({"channel": "quiet:1"}),
            "failed_precondition",
        ),
        ("drain", json!({"node_id": "no-such-node"}), "not_found"),
    ] {
        match both.http(path, &input, None).await {
            Outcome2::Err { code: c, .. } => assert_eq!(c, code, "{path}"),
            ok => panic!("{path}: {ok:?}"),
        }
    }

    // Idempotency across transports: a key used over gRPC is a duplicate over HTTP (and
    // the other way round), answering the first cursor.
    let first = both
        .grpc(
            "publish",
            &json!({"channel": ch, "data": 1, "idempotency_key": key}),
            None,
        )
        .await;
    let again = both
        .http(
            "publish",
            &json!({"channel": ch, "data": 1, "idempotency_key": key}),
            None,
        )
        .await;
    let (Outcome2::Ok(first), Outcome2::Ok(again)) = (first, again) else {
        panic!("idempotent publishes failed")
    };
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["cursor"], first["cursor"]);
    let key2 = format!("{key}-2");
    let h = both
        .http(
            "publish",
            &json!({"channel": ch, "data": 2, "idempotency_key": key2}),
            None,
        )
        .await;
    let g = both
        .grpc(
            "publish",
            &json!({"channel": ch, "data": 2, "idempotency_key": key2}),
            None,
        )
        .await;
    let (Outcome2::Ok(h), Outcome2::Ok(g)) = (h, g) else {
        panic!("publishes failed")
    };
    assert_eq!(
        (h["duplicate"].clone(), g["duplicate"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(h["cursor"], g["cursor"]);

    // GET reads answer what POST reads do.
    let get = send(
        &node,
        "GET",
        &format!("/api/v1/history?channel={deep}&limit=7"),
        Some(KEY),
        None,
        None,
    )
    .await;
    let post = post(
        &node,
        "/api/v1/history",
        &json!({"channel": deep, "limit": 7}),
    )
    .await;
    assert_eq!(get.status, StatusCode::OK, "{}", get.text);
    assert_eq!(get.json(), post.json());
    let get = send(
        &node,
        "GET",
        "/api/v1/history?channel=x&since=abc",
        Some(KEY),
        None,
        None,
    )
    .await;
    assert_eq!(get.status, StatusCode::BAD_REQUEST);
    assert!(
        get.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("since"),
        "{}",
        get.text
    );

    // Both transports are counted, apart.
    let text = herald_e2e::metrics(&node).await;
    for api in ["grpc", "http"] {
        let line = format!(
            "herald_grpc_requests_total{{api=\"{api}\",code=\"FAILED_PRECONDITION\",method=\"Presence\"}}"
        );
        assert!(
            herald_e2e::metric(&text, &line).is_some_and(|v| v >= 1.0),
            "{line} in:\n{text}"
        );
    }
}

#[tokio::test]
async fn api_keys_are_required_on_both_and_answered_alike() {
    let dir = config_dir();
    let node = node(&dir).await;
    let body = json!({"channel": "news", "data": 1});
    let publish = |c: Option<&str>| {
        let node = &node;
        let body = body.clone();
        let c = c.map(str::to_owned);
        async move {
            let mut g = control(node, c.as_deref()).await;
            let grpc = within(
                TIMEOUT,
                "gRPC publish",
                g.publish(PublishRequest {
                    channel: "news".into(),
                    data: Bytes::from("1"),
                    idempotency_key: String::new(),
                }),
            )
            .await;
            let http = send(
                node,
                "POST",
                "/api/v1/publish",
                c.as_deref(),
                Some("application/json"),
                Some(body.to_string().into_bytes()),
            )
            .await;
            (grpc, http)
        }
    };
    for key in [None, Some("wrong-key-0123456789abcdef")] {
        let (g, h) = publish(key).await;
        let g = g.expect_err("gRPC without the right key");
        assert_eq!(g.code(), Code::Unauthenticated);
        assert_eq!(h.status, StatusCode::UNAUTHORIZED, "{}", h.text);
        assert_eq!(h.json()["error"]["code"], "unauthenticated");
        assert_eq!(h.json()["error"]["message"], g.message(), "same words");
        assert!(h.headers.get("www-authenticate").is_some());
    }
    // A malformed header: same answer as gRPC's.
    let h = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        Some("application/json"),
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(h.status, StatusCode::UNAUTHORIZED);
    let url = format!("{}/api/v1/publish", node.api_url());
    let r = within(
        TIMEOUT,
        "basic auth",
        client()
            .post(&url)
            .header("authorization", "Basic abc")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send(),
    )
    .await
    .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer"),
        "{v}"
    );
    // The key is checked before anything else: a bad body without a key is still 401.
    let h = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        Some("text/plain"),
        Some(b"{nope".to_vec()),
    )
    .await;
    assert_eq!(h.status, StatusCode::UNAUTHORIZED, "{}", h.text);
    // Every endpoint needs it (reads too), except the OpenAPI document.
    for path in [
        "/api/v1/stats",
        "/api/v1/history?channel=news",
        "/api/v1/channels",
        "/api/v1/presence?channel=room:1",
    ] {
        let a = send(&node, "GET", path, None, None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}: {}", a.text);
        let a = send(&node, "GET", path, Some(KEY), None, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
    }
    for path in [
        "/api/v1/drain",
        "/api/v1/revoke_user",
        "/api/v1/disconnect",
        "/api/v1/broadcast",
    ] {
        let a = send(
            &node,
            "POST",
            path,
            None,
            Some("application/json"),
            Some(b"{}".to_vec()),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}: {}", a.text);
    }
    let a = send(&node, "GET", "/api/v1/openapi.json", None, None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    // With the key: accepted on both.
    let (g, h) = publish(Some(KEY)).await;
    assert!(g.is_ok(), "{g:?}");
    assert_eq!(h.status, StatusCode::OK, "{}", h.text);
    let text = herald_e2e::metrics(&node).await;
    let line =
        "herald_grpc_requests_total{api=\"http\",code=\"UNAUTHENTICATED\",method=\"Publish\"}";
    assert!(
        herald_e2e::metric(&text, line).is_some_and(|v| v >= 3.0),
        "{line}"
    );
}

#[tokio::test]
async fn a_message_published_over_http_reaches_a_websocket_subscriber_with_its_cursor() {
    let node = Node::start(&[]).await;
    let ch = channel("http-ws");
    let mut ws = WsClient::connect(&node, &query(&[&ch], None)).await;
    ws.expect_type("subscribed").await;
    // Without keys (loopback), no Authorization header is needed. The data goes out byte
    // for byte: a number beyond f64 and an escaped character survive.
    let data = r#"{"text":"hi","big":123456789012345678901234567890,"esc":"\u00e9"}"#;
    let body = format!(r#"{{"channel":"{ch}","data":{data}}}"#);
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        Some("application/json"),
        Some(body.into_bytes()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let cursor = a.json()["cursor"].as_str().expect("cursor").to_owned();
    let m = ws.next_msg().await;
    assert_eq!(m.id.to_string(), cursor);
    assert_eq!(m.channel, ch);
    assert_eq!(m.data["text"], "hi");
    let h = send(
        &node,
        "GET",
        &format!("/api/v1/history?channel={ch}"),
        None,
        None,
        None,
    )
    .await;
    assert!(h.text.contains(data), "stored byte for byte: {}", h.text);
    // A broadcast reaches it too, with the cursor of its channel's result.
    let other = channel("http-ws-other");
    let a = post(
        &node,
        "/api/v1/broadcast",
        &json!({"channels": [other, ch], "data": [1]}),
    )
    .await;
    let results = a.json()["results"].clone();
    assert_eq!(results[1]["channel"], ch.as_str(), "{results}");
    let m = ws.next_msg().await;
    assert_eq!(
        Some(m.id.to_string().as_str()),
        results[1]["cursor"].as_str()
    );
    assert_eq!(m.data, json!([1]));
}

/// Sends raw bytes on a fresh connection and reads until a whole response arrived or the
/// server closed; panics on a hang.
async fn raw_exchange(node: &Node, request: &[u8]) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(node.api)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    within(SLOW, "a raw answer", async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                if len.is_some_and(|l| body.len() >= l) {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    })
    .await
}

#[tokio::test]
async fn bad_http_input_gets_a_clear_json_error_and_never_a_hang() {
    let node = Node::start(&[]).await;
    let expect = |a: &Answer, status: u16, code: &str, needle: &str, what: &str| {
        assert_eq!(a.status.as_u16(), status, "{what}: {}", a.text);
        let v = a.json();
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(needle),
            "{what}: message {m:?} should say {needle:?}"
        );
        assert_eq!(
            a.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{what}"
        );
    };
    let json_ct = Some("application/json");
    // Larger than the API reads (4 MiB): 413 without reading it all.
    let huge = vec![b'a'; 5 << 20];
    let a = send(&node, "POST", "/api/v1/publish", None, json_ct, Some(huge)).await;
    expect(&a, 413, "out_of_range", "larger than", "huge body");
    // The same without a length (chunked): still 413.
    let stream = futures_util::stream::iter(
        (0..80).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 << 10]))),
    );
    let url = format!("{}/api/v1/publish", node.api_url());
    let r = within(
        TIMEOUT,
        "chunked huge body",
        client()
            .post(&url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    )
    .await;
    match r {
        Ok(r) => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
        // The server may answer and close before the client finished sending.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    // Malformed JSON, wrong types, unknown fields.
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        json_ct,
        Some(br#"{"channel":"news","data":"#.to_vec()),
    )
    .await;
    expect(
        &a,
        400,
        "invalid_argument",
        "request body",
        "truncated JSON",
    );
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        json_ct,
        Some(b"[1,2]".to_vec()),
    )
    .await;
    expect(&a, 400, "invalid_argument", "request body", "not an object");
    let a = send(
        &node,
        "POST",
        "/api/v1/history",
        None,
        json_ct,
        Some(br#"{"channel":"news","limit":"ten"}"#.to_vec()),
    )
    .await;
    expect(&a, 400, "invalid_argument", "limit", "wrong type");
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        json_ct,
        Some(br#"{"chanel":"news","data":1}"#.to_vec()),
    )
    .await;
    expect(&a, 400, "invalid_argument", "chanel", "unknown field");
    let a = send(
        &node,
        "GET",
        "/api/v1/history?channel=news&limit=-1",
        None,
        None,
        None,
    )
    .await;
    expect(&a, 400, "invalid_argument", "limit", "bad query");
    let a = send(&node, "GET", "/api/v1/stats?verbose=1", None, None, None).await;
    expect(
        &a,
        400,
        "invalid_argument",
        "verbose",
        "unknown query parameter",
    );
    // An empty body is "every field unset": the service names what is missing.
    let a = send(&node, "POST", "/api/v1/publish", None, json_ct, None).await;
    expect(&a, 400, "invalid_argument", "channel", "empty body");
    // Wrong or missing content type (what a browser form or `curl -d` sends).
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        Some("application/x-www-form-urlencoded"),
        Some(br#"{"channel":"news","data":1}"#.to_vec()),
    )
    .await;
    expect(
        &a,
        415,
        "invalid_argument",
        "application/json",
        "form content type",
    );
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        Some("text/plain"),
        Some(br#"{"channel":"news","data":1}"#.to_vec()),
    )
    .await;
    expect(
        &a,
        415,
        "invalid_argument",
        "application/json",
        "text/plain",
    );
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        None,
        Some(br#"{"channel":"news","data":1}"#.to_vec()),
    )
    .await;
    expect(
        &a,
        415,
        "invalid_argument",
        "Content-Type",
        "no content type",
    );
    let a = send(
        &node,
        "POST",
        "/api/v1/publish",
        None,
        Some("application/json; charset=utf-8"),
        Some(br#"{"channel":"news","data":1}"#.to_vec()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "JSON with a charset: {}", a.text);
    // Unknown paths and wrong methods.
    let a = send(&node, "GET", "/api/v1/nope", None, None, None).await;
    expect(&a, 404, "not_found", "/api/v1/nope", "unknown path");
    let a = send(&node, "GET", "/", None, None, None).await;
    expect(&a, 404, "not_found", "/api/v1/", "root");
    let a = send(&node, "GET", "/api/v1/publish", None, None, None).await;
    expect(&a, 405, "unimplemented", "POST", "GET of an action");
    assert_eq!(
        a.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let a = send(&node, "DELETE", "/api/v1/history", None, None, None).await;
    expect(&a, 405, "unimplemented", "GET, POST", "DELETE of a read");
    // A body that never finishes: answered (408) after the read timeout, not held forever.
    let (status, body) = raw_exchange(
        &node,
        b"POST /api/v1/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"chan",
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
    // Garbage instead of HTTP: the connection ends (400 from the HTTP layer), no hang.
    let (status, _) = raw_exchange(&node, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(status == 400 || status == 0, "{status}");
    // The node is fine after all that.
    let a = send(&node, "GET", "/api/v1/stats", None, None, None).await;
    assert_eq!(a.status, StatusCode::OK);
}

/// The OpenAPI document in the repository, checked against the running node: every
/// operation's example succeeds, and every status the node answers for it (success, no key,
/// bad input, wrong media type, too large) is one the document lists; methods the document
/// does not list get 405. (That the router serves no route the document omits is checked
/// against the route list in herald-control's unit tests.)
#[tokio::test]
async fn the_openapi_document_matches_the_served_api() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/herald-control/openapi.json"
    );
    let text = std::fs::read_to_string(path).expect("reading openapi.json");
    let doc: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.")
    );
    let dir = config_dir();
    let node = node(&dir).await;
    let served = send(&node, "GET", "/api/v1/openapi.json", None, None, None).await;
    assert_eq!(
        served.json(),
        doc,
        "the node serves the document in the repository"
    );

    let mut paths: Vec<(&String, &Value)> =
        doc["paths"].as_object().expect("paths").iter().collect();
    // Drain last: it drains the node (its API keeps answering, but be tidy).
    paths.sort_by_key(|(p, _)| p.ends_with("/drain"));
    let mut checked = 0;
    for (path, ops) in paths {
        let ops = ops.as_object().expect("operations");
        for method in ["get", "post", "put", "delete", "patch"] {
            let upper = method.to_ascii_uppercase();
            let Some(op) = ops.get(method) else {
                let a = send(&node, &upper, path, Some(KEY), None, None).await;
                assert_eq!(
                    a.status.as_u16(),
                    405,
                    "{upper} {path} is not documented: {}",
                    a.text
                );
                continue;
            };
            let documented = |status: u16| op["responses"].get(status.to_string()).is_some();
            let public = op
                .get("security")
                .is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
            // The documented example.
            let (example_path, body) = if method == "get" {
                let params: Vec<String> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| {
                                let v = p.get("example")?;
                                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                                Some(format!(
                                    "{}={}",
                                    p["name"].as_str()?,
                                    herald_e2e::encode(&v)
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (format!("{path}?{}", params.join("&")), None)
            } else {
                let example = &op["requestBody"]["content"]["application/json"]["example"];
                assert!(!example.is_null(), "{upper} {path}: no example");
                (path.clone(), Some(example.to_string().into_bytes()))
            };
            let ct = body.as_ref().map(|_| "application/json");
            let a = send(&node, &upper, &example_path, Some(KEY), ct, body.clone()).await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{upper} {example_path} example: {}",
                a.text
            );
            // The answer has the documented top-level fields.
            if let Some(schema) =
                op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str()
            {
                let name = schema.rsplit('/').next().unwrap_or_default();
                let required = doc["components"]["schemas"][name]["required"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let got = a.json();
                for field in required {
                    let f = field.as_str().unwrap_or_default();
                    assert!(
                        got.get(f).is_some(),
                        "{upper} {path}: answer lacks {f}: {got}"
                    );
                }
            }
            let mut probes: Vec<(&str, Answer)> = Vec::new();
            if !public {
                probes.push((
                    "no key",
                    send(&node, &upper, &example_path, None, ct, body.clone()).await,
                ));
                let bad = if method == "get" {
                    send(
                        &node,
                        "GET",
                        &format!("{path}?no_such_field=1"),
                        Some(KEY),
                        None,
                        None,
                    )
                    .await
                } else {
                    send(
                        &node,
                        "POST",
                        path,
                        Some(KEY),
                        ct,
                        Some(br#"{"no_such_field":1}"#.to_vec()),
                    )
                    .await
                };
                probes.push(("unknown field", bad));
            }
            if method == "post" {
                probes.push((
                    "text/plain",
                    send(
                        &node,
                        "POST",
                        path,
                        Some(KEY),
                        Some("text/plain"),
                        body.clone(),
                    )
                    .await,
                ));
                probes.push((
                    "too large",
                    send(
                        &node,
                        "POST",
                        path,
                        Some(KEY),
                        ct,
                        Some(vec![b' '; 5 << 20]),
                    )
                    .await,
                ));
            }
            for (what, a) in probes {
                assert!(
                    a.status != StatusCode::OK,
                    "{upper} {path} {what}: accepted"
                );
                assert!(
                    documented(a.status.as_u16()),
                    "{upper} {path} {what}: {} is not in the document",
                    a.status
                );
                assert!(
                    a.json()["error"]["code"].is_string(),
                    "{upper} {path} {what}: {}",
                    a.text
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} operations checked");
}

#[tokio::test]
async fn a_caller_that_never_finishes_its_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Slowloris on the API port: the head must arrive within HERALD_HEADER_READ_TIMEOUT, as on
    // the client port; a kept-alive connection that goes quiet is closed the same way.
    let node = Node::start(&[("HERALD_HEADER_READ_TIMEOUT", "1s")]).await;
    let addr = node.api_url().trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 answer, if any, then the close
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the half-sent request was still open after 8 s"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t0.elapsed()
    );
    // Meanwhile and afterwards the API answers others.
    let (status, _, _) = herald_e2e::get(&format!("{}/api/v1/stats", node.api_url()), &[]).await;
    assert_eq!(status, 200);
}
