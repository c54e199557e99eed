//! [`NatsCluster`]: the multi-node [`Cluster`] on core NATS, beside the JetStream broker.
//!
//! Subjects, under the broker's prefix `P`:
//! - `P.node.<id>`: every node publishes a heartbeat each interval (JSON [`NodeStats`] plus its
//!   interval); every node listens on `P.node.*` and drops a peer silent for
//!   [`MISSED_HEARTBEATS`] of *its* intervals. A node that stops cleanly says `leaving`.
//! - `P.ctl.channels`: scatter-gather. The asking node publishes `{pattern, limit}` with a
//!   reply inbox; every node answers with its own channels; the asker waits for the nodes it
//!   knows (or a timeout) and sums.
//! - `P.ctl.drain.<id>`: request/reply to one node.
//! - `P.ctl.presence`: scatter-gather like `P.ctl.channels`. The asker publishes
//!   `{from, channel}`; every other node answers `{node_id, clients}` with the WebSocket and SSE
//!   connections it holds on the channel; the asker joins them with its own. `{from, user}`
//!   asks for the connections of a user instead (WebSocket, SSE, held long-polls).
//! - `P.ctl.act`: scatter-gather of an operator's action on a user. The asker publishes
//!   `{from, action, stored}` (`action`: the [`UserAction`] as JSON; `stored`: for a revocation,
//!   its sequence in the revocation stream); every other node applies it and answers
//!   `{node_id, connections}` or `{node_id, error}`; the asker sums the counts with its own. A
//!   revocation is stored first (module `revocations`: stream `<stream>_REVOCATIONS` on
//!   `P.revoked.>`, read by every node at start and after every reconnect, then followed live),
//!   so nodes that are down or cut off learn it when they come back.
//! - `P.ctl.event`: every join/leave of this node's clients ([`PresenceEvent`] as JSON), fire
//!   and forget on core NATS, published by one task in the order the node queued them (dropped
//!   and counted while disconnected); every node hands the other nodes' events to its own
//!   subscribers.
//!
//! `<id>` is the node id encoded as one subject token: `[A-Za-z0-9_-]` kept, every other
//! byte written `~XX` (hex), so an id can never act as a wildcard or span tokens.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{
    ActionAnswer, Broker, BrokerState, ChannelName, ChannelPattern, ChannelsAnswer, ChannelsQuery,
    Cluster, ClusterError, LocalNode, MISSED_HEARTBEATS, NodeStats, PresenceAnswer, PresenceEntry,
    PresenceEvent, PresenceKind, UserAction,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::{
    NatsBroker,
    revocations::{RevocationLog, now_secs},
};

/// Settings of [`NatsCluster`].
#[derive(Debug, Clone)]
pub struct NatsClusterConfig {
    /// How often this node publishes its heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a scatter-gather or a drain request waits for answers.
    pub request_timeout: Duration,
    /// How long the revocation stream keeps a revocation (its `max_age`), and so the latest
    /// `until` a revocation may have: one lasting longer would be forgotten by the stream
    /// before it lapses, so [`Cluster::act`] refuses it.
    pub revocation_max_age: Duration,
}

impl NatsClusterConfig {
    /// Default wait for answers of other nodes.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default retention of stored revocations: 30 days.
    pub const DEFAULT_REVOCATION_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
}

impl Default for NatsClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: herald_core::DEFAULT_HEARTBEAT_INTERVAL,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            revocation_max_age: Self::DEFAULT_REVOCATION_MAX_AGE,
        }
    }
}

/// A heartbeat on `P.node.<id>`.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    #[serde(flatten)]
    stats: NodeStats,
    /// The sender's interval: peers drop it after [`MISSED_HEARTBEATS`] of these.
    interval_ms: u64,
    /// Sent once when the node stops: peers forget it at once.
    #[serde(default)]
    leaving: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChannelsAsk {
    pattern: Option<String>,
    limit: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChannelsReply {
    node_id: String,
    answer: ChannelsAnswer,
}

#[derive(Debug, Serialize, Deserialize)]
struct PresenceAsk {
    /// The asking node (it answers for itself).
    from: String,
    #[serde(default)]
    channel: String,
    /// Set: the connections of this user instead of a channel's clients (`channel` empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PresenceReply {
    node_id: String,
    clients: Vec<PresenceEntry>,
    /// More parts of this node's answer follow (a big channel is answered in parts that each
    /// fit NATS' `max_payload`).
    #[serde(default)]
    more: bool,
}

/// Presence entries per reply message: about 200 bytes each as JSON, so a part stays far
/// below NATS' default 1 MiB `max_payload`.
const PRESENCE_PART: usize = 2000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ActAsk {
    /// The asking node (it applies the action itself, before asking).
    from: String,
    action: UserAction,
    /// For a revocation: its sequence in the revocation stream (each node applies a stored
    /// revocation once, whether the stream or this request brings it first).
    #[serde(default)]
    stored: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ActReply {
    node_id: String,
    #[serde(default)]
    connections: u64,
    /// Why the node could not apply the action.
    #[serde(default)]
    error: Option<String>,
}

/// A scatter-gather answer, from one node.
trait NodeReply: DeserializeOwned {
    fn node_id(&self) -> &str;
    /// Whether this is the node's last (or only) part.
    fn last(&self) -> bool {
        true
    }
}

impl NodeReply for ChannelsReply {
    fn node_id(&self) -> &str {
        &self.node_id
    }
}

impl NodeReply for PresenceReply {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn last(&self) -> bool {
        !self.more
    }
}

impl NodeReply for ActReply {
    fn node_id(&self) -> &str {
        &self.node_id
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct DrainAsk {
    rate: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DrainReply {
    connections: u64,
}

/// What this node knows of another.
struct Peer {
    stats: NodeStats,
    received: Instant,
    interval: Duration,
}

impl Peer {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.received) > self.interval * MISSED_HEARTBEATS
    }
}

struct Inner {
    broker: NatsBroker,
    node: Arc<dyn LocalNode>,
    local_id: String,
    prefix: String,
    config: NatsClusterConfig,
    peers: Mutex<HashMap<String, Peer>>,
    changes: watch::Sender<u64>,
    revocations: Arc<RevocationLog>,
    /// Join/leave events of this node not relayed (NATS was away, or the publish failed).
    dropped_events: AtomicU64,
    /// Who other nodes said joined and has not left yet, per node: when a node dies (or
    /// restarts) without saying, this node says `leave` for them to its own subscribers.
    members: Mutex<RemoteMembers>,
}

/// Clients of other nodes known through their join events, per node.
#[derive(Default)]
struct RemoteMembers {
    by_node: HashMap<String, HashMap<(String, String), PresenceEvent>>,
    /// Entries in `by_node`, bounded by [`MAX_REMOTE_MEMBERS`].
    len: usize,
}

/// Most remote joins remembered for leaves on a node's death; past it new joins are not
/// remembered (their leave on a death is then not synthesized).
const MAX_REMOTE_MEMBERS: usize = 1_000_000;

impl RemoteMembers {
    /// Records another node's join or leave.
    fn note(&mut self, event: &PresenceEvent) {
        let key = (event.channel.clone(), event.client.clone());
        match event.kind {
            PresenceKind::Join if self.len < MAX_REMOTE_MEMBERS => {
                let node = self.by_node.entry(event.node.clone()).or_default();
                if node.insert(key, event.clone()).is_none() {
                    self.len += 1;
                }
            }
            PresenceKind::Join => {}
            PresenceKind::Leave => {
                if let Some(node) = self.by_node.get_mut(&event.node)
                    && node.remove(&key).is_some()
                {
                    self.len -= 1;
                    if node.is_empty() {
                        self.by_node.remove(&event.node);
                    }
                }
            }
        }
    }

    /// Forgets a node, returning a leave for each client it had not said left.
    fn forget(&mut self, node: &str) -> Vec<PresenceEvent> {
        let Some(gone) = self.by_node.remove(node) else {
            return Vec::new();
        };
        self.len -= gone.len();
        gone.into_values()
            .map(|mut e| {
                e.kind = PresenceKind::Leave;
                e
            })
            .collect()
    }
}

/// The cluster of every node on one NATS deployment (same subject prefix). Runs background
/// tasks (heartbeats and answering peers, relaying join/leave events, following revocations)
/// until dropped.
pub struct NatsCluster {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Encodes a node id as one subject token (see the module docs).
pub fn node_token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('~');
    }
    out
}

impl NatsCluster {
    /// Starts heartbeats and answering peers for `node` over `broker`'s connection (following
    /// its reconnects), relays the node's join/leave events (it takes the node's receiver:
    /// [`LocalNode::take_events`]) and applies the stored revocations, then new ones as they
    /// come. Must be called inside a tokio runtime.
    pub fn new(broker: &NatsBroker, node: Arc<dyn LocalNode>, config: NatsClusterConfig) -> Self {
        let local_id = node.stats().node_id;
        let revocations = Arc::new(RevocationLog::new(broker, config.revocation_max_age));
        let events = node.take_events();
        if events.is_none() {
            warn!("the node's join/leave events were already taken; they are not relayed");
        }
        let inner = Arc::new(Inner {
            broker: broker.clone(),
            prefix: broker.config().subject_prefix.clone(),
            node: node.clone(),
            local_id,
            config,
            peers: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            revocations: revocations.clone(),
            dropped_events: AtomicU64::new(0),
            members: Mutex::new(RemoteMembers::default()),
        });
        let mut tasks = vec![
            tokio::spawn(run(inner.clone())),
            tokio::spawn(revocations.follow(broker.clone(), node)),
        ];
        if let Some(events) = events {
            tasks.push(tokio::spawn(relay_events(inner.clone(), events)));
        }
        Self { inner, tasks }
    }

    /// Join/leave events of this node that were not relayed to the others (NATS was away or
    /// the publish failed), since start (for metrics).
    pub fn dropped_events(&self) -> u64 {
        self.inner.dropped_events.load(Ordering::Relaxed)
    }

    /// Becomes `true` once the revocations stored when this node first connected have been
    /// applied (readiness: until then a revoked token may still be accepted here).
    pub fn revocations_loaded(&self) -> watch::Receiver<bool> {
        self.inner.revocations.loaded()
    }

    /// The JetStream stream holding the cluster's revocations (`<stream>_REVOCATIONS`).
    pub fn revocation_stream(&self) -> &str {
        self.inner.revocations.stream_name()
    }

    /// Tells the other nodes this one is leaving (so they drop it at once) and stops
    /// heartbeats. Best effort: a node that dies is dropped after missed heartbeats instead.
    pub async fn leave(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(client) = self.inner.broker.client() {
            let hb = self.inner.heartbeat(true);
            let _ = client.publish(self.inner.node_subject(), hb).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    fn node_subject(&self) -> String {
        format!("{}.node.{}", self.prefix, node_token(&self.local_id))
    }

    fn heartbeat(&self, leaving: bool) -> Bytes {
        let hb = Heartbeat {
            stats: self.node.stats(),
            interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            leaving,
        };
        serde_json::to_vec(&hb).map(Bytes::from).unwrap_or_default()
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn on_heartbeat(&self, payload: &[u8]) {
        let Ok(hb) = serde_json::from_slice::<Heartbeat>(payload) else {
            debug!("ignoring a malformed heartbeat");
            return;
        };
        if hb.stats.node_id == self.local_id {
            return;
        }
        let mut peers = self.peers.lock();
        if hb.leaving {
            if peers.remove(&hb.stats.node_id).is_some() {
                drop(peers);
                self.bump();
            }
            self.node_gone(&hb.stats.node_id);
            return;
        }
        // Uptime going back: the node restarted, and its earlier clients are gone.
        let restarted = peers
            .get(&hb.stats.node_id)
            .is_some_and(|p| hb.stats.uptime_secs < p.stats.uptime_secs)
            .then(|| hb.stats.node_id.clone());
        let interval = Duration::from_millis(hb.interval_ms.clamp(100, 600_000));
        let changed = peers.get(&hb.stats.node_id).is_none_or(|p| {
            let mut old = p.stats.clone();
            old.uptime_secs = hb.stats.uptime_secs;
            old != hb.stats
        });
        peers.insert(
            hb.stats.node_id.clone(),
            Peer {
                stats: hb.stats,
                received: Instant::now(),
                interval,
            },
        );
        drop(peers);
        if let Some(id) = restarted {
            self.node_gone(&id);
        }
        if changed {
            self.bump();
        }
    }

    /// Another node's join or leave: remembered (for [`Inner::node_gone`]) and handed to
    /// this node's subscribers.
    fn on_event(&self, event: &PresenceEvent) {
        self.members.lock().note(event);
        self.node.deliver_event(event);
    }

    /// A node died, left or restarted: its clients that did not say they left are gone, and
    /// this node's subscribers of their channels are told so.
    fn node_gone(&self, node: &str) {
        let leaves = self.members.lock().forget(node);
        if !leaves.is_empty() {
            debug!(
                node,
                leaves = leaves.len(),
                "saying leave for the clients of a node that is gone"
            );
        }
        for event in &leaves {
            self.node.deliver_event(event);
        }
    }

    fn prune(&self) {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let before = peers.len();
        let mut gone = Vec::new();
        peers.retain(|id, p| {
            let keep = !p.expired(now);
            if !keep {
                warn!(node = %id, "node missed its heartbeats; dropped from the cluster view");
                gone.push(id.clone());
            }
            keep
        });
        let changed = peers.len() != before;
        drop(peers);
        for id in gone {
            self.node_gone(&id);
        }
        if changed {
            self.bump();
        }
    }

    fn live_peers(&self) -> HashSet<String> {
        let now = Instant::now();
        self.peers
            .lock()
            .iter()
            .filter(|(_, p)| !p.expired(now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn ctl_subject(&self, what: &str) -> String {
        format!("{}.ctl.{what}", self.prefix)
    }

    /// This node's clients of `channel`, each naming this node.
    fn local_presence(&self, channel: &ChannelName) -> Vec<PresenceEntry> {
        let mut clients = self.node.presence(channel);
        for c in &mut clients {
            if c.node.is_empty() {
                c.node.clone_from(&self.local_id);
            }
        }
        clients
    }

    /// `local` joined with every other node's answer to `ask` on `P.ctl.presence`; the nodes
    /// that did not answer in time are listed as missing.
    async fn gather_presence(
        &self,
        local: Vec<PresenceEntry>,
        ask: &PresenceAsk,
    ) -> Result<PresenceAnswer, ClusterError> {
        let body = serde_json::to_vec(ask).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let (replies, missing) = self
            .gather::<PresenceReply>(self.ctl_subject("presence"), body, self.live_peers(), false)
            .await?;
        let mut parts = vec![PresenceAnswer {
            clients: local,
            missing_nodes: Vec::new(),
        }];
        parts.extend(replies.into_iter().map(|r| PresenceAnswer {
            clients: r.clients,
            missing_nodes: Vec::new(),
        }));
        parts.push(PresenceAnswer {
            clients: Vec::new(),
            missing_nodes: missing,
        });
        Ok(PresenceAnswer::merge(parts))
    }

    /// This node's connections of `user`, each naming this node.
    fn local_user(&self, user: &str) -> Vec<PresenceEntry> {
        let mut clients = self.node.user_connections(user);
        for c in &mut clients {
            if c.node.is_empty() {
                c.node.clone_from(&self.local_id);
            }
        }
        clients
    }

    /// Applies an action asked over `P.ctl.act` (or by this node itself) here.
    fn act_here(&self, ask: &ActAsk) -> Result<u64, ClusterError> {
        match (&ask.action, ask.stored) {
            (UserAction::Revoke(r), Some(seq)) => self.revocations.apply(&*self.node, seq, r),
            (action, _) => self.node.act(action),
        }
    }

    /// Publishes `body` on `subject` with a reply inbox and collects one answer per node until
    /// every node of `expected` answered or the request timeout passed. Returns the answers
    /// (this node's own excluded, at most one per node; nodes not yet in `expected` included if
    /// they answer in time) and the expected nodes that did not answer, sorted. Without a
    /// connection nothing is sent and every expected node is missing; with no expected node
    /// nothing is sent unless `always_send` (an action must reach a node whose first heartbeat
    /// is still on its way).
    async fn gather<R: NodeReply>(
        &self,
        subject: String,
        body: Vec<u8>,
        mut expected: HashSet<String>,
        always_send: bool,
    ) -> Result<(Vec<R>, Vec<String>), ClusterError> {
        let missing = |expected: HashSet<String>| {
            let mut missing: Vec<String> = expected.into_iter().collect();
            missing.sort();
            missing
        };
        if expected.is_empty() && !always_send {
            return Ok((Vec::new(), Vec::new()));
        }
        let Some(client) = self.broker.client() else {
            return Ok((Vec::new(), missing(expected)));
        };
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        client
            .publish_with_reply(subject, inbox, body.into())
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let _ = client.flush().await;
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        // Nodes whose answer is complete, and the parts of answers still coming in.
        let mut done = HashSet::new();
        let mut parts = Vec::new();
        let mut partial: HashMap<String, Vec<R>> = HashMap::new();
        while !expected.is_empty() || !partial.is_empty() {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await else {
                break;
            };
            let Ok(reply) = serde_json::from_slice::<R>(&m.payload) else {
                continue;
            };
            let id = reply.node_id().to_owned();
            if id == self.local_id || done.contains(&id) {
                continue;
            }
            if !reply.last() {
                partial.entry(id).or_default().push(reply);
                continue;
            }
            parts.extend(partial.remove(&id).unwrap_or_default());
            parts.push(reply);
            expected.remove(&id);
            done.insert(id);
        }
        let _ = replies.unsubscribe().await;
        // A node whose answer did not arrive whole is missing, not half counted.
        expected.extend(partial.into_keys());
        Ok((parts, missing(expected)))
    }
}

/// Publishes this node's join/leave events on `P.ctl.event`, in the order the node queued
/// them; while NATS is away they are dropped (and counted): they are ephemeral by contract.
async fn relay_events(inner: Arc<Inner>, mut events: mpsc::Receiver<PresenceEvent>) {
    let subject = inner.ctl_subject("event");
    while let Some(mut event) = events.recv().await {
        if event.node.is_empty() {
            event.node.clone_from(&inner.local_id);
        }
        let sent = match (inner.broker.client(), serde_json::to_vec(&event)) {
            (Some(client), Ok(body)) => client.publish(subject.clone(), body.into()).await.is_ok(),
            _ => false,
        };
        if !sent {
            inner.dropped_events.fetch_add(1, Ordering::Relaxed);
            debug!(channel = %event.channel, "join/leave event not relayed: not connected to NATS");
        }
    }
}

/// Heartbeats and answers, following the broker's connection.
async fn run(inner: Arc<Inner>) {
    let mut state = inner.broker.state();
    let mut tick = tokio::time::interval(inner.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wait for a connection, pruning peers meanwhile.
        let client = loop {
            if *state.borrow_and_update() == BrokerState::Connected
                && let Some(c) = inner.broker.client()
            {
                break c;
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                _ = tick.tick() => inner.prune(),
            }
        };
        let prefix = &inner.prefix;
        let subs = async {
            let e = |e: async_nats::SubscribeError| e.to_string();
            let hb = client
                .subscribe(format!("{prefix}.node.*"))
                .await
                .map_err(e)?;
            let ch = client
                .subscribe(format!("{prefix}.ctl.channels"))
                .await
                .map_err(e)?;
            let dr = client
                .subscribe(format!(
                    "{prefix}.ctl.drain.{}",
                    node_token(&inner.local_id)
                ))
                .await
                .map_err(e)?;
            let pr = client
                .subscribe(inner.ctl_subject("presence"))
                .await
                .map_err(e)?;
            let act = client
                .subscribe(inner.ctl_subject("act"))
                .await
                .map_err(e)?;
            let ev = client
                .subscribe(inner.ctl_subject("event"))
                .await
                .map_err(e)?;
            client.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((hb, ch, dr, pr, act, ev))
        };
        let (mut hb, mut ch, mut dr, mut pr, mut act, mut ev) = match subs.await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cluster subscriptions failed; retrying");
                tokio::time::sleep(inner.config.heartbeat_interval).await;
                continue;
            }
        };
        tick.reset_immediately();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    inner.prune();
                    if client.publish(inner.node_subject(), inner.heartbeat(false)).await.is_err() {
                        break;
                    }
                }
                m = hb.next() => match m {
                    Some(m) => inner.on_heartbeat(&m.payload),
                    None => break,
                },
                m = ch.next() => match m {
                    Some(m) => {
                        let Some(reply) = m.reply else { continue };
                        let Ok(ask) = serde_json::from_slice::<ChannelsAsk>(&m.payload) else { continue };
                        let query = ChannelsQuery {
                            pattern: ask.pattern.as_deref().and_then(|p| ChannelPattern::new(p).ok()),
                            limit: ask.limit.clamp(1, 10_000),
                        };
                        let answer = ChannelsAnswer::local(inner.node.channels(), &query);
                        let body = ChannelsReply { node_id: inner.local_id.clone(), answer };
                        if let Ok(body) = serde_json::to_vec(&body) {
                            let _ = client.publish(reply, body.into()).await;
                        }
                    }
                    None => break,
                },
                m = dr.next() => match m {
                    Some(m) => {
                        let Some(reply) = m.reply else { continue };
                        let ask = serde_json::from_slice::<DrainAsk>(&m.payload).unwrap_or(DrainAsk { rate: None });
                        warn!(rate = ?ask.rate, "drain requested through the control plane");
                        let connections = inner.node.drain(ask.rate);
                        if let Ok(body) = serde_json::to_vec(&DrainReply { connections }) {
                            let _ = client.publish(reply, body.into()).await;
                        }
                        // Tell the others now rather than at the next tick.
                        let _ = client.publish(inner.node_subject(), inner.heartbeat(false)).await;
                    }
                    None => break,
                },
                m = pr.next() => match m {
                    Some(m) => {
                        let Some(reply) = m.reply else { continue };
                        let Ok(ask) = serde_json::from_slice::<PresenceAsk>(&m.payload) else { continue };
                        if ask.from == inner.local_id { continue }
                        let (mut clients, channel) = match &ask.user {
                            Some(user) => (inner.local_user(user), ask.channel.clone()),
                            None => {
                                let Ok(channel) = ChannelName::new(&ask.channel) else { continue };
                                (inner.local_presence(&channel), ask.channel.clone())
                            }
                        };
                        // In parts, the last one marked: a part never nears max_payload.
                        loop {
                            let rest = clients.split_off(clients.len().min(PRESENCE_PART));
                            let body = PresenceReply {
                                node_id: inner.local_id.clone(),
                                clients,
                                more: !rest.is_empty(),
                            };
                            if let Ok(body) = serde_json::to_vec(&body)
                                && let Err(error) = client.publish(reply.clone(), body.into()).await
                            {
                                // The asker lists this node as missing.
                                warn!(%error, channel = %channel, "presence answer not sent");
                                break;
                            }
                            if rest.is_empty() {
                                break;
                            }
                            clients = rest;
                        }
                    }
                    None => break,
                },
                m = act.next() => match m {
                    Some(m) => {
                        let Ok(ask) = serde_json::from_slice::<ActAsk>(&m.payload) else {
                            debug!("ignoring a malformed action");
                            continue;
                        };
                        if ask.from == inner.local_id { continue }
                        let body = match inner.act_here(&ask) {
                            Ok(connections) => ActReply { node_id: inner.local_id.clone(), connections, error: None },
                            Err(e) => {
                                warn!(error = %e, action = ?ask.action, "action from node {} not applied", ask.from);
                                ActReply { node_id: inner.local_id.clone(), connections: 0, error: Some(e.to_string()) }
                            }
                        };
                        let Some(reply) = m.reply else { continue };
                        if let Ok(body) = serde_json::to_vec(&body) {
                            let _ = client.publish(reply, body.into()).await;
                        }
                    }
                    None => break,
                },
                m = ev.next() => match m {
                    Some(m) => match serde_json::from_slice::<PresenceEvent>(&m.payload) {
                        Ok(event) if event.node != inner.local_id => inner.on_event(&event),
                        Ok(_) => {}
                        Err(_) => debug!("ignoring a malformed join/leave event"),
                    },
                    None => break,
                },
                r = state.changed() => {
                    if r.is_err() { return }
                    if *state.borrow() != BrokerState::Connected { break }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Cluster for NatsCluster {
    fn local_id(&self) -> String {
        self.inner.local_id.clone()
    }

    fn nodes(&self) -> Vec<NodeStats> {
        let now = Instant::now();
        let mut nodes = vec![self.inner.node.stats()];
        for p in self.inner.peers.lock().values() {
            if p.expired(now) {
                continue;
            }
            let mut s = p.stats.clone();
            s.uptime_secs += now.duration_since(p.received).as_secs();
            nodes.push(s);
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    async fn channels(&self, query: &ChannelsQuery) -> Result<ChannelsAnswer, ClusterError> {
        let inner = &self.inner;
        let local = ChannelsAnswer::local(inner.node.channels(), query);
        let ask = ChannelsAsk {
            pattern: query.pattern.as_ref().map(|p| p.as_str().to_owned()),
            limit: query.limit,
        };
        let body =
            serde_json::to_vec(&ask).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let (replies, missing) = inner
            .gather::<ChannelsReply>(
                inner.ctl_subject("channels"),
                body,
                inner.live_peers(),
                false,
            )
            .await?;
        let mut parts = vec![local];
        parts.extend(replies.into_iter().map(|r| r.answer));
        parts.push(ChannelsAnswer {
            missing_nodes: missing,
            ..Default::default()
        });
        Ok(ChannelsAnswer::merge(parts, query.limit))
    }

    async fn drain(&self, node_id: &str, rate: Option<usize>) -> Result<u64, ClusterError> {
        let inner = &self.inner;
        if node_id == inner.local_id {
            return Ok(inner.node.drain(rate));
        }
        let client = inner
            .broker
            .client()
            .ok_or_else(|| ClusterError::Unavailable("not connected to NATS".into()))?;
        let body = serde_json::to_vec(&DrainAsk { rate })
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let subject = format!("{}.ctl.drain.{}", inner.prefix, node_token(node_id));
        let reply = tokio::time::timeout(
            inner.config.request_timeout,
            client.request(subject, body.into()),
        )
        .await
        .map_err(|_| ClusterError::Unavailable(format!("node {node_id:?} did not answer in time")))?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                ClusterError::UnknownNode(node_id.to_owned())
            }
            _ => ClusterError::Unavailable(e.to_string()),
        })?;
        let reply: DrainReply = serde_json::from_slice(&reply.payload)
            .map_err(|e| ClusterError::Unavailable(format!("bad drain reply: {e}")))?;
        Ok(reply.connections)
    }

    async fn presence(&self, channel: &ChannelName) -> Result<PresenceAnswer, ClusterError> {
        let inner = &self.inner;
        let ask = PresenceAsk {
            from: inner.local_id.clone(),
            channel: channel.as_str().to_owned(),
            user: None,
        };
        inner
            .gather_presence(inner.local_presence(channel), &ask)
            .await
    }

    async fn user_connections(&self, user: &str) -> Result<PresenceAnswer, ClusterError> {
        let inner = &self.inner;
        let ask = PresenceAsk {
            from: inner.local_id.clone(),
            channel: String::new(),
            user: Some(user.to_owned()),
        };
        inner.gather_presence(inner.local_user(user), &ask).await
    }

    async fn act(&self, action: &UserAction) -> Result<ActionAnswer, ClusterError> {
        let inner = &self.inner;
        let mut ask = ActAsk {
            from: inner.local_id.clone(),
            action: action.clone(),
            stored: None,
        };
        if let UserAction::Revoke(r) = action {
            // Stored before any node applies it, so none can miss it: the nodes that do not
            // answer now read it when they (re)connect.
            let now = now_secs();
            r.validate(now)
                .map_err(|e| ClusterError::Refused(e.to_string()))?;
            let max_age = inner.config.revocation_max_age.as_secs();
            if r.until > now.saturating_add(max_age) {
                return Err(ClusterError::Refused(format!(
                    "until must be at most {max_age} s from now (revocations are stored that long)"
                )));
            }
            let client = inner
                .broker
                .client()
                .ok_or_else(|| ClusterError::Unavailable("not connected to NATS".into()))?;
            let stored = inner.revocations.store(&client, r).await?;
            ask.action = UserAction::Revoke(stored.revocation);
            ask.stored = Some(stored.seq);
        }
        // This node first: an action it refuses is not sent to the others (a revocation is
        // already stored by then, and the nodes with room apply it from the stream).
        let mut connections = inner.act_here(&ask)?;
        let expected = inner.live_peers();
        let body =
            serde_json::to_vec(&ask).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let (replies, mut missing_nodes) = match inner
            .gather::<ActReply>(inner.ctl_subject("act"), body, expected.clone(), true)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // Applied here already: report the others as missing rather than fail.
                warn!(error = %e, "action not sent to the other nodes");
                let mut missing: Vec<String> = expected.into_iter().collect();
                missing.sort();
                (Vec::new(), missing)
            }
        };
        for reply in replies {
            match reply.error {
                None => connections = connections.saturating_add(reply.connections),
                // It answered but did not apply it: it is one of the nodes the action missed.
                Some(error) => {
                    warn!(node = %reply.node_id, %error, "a node refused the action");
                    missing_nodes.push(reply.node_id);
                }
            }
        }
        missing_nodes.sort();
        Ok(ActionAnswer {
            connections,
            missing_nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_are_single_safe_tokens() {
        assert_eq!(node_token("node-1"), "node-1");
        assert_eq!(node_token("a.b"), "a~2Eb");
        assert_eq!(node_token("*"), "~2A");
        assert_eq!(node_token(">"), "~3E");
        assert_ne!(node_token("a.b"), node_token("a~2Eb"));
        assert_eq!(node_token(""), "~");
    }
}
