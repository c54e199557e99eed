//! Users and presence across nodes (docs/presence.md): several [`NatsCluster`]s ("nodes") on
//! real nats-server processes, each over a recording [`LocalNode`] (the seam the binary
//! implements over its edge) that answers canned presence and counts.

mod common;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use herald_core::{
    Broker, BrokerState, ChannelName, Cluster, ClusterError, HistoryLimits, LocalNode, NodeStats,
    PresenceEntry, PresenceEvent, PresenceKind, Revocation, Revoked, UserAction,
};
use herald_nats::{
    NatsBroker, NatsCluster, NatsClusterConfig,
    testing::{NatsCluster as NatsServers, NatsServer},
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// A node as the cluster layer sees it: canned presence, a fixed count per action, and a
/// record of everything it was asked.
struct TestNode {
    id: String,
    /// Channel → this node's clients (with `node` left empty: the cluster fills it in).
    presence: Mutex<HashMap<String, Vec<PresenceEntry>>>,
    /// What `act` answers.
    reach: u64,
    /// When set, `act` fails with this.
    refuse: Mutex<Option<ClusterError>>,
    acts: Mutex<Vec<UserAction>>,
    delivered: Mutex<Vec<PresenceEvent>>,
    events_tx: mpsc::Sender<PresenceEvent>,
    events_rx: Mutex<Option<mpsc::Receiver<PresenceEvent>>>,
}

impl TestNode {
    fn new(id: &str, reach: u64) -> Arc<Self> {
        let (events_tx, rx) = mpsc::channel(1024);
        Arc::new(Self {
            id: id.into(),
            presence: Mutex::new(HashMap::new()),
            reach,
            refuse: Mutex::new(None),
            acts: Mutex::new(Vec::new()),
            delivered: Mutex::new(Vec::new()),
            events_tx,
            events_rx: Mutex::new(Some(rx)),
        })
    }

    fn hold(&self, channel: &str, clients: &[(&str, &str)]) {
        let entries = clients
            .iter()
            .map(|(client, user)| PresenceEntry {
                client: (*client).into(),
                user: (*user).into(),
                info: None,
                node: String::new(),
                protocol: "websocket".into(),
                since_unix_ms: 1,
            })
            .collect();
        self.presence.lock().insert(channel.into(), entries);
    }

    fn acts(&self) -> Vec<UserAction> {
        self.acts.lock().clone()
    }

    fn revocations(&self) -> Vec<Revocation> {
        self.acts()
            .into_iter()
            .filter_map(|a| match a {
                UserAction::Revoke(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn delivered(&self) -> Vec<PresenceEvent> {
        self.delivered.lock().clone()
    }
}

impl LocalNode for TestNode {
    fn stats(&self) -> NodeStats {
        NodeStats {
            node_id: self.id.clone(),
            ..Default::default()
        }
    }
    fn channels(&self) -> Vec<(ChannelName, u64)> {
        Vec::new()
    }
    fn drain(&self, _rate: Option<usize>) -> u64 {
        0
    }
    fn presence(&self, channel: &ChannelName) -> Vec<PresenceEntry> {
        self.presence
            .lock()
            .get(channel.as_str())
            .cloned()
            .unwrap_or_default()
    }
    fn user_connections(&self, user: &str) -> Vec<PresenceEntry> {
        let mut seen = std::collections::BTreeMap::new();
        for clients in self.presence.lock().values() {
            for c in clients.iter().filter(|c| c.user == user) {
                seen.insert(c.client.clone(), c.clone());
            }
        }
        seen.into_values().collect()
    }

    fn act(&self, action: &UserAction) -> Result<u64, ClusterError> {
        if let Some(e) = self.refuse.lock().clone() {
            return Err(e);
        }
        self.acts.lock().push(action.clone());
        Ok(self.reach)
    }
    fn deliver_event(&self, event: &PresenceEvent) {
        self.delivered.lock().push(event.clone());
    }
    fn take_events(&self) -> Option<mpsc::Receiver<PresenceEvent>> {
        self.events_rx.lock().take()
    }
}

/// One node: its recording [`TestNode`], its cluster view and its own NATS connection.
struct Node {
    node: Arc<TestNode>,
    cluster: NatsCluster,
    broker: NatsBroker,
}

fn cluster_config() -> NatsClusterConfig {
    NatsClusterConfig {
        heartbeat_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

async fn start_node(urls: Vec<String>, id: &str, reach: u64, replicas: usize) -> Node {
    start_node_with(urls, id, reach, replicas, cluster_config()).await
}

async fn start_node_with(
    urls: Vec<String>,
    id: &str,
    reach: u64,
    replicas: usize,
    cluster_config: NatsClusterConfig,
) -> Node {
    let mut config = common::config(urls, HistoryLimits::default());
    config.replicas = replicas;
    let broker = NatsBroker::connect(config).await.expect("connect");
    let node = TestNode::new(id, reach);
    let cluster = NatsCluster::new(&broker, node.clone(), cluster_config);
    Node {
        node,
        cluster,
        broker,
    }
}

/// Polls `f` until it holds, or fails the test after `within`.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every node sees every other one and has read the stored revocations.
async fn settle(nodes: &[&Node]) {
    let ids: Vec<String> = nodes.iter().map(|n| n.node.id.clone()).collect();
    for n in nodes {
        eventually(
            "every node sees every other",
            Duration::from_secs(10),
            || {
                let seen: Vec<String> = n.cluster.nodes().into_iter().map(|s| s.node_id).collect();
                ids.iter().all(|id| seen.contains(id))
            },
        )
        .await;
        let mut loaded = n.cluster.revocations_loaded();
        tokio::time::timeout(Duration::from_secs(10), loaded.wait_for(|l| *l))
            .await
            .expect("stored revocations loaded within 10 s")
            .expect("cluster alive");
    }
}

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn now() -> u64 {
    herald_core::unix_micros() / 1_000_000
}

fn revoke_token(jti: &str, until: u64) -> Revocation {
    Revocation {
        what: Revoked::Token { jti: jti.into() },
        until,
    }
}

async fn server() -> NatsServer {
    tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_joins_every_node_and_forgets_a_dead_one() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 0, 1).await;
    let b = start_node(vec![server.url()], "B", 0, 1).await;
    let c = start_node(vec![server.url()], "C", 0, 1).await;
    settle(&[&a, &b, &c]).await;
    a.node.hold("room:1", &[("a-2", "alice"), ("a-1", "bob")]);
    b.node.hold("room:1", &[("b-1", "alice")]);
    c.node.hold("room:1", &[("c-1", "")]);
    c.node.hold("room:2", &[("c-9", "carol")]);

    for asker in [&a, &b, &c] {
        let answer = asker.cluster.presence(&ch("room:1")).await.unwrap();
        let got: Vec<(&str, &str)> = answer
            .clients
            .iter()
            .map(|e| (e.client.as_str(), e.node.as_str()))
            .collect();
        assert_eq!(
            got,
            [("a-1", "A"), ("a-2", "A"), ("b-1", "B"), ("c-1", "C")],
            "asked through {}",
            asker.node.id
        );
        assert!(answer.missing_nodes.is_empty(), "{answer:?}");
        assert_eq!((answer.connections(), answer.users()), (4, 3));
    }
    let other = a.cluster.presence(&ch("room:2")).await.unwrap();
    assert_eq!(other.clients.len(), 1);
    assert_eq!(other.clients[0].node, "C");

    // C dies without a word (no `leave`): its clients vanish at once; it is listed as missing
    // while its heartbeat is fresh, then forgotten.
    let Node {
        cluster, broker, ..
    } = c;
    drop(cluster);
    drop(broker);
    let answer = a.cluster.presence(&ch("room:1")).await.unwrap();
    let clients: Vec<&str> = answer.clients.iter().map(|e| e.client.as_str()).collect();
    assert_eq!(clients, ["a-1", "a-2", "b-1"]);
    assert_eq!(answer.missing_nodes, ["C"]);
    eventually("C dropped from A's view", Duration::from_secs(10), || {
        a.cluster.nodes().iter().all(|n| n.node_id != "C")
    })
    .await;
    let answer = a.cluster.presence(&ch("room:1")).await.unwrap();
    assert_eq!(answer.clients.len(), 3);
    assert!(answer.missing_nodes.is_empty(), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connections_are_gathered_from_every_node() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 0, 1).await;
    let b = start_node(vec![server.url()], "B", 0, 1).await;
    settle(&[&a, &b]).await;
    a.node.hold("room:1", &[("a-2", "alice"), ("a-1", "bob")]);
    a.node.hold("room:2", &[("a-2", "alice")]);
    b.node.hold("room:9", &[("b-1", "alice"), ("b-2", "carol")]);
    for asker in [&a, &b] {
        let answer = asker.cluster.user_connections("alice").await.unwrap();
        let got: Vec<(&str, &str, &str)> = answer
            .clients
            .iter()
            .map(|e| (e.client.as_str(), e.user.as_str(), e.node.as_str()))
            .collect();
        assert_eq!(
            got,
            [("a-2", "alice", "A"), ("b-1", "alice", "B")],
            "asked through {}",
            asker.node.id
        );
        assert!(answer.missing_nodes.is_empty(), "{answer:?}");
    }
    assert!(
        a.cluster
            .user_connections("nobody")
            .await
            .unwrap()
            .clients
            .is_empty()
    );
    // Channel presence is unchanged by the user form of the same subject.
    assert_eq!(
        b.cluster
            .presence(&ch("room:1"))
            .await
            .unwrap()
            .clients
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_channel_is_answered_in_parts_under_max_payload() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 0, 1).await;
    let b = start_node(vec![server.url()], "B", 0, 1).await;
    settle(&[&a, &b]).await;
    // 6,000 clients with a 300-byte info each: about 2.4 MB as JSON, over NATS' 1 MiB
    // max_payload for one message.
    let info = format!("{{\"bio\":\"{}\"}}", "x".repeat(290));
    let entries: Vec<PresenceEntry> = (0..6000)
        .map(|i| PresenceEntry {
            client: format!("b-{i:05}"),
            user: format!("u{}", i % 1000),
            info: Some(info.clone()),
            node: String::new(),
            protocol: "websocket".into(),
            since_unix_ms: 1,
        })
        .collect();
    b.node.presence.lock().insert("room:big".into(), entries);
    let answer = a.cluster.presence(&ch("room:big")).await.unwrap();
    assert!(
        answer.missing_nodes.is_empty(),
        "{:?}",
        answer.missing_nodes
    );
    assert_eq!((answer.connections(), answer.users()), (6000, 1000));
    assert!(
        answer
            .clients
            .iter()
            .all(|c| c.node == "B" && c.info.as_deref() == Some(info.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_of_a_node_that_dies_are_said_to_leave() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 0, 1).await;
    let b = start_node(vec![server.url()], "B", 0, 1).await;
    settle(&[&a, &b]).await;
    let event = |kind, client: &str| PresenceEvent {
        kind,
        channel: "room:1".into(),
        client: client.into(),
        user: format!("user-{client}"),
        info: None,
        node: "B".into(),
    };
    for e in [
        event(PresenceKind::Join, "b1"),
        event(PresenceKind::Join, "b2"),
        event(PresenceKind::Join, "b3"),
        event(PresenceKind::Leave, "b2"),
    ] {
        b.node.events_tx.send(e).await.unwrap();
    }
    eventually("B's events at A", Duration::from_secs(10), || {
        a.node.delivered().len() == 4
    })
    .await;
    // B dies without a word: once its heartbeats are missed, A tells its own subscribers that
    // B's clients still there left.
    let Node {
        cluster, broker, ..
    } = b;
    drop(cluster);
    drop(broker);
    eventually("leaves for B's clients", Duration::from_secs(10), || {
        a.node.delivered().len() == 6
    })
    .await;
    let mut said: Vec<(PresenceKind, String)> = a.node.delivered()[4..]
        .iter()
        .map(|e| (e.kind, e.client.clone()))
        .collect();
    said.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        said,
        [
            (PresenceKind::Leave, "b1".to_owned()),
            (PresenceKind::Leave, "b3".to_owned())
        ]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.node.delivered().len(), 6, "said once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_reach_every_node_and_sum_their_counts() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 1, 1).await;
    let b = start_node(vec![server.url()], "B", 2, 1).await;
    let c = start_node(vec![server.url()], "C", 4, 1).await;
    settle(&[&a, &b, &c]).await;

    let disconnect = UserAction::Disconnect {
        user: "alice".into(),
        reconnect: false,
        reason: "bye".into(),
    };
    let answer = b.cluster.act(&disconnect).await.unwrap();
    assert_eq!(answer.connections, 7);
    assert!(answer.missing_nodes.is_empty(), "{answer:?}");
    for n in [&a, &b, &c] {
        assert_eq!(
            n.node.acts(),
            std::slice::from_ref(&disconnect),
            "node {}",
            n.node.id
        );
    }

    let subscribe = UserAction::Subscribe {
        user: "alice".into(),
        channel: "room:1".into(),
    };
    // A node that answers but cannot apply it is one the action missed.
    *c.node.refuse.lock() = Some(ClusterError::Refused("no".into()));
    let answer = a.cluster.act(&subscribe).await.unwrap();
    assert_eq!(answer.connections, 3);
    assert_eq!(answer.missing_nodes, ["C"]);

    // A node that is gone but whose heartbeat is fresh is missing too.
    *c.node.refuse.lock() = None;
    let Node {
        cluster, broker, ..
    } = c;
    drop(cluster);
    drop(broker);
    let unsubscribe = UserAction::Unsubscribe {
        user: "alice".into(),
        channel: "room:1".into(),
    };
    let answer = a.cluster.act(&unsubscribe).await.unwrap();
    assert_eq!(answer.connections, 3);
    assert_eq!(answer.missing_nodes, ["C"]);
    assert_eq!(a.node.acts(), [disconnect.clone(), subscribe, unsubscribe]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_asking_node_are_its_answer() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 1, 1).await;
    let b = start_node(vec![server.url()], "B", 2, 1).await;
    settle(&[&a, &b]).await;

    *a.node.refuse.lock() = Some(ClusterError::Exhausted(
        "100000 revocations are held".into(),
    ));
    let disconnect = UserAction::Disconnect {
        user: "alice".into(),
        reconnect: true,
        reason: String::new(),
    };
    let err = a.cluster.act(&disconnect).await.unwrap_err();
    assert!(matches!(err, ClusterError::Exhausted(_)), "{err:?}");
    // Refused here: not sent to the others.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.node.acts().is_empty());

    let revoke = revoke_token("t-full", now() + 3600);
    let err = a
        .cluster
        .act(&UserAction::Revoke(revoke.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Exhausted(_)), "{err:?}");
    // It was stored first, so a node with room applies it from the stream.
    eventually(
        "B applies the stored revocation",
        Duration::from_secs(5),
        || b.node.revocations() == [revoke.clone()],
    )
    .await;

    // Bad revocations are refused before anything is stored.
    *a.node.refuse.lock() = None;
    for bad in [
        revoke_token("", now() + 60),
        revoke_token("t-past", now().saturating_sub(1)),
        revoke_token("t-far", now() + 31 * 24 * 3600),
    ] {
        let err = a.cluster.act(&UserAction::Revoke(bad)).await.unwrap_err();
        assert!(matches!(err, ClusterError::Refused(_)), "{err:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (A's own follower may meet the stored one after A has room again.)
    let stored = UserAction::Revoke(revoke.clone());
    assert!(
        a.node.acts().iter().all(|x| *x == stored),
        "{:?}",
        a.node.acts()
    );
    assert_eq!(b.node.revocations(), [revoke]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_events_reach_the_other_nodes_in_order() {
    let server = server().await;
    let a = start_node(vec![server.url()], "A", 0, 1).await;
    let b = start_node(vec![server.url()], "B", 0, 1).await;
    let c = start_node(vec![server.url()], "C", 0, 1).await;
    settle(&[&a, &b, &c]).await;

    let event = |i: usize, node: &str| PresenceEvent {
        kind: if i.is_multiple_of(2) {
            PresenceKind::Join
        } else {
            PresenceKind::Leave
        },
        channel: format!("room:{}", i % 3),
        client: format!("{node}-{i}"),
        user: format!("user{i}"),
        info: Some(format!("{{\"n\":{i}}}")),
        node: node.into(),
    };
    let sent: Vec<PresenceEvent> = (0..200).map(|i| event(i, "A")).collect();
    for e in &sent {
        a.node.events_tx.send(e.clone()).await.unwrap();
    }
    for n in [&b, &c] {
        eventually("A's events delivered", Duration::from_secs(10), || {
            n.node.delivered().len() >= sent.len()
        })
        .await;
        let clients = |v: &[PresenceEvent]| v.iter().map(|e| e.client.clone()).collect::<Vec<_>>();
        assert_eq!(
            clients(&n.node.delivered()),
            clients(&sent),
            "node {}: order",
            n.node.id
        );
        assert_eq!(n.node.delivered(), sent, "node {}", n.node.id);
    }
    // An event without a node is named after its sender, so the sender still skips it.
    let mut unnamed = event(1000, "B");
    unnamed.node.clear();
    b.node.events_tx.send(unnamed.clone()).await.unwrap();
    unnamed.node = "B".into();
    for n in [&a, &c] {
        eventually("B's event delivered", Duration::from_secs(10), || {
            n.node.delivered().last() == Some(&unnamed)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.node.delivered() == [unnamed.clone()], "A got its own");
    assert_eq!(b.node.delivered().len(), sent.len(), "B got its own");
    assert_eq!(a.cluster.dropped_events(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_nodes_now_later_and_after_a_server_restart() {
    let mut server = server().await;
    let a = start_node(vec![server.url()], "A", 1, 1).await;
    let b = start_node(vec![server.url()], "B", 2, 1).await;
    let c = start_node(vec![server.url()], "C", 4, 1).await;
    settle(&[&a, &b, &c]).await;
    assert_eq!(a.cluster.revocation_stream(), "HERALD_REVOCATIONS");

    // Through A: applied by every node before the answer, once each (the stream brings it too).
    let t1 = revoke_token("t1", now() + 3600);
    let answer = a
        .cluster
        .act(&UserAction::Revoke(t1.clone()))
        .await
        .unwrap();
    assert_eq!(answer.connections, 7);
    assert!(answer.missing_nodes.is_empty(), "{answer:?}");
    for n in [&a, &b, &c] {
        assert_eq!(
            n.node.revocations(),
            std::slice::from_ref(&t1),
            "node {}",
            n.node.id
        );
    }
    // A user revoked twice: the stored one keeps the later bounds.
    let bob = |issued_before, until| Revocation {
        what: Revoked::User {
            user: "bob.x y".into(),
            issued_before,
        },
        until,
    };
    let (u1, u2) = (bob(100, now() + 7200), bob(200, now() + 3600));
    a.cluster
        .act(&UserAction::Revoke(u1.clone()))
        .await
        .unwrap();
    c.cluster.act(&UserAction::Revoke(u2)).await.unwrap();
    let merged = bob(200, u1.until);
    // One that lapses before D starts.
    let short = revoke_token("t-short", now() + 2);
    a.cluster
        .act(&UserAction::Revoke(short.clone()))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        assert_eq!(
            n.node.revocations(),
            [t1.clone(), u1.clone(), merged.clone(), short.clone()],
            "node {}",
            n.node.id
        );
    }
    // Give the followers time to see them all too, then check nothing was applied twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&a, &b, &c] {
        assert_eq!(n.node.revocations().len(), 4, "node {}", n.node.id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // D starts later: it reads what is stored (lapsed ones skipped) before it says loaded.
    let d = start_node(vec![server.url()], "D", 8, 1).await;
    settle(&[&d]).await;
    assert_eq!(d.node.revocations(), [t1.clone(), merged.clone()]);

    // Stored revocations survive a server restart; nodes reconnect without applying them again.
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    for n in [&a, &b, &c, &d] {
        let mut state = n.broker.state();
        tokio::time::timeout(
            Duration::from_secs(15),
            state.wait_for(|s| *s == BrokerState::Connected),
        )
        .await
        .expect("reconnected")
        .unwrap();
    }
    let e = start_node(vec![server.url()], "E", 16, 1).await;
    settle(&[&a, &b, &c, &d, &e]).await;
    assert_eq!(e.node.revocations(), [t1.clone(), merged.clone()]);
    // Revocations stored while a node is up but that it never got asked about (the asker died
    // between storing and asking) reach it through the stream.
    let client = async_nats::connect(server.url()).await.unwrap();
    let t9 = revoke_token("t9", now() + 600);
    client
        .publish(
            "herald.revoked.token.t9",
            serde_json::to_vec(&t9).unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    for n in [&a, &b, &c, &d, &e] {
        eventually("the stream brings t9", Duration::from_secs(10), || {
            n.node.revocations().last() == Some(&t9)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.node.revocations().len(), 5);
    assert_eq!(
        d.node.revocations(),
        [t1.clone(), merged.clone(), t9.clone()]
    );
    assert_eq!(e.node.revocations(), [t1, merged, t9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_during_a_revoke_learns_it_when_it_is_back() {
    let mut servers = tokio::task::spawn_blocking(NatsServers::start)
        .await
        .unwrap();
    let urls = servers.urls();
    // Heartbeats that stay fresh while the JetStream cluster recovers from the loss.
    let config = NatsClusterConfig {
        heartbeat_interval: Duration::from_secs(10),
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let a = start_node_with(vec![urls[0].clone()], "A", 1, 3, config.clone()).await;
    let b = start_node_with(vec![urls[2].clone()], "B", 2, 3, config).await;
    settle(&[&a, &b]).await;

    // B's server goes away; B is cut off (its heartbeat is still fresh at A).
    let mut lost = servers.nodes.remove(2);
    lost.kill();
    // The stream may need a new leader first: retry while JetStream is unavailable.
    let t1 = revoke_token("t1", now() + 3600);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        match a.cluster.act(&UserAction::Revoke(t1.clone())).await {
            Ok(answer) => break answer,
            Err(ClusterError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("revoke not stored yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(answer.connections, 1);
    assert_eq!(answer.missing_nodes, ["B"]);
    assert!(b.node.revocations().is_empty());

    let mut state = b.broker.state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == BrokerState::Disconnected),
    )
    .await
    .expect("B notices")
    .unwrap();
    // While cut off, B's join/leave events are dropped and counted.
    b.node
        .events_tx
        .send(PresenceEvent {
            kind: PresenceKind::Join,
            channel: "room:1".into(),
            client: "b-1".into(),
            user: String::new(),
            info: None,
            node: "B".into(),
        })
        .await
        .unwrap();
    eventually("B counts the dropped event", Duration::from_secs(5), || {
        b.cluster.dropped_events() == 1
    })
    .await;

    assert!(b.node.revocations().is_empty());

    let lost = tokio::task::spawn_blocking(move || {
        lost.restart();
        lost
    })
    .await
    .unwrap();
    eventually("B learns t1 once back", Duration::from_secs(20), || {
        b.node.revocations() == [t1.clone()]
    })
    .await;
    assert!(a.node.delivered().is_empty());
    drop(lost);
}
