//! The gRPC control plane and the CLI, end to end: real `herald` processes (two nodes on one
//! real `nats-server`, or one memory node), real tonic clients, real WebSocket/SSE/poll
//! clients, and the `herald` CLI as a process.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_e2e::{
    Node, Publisher, SseClient, TIMEOUT, WsClient, WsEnd, channel,
    cluster::{self, CliProcess, Control, cli, control, nats_node},
    eventually, poll, poll_cursor, poll_msgs, query, within,
};
use herald_proto::v1::{
    self, BroadcastRequest, ChannelsRequest, DrainNodeRequest, HistoryRequest, PublishRequest,
    PublishStreamRequest, StatsRequest, StatsResponse, WatchStatsRequest,
    publish_stream_response::Outcome,
};
use serde_json::{Value, json};
use tonic::Code;

/// Long enough for the cluster view to settle: a few heartbeats.
const SETTLE: Duration = Duration::from_secs(10);

async fn stats(c: &mut Control) -> StatsResponse {
    within(TIMEOUT, "Stats", c.stats(StatsRequest {}))
        .await
        .expect("Stats")
        .into_inner()
}

fn node<'a>(s: &'a StatsResponse, id: &str) -> Option<&'a v1::NodeStats> {
    s.nodes.iter().find(|n| n.node_id == id)
}

fn conns(n: Option<&v1::NodeStats>) -> (u64, u64, u64, u64) {
    let c = n.and_then(|n| n.connections).unwrap_or_default();
    (c.websocket, c.sse, c.longpoll, c.poll)
}

fn totals(s: &StatsResponse) -> (u64, u64, u64, u64) {
    let c = s.totals.and_then(|t| t.connections).unwrap_or_default();
    (c.websocket, c.sse, c.longpoll, c.poll)
}

async fn subscribers(c: &mut Control, pattern: &str) -> Vec<(String, u64)> {
    let r = within(
        TIMEOUT,
        "Channels",
        c.channels(ChannelsRequest {
            pattern: pattern.to_owned(),
            limit: 0,
        }),
    )
    .await
    .expect("Channels")
    .into_inner();
    r.channels
        .into_iter()
        .map(|c| (c.channel, c.subscribers))
        .collect()
}

/// Starts a held long-poll on `node` in the background (answered when a message arrives or
/// after `wait` seconds).
fn held_poll(node: &Node, q: String) -> tokio::task::JoinHandle<(herald_e2e::StatusCode, Value)> {
    let url = node.http_url();
    tokio::spawn(async move {
        let resp = within(
            TIMEOUT + Duration::from_secs(60),
            "held poll",
            reqwest::Client::new().get(format!("{url}/poll?{q}")).send(),
        )
        .await
        .expect("held poll");
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    })
}

#[tokio::test]
async fn every_publishing_and_history_rpc_works_across_two_nodes() {
    let nats = cluster::start_nats();
    let history = [("HERALD_HISTORY_SIZE", "1000")];
    let a = nats_node(&nats, "a", &history).await;
    let b = nats_node(&nats, "b", &history).await;
    let mut ca = control(&a, None).await;
    let mut cb = control(&b, None).await;
    let ch = channel("rpc");
    let other = channel("rpc-other");

    let p = ca
        .publish(PublishRequest {
            channel: ch.clone(),
            data: Bytes::from(r#"{"n": 0}"#),
            idempotency_key: "k0".into(),
        })
        .await
        .expect("Publish")
        .into_inner();
    assert!(!p.duplicate);
    let again = ca
        .publish(PublishRequest {
            channel: ch.clone(),
            data: Bytes::from(r#"{"n": 0}"#),
            idempotency_key: "k0".into(),
        })
        .await
        .expect("Publish repeat")
        .into_inner();
    assert!(again.duplicate, "same idempotency key: duplicate");
    assert_eq!(again.cursor, p.cursor);

    let br = cb
        .broadcast(BroadcastRequest {
            channels: vec![ch.clone(), other.clone()],
            data: Bytes::from(r#"{"n": 1}"#),
            idempotency_key: String::new(),
        })
        .await
        .expect("Broadcast")
        .into_inner();
    assert_eq!(br.results.len(), 2);
    assert!(
        br.results
            .iter()
            .all(|r| matches!(r.outcome, Some(v1::broadcast_result::Outcome::Cursor(_))))
    );

    // PublishStream: 200 messages over two channels, results carry the sequence numbers,
    // and per channel the cursors follow the order sent.
    let reqs: Vec<PublishStreamRequest> = (0..200u64)
        .map(|i| PublishStreamRequest {
            sequence: 1000 + i,
            channel: if i % 2 == 0 {
                ch.clone()
            } else {
                other.clone()
            },
            data: Bytes::from(json!({"n": 2 + i}).to_string()),
            idempotency_key: String::new(),
        })
        .collect();
    let mut results = ca
        .publish_stream(tokio_stream::iter(reqs))
        .await
        .expect("PublishStream")
        .into_inner();
    let mut cursors = std::collections::BTreeMap::new();
    while let Some(r) = within(TIMEOUT, "PublishStream result", results.next()).await {
        let r = r.expect("PublishStream result");
        match r.outcome {
            Some(Outcome::Cursor(c)) => {
                cursors.insert(r.sequence, c.parse::<u64>().expect("numeric cursor"));
            }
            other => panic!("sequence {}: {other:?}", r.sequence),
        }
    }
    assert_eq!(cursors.len(), 200, "one result per request");
    assert_eq!(cursors.keys().next(), Some(&1000));
    for parity in 0..2 {
        let per_channel: Vec<u64> = cursors
            .iter()
            .filter(|(s, _)| *s % 2 == parity)
            .map(|(_, c)| *c)
            .collect();
        assert!(
            per_channel.windows(2).all(|w| w[0] < w[1]),
            "stored in the order sent"
        );
    }

    // History from the other node: everything, in order, with data and ts.
    let h = cb
        .history(HistoryRequest {
            channel: ch.clone(),
            since: String::new(),
            limit: 1000,
        })
        .await
        .expect("History")
        .into_inner();
    let cursors_seen: Vec<&str> = h.messages.iter().map(|m| m.cursor.as_str()).collect();
    assert!(!h.gap, "{} messages: {cursors_seen:?}", h.messages.len());
    assert_eq!(h.messages.len(), 2 + 100);
    assert_eq!(h.messages[0].cursor, p.cursor);
    let first: Value = serde_json::from_slice(&h.messages[0].data).expect("JSON data");
    assert_eq!(first, json!({"n": 0}));
    assert!(h.messages.iter().all(|m| m.ts > 1_600_000_000_000));
    assert_eq!(
        h.cursor,
        h.messages
            .last()
            .map(|m| m.cursor.clone())
            .unwrap_or_default()
    );
    // From a cursor, with a limit.
    let h2 = cb
        .history(HistoryRequest {
            channel: ch.clone(),
            since: p.cursor.clone(),
            limit: 1,
        })
        .await
        .expect("History since")
        .into_inner();
    assert_eq!(h2.messages.len(), 1);
    assert_eq!(h2.messages[0].cursor, h.messages[1].cursor);
    assert_eq!(h2.cursor, h.messages[1].cursor);
}

#[tokio::test]
async fn stats_and_channels_count_every_protocol_on_both_nodes() {
    let nats = cluster::start_nats();
    let a = nats_node(&nats, "a", &[]).await;
    let b = nats_node(&nats, "b", &[]).await;
    let ch = channel("count");
    let only_a = channel("count-a");

    // a: 2 WebSockets (one also on only_a), 1 long-poll held; b: 1 SSE, 1 interval poll.
    let mut ws1 = WsClient::connect(&a, &query(&[&ch, &only_a], None)).await;
    ws1.expect_type("subscribed").await;
    let mut ws2 = WsClient::connect(&a, &query(&[&ch], None)).await;
    ws2.expect_type("subscribed").await;
    let mut sse = SseClient::connect(&b, &query(&[&ch], None), &[]).await;
    sse.expect_event("subscribed").await;
    let (_, first) = poll(&a, &query(&[&ch], None)).await;
    let held = held_poll(
        &a,
        format!("{}&wait=30", query(&[&ch], Some(&poll_cursor(&first)))),
    );
    let (status, _) = poll(&b, &query(&[&ch], None)).await;
    assert_eq!(status, herald_e2e::StatusCode::OK);

    for target in [&a, &b] {
        let mut c = control(target, None).await;
        let s = eventually(SETTLE, "both nodes in Stats with their clients", || {
            let mut c = c.clone();
            async move {
                let s = stats(&mut c).await;
                let ok = s.nodes.len() == 2
                    && conns(node_ref(&s, "a")).0 == 2
                    && conns(node_ref(&s, "a")).2 >= 1
                    && conns(node_ref(&s, "b")).1 == 1
                    && conns(node_ref(&s, "b")).3 >= 1;
                ok.then_some(s)
            }
        })
        .await;
        let (ws, sse_n, lp, pl) = totals(&s);
        assert_eq!((ws, sse_n), (2, 1), "totals: {s:?}");
        assert!(lp >= 1 && pl >= 1, "totals: {s:?}");
        assert_eq!(s.totals.map(|t| t.nodes), Some(2));
        let na = node(&s, "a").expect("node a");
        assert!(!na.version.is_empty());
        assert!(
            na.subscriptions >= 3,
            "ws1 two channels, ws2, held poll: {na:?}"
        );

        let counted = eventually(SETTLE, "Channels summed over both nodes", || {
            let mut c = c.clone();
            let ch = ch.clone();
            async move {
                let list = subscribers(&mut c, "").await;
                let n = list.iter().find(|(name, _)| *name == ch).map(|(_, n)| *n);
                // 2 WS + held long-poll on a, SSE on b.
                (n == Some(4)).then_some(list)
            }
        })
        .await;
        assert!(counted.contains(&(only_a.clone(), 1)), "{counted:?}");
        // A pattern selects.
        let filtered = subscribers(&mut c, &format!("{}*", &only_a[..only_a.len() - 1])).await;
        assert!(filtered.iter().any(|(n, _)| *n == only_a), "{filtered:?}");
        assert!(
            subscribers(&mut c, "no-such-prefix-*").await.is_empty(),
            "pattern without a match"
        );
    }

    // Leaving is seen too.
    ws1.close().await;
    drop(sse);
    let mut c = control(&b, None).await;
    eventually(SETTLE, "departures in Stats", || {
        let mut c = c.clone();
        async move {
            let s = stats(&mut c).await;
            (conns(node_ref(&s, "a")).0 == 1 && conns(node_ref(&s, "b")).1 == 0).then_some(())
        }
    })
    .await;
    let _ = stats(&mut c).await;
    held.abort();
    drop(ws2);
}

fn node_ref<'a>(s: &'a StatsResponse, id: &str) -> Option<&'a v1::NodeStats> {
    node(s, id)
}

#[tokio::test]
async fn watch_stats_streams_changes_as_clients_come_and_go() {
    let nats = cluster::start_nats();
    let a = nats_node(&nats, "a", &[]).await;
    let b = nats_node(&nats, "b", &[]).await;
    let mut c = control(&a, None).await;
    // A long interval: updates after the first come from changes.
    let mut watch = c
        .watch_stats(WatchStatsRequest {
            interval_ms: 60_000,
        })
        .await
        .expect("WatchStats")
        .into_inner();
    async fn until(
        watch: &mut tonic::Streaming<StatsResponse>,
        what: &str,
        f: impl Fn(&StatsResponse) -> bool,
    ) {
        within(SETTLE, what, async {
            loop {
                let s = watch
                    .message()
                    .await
                    .expect("WatchStats stream")
                    .expect("WatchStats ended");
                if f(&s) {
                    return;
                }
            }
        })
        .await
    }
    until(&mut watch, "both nodes", |s| s.nodes.len() == 2).await;
    let ch = channel("watch");
    let mut ws = WsClient::connect(&b, &query(&[&ch], None)).await;
    ws.expect_type("subscribed").await;
    until(&mut watch, "websocket on b", |s| conns(node(s, "b")).0 == 1).await;
    let mut sse = SseClient::connect(&a, &query(&[&ch], None), &[]).await;
    sse.expect_event("subscribed").await;
    until(&mut watch, "sse on a", |s| conns(node(s, "a")).1 == 1).await;
    let (_, first) = poll(&b, &query(&[&ch], None)).await;
    until(&mut watch, "poll on b", |s| conns(node(s, "b")).3 >= 1).await;
    let held = held_poll(
        &a,
        format!("{}&wait=30", query(&[&ch], Some(&poll_cursor(&first)))),
    );
    until(&mut watch, "long-poll on a", |s| conns(node(s, "a")).2 >= 1).await;
    ws.close().await;
    until(&mut watch, "websocket left b", |s| {
        conns(node(s, "b")).0 == 0
    })
    .await;
    drop(sse);
    until(&mut watch, "sse left a", |s| conns(node(s, "a")).1 == 0).await;
    held.abort();
    // A client that goes away ends the server's stream (counted as CANCELLED when it ends).
    drop(watch);
    eventually(SETTLE, "WatchStats ended after the client left", || async {
        let text = herald_e2e::metrics(&a).await;
        text.lines()
            .any(|l| {
                l.starts_with("herald_grpc_requests_total{")
                    && l.contains("method=\"WatchStats\"")
                    && l.contains("code=\"CANCELLED\"")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    })
    .await;
    let _ = stats(&mut c).await;
}

#[tokio::test]
async fn health_follows_nats_and_reflection_lists_the_service() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut nats = cluster::start_nats();
    let a = nats_node(
        &nats,
        "a",
        &[("HERALD_API_KEYS", "health-key-0123456789abcdef")],
    )
    .await;
    // Health and reflection need no key.
    let mut health = HealthClient::new(cluster::grpc_channel(&a).await);
    let status = |svc: &str| HealthCheckRequest {
        service: svc.to_owned(),
    };
    async fn serving(
        h: &mut HealthClient<tonic::transport::Channel>,
        req: HealthCheckRequest,
    ) -> i32 {
        within(TIMEOUT, "health check", h.check(req))
            .await
            .expect("health check")
            .into_inner()
            .status
    }
    assert_eq!(
        serving(&mut health, status("herald.v1.Herald")).await,
        ServingStatus::Serving as i32
    );
    assert_eq!(
        serving(&mut health, status("")).await,
        ServingStatus::Serving as i32
    );

    // Reflection lists herald.v1.Herald.
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut r = ServerReflectionClient::new(cluster::grpc_channel(&a).await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = within(
            TIMEOUT,
            "reflection",
            r.server_reflection_info(tokio_stream::iter(vec![req])),
        )
        .await
        .expect("reflection call")
        .into_inner();
        let answer = within(TIMEOUT, "reflection answer", answers.message())
            .await
            .expect("reflection stream")
            .expect("a reflection answer");
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer: {answer:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"herald.v1.Herald".to_owned()), "{names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health".to_owned()),
            "{names:?}"
        );
    }

    nats.kill();
    eventually(SETTLE, "NOT_SERVING while NATS is down", || {
        let mut h = health.clone();
        async move {
            (serving(&mut h, status("herald.v1.Herald")).await == ServingStatus::NotServing as i32)
                .then_some(())
        }
    })
    .await;
    let mut c = control(&a, Some("health-key-0123456789abcdef")).await;
    let e = c
        .publish(PublishRequest {
            channel: "x".into(),
            data: Bytes::from("1"),
            idempotency_key: String::new(),
        })
        .await
        .expect_err("publish while NATS is down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c
        .history(HistoryRequest {
            channel: "x".into(),
            since: String::new(),
            limit: 1,
        })
        .await
        .expect_err("history while NATS is down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    nats.restart();
    eventually(
        Duration::from_secs(30),
        "SERVING after NATS is back",
        || {
            let mut h = health.clone();
            async move {
                (serving(&mut h, status("herald.v1.Herald")).await == ServingStatus::Serving as i32)
                    .then_some(())
            }
        },
    )
    .await;
    c.publish(PublishRequest {
        channel: "x".into(),
        data: Bytes::from("1"),
        idempotency_key: String::new(),
    })
    .await
    .expect("publish after NATS is back");
}

#[tokio::test]
async fn bad_input_to_every_rpc_is_invalid_argument_naming_the_field() {
    let node = Node::start(&[("HERALD_MAX_MESSAGE_BYTES", "1024")]).await;
    let c = control(&node, None).await;
    let pubreq = |channel: &str, data: &str| PublishRequest {
        channel: channel.to_owned(),
        data: Bytes::from(data.to_owned()),
        idempotency_key: String::new(),
    };
    let big = format!("\"{}\"", "x".repeat(2000));
    let long = "c".repeat(256);
    type Case = (&'static str, &'static str, tonic::Status);
    let mut cases: Vec<Case> = Vec::new();
    macro_rules! case {
        ($name:expr, $needle:expr, |$c:ident| $call:expr) => {{
            let mut $c = c.clone();
            let r = within(TIMEOUT, $name, $call).await;
            cases.push((
                $name,
                $needle,
                r.err().unwrap_or_else(|| panic!("{}: accepted", $name)),
            ));
        }};
    }
    case!("publish empty channel", "channel", |c| c
        .publish(pubreq("", "1")));
    case!("publish bad channel", "channel", |c| c
        .publish(pubreq("a b", "1")));
    case!("publish wildcard channel", "channel", |c| c
        .publish(pubreq("a.>", "1")));
    case!("publish long channel", "channel", |c| c
        .publish(pubreq(&long, "1")));
    case!("publish non-JSON", "JSON", |c| c
        .publish(pubreq("ok", "{nope")));
    case!("publish empty data", "JSON", |c| c
        .publish(pubreq("ok", "")));
    case!("publish oversized", "limit", |c| c
        .publish(pubreq("ok", &big)));
    case!("publish long key", "idempotency_key", |c| {
        c.publish(PublishRequest {
            channel: "ok".into(),
            data: Bytes::from("1"),
            idempotency_key: "k".repeat(300),
        })
    });
    let br = |channels: Vec<&str>, data: &str| BroadcastRequest {
        channels: channels.into_iter().map(str::to_owned).collect(),
        data: Bytes::from(data.to_owned()),
        idempotency_key: String::new(),
    };
    case!("broadcast no channels", "channels", |c| c
        .broadcast(br(vec![], "1")));
    case!("broadcast bad channel", "channel", |c| c
        .broadcast(br(vec!["ok", "b*d"], "1")));
    case!("broadcast duplicate", "twice", |c| c
        .broadcast(br(vec!["ok", "ok"], "1")));
    case!("broadcast non-JSON", "JSON", |c| c
        .broadcast(br(vec!["ok"], "x")));
    let hr = |channel: &str, since: &str, limit: u32| HistoryRequest {
        channel: channel.to_owned(),
        since: since.to_owned(),
        limit,
    };
    case!("history bad channel", "channel", |c| c
        .history(hr("", "", 1)));
    case!("history limit huge", "limit", |c| c
        .history(hr("ok", "", 10_001)));
    case!("history bad cursor", "since", |c| c
        .history(hr("ok", "abc", 1)));
    case!("history negative cursor", "since", |c| c
        .history(hr("ok", "-1", 1)));
    case!("channels bad pattern", "pattern", |c| c.channels(
        ChannelsRequest {
            pattern: "a b".into(),
            limit: 0
        }
    ));
    case!("channels huge limit", "limit", |c| c.channels(
        ChannelsRequest {
            pattern: String::new(),
            limit: 1_000_000
        }
    ));
    case!("watch bad interval", "interval_ms", |c| c
        .watch_stats(WatchStatsRequest { interval_ms: 5 }));
    case!("drain no node", "node_id", |c| c.drain_node(
        DrainNodeRequest {
            node_id: String::new(),
            rate: 0
        }
    ));
    for (name, needle, status) in &cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: message {:?} should name {needle:?}",
            status.message()
        );
    }

    // PublishStream answers each bad message with an error result and keeps going.
    let mut cs = c.clone();
    let reqs = vec![
        PublishStreamRequest {
            sequence: 1,
            channel: "a b".into(),
            data: Bytes::from("1"),
            idempotency_key: String::new(),
        },
        PublishStreamRequest {
            sequence: 2,
            channel: "ok".into(),
            data: Bytes::from("{nope"),
            idempotency_key: String::new(),
        },
        PublishStreamRequest {
            sequence: 3,
            channel: "ok".into(),
            data: Bytes::from(big.clone()),
            idempotency_key: String::new(),
        },
        PublishStreamRequest {
            sequence: 4,
            channel: "ok".into(),
            data: Bytes::from("true"),
            idempotency_key: String::new(),
        },
    ];
    let mut results = cs
        .publish_stream(tokio_stream::iter(reqs))
        .await
        .expect("PublishStream")
        .into_inner();
    let mut by_seq = std::collections::BTreeMap::new();
    while let Some(r) = within(TIMEOUT, "stream result", results.next()).await {
        let r = r.expect("stream result");
        by_seq.insert(r.sequence, r.outcome);
    }
    for (seq, needle) in [(1, "channel"), (2, "JSON"), (3, "limit")] {
        match &by_seq[&seq] {
            Some(Outcome::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "seq {seq}");
                assert!(e.message.contains(needle), "seq {seq}: {}", e.message);
            }
            other => panic!("seq {seq}: {other:?}"),
        }
    }
    assert!(matches!(by_seq[&4], Some(Outcome::Cursor(_))), "{by_seq:?}");

    // Unknown node: NOT_FOUND.
    let mut cd = c.clone();
    let e = cd
        .drain_node(DrainNodeRequest {
            node_id: "no-such-node".into(),
            rate: 0,
        })
        .await
        .expect_err("drain of an unknown node");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn api_keys_are_required_on_every_rpc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("keys");
    std::fs::write(&file, "# second key\nfile-key-0123456789abcdef\n").expect("key file");
    let node = Node::start(&[
        ("HERALD_API_KEYS", "env-key-0123456789abcdef"),
        ("HERALD_API_KEYS_FILE", file.to_str().expect("utf-8 path")),
    ])
    .await;
    for key in [None, Some("wrong-key-0123456789abcdef"), Some("env-key")] {
        let mut c = control(&node, key).await;
        let mut codes = Vec::new();
        codes.push(
            c.publish(PublishRequest {
                channel: "a".into(),
                data: Bytes::from("1"),
                idempotency_key: String::new(),
            })
            .await
            .map(|_| ()),
        );
        codes.push(
            c.broadcast(BroadcastRequest {
                channels: vec!["a".into()],
                data: Bytes::from("1"),
                idempotency_key: String::new(),
            })
            .await
            .map(|_| ()),
        );
        codes.push(
            c.history(HistoryRequest {
                channel: "a".into(),
                since: String::new(),
                limit: 1,
            })
            .await
            .map(|_| ()),
        );
        codes.push(c.channels(ChannelsRequest::default()).await.map(|_| ()));
        codes.push(c.stats(StatsRequest {}).await.map(|_| ()));
        codes.push(
            c.watch_stats(WatchStatsRequest::default())
                .await
                .map(|_| ()),
        );
        codes.push(
            c.drain_node(DrainNodeRequest {
                node_id: "e2e".into(),
                rate: 0,
            })
            .await
            .map(|_| ()),
        );
        let stream = c
            .publish_stream(tokio_stream::iter(vec![PublishStreamRequest {
                sequence: 1,
                channel: "a".into(),
                data: Bytes::from("1"),
                idempotency_key: String::new(),
            }]))
            .await;
        let stream = match stream {
            Ok(mut s) => s.get_mut().message().await.map(|_| ()),
            Err(e) => Err(e),
        };
        codes.push(stream);
        for (i, r) in codes.into_iter().enumerate() {
            let e = r.expect_err(&format!("rpc #{i} with key {key:?} was accepted"));
            assert_eq!(
                e.code(),
                Code::Unauthenticated,
                "rpc #{i}, key {key:?}: {e:?}"
            );
        }
    }
    // Either configured key works.
    for key in ["env-key-0123456789abcdef", "file-key-0123456789abcdef"] {
        let mut c = control(&node, Some(key)).await;
        c.publish(PublishRequest {
            channel: "a".into(),
            data: Bytes::from("1"),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("publish with {key}: {e:?}"));
        c.stats(StatsRequest {}).await.expect("stats with a key");
    }
    assert!(!node.log().contains("NO API KEY CONFIGURED"));
    let open = Node::start(&[]).await;
    assert!(
        open.log().contains("NO API KEY CONFIGURED"),
        "an open API is announced loudly"
    );
}

#[tokio::test]
async fn drain_node_moves_every_protocol_to_the_other_node_without_loss() {
    let nats = cluster::start_nats();
    let a = nats_node(&nats, "a", &[]).await;
    let b = nats_node(&nats, "b", &[]).await;
    let mut pub_b = Publisher::connect(&b).await;
    let ch = channel("drain");
    let mut ws = WsClient::connect(&a, &query(&[&ch], None)).await;
    ws.expect_type("subscribed").await;
    let mut sse = SseClient::connect(&a, &query(&[&ch], None), &[]).await;
    sse.expect_event("subscribed").await;
    let m1 = pub_b.publish_msg(&ch, json!({"n": 1})).await;
    let since1 = m1.id.to_string();
    assert_eq!(ws.next_msg().await, m1);
    assert_eq!(sse.next_msg().await, m1);
    let held = held_poll(&a, format!("{}&wait=30", query(&[&ch], Some(&since1))));
    // Give the held poll time to be in place (it is counted as a long-poll client).
    eventually(SETTLE, "held poll counted", || async {
        let text = herald_e2e::metrics(&a).await;
        (herald_e2e::metric(&text, "herald_connections{protocol=\"longpoll\"}").unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    })
    .await;

    // Drain a through b's control plane.
    let mut cb = control(&b, None).await;
    let eventually_known = eventually(SETTLE, "b knows a", || {
        let mut c = cb.clone();
        async move { node(&stats(&mut c).await, "a").map(|_| ()) }
    });
    eventually_known.await;
    let r = cb
        .drain_node(DrainNodeRequest {
            node_id: "a".into(),
            rate: 1000,
        })
        .await
        .expect("DrainNode")
        .into_inner();
    assert!(r.connections >= 2, "{r:?}");

    // WebSocket: reconnect frame, then close 1012.
    let (frames, end) = ws.read_to_end(TIMEOUT).await;
    assert!(
        frames.iter().any(|f| f["type"] == "reconnect"),
        "reconnect frame: {frames:?}"
    );
    assert!(matches!(end, WsEnd::Close(1012, _)), "{end:?}");
    // SSE: event reconnect.
    loop {
        let e = within(TIMEOUT, "sse reconnect", sse.next_event())
            .await
            .expect("the SSE stream ended without a reconnect event");
        if e.event == "reconnect" {
            break;
        }
    }
    // Long-poll: answered (nothing new yet), with a cursor to resume from.
    let (status, body) = within(TIMEOUT + Duration::from_secs(5), "held poll answer", held)
        .await
        .expect("held poll task");
    assert_eq!(status, herald_e2e::StatusCode::OK, "{body}");
    let poll_since = poll_cursor(&body);
    // a now refuses new held connections and says it is draining.
    let (st, _, _) = herald_e2e::get(&format!("{}/readyz", a.admin_url()), &[]).await;
    assert_eq!(st, herald_e2e::StatusCode::SERVICE_UNAVAILABLE);

    // Published while the clients were away.
    let m2 = pub_b.publish_msg(&ch, json!({"n": 2})).await;
    let m3 = pub_b.publish_msg(&ch, json!({"n": 3})).await;

    // Each resumes on b from its last cursor and gets exactly what it missed.
    let mut ws = WsClient::connect(&b, &query(&[&ch], Some(&since1))).await;
    ws.expect_type("subscribed").await;
    assert_eq!(ws.next_msgs(2).await, vec![m2.clone(), m3.clone()]);
    let mut sse = SseClient::connect(&b, &query(&[&ch], None), &[("Last-Event-ID", &since1)]).await;
    sse.expect_event("subscribed").await;
    assert_eq!(sse.next_msgs(2).await, vec![m2.clone(), m3.clone()]);
    let (_, body) = poll(&b, &format!("{}&wait=5", query(&[&ch], Some(&poll_since)))).await;
    assert_eq!(poll_msgs(&body), vec![m2.clone(), m3.clone()]);
    // The node kept running.
    let (st, _, _) = herald_e2e::get(&format!("{}/healthz", a.admin_url()), &[]).await;
    assert_eq!(st, herald_e2e::StatusCode::OK);
    eventually(SETTLE, "a reported as draining", || {
        let mut c = cb.clone();
        async move {
            node(&stats(&mut c).await, "a")
                .is_some_and(|n| n.draining)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn herald_client_fails_over_after_a_drain_on_every_protocol() {
    let nats = cluster::start_nats();
    let a = nats_node(&nats, "a", &[]).await;
    let b = nats_node(&nats, "b", &[]).await;
    let mut pub_b = Publisher::connect(&b).await;
    let ch = channel("failover");
    let urls = format!("{},{}", a.http_url(), b.http_url());
    let first = pub_b.publish_msg(&ch, json!({"n": 0})).await;
    let since = (first.id).to_string();
    let mut subs: Vec<CliProcess> = ["websocket", "sse", "longpoll"]
        .iter()
        .map(|p| {
            CliProcess::spawn(
                &[
                    "subscribe",
                    "--protocol",
                    p,
                    "--since",
                    &since,
                    "--url",
                    &urls,
                    "--wait",
                    "20",
                    "--count",
                    "3",
                    &ch,
                ],
                &[],
            )
        })
        .collect();
    let m1 = pub_b.publish_msg(&ch, json!({"n": 1})).await;
    for s in &mut subs {
        assert_eq!(herald_e2e::Msg::from_json(&s.next_json().await), m1);
    }
    let mut cb = control(&b, None).await;
    eventually(SETTLE, "b knows a", || {
        let mut c = cb.clone();
        async move { node(&stats(&mut c).await, "a").map(|_| ()) }
    })
    .await;
    cb.drain_node(DrainNodeRequest {
        node_id: "a".into(),
        rate: 0,
    })
    .await
    .expect("DrainNode");
    let m2 = pub_b.publish_msg(&ch, json!({"n": 2})).await;
    let m3 = pub_b.publish_msg(&ch, json!({"n": 3})).await;
    for s in &mut subs {
        assert_eq!(herald_e2e::Msg::from_json(&s.next_json().await), m2);
        assert_eq!(herald_e2e::Msg::from_json(&s.next_json().await), m3);
        assert!(s.wait().await, "subscribe exits after --count");
    }
}

#[tokio::test]
async fn cli_publishes_subscribes_on_every_protocol_and_shows_stats() {
    let node = Node::start(&[("HERALD_NODE_ID", "cli-node")]).await;
    let grpc = format!("http://{}", node.grpc);
    let env = [("HERALD_GRPC_URL", grpc.as_str())];
    let ch = channel("cli");

    let out = cli(&["publish", &ch, r#"{"n":1}"#], &env, None).await;
    assert!(out.success, "{out:?}");
    let first: Value = serde_json::from_str(out.stdout.trim()).expect("publish prints JSON");
    assert!(first["cursor"].is_string(), "{out:?}");
    // Bulk from stdin over PublishStream.
    let lines: String = (2..=50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let out = cli(&["publish", &ch, "-"], &env, Some(&lines)).await;
    assert!(out.success, "{out:?}");
    let summary: Value = serde_json::from_str(out.stdout.trim()).expect("summary JSON");
    assert_eq!(summary["published"], 49, "{out:?}");
    // A bad line is reported and fails the run.
    let out = cli(&["publish", &ch, "-"], &env, Some("{\"ok\":1}\nnot json\n")).await;
    assert!(!out.success);
    assert!(out.stderr.contains("not valid JSON"), "{out:?}");
    let out = cli(
        &[
            "broadcast",
            "--channel",
            &ch,
            "--channel",
            "cli-other",
            "{}",
        ],
        &env,
        None,
    )
    .await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");

    for protocol in ["websocket", "sse", "longpoll", "poll"] {
        let out = cli(
            &[
                "subscribe",
                "--url",
                &node.http_url(),
                "--protocol",
                protocol,
                "--since",
                "0",
                "--count",
                "52",
                "--poll-interval",
                "100ms",
                &ch,
            ],
            &[],
            None,
        )
        .await;
        assert!(out.success, "{protocol}: {out:?}");
        let msgs: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(msgs.len(), 52, "{protocol}: {}", out.stdout);
        assert_eq!(msgs[0]["data"], json!({"n": 1}), "{protocol}");
        assert_eq!(msgs[0]["id"], first["cursor"], "{protocol}");
        assert_eq!(
            msgs[50]["data"],
            json!({"ok": 1}),
            "{protocol}: the good line of the failed run"
        );
        assert_eq!(msgs[51]["data"], json!({}), "{protocol}: the broadcast");
    }

    // A live subscriber sees a publish, and shows up in stats and channels.
    let mut sub = CliProcess::spawn(
        &[
            "subscribe",
            "--url",
            &node.http_url(),
            "--protocol",
            "sse",
            &ch,
        ],
        &[],
    );
    let c = control(&node, None).await;
    eventually(SETTLE, "the subscriber in Channels", || {
        let mut c = c.clone();
        let ch = ch.clone();
        async move { subscribers(&mut c, &ch).await.first().map(|_| ()) }
    })
    .await;
    let out = cli(&["publish", &ch, r#"{"live":true}"#], &env, None).await;
    assert!(out.success);
    assert_eq!(sub.next_json().await["data"], json!({"live": true}));

    let out = cli(&["stats"], &env, None).await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("cli-node"), "{}", out.stdout);
    assert!(
        out.stdout.contains("WEBSOCKET") && out.stdout.contains("TOTAL"),
        "{}",
        out.stdout
    );
    let out = cli(&["stats", "--json"], &env, None).await;
    let s: Value = serde_json::from_str(out.stdout.trim()).expect("stats JSON");
    assert_eq!(s["nodes"][0]["connections"]["sse"], 1, "{s}");
    let out = cli(&["channels", "cli*"], &env, None).await;
    assert!(out.stdout.contains(&ch), "{}", out.stdout);
    let out = cli(&["history", &ch, "--limit", "2"], &env, None).await;
    assert_eq!(
        out.stdout.lines().count(),
        3,
        "2 messages and the cursor: {}",
        out.stdout
    );
    // Unset (0) is the default page (100), as proto3 callers expect; over 10000 is refused.
    let out = cli(&["history", &ch, "--limit", "0"], &env, None).await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.lines().count() >= 3, "{}", out.stdout);
    let out = cli(&["history", &ch, "--limit", "10001"], &env, None).await;
    assert!(
        !out.success && out.stderr.contains("INVALID_ARGUMENT"),
        "{out:?}"
    );
    // Watch prints at least one table, then we stop it.
    let mut watch = tokio::process::Command::new(herald_e2e::herald_binary())
        .args(["stats", "--watch", "--json", "--interval", "200ms"])
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stats --watch");
    let stdout = watch.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    for _ in 0..2 {
        let line = within(TIMEOUT, "stats --watch line", lines.next_line())
            .await
            .expect("read")
            .expect("a line");
        assert!(line.contains("cli-node"), "{line}");
    }
    drop(watch);
    let out = cli(&["drain", "cli-node"], &env, None).await;
    assert!(out.success, "{out:?}");
    let drained: Value = serde_json::from_str(out.stdout.trim()).expect("drain JSON");
    assert_eq!(drained["connections"], 1, "the SSE subscriber: {drained}");
    drop(sub);
}

#[tokio::test]
async fn grpc_over_tls_with_the_cli() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let path = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let node = Node::start(&[
        ("HERALD_GRPC_TLS_CERT", &cert),
        ("HERALD_GRPC_TLS_KEY", &key),
        ("HERALD_NODE_ID", "tls-node"),
    ])
    .await;
    let https = format!("https://{}", node.grpc);
    let out = cli(
        &["stats", "--json", "--grpc", &https, "--grpc-ca", &ca],
        &[],
        None,
    )
    .await;
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("tls-node"), "{out:?}");
    let out = cli(
        &["publish", "tls", "1", "--grpc", &https, "--grpc-ca", &ca],
        &[],
        None,
    )
    .await;
    assert!(out.success, "{out:?}");
    // Plain text to a TLS port fails, and so does TLS without trusting the CA.
    let plain = format!("http://{}", node.grpc);
    assert!(!cli(&["stats", "--grpc", &plain], &[], None).await.success);
    assert!(!cli(&["stats", "--grpc", &https], &[], None).await.success);
}

#[tokio::test]
async fn nodes_that_stop_leave_the_cluster_view() {
    let nats = cluster::start_nats();
    let a = nats_node(&nats, "a", &[]).await;
    let b = nats_node(&nats, "b", &[]).await;
    let mut c = nats_node(&nats, "c", &[]).await;
    let mut ca = control(&a, None).await;
    eventually(SETTLE, "three nodes", || {
        let mut ca = ca.clone();
        async move { (stats(&mut ca).await.nodes.len() == 3).then_some(()) }
    })
    .await;
    // Killed (no goodbye): dropped after missing its heartbeats.
    drop(b);
    eventually(SETTLE, "the killed node dropped", || {
        let mut ca = ca.clone();
        async move {
            let s = stats(&mut ca).await;
            node(&s, "b").is_none().then_some(())
        }
    })
    .await;
    // Stopped with SIGTERM: says it is leaving.
    c.sigterm();
    assert!(c.wait_exit(TIMEOUT).await.is_some(), "node c exits");
    eventually(SETTLE, "the stopped node dropped", || {
        let mut ca = ca.clone();
        async move {
            let s = stats(&mut ca).await;
            (s.nodes.len() == 1 && node(&s, "a").is_some()).then_some(())
        }
    })
    .await;
    // Channels answers from the remaining node without waiting for the departed ones.
    let r = within(TIMEOUT, "Channels", ca.channels(ChannelsRequest::default()))
        .await
        .expect("Channels")
        .into_inner();
    assert!(r.missing_nodes.is_empty(), "{r:?}");
    let _ = stats(&mut ca).await;
}

#[tokio::test]
async fn deadlines_end_long_calls() {
    let node = Node::start(&[]).await;
    let mut c = control(&node, None).await;
    let mut req = tonic::Request::new(WatchStatsRequest { interval_ms: 100 });
    req.set_timeout(Duration::from_millis(500));
    let mut watch = c.watch_stats(req).await.expect("WatchStats").into_inner();
    let end = within(TIMEOUT, "the deadline to end WatchStats", async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s.code()),
            }
        }
    })
    .await;
    assert!(
        matches!(end, Some(Code::DeadlineExceeded | Code::Cancelled)),
        "{end:?}"
    );
}

#[tokio::test]
async fn cli_subscribe_prints_gaps_on_every_protocol() {
    let node = Node::start(&[("HERALD_HISTORY_SIZE", "2")]).await;
    let mut publisher = Publisher::connect(&node).await;
    let ch = channel("cli-gap");
    let first = publisher.publish(&ch, &json!(0)).await;
    for n in 1..5 {
        publisher.publish(&ch, &json!(n)).await;
    }
    for protocol in ["websocket", "sse", "longpoll", "poll"] {
        let out = cli(
            &[
                "subscribe",
                "--url",
                &node.http_url(),
                "--protocol",
                protocol,
                "--since",
                &first,
                "--count",
                "2",
                &ch,
            ],
            &[],
            None,
        )
        .await;
        assert!(out.success, "{protocol}: {out:?}");
        let lines: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(
            lines[0],
            json!({"type": "gap", "channel": ch}),
            "{protocol}: the gap comes first: {}",
            out.stdout
        );
        let data: Vec<&Value> = lines[1..].iter().map(|l| &l["data"]).collect();
        assert_eq!(
            data,
            vec![&json!(3), &json!(4)],
            "{protocol}: {}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn publish_stream_stops_reading_when_results_are_not_read() {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let node = Node::start(&[]).await;
    let channel = within(
        TIMEOUT,
        "gRPC connect",
        tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
            .expect("URL")
            .connect(),
    )
    .await
    .expect("connect");
    let mut c = v1::herald_client::HeraldClient::new(channel);
    const TOTAL: u64 = 400_000;
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let requests = tokio_stream::iter(0..TOTAL).map(move |i| {
        counter.fetch_add(1, Ordering::Relaxed);
        PublishStreamRequest {
            sequence: i,
            channel: "flow".into(),
            data: Bytes::from(i.to_string()),
            idempotency_key: String::new(),
        }
    });
    let mut results = c
        .publish_stream(requests)
        .await
        .expect("PublishStream")
        .into_inner();
    // Read nothing: the server keeps a bounded amount in flight (1024 publishes, 1024
    // results) and stops reading, so the client's request stream stops being pulled long
    // before the end. What is pulled beyond that sits in HTTP/2 windows (client receive
    // window for results, server receive window for requests): about 125k here.
    let plateau = eventually(SETTLE, "the request stream to stop being pulled", || {
        let pulled = pulled.clone();
        async move {
            let before = pulled.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = pulled.load(Ordering::Relaxed);
            (before > 0 && before == after).then_some(after)
        }
    })
    .await;
    assert!(
        plateau < TOTAL / 2,
        "{plateau} of {TOTAL} requests were read while no result was"
    );
    // Reading the results lets everything through, each exactly once.
    let mut seen = 0u64;
    within(Duration::from_secs(60), "all results", async {
        while let Some(r) = results.message().await.expect("result") {
            assert!(matches!(r.outcome, Some(Outcome::Cursor(_))), "{r:?}");
            seen += 1;
        }
    })
    .await;
    assert_eq!(seen, TOTAL);
}
