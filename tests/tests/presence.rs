//! Users and presence (docs/presence.md), end to end: real `herald serve` processes on a real
//! `nats-server` (and the memory broker), real WebSocket, SSE and long-poll clients, the gRPC
//! API and the CLI.

use std::time::Duration;

use herald_e2e::{
    Node, SseClient, TIMEOUT, WsClient, WsEnd,
    cluster::{Control, cli, control, nats_node, start_nats},
    eventually, within,
};
use herald_proto::v1::{
    DisconnectRequest, PresenceRequest, PublishRequest, RevokeTokenRequest, RevokeUserRequest,
    StatsRequest, UserChannelRequest,
};
use serde_json::{Value, json};

const SECRET: &str = "presence-test-secret-0123456789abcdef";

/// Namespaces: `room` keeps presence and join/leave; `quiet` neither.
fn config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("herald.toml"),
        "[namespaces.room]\npresence = true\njoin_leave = true\n\n[namespaces.quiet]\n",
    )
    .expect("writing the config");
    dir
}

fn env(dir: &tempfile::TempDir) -> Vec<(&'static str, String)> {
    vec![
        (
            "HERALD_CONFIG",
            dir.path().join("herald.toml").display().to_string(),
        ),
        ("HERALD_AUTH_HMAC_SECRET", SECRET.to_owned()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn token(user: &str, jti: Option<&str>, info: Option<Value>) -> String {
    let now = herald_auth::now_secs();
    herald_auth::mint_hs256(
        SECRET.as_bytes(),
        &herald_auth::MintClaims {
            sub: user.into(),
            channels: vec!["*".into()],
            publish: Vec::new(),
            iat: now,
            exp: now + 3600,
            nbf: None,
            iss: None,
            aud: None,
            jti: jti.map(str::to_owned),
            info,
        },
    )
    .expect("minting a token")
}

fn q(channel: &str, token: &str) -> String {
    format!("channel={channel}&token={token}")
}

async fn ws(node: &Node, channel: &str, token: &str) -> (WsClient, String) {
    let mut c = WsClient::connect(node, &q(channel, token)).await;
    let sub = c.expect_type("subscribed").await;
    let id = sub["client"].as_str().expect("subscribed names the client");
    (c, id.to_owned())
}

async fn sse(node: &Node, channel: &str, token: &str) -> (SseClient, String) {
    let mut c = SseClient::connect(node, &q(channel, token), &[]).await;
    let sub = c.expect_event("subscribed").await.json();
    let id = sub["client"].as_str().expect("subscribed names the client");
    (c, id.to_owned())
}

/// Waits until every node's `Stats` lists all of them (heartbeats exchanged), so cluster-wide
/// calls know whom to wait for.
async fn converged(nodes: &[&Node]) {
    for n in nodes {
        let api = control(n, None).await;
        eventually(TIMEOUT, "the nodes to see each other", || {
            let mut api = api.clone();
            async move {
                let s = api.stats(StatsRequest {}).await.ok()?.into_inner();
                (s.nodes.len() == nodes.len()).then_some(())
            }
        })
        .await;
    }
}

/// The next WebSocket frame that is not a join/leave.
async fn next_not_presence(c: &mut WsClient) -> Value {
    loop {
        let v = c.next_json().await;
        if !matches!(v["type"].as_str(), Some("join" | "leave")) {
            return v;
        }
    }
}

/// The next SSE event that is not a join/leave.
async fn next_sse_not_presence(c: &mut SseClient) -> herald_e2e::SseEvent {
    loop {
        let ev = c.next_event().await.expect("SSE stream open");
        if ev.event != "join" && ev.event != "leave" {
            return ev;
        }
    }
}

/// The next WebSocket frame past join/leave, which must be of type `ty`.
async fn expect_ws(c: &mut WsClient, ty: &str) -> Value {
    let v = next_not_presence(c).await;
    assert_eq!(v["type"], ty, "expected {ty}: {v}");
    v
}

/// The next SSE event past join/leave, which must be `name`; its data.
async fn expect_sse(c: &mut SseClient, name: &str) -> Value {
    let ev = next_sse_not_presence(c).await;
    assert_eq!(ev.event, name, "expected {name}: {ev:?}");
    ev.json()
}

async fn publish(api: &mut Control, channel: &str, data: Value) -> String {
    api.publish(PublishRequest {
        channel: channel.into(),
        data: data.to_string().into(),
        ..Default::default()
    })
    .await
    .expect("publish")
    .into_inner()
    .cursor
}

/// (client, user, info, node, protocol) of every client `Presence` lists, sorted.
async fn presence(
    api: &mut Control,
    channel: &str,
) -> (Vec<(String, String, Value, String, String)>, Vec<String>) {
    let r = api
        .presence(PresenceRequest {
            channel: channel.into(),
        })
        .await
        .expect("presence")
        .into_inner();
    let mut clients: Vec<_> = r
        .clients
        .into_iter()
        .map(|c| {
            let info = serde_json::from_str(&c.info).unwrap_or(Value::Null);
            (c.client, c.user, info, c.node, c.protocol)
        })
        .collect();
    clients.sort_by(|a, b| a.0.cmp(&b.0));
    (clients, r.missing_nodes)
}

/// A held `GET /poll?wait=30` of `user`, answered when something ends it.
fn held_poll(node: &Node, channel: &str, token: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{}/poll?{}&wait=30", node.http_url(), q(channel, token));
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(40))
            .send()
            .await
            .expect("long-poll request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
}

#[tokio::test]
async fn presence_spans_nodes_and_forgets_a_killed_node() {
    let nats = start_nats();
    let dir = config();
    let env = env(&dir);
    let a = nats_node(&nats, "node-a", &pairs(&env)).await;
    let b = nats_node(&nats, "node-b", &pairs(&env)).await;
    converged(&[&a, &b]).await;
    let room = herald_e2e::channel("room:p");
    let (mut alice, alice_id) = ws(
        &a,
        &room,
        &token("alice", None, Some(json!({"name": "Alice"}))),
    )
    .await;
    let (_bob, bob_id) = sse(&b, &room, &token("bob", None, None)).await;
    let (_bob2, bob2_id) = ws(&b, &room, &token("bob", None, None)).await;
    let mut api = control(&a, None).await;
    let want = |with_b: bool| {
        let mut v = vec![(
            alice_id.clone(),
            "alice".to_owned(),
            json!({"name": "Alice"}),
            "node-a".to_owned(),
            "websocket".to_owned(),
        )];
        if with_b {
            v.push((
                bob_id.clone(),
                "bob".into(),
                Value::Null,
                "node-b".into(),
                "sse".into(),
            ));
            v.push((
                bob2_id.clone(),
                "bob".into(),
                Value::Null,
                "node-b".into(),
                "websocket".into(),
            ));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (clients, missing) = presence(&mut api, &room).await;
    assert_eq!(
        clients,
        want(true),
        "presence from node A lists both nodes' clients"
    );
    assert!(missing.is_empty(), "{missing:?}");
    let stats = api
        .presence_stats(PresenceRequest {
            channel: room.clone(),
        })
        .await
        .expect("presence stats")
        .into_inner();
    assert_eq!((stats.clients, stats.users), (3, 2));
    // The same answer through the CLI, from node B.
    let grpc = format!("http://{}", b.grpc);
    let out = cli(&["presence", &room, "--grpc", &grpc], &[], None).await;
    assert!(out.success, "{}", out.stderr);
    let listed: Value = serde_json::from_str(out.stdout.trim()).expect("presence JSON");
    assert_eq!(
        listed["clients"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );

    // kill -9 node B: its clients are gone from the very next answer, and B is named as
    // missing only until its heartbeats expire.
    drop(b);
    let (clients, _) = presence(&mut api, &room).await;
    assert_eq!(
        clients,
        want(false),
        "a killed node's clients are not listed"
    );
    // Alice (node A) saw Bob's two connections join; once node B's heartbeats are missed,
    // node A tells her they left.
    let mut seen = Vec::new();
    while seen.iter().filter(|(t, _)| t == "leave").count() < 2 {
        let v = alice.next_json().await;
        if let (Some(t @ ("join" | "leave")), Some(c)) = (v["type"].as_str(), v["client"].as_str())
        {
            seen.push((t.to_owned(), c.to_owned()));
        }
    }
    let leaves: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter(|(t, _)| t == "leave")
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        leaves,
        [bob_id.as_str(), bob2_id.as_str()].into_iter().collect(),
        "{seen:?}"
    );
    eventually(
        Duration::from_secs(5),
        "node B to leave missing_nodes",
        || {
            let mut api = api.clone();
            let room = room.clone();
            async move {
                let (clients, missing) = presence(&mut api, &room).await;
                (missing.is_empty() && clients.len() == 1).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn presence_has_no_ghosts_after_a_nats_restart() {
    let mut nats = start_nats();
    let dir = config();
    let env = env(&dir);
    let a = nats_node(&nats, "node-a", &pairs(&env)).await;
    let b = nats_node(&nats, "node-b", &pairs(&env)).await;
    converged(&[&a, &b]).await;
    let room = herald_e2e::channel("room:r");
    let (_alice, alice_id) = ws(&a, &room, &token("alice", None, None)).await;
    let (bob, _) = ws(&b, &room, &token("bob", None, None)).await;
    let (_carol, carol_id) = sse(&b, &room, &token("carol", None, None)).await;
    let mut api = control(&a, None).await;
    assert_eq!(presence(&mut api, &room).await.0.len(), 3);
    nats.kill();
    // Bob leaves while NATS is down.
    bob.close().await;
    nats.restart();
    let want: Vec<String> = {
        let mut v = vec![alice_id.clone(), carol_id.clone()];
        v.sort();
        v
    };
    eventually(
        Duration::from_secs(15),
        "presence after the NATS restart",
        || {
            let mut api = api.clone();
            let room = room.clone();
            let want = want.clone();
            async move {
                let r = api
                    .presence(PresenceRequest { channel: room })
                    .await
                    .ok()?
                    .into_inner();
                let mut got: Vec<String> = r.clients.into_iter().map(|c| c.client).collect();
                got.sort();
                (r.missing_nodes.is_empty() && got == want).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn presence_is_refused_where_the_namespace_does_not_keep_it() {
    let dir = config();
    let env = env(&dir);
    let node = Node::start(&pairs(&env)).await;
    let mut api = control(&node, None).await;
    for (channel, code) in [
        ("quiet:1", tonic::Code::FailedPrecondition),
        ("plain", tonic::Code::FailedPrecondition),
        ("", tonic::Code::InvalidArgument),
        ("bad channel", tonic::Code::InvalidArgument),
    ] {
        let e = api
            .presence(PresenceRequest {
                channel: channel.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "{channel:?}: {e:?}");
        let e = api
            .presence_stats(PresenceRequest {
                channel: channel.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "{channel:?}: {e:?}");
    }
}

/// Reads WebSocket frames until one of `ty`, returning the `message`/`join`/`leave` seen on
/// the way as short strings ("m:<data>", "join:<user>", "leave:<user>").
fn label(v: &Value) -> String {
    match v["type"].as_str() {
        Some("message") => format!("m:{}", v["data"]),
        Some(t @ ("join" | "leave")) => format!("{t}:{}", v["user"].as_str().unwrap_or("")),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn join_and_leave_arrive_in_order_with_messages_across_nodes() {
    let nats = start_nats();
    let dir = config();
    let env = env(&dir);
    let a = nats_node(&nats, "node-a", &pairs(&env)).await;
    let b = nats_node(&nats, "node-b", &pairs(&env)).await;
    converged(&[&a, &b]).await;
    join_leave(&a, &b).await;
}

#[tokio::test]
async fn join_and_leave_arrive_in_order_with_messages_on_the_memory_broker() {
    let dir = config();
    let env = env(&dir);
    let node = Node::start(&pairs(&env)).await;
    join_leave(&node, &node).await;
}

/// Watchers on `a` over WebSocket and SSE; Dave joins and leaves on `a`, Erin on `b`.
async fn join_leave(a: &Node, b: &Node) {
    let room = herald_e2e::channel("room:j");
    let quiet = herald_e2e::channel("quiet:j");
    let watcher = token("watcher", None, None);
    let (mut ws_w, _) = ws(a, &room, &watcher).await;
    let (mut sse_w, _) = sse(a, &room, &watcher).await;
    let (mut quiet_w, _) = ws(a, &quiet, &watcher).await;
    let mut api = control(a, None).await;

    publish(&mut api, &room, json!(1)).await;
    publish(&mut api, &quiet, json!(1)).await;
    // Dave joins on the same node, Erin on the other; each leaves again.
    let (dave, dave_id) = ws(a, &room, &token("dave", None, Some(json!({"seat": 4})))).await;
    let (_dq, _) = ws(a, &quiet, &token("dave", None, None)).await;
    publish(&mut api, &room, json!(2)).await;
    publish(&mut api, &quiet, json!(2)).await;
    dave.close().await;
    // Wait for Dave's leave before Erin's join from node B, so the order to expect is known.
    let mut ws_seen = Vec::new();
    while ws_seen.last().map(String::as_str) != Some("leave:dave") {
        ws_seen.push(label(&ws_w.next_json().await));
    }
    let (erin, erin_id) = sse(b, &room, &token("erin", None, None)).await;
    while ws_seen.last().map(String::as_str) != Some("join:erin") {
        ws_seen.push(label(&ws_w.next_json().await));
    }
    publish(&mut api, &room, json!(3)).await;
    drop(erin);
    while ws_seen.last().map(String::as_str) != Some("leave:erin") {
        ws_seen.push(label(&ws_w.next_json().await));
    }
    publish(&mut api, &room, json!(4)).await;
    ws_seen.push(label(&ws_w.next_json().await));
    // The watchers' own joins (WebSocket and SSE, both user "watcher") come first.
    assert_eq!(ws_seen[..2], ["join:watcher", "join:watcher"]);
    ws_seen.drain(..2);
    let want = [
        "m:1",
        "join:dave",
        "m:2",
        "leave:dave",
        "join:erin",
        "m:3",
        "leave:erin",
        "m:4",
    ];
    assert_eq!(
        ws_seen, want,
        "WebSocket: join/leave in order with messages"
    );

    let mut sse_seen = Vec::new();
    let mut ids = Vec::new();
    while sse_seen.len() < want.len() + 1 {
        let ev = sse_w.next_event().await.expect("SSE stream open");
        let v = ev.json();
        match ev.event.as_str() {
            "message" => sse_seen.push(format!("m:{}", v["data"])),
            "join" | "leave" => {
                assert!(ev.id.is_none(), "join/leave carry no id: {ev:?}");
                assert_eq!(v["channel"], room.as_str());
                ids.push(v["client"].as_str().unwrap_or("").to_owned());
                sse_seen.push(format!("{}:{}", ev.event, v["user"].as_str().unwrap_or("")));
            }
            other => panic!("unexpected SSE event {other}: {ev:?}"),
        }
    }
    // The SSE watcher joined after the WebSocket one: it sees only its own join.
    assert_eq!(sse_seen[0], "join:watcher");
    assert_eq!(
        sse_seen[1..],
        want,
        "SSE: join/leave in order with messages"
    );
    assert_eq!(
        ids[1..],
        [dave_id.clone(), dave_id, erin_id.clone(), erin_id]
    );

    // The quiet namespace has no join/leave: its watcher sees only the messages.
    let got: Vec<String> = vec![
        label(&quiet_w.next_json().await),
        label(&quiet_w.next_json().await),
    ];
    assert_eq!(got, ["m:1", "m:2"]);
    publish(&mut api, &quiet, json!(3)).await;
    assert_eq!(
        label(&quiet_w.next_json().await),
        "m:3",
        "no leave event in quiet:*"
    );
}

#[tokio::test]
async fn disconnect_revoke_and_limits_act_on_every_node() {
    let nats = start_nats();
    let dir = config();
    let env = env(&dir);
    let a = nats_node(&nats, "node-a", &pairs(&env)).await;
    let b = nats_node(&nats, "node-b", &pairs(&env)).await;
    converged(&[&a, &b]).await;
    let room = herald_e2e::channel("room:d");
    let alice = token("alice", Some("alice-1"), None);
    let (mut alice_ws, _) = ws(&a, &room, &alice).await;
    let (mut alice_sse, _) = sse(&b, &room, &alice).await;
    let alice_poll = held_poll(&a, &room, &alice);
    let (mut bob_ws, _) = ws(&a, &room, &token("bob", None, None)).await;
    // The long-poll is held once the node counts it.
    eventually(TIMEOUT, "the held long-poll", || async {
        let m = herald_e2e::metrics(&a).await;
        (herald_e2e::metric(&m, "herald_subscriptions").unwrap_or(0.0) >= 3.0).then_some(())
    })
    .await;
    let mut api = control(&b, None).await;
    let r = api
        .disconnect(DisconnectRequest {
            user: "alice".into(),
            reconnect: false,
            reason: "banned".into(),
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.connections, 3, "WebSocket, SSE and long-poll of alice");
    let (frames, end) = alice_ws.read_to_end(TIMEOUT).await;
    let last = frames.last().expect("a disconnect frame");
    assert_eq!(last["type"], "disconnect", "{frames:?}");
    assert_eq!(
        (last["reason"].as_str(), last["reconnect"].as_bool()),
        (Some("banned"), Some(false))
    );
    assert!(matches!(end, WsEnd::Close(4002, _)), "{end:?}");
    let ev = expect_sse(&mut alice_sse, "disconnect").await;
    assert_eq!(ev["reconnect"], false);
    assert!(
        alice_sse.next_event().await.is_none(),
        "the SSE stream ends"
    );
    let (status, body) = within(TIMEOUT, "the long-poll answer", alice_poll)
        .await
        .expect("poll task");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("disconnected")),
        "{body}"
    );
    // Bob is untouched.
    publish(&mut api, &room, json!("after")).await;
    assert_eq!(
        expect_ws(&mut bob_ws, "message").await["data"],
        json!("after")
    );

    // The same (valid) token connects again, on either node.
    let (mut again, _) = ws(&b, &room, &alice).await;
    // Revoking the user ends it and refuses the token everywhere.
    let r = api
        .revoke_user(RevokeUserRequest {
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("revoke user")
        .into_inner();
    assert_eq!(r.connections, 1);
    let (frames, end) = again.read_to_end(TIMEOUT).await;
    assert_eq!(
        frames.last().map(|f| f["code"].clone()),
        Some(json!("token_revoked"))
    );
    assert!(matches!(end, WsEnd::Close(4004, _)), "{end:?}");
    for node in [&a, &b] {
        let url = format!("{}?{}", node.ws_url(), q(&room, &alice));
        let refused = WsClient::try_connect_with(&url, &[]).await.err();
        assert_eq!(
            refused
                .as_ref()
                .map(|(s, b)| (*s, b["error"]["code"].clone())),
            Some((401, json!("token_revoked"))),
            "{refused:?}"
        );
    }
    // A token issued later is accepted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_fresh, _) = ws(&a, &room, &token("alice", Some("alice-2"), None)).await;

    // RevokeToken: only that token.
    let carol1 = token("carol", Some("carol-1"), None);
    let carol2 = token("carol", Some("carol-2"), None);
    let (mut c1, _) = ws(&a, &room, &carol1).await;
    let (mut c2, _) = ws(&b, &room, &carol2).await;
    let r = api
        .revoke_token(RevokeTokenRequest {
            jti: "carol-1".into(),
            until: 0,
        })
        .await
        .expect("revoke token")
        .into_inner();
    assert_eq!(r.connections, 1);
    let (_, end) = c1.read_to_end(TIMEOUT).await;
    assert!(matches!(end, WsEnd::Close(4004, _)), "{end:?}");
    publish(&mut api, &room, json!("still")).await;
    assert_eq!(expect_ws(&mut c2, "message").await["data"], json!("still"));

    // A node started after the revocation knows it.
    let c = nats_node(&nats, "node-c", &pairs(&env)).await;
    let url = format!("{}?{}", c.ws_url(), q(&room, &carol1));
    let refused = WsClient::try_connect_with(&url, &[]).await.err();
    assert_eq!(
        refused.map(|(s, _)| s),
        Some(401),
        "node C refuses the revoked token"
    );
}

#[tokio::test]
async fn operators_subscribe_and_unsubscribe_users_on_every_node() {
    let nats = start_nats();
    let dir = config();
    let env = env(&dir);
    let a = nats_node(&nats, "node-a", &pairs(&env)).await;
    let b = nats_node(&nats, "node-b", &pairs(&env)).await;
    converged(&[&a, &b]).await;
    let room = herald_e2e::channel("room:s");
    let extra = herald_e2e::channel("quiet:s");
    let alice = token("alice", None, None);
    let (mut w, _) = ws(&a, &room, &alice).await;
    let (mut s, _) = sse(&b, &room, &alice).await;
    let mut api = control(&a, None).await;
    let r = api
        .subscribe(UserChannelRequest {
            user: "alice".into(),
            channel: extra.clone(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(r.connections, 2);
    let sub = expect_ws(&mut w, "subscribed").await;
    assert_eq!(
        (sub["channels"].clone(), sub["server"].clone()),
        (json!([extra]), json!(true))
    );
    let sub = expect_sse(&mut s, "subscribed").await;
    assert_eq!(sub["server"], true);
    publish(&mut api, &extra, json!("x1")).await;
    assert_eq!(expect_ws(&mut w, "message").await["data"], json!("x1"));
    assert_eq!(expect_sse(&mut s, "message").await["data"], json!("x1"));

    let grpc = format!("http://{}", b.grpc);
    let out = cli(
        &["unsubscribe-user", "alice", &room, "--grpc", &grpc],
        &[],
        None,
    )
    .await;
    assert!(out.success, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("CLI JSON");
    assert_eq!(v["connections"], 2, "{v}");
    let un = expect_ws(&mut w, "unsubscribed").await;
    assert_eq!(
        (un["channels"].clone(), un["reason"].clone()),
        (json!([room]), json!("server"))
    );
    let un = expect_sse(&mut s, "unsubscribed").await;
    assert_eq!(un["reason"], "server");
    publish(&mut api, &room, json!("r-gone")).await;
    publish(&mut api, &extra, json!("x2")).await;
    assert_eq!(
        expect_ws(&mut w, "message").await["data"],
        json!("x2"),
        "room no longer delivered"
    );
    assert_eq!(
        expect_sse(&mut s, "message").await["data"],
        json!("x2"),
        "room no longer delivered"
    );
}

#[tokio::test]
async fn per_user_limit_and_bad_input_get_clear_errors() {
    let dir = config();
    let mut env = env(&dir);
    env.push(("HERALD_MAX_CONNECTIONS_PER_USER", "2".into()));
    env.push(("HERALD_MAX_REVOCATIONS", "1000".into()));
    let node = Node::start(&pairs(&env)).await;
    let room = herald_e2e::channel("room:l");
    let alice = token("alice", None, None);
    let (first, _) = ws(&node, &room, &alice).await;
    let (_second, _) = sse(&node, &room, &alice).await;
    let url = format!("{}?{}", node.ws_url(), q(&room, &alice));
    let refused = WsClient::try_connect_with(&url, &[]).await.err();
    assert_eq!(
        refused.map(|(s, b)| (s, b["error"]["code"].clone())),
        Some((429, json!("too_many_connections_for_user")))
    );
    let r = reqwest::get(format!("{}/sse?{}", node.http_url(), q(&room, &alice)))
        .await
        .expect("sse request");
    assert_eq!(r.status().as_u16(), 429);
    // Other users are not limited by alice's count; a slot frees when a connection ends.
    let (_bob, _) = ws(&node, &room, &token("bob", None, None)).await;
    first.close().await;
    eventually(TIMEOUT, "alice's slot to free", || {
        let url = url.clone();
        async move { WsClient::try_connect_with(&url, &[]).await.ok() }
    })
    .await;

    // A huge info claim is refused as an invalid token, not stored.
    let big = token("mallory", None, Some(json!({"x": "y".repeat(2000)})));
    let refused = WsClient::try_connect_with(&format!("{}?{}", node.ws_url(), q(&room, &big)), &[])
        .await
        .err();
    assert_eq!(
        refused.map(|(s, b)| (s, b["error"]["code"].clone())),
        Some((401, json!("token_invalid")))
    );

    let mut api = control(&node, None).await;
    // Unknown users: nothing to act on.
    let r = api
        .disconnect(DisconnectRequest {
            user: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(r.connections, 0);
    for (what, e) in [
        (
            "empty user",
            api.disconnect(DisconnectRequest::default()).await.err(),
        ),
        (
            "empty channel",
            api.subscribe(UserChannelRequest {
                user: "alice".into(),
                channel: String::new(),
            })
            .await
            .err(),
        ),
        (
            "empty jti",
            api.revoke_token(RevokeTokenRequest::default()).await.err(),
        ),
        (
            "until beyond 30 days",
            api.revoke_token(RevokeTokenRequest {
                jti: "t".into(),
                until: herald_auth::now_secs() + 31 * 24 * 3600,
            })
            .await
            .err(),
        ),
        (
            "past until",
            api.revoke_token(RevokeTokenRequest {
                jti: "t".into(),
                until: 1,
            })
            .await
            .err(),
        ),
    ] {
        assert_eq!(
            e.map(|e| e.code()),
            Some(tonic::Code::InvalidArgument),
            "{what}"
        );
    }
    // 10,000 revocations against a bound of 1,000: the rest are refused, memory stays flat.
    let before = node.rss_bytes();
    let mut refused = 0;
    for i in 0..10_000 {
        match api
            .revoke_token(RevokeTokenRequest {
                jti: format!("bulk-{i}"),
                until: 0,
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("revocation {i}: {e:?}"),
        }
    }
    assert_eq!(refused, 9_000);
    let grown = node.rss_bytes().saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "RSS grew by {grown} bytes for 1,000 revocations"
    );
    // The node still serves.
    let (_carol, _) = ws(&node, &room, &token("carol", None, None)).await;
}

/// herald-client (through `herald subscribe`) surfaces join/leave, server-side channel changes
/// and the endings, over WebSocket and SSE.
#[tokio::test]
async fn the_rust_client_surfaces_presence_and_endings() {
    let dir = config();
    let env = env(&dir);
    let node = Node::start(&pairs(&env)).await;
    let url = node.http_url();
    let mut api = control(&node, None).await;
    for protocol in ["websocket", "sse"] {
        let room = herald_e2e::channel("room:c");
        let extra = herald_e2e::channel("quiet:c");
        let user = format!("cli-{protocol}");
        let t = token(&user, None, None);
        let mut sub = herald_e2e::cluster::CliProcess::spawn(
            &[
                "subscribe",
                &room,
                "--url",
                &url,
                "--protocol",
                protocol,
                "--token",
                &t,
            ],
            &[],
        );
        let joined = sub.next_json().await;
        assert_eq!(
            (joined["type"].as_str(), joined["user"].as_str()),
            (Some("join"), Some(user.as_str())),
            "{joined}"
        );
        let (bob, _) = ws(&node, &room, &token("bob", None, None)).await;
        let v = sub.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["user"].as_str()),
            (Some("join"), Some("bob")),
            "{v}"
        );
        drop(bob);
        let v = sub.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["user"].as_str()),
            (Some("leave"), Some("bob")),
            "{v}"
        );
        api.subscribe(UserChannelRequest {
            user: user.clone(),
            channel: extra.clone(),
        })
        .await
        .expect("subscribe user");
        let v = sub.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["server"].as_bool()),
            (Some("subscribed"), Some(true)),
            "{v}"
        );
        publish(&mut api, &extra, json!("e1")).await;
        assert_eq!(sub.next_json().await["data"], "e1");
        api.unsubscribe(UserChannelRequest {
            user: user.clone(),
            channel: room.clone(),
        })
        .await
        .expect("unsubscribe user");
        let v = sub.next_json().await;
        assert_eq!(v["type"], "unsubscribed", "{v}");
        api.disconnect(DisconnectRequest {
            user: user.clone(),
            reconnect: false,
            reason: "bye".into(),
        })
        .await
        .expect("disconnect");
        let v = sub.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str(), v["reason"].as_str()),
            (Some("ended"), Some("disconnected"), Some("bye")),
            "{v}"
        );
        assert!(
            !sub.wait().await,
            "{protocol}: the CLI exits with an error after the ending"
        );
    }
}

#[tokio::test]
async fn a_users_connections_are_listed_across_nodes_whatever_their_channels() {
    let nats = start_nats();
    let dir = config();
    let env = env(&dir);
    let a = nats_node(&nats, "conn-a", &pairs(&env)).await;
    let b = nats_node(&nats, "conn-b", &pairs(&env)).await;
    converged(&[&a, &b]).await;
    // Alice on both nodes and in a namespace without presence; Bob alongside.
    let (alice_ws, ws_id) = ws(
        &a,
        &herald_e2e::channel("quiet:x"),
        &token("alice", None, None),
    )
    .await;
    let (_alice_sse, sse_id) = sse(
        &b,
        &herald_e2e::channel("room:c"),
        &token("alice", None, None),
    )
    .await;
    let (_bob, _) = ws(
        &a,
        &herald_e2e::channel("room:c"),
        &token("bob", None, None),
    )
    .await;
    let mut want = vec![
        (ws_id.clone(), "conn-a".to_owned(), "websocket".to_owned()),
        (sse_id.clone(), "conn-b".to_owned(), "sse".to_owned()),
    ];
    want.sort();
    let mut api = control(&b, None).await;
    let r = api
        .connections(herald_proto::v1::ConnectionsRequest {
            user: "alice".into(),
        })
        .await
        .expect("Connections")
        .into_inner();
    let mut got: Vec<(String, String, String)> = r
        .clients
        .iter()
        .map(|c| (c.client.clone(), c.node.clone(), c.protocol.clone()))
        .collect();
    got.sort();
    assert_eq!(got, want, "gRPC Connections through node b");
    assert!(r.clients.iter().all(|c| c.user == "alice"));
    assert!(r.missing_nodes.is_empty());
    // The HTTP API and the CLI say the same, through node a.
    let (status, _, body) = herald_e2e::get(
        &format!("{}/api/v1/connections?user=alice", a.api_url()),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut http: Vec<(String, String, String)> = body["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap_or("").into(),
                c["node"].as_str().unwrap_or("").into(),
                c["protocol"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    http.sort();
    assert_eq!(http, want, "GET /api/v1/connections through node a: {body}");
    let grpc = format!("http://{}", a.grpc);
    let out = cli(&["connections", "alice", "--grpc", &grpc], &[], None).await;
    assert!(out.success, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("CLI JSON");
    assert_eq!(v["clients"].as_array().map(Vec::len), Some(2), "{v}");
    // Bad input: a clear error.
    let e = api
        .connections(herald_proto::v1::ConnectionsRequest {
            user: String::new(),
        })
        .await
        .expect_err("empty user");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // A connection that ends leaves the list.
    alice_ws.close().await;
    herald_e2e::eventually(Duration::from_secs(10), "alice's WebSocket gone", || {
        let mut api = api.clone();
        async move {
            let r = api
                .connections(herald_proto::v1::ConnectionsRequest {
                    user: "alice".into(),
                })
                .await
                .ok()?
                .into_inner();
            (r.clients.len() == 1).then_some(())
        }
    })
    .await;
}
