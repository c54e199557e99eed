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
//!
//! `<id>` is the node id encoded as one subject token: `[A-Za-z0-9_-]` kept, every other
//! byte written `~XX` (hex), so an id can never act as a wildcard or span tokens.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{
    Broker, BrokerState, ChannelPattern, ChannelsAnswer, ChannelsQuery, Cluster, ClusterError,
    LocalNode, MISSED_HEARTBEATS, NodeStats,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::NatsBroker;

/// Settings of [`NatsCluster`].
#[derive(Debug, Clone)]
pub struct NatsClusterConfig {
    /// How often this node publishes its heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a scatter-gather or a drain request waits for answers.
    pub request_timeout: Duration,
}

impl NatsClusterConfig {
    /// Default wait for answers of other nodes.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
}

impl Default for NatsClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: herald_core::DEFAULT_HEARTBEAT_INTERVAL,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
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
}

/// The cluster of every node on one NATS deployment (same subject prefix). Runs a background
/// task (heartbeats, answering peers) until dropped.
pub struct NatsCluster {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
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
    /// its reconnects). Must be called inside a tokio runtime.
    pub fn new(broker: &NatsBroker, node: Arc<dyn LocalNode>, config: NatsClusterConfig) -> Self {
        let local_id = node.stats().node_id;
        let inner = Arc::new(Inner {
            broker: broker.clone(),
            prefix: broker.config().subject_prefix.clone(),
            node,
            local_id,
            config,
            peers: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
        });
        let task = tokio::spawn(run(inner.clone()));
        Self { inner, task }
    }

    /// Tells the other nodes this one is leaving (so they drop it at once) and stops
    /// heartbeats. Best effort: a node that dies is dropped after missed heartbeats instead.
    pub async fn leave(&self) {
        self.task.abort();
        if let Some(client) = self.inner.broker.client() {
            let hb = self.inner.heartbeat(true);
            let _ = client.publish(self.inner.node_subject(), hb).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.task.abort();
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
            return;
        }
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
        if changed {
            self.bump();
        }
    }

    fn prune(&self) {
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let before = peers.len();
        peers.retain(|id, p| {
            let keep = !p.expired(now);
            if !keep {
                warn!(node = %id, "node missed its heartbeats; dropped from the cluster view");
            }
            keep
        });
        let changed = peers.len() != before;
        drop(peers);
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
            client.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((hb, ch, dr))
        };
        let (mut hb, mut ch, mut dr) = match subs.await {
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
        let mut expected = inner.live_peers();
        if expected.is_empty() {
            return Ok(local);
        }
        let mut parts = vec![local];
        let Some(client) = inner.broker.client() else {
            let mut missing: Vec<String> = expected.into_iter().collect();
            missing.sort();
            parts.push(ChannelsAnswer {
                missing_nodes: missing,
                ..Default::default()
            });
            return Ok(ChannelsAnswer::merge(parts, query.limit));
        };
        let ask = ChannelsAsk {
            pattern: query.pattern.as_ref().map(|p| p.as_str().to_owned()),
            limit: query.limit,
        };
        let body =
            serde_json::to_vec(&ask).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        client
            .publish_with_reply(format!("{}.ctl.channels", inner.prefix), inbox, body.into())
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let _ = client.flush().await;
        let deadline = tokio::time::Instant::now() + inner.config.request_timeout;
        let mut seen = HashSet::new();
        while !expected.is_empty() {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await else {
                break;
            };
            let Ok(reply) = serde_json::from_slice::<ChannelsReply>(&m.payload) else {
                continue;
            };
            if reply.node_id == inner.local_id || !seen.insert(reply.node_id.clone()) {
                continue;
            }
            expected.remove(&reply.node_id);
            parts.push(reply.answer);
        }
        let _ = replies.unsubscribe().await;
        let mut missing: Vec<String> = expected.into_iter().collect();
        missing.sort();
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

    // Interim, this node only: the cluster-wide versions land with the presence work.
    async fn presence(
        &self,
        channel: &herald_core::ChannelName,
    ) -> Result<herald_core::PresenceAnswer, ClusterError> {
        Ok(herald_core::PresenceAnswer::merge([
            herald_core::PresenceAnswer {
                clients: self.inner.node.presence(channel),
                missing_nodes: Vec::new(),
            },
        ]))
    }

    async fn act(
        &self,
        action: &herald_core::UserAction,
    ) -> Result<herald_core::ActionAnswer, ClusterError> {
        Ok(herald_core::ActionAnswer {
            connections: self.inner.node.act(action)?,
            missing_nodes: Vec::new(),
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
