//! Cluster view: what each node reports about itself ([`NodeStats`]), and the [`Cluster`]
//! trait through which the control plane answers for every node (stats, channels, drain).
//!
//! [`LocalCluster`] is the single-node implementation (memory broker); `herald-nats` has the
//! multi-node one (heartbeats and request/reply on core NATS). No NATS type appears here.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    ActionAnswer, ChannelName, PresenceAnswer, PresenceEntry, PresenceEvent, Protocol, UserAction,
};

/// Connections of one node (or a sum) per protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolCounts {
    /// Open WebSocket connections.
    pub websocket: u64,
    /// Open SSE streams.
    pub sse: u64,
    /// Long-poll clients (held requests and recently active clients).
    pub longpoll: u64,
    /// Interval-poll clients (recently active).
    pub poll: u64,
}

impl ProtocolCounts {
    /// The count of one protocol.
    pub fn get(&self, p: Protocol) -> u64 {
        match p {
            Protocol::WebSocket => self.websocket,
            Protocol::Sse => self.sse,
            Protocol::LongPoll => self.longpoll,
            Protocol::Poll => self.poll,
        }
    }

    /// Sets the count of one protocol.
    pub fn set(&mut self, p: Protocol, n: u64) {
        match p {
            Protocol::WebSocket => self.websocket = n,
            Protocol::Sse => self.sse = n,
            Protocol::LongPoll => self.longpoll = n,
            Protocol::Poll => self.poll = n,
        }
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &ProtocolCounts) {
        for p in Protocol::ALL {
            self.set(p, self.get(p).saturating_add(other.get(p)));
        }
    }

    /// All protocols together.
    pub fn total(&self) -> u64 {
        Protocol::ALL.iter().map(|p| self.get(*p)).sum()
    }
}

/// What a node reports about itself (the heartbeat payload between nodes, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's id (`HERALD_NODE_ID`).
    pub node_id: String,
    /// Herald version the node runs.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Client connections per protocol.
    pub connections: ProtocolCounts,
    /// Connection-channel subscriptions.
    pub subscriptions: u64,
    /// Channels with local subscribers.
    pub channels: u64,
    /// True while the node drains its clients.
    #[serde(default)]
    pub draining: bool,
}

/// One channel and how many connections are subscribed to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCount {
    /// The channel name.
    pub channel: String,
    /// Subscribed connections.
    pub subscribers: u64,
}

/// A glob over channel names: `*` matches any run of characters (also none), `?` exactly one.
/// Every other character must be in the channel alphabet and matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern(String);

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPattern(String);

impl ChannelPattern {
    /// Validates a pattern: 1-255 characters of the channel alphabet plus `*` and `?`.
    pub fn new(pattern: &str) -> Result<Self, InvalidPattern> {
        if pattern.is_empty() || pattern.len() > crate::MAX_CHANNEL_LEN {
            return Err(InvalidPattern(format!(
                "pattern must be 1-{} characters, got {}",
                crate::MAX_CHANNEL_LEN,
                pattern.len()
            )));
        }
        if let Some(c) = pattern.chars().find(|c| {
            !(*c == '*' || *c == '?' || (c.is_ascii() && crate::channel::is_channel_byte(*c as u8)))
        }) {
            return Err(InvalidPattern(format!(
                "pattern holds {c:?}: use channel characters [A-Za-z0-9_-:@.=] with * and ?"
            )));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches (iterative glob with single-star backtracking: linear-ish, no
    /// recursion, so a hostile pattern cannot blow the stack).
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|b| *b == b'*')
    }
}

/// A `Channels` question.
#[derive(Debug, Clone)]
pub struct ChannelsQuery {
    /// Only channels matching this; `None`: every channel.
    pub pattern: Option<ChannelPattern>,
    /// Most channels returned, the first by name.
    pub limit: usize,
}

/// A `Channels` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelsAnswer {
    /// Sorted by name, at most `limit`, subscriber counts summed over the nodes that answered.
    pub channels: Vec<ChannelCount>,
    /// More channels matched than `limit`.
    pub truncated: bool,
    /// Nodes known to be alive that did not answer in time.
    #[serde(default)]
    pub missing_nodes: Vec<String>,
}

impl ChannelsAnswer {
    /// One node's answer: its matching channels, by name, the first `limit`.
    pub fn local(all: Vec<(ChannelName, u64)>, query: &ChannelsQuery) -> Self {
        let mut channels: Vec<ChannelCount> = all
            .into_iter()
            .filter(|(c, n)| *n > 0 && query.pattern.as_ref().is_none_or(|p| p.matches(c.as_str())))
            .map(|(c, n)| ChannelCount {
                channel: c.as_str().to_owned(),
                subscribers: n,
            })
            .collect();
        channels.sort_by(|a, b| a.channel.cmp(&b.channel));
        let truncated = channels.len() > query.limit;
        channels.truncate(query.limit);
        Self {
            channels,
            truncated,
            missing_nodes: Vec::new(),
        }
    }

    /// Sums answers of several nodes. Each holds its first `limit` channels by name, so the
    /// first `limit` of the merge are exact: a channel among them on any node is within that
    /// node's first `limit` too.
    pub fn merge(parts: impl IntoIterator<Item = ChannelsAnswer>, limit: usize) -> Self {
        let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
        let mut out = Self::default();
        for part in parts {
            out.truncated |= part.truncated;
            out.missing_nodes.extend(part.missing_nodes);
            for c in part.channels {
                *sums.entry(c.channel).or_default() += c.subscribers;
            }
        }
        out.truncated |= sums.len() > limit;
        out.channels = sums
            .into_iter()
            .take(limit)
            .map(|(channel, subscribers)| ChannelCount {
                channel,
                subscribers,
            })
            .collect();
        out
    }
}

/// Errors of cluster-wide calls.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No live node has this id.
    #[error("no live node has id {0:?}")]
    UnknownNode(String),
    /// The nodes could not be reached (the backbone is down, the node did not answer).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The request cannot be applied as asked (a bad revocation, the set full).
    #[error("{0}")]
    Refused(String),
    /// A bound was reached (the revocation set is full).
    #[error("{0}")]
    Exhausted(String),
}

/// This node, as the cluster layer sees it: implemented by the binary over its edge.
pub trait LocalNode: Send + Sync + 'static {
    /// Current stats of this node.
    fn stats(&self) -> NodeStats;
    /// Every channel with local subscribers and their count.
    fn channels(&self) -> Vec<(ChannelName, u64)>;
    /// Starts draining (in the background) at `rate` connections per second (`None`: the
    /// configured rate); returns how many held connections it is draining.
    fn drain(&self, rate: Option<usize>) -> u64;
    /// The WebSocket and SSE connections of this node subscribed to `channel`.
    fn presence(&self, channel: &ChannelName) -> Vec<PresenceEntry>;
    /// Applies an operator's action to this node's connections; returns how many it reached.
    /// A revocation this node cannot hold (its set is full) is an error.
    fn act(&self, action: &UserAction) -> Result<u64, ClusterError>;
    /// The connections of `user` held by this node (WebSocket, SSE, held long-polls).
    fn user_connections(&self, user: &str) -> Vec<PresenceEntry>;
    /// Hands another node's join/leave to this node's subscribers of the channel.
    fn deliver_event(&self, event: &PresenceEvent);
    /// The join/leave events of this node's clients, to relay to the other nodes. The first
    /// caller gets the receiver (later callers `None`); until then none are queued.
    fn take_events(&self) -> Option<tokio::sync::mpsc::Receiver<PresenceEvent>>;
}

/// Every node of a deployment, seen from this one.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node's id.
    fn local_id(&self) -> String;
    /// Stats of every live node (this one fresh, others from their last heartbeat), by id.
    fn nodes(&self) -> Vec<NodeStats>;
    /// Bumped whenever the view of other nodes changes (a heartbeat with new numbers, a node
    /// joining or dropping out). Local changes are not signalled: sample [`Cluster::nodes`].
    fn changes(&self) -> watch::Receiver<u64>;
    /// Channels with subscribers, summed over every node that answers.
    async fn channels(&self, query: &ChannelsQuery) -> Result<ChannelsAnswer, ClusterError>;
    /// Asks node `node_id` to drain; returns how many connections it is draining.
    async fn drain(&self, node_id: &str, rate: Option<usize>) -> Result<u64, ClusterError>;
    /// Every WebSocket and SSE client of `channel` on every node that answers.
    async fn presence(&self, channel: &ChannelName) -> Result<PresenceAnswer, ClusterError>;
    /// Applies `action` on every node that answers and sums what it reached. A revocation is
    /// also stored so that nodes that start or reconnect later know it.
    async fn act(&self, action: &UserAction) -> Result<ActionAnswer, ClusterError>;
    /// Every connection of `user` on every node that answers (WebSocket, SSE, held
    /// long-polls), sorted by client id.
    async fn user_connections(&self, user: &str) -> Result<PresenceAnswer, ClusterError>;
}

/// The single-node cluster (memory broker): every answer comes from this node.
pub struct LocalCluster {
    node: Arc<dyn LocalNode>,
    /// Never bumped: a single node has no peers to change.
    changes: watch::Sender<u64>,
}

impl LocalCluster {
    /// Wraps this node.
    pub fn new(node: Arc<dyn LocalNode>) -> Self {
        Self {
            node,
            changes: watch::Sender::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Cluster for LocalCluster {
    fn local_id(&self) -> String {
        self.node.stats().node_id
    }

    fn nodes(&self) -> Vec<NodeStats> {
        vec![self.node.stats()]
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn channels(&self, query: &ChannelsQuery) -> Result<ChannelsAnswer, ClusterError> {
        Ok(ChannelsAnswer::local(self.node.channels(), query))
    }

    async fn drain(&self, node_id: &str, rate: Option<usize>) -> Result<u64, ClusterError> {
        if node_id != self.local_id() {
            return Err(ClusterError::UnknownNode(node_id.to_owned()));
        }
        Ok(self.node.drain(rate))
    }

    async fn presence(&self, channel: &ChannelName) -> Result<PresenceAnswer, ClusterError> {
        Ok(PresenceAnswer::merge([PresenceAnswer {
            clients: self.node.presence(channel),
            missing_nodes: Vec::new(),
        }]))
    }

    async fn act(&self, action: &UserAction) -> Result<ActionAnswer, ClusterError> {
        Ok(ActionAnswer {
            connections: self.node.act(action)?,
            missing_nodes: Vec::new(),
        })
    }

    async fn user_connections(&self, user: &str) -> Result<PresenceAnswer, ClusterError> {
        Ok(PresenceAnswer::merge([PresenceAnswer {
            clients: self.node.user_connections(user),
            missing_nodes: Vec::new(),
        }]))
    }
}

/// Uptime helper shared by implementations: seconds since `started`.
pub fn uptime_secs(started: std::time::Instant) -> u64 {
    started.elapsed().as_secs()
}

/// Default heartbeat interval between nodes (`HERALD_HEARTBEAT_INTERVAL`).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A node missing this many heartbeat intervals is dropped from the view.
pub const MISSED_HEARTBEATS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::new(s).unwrap()
    }

    #[test]
    fn globs_match() {
        assert!(p("chat:*").matches("chat:1"));
        assert!(p("chat:*").matches("chat:"));
        assert!(!p("chat:*").matches("chatroom"));
        assert!(p("*").matches("anything"));
        assert!(p("a?c").matches("abc"));
        assert!(!p("a?c").matches("ac"));
        assert!(p("*:x:*").matches("a:x:b"));
        assert!(p("a*b*c").matches("aXbYbZc"));
        assert!(!p("a*b*c").matches("aXbYbZ"));
        assert!(p("news").matches("news"));
        assert!(!p("news").matches("news2"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(ChannelPattern::new("").is_err());
        assert!(ChannelPattern::new("a b").is_err());
        assert!(ChannelPattern::new("a>").is_err());
        assert!(ChannelPattern::new(&"a".repeat(256)).is_err());
    }

    #[test]
    fn merge_sums_and_keeps_the_first_by_name() {
        let q = ChannelsQuery {
            pattern: None,
            limit: 2,
        };
        let c = |s: &str| ChannelName::new(s).unwrap();
        let a = ChannelsAnswer::local(vec![(c("b"), 1), (c("a"), 2), (c("z"), 1)], &q);
        assert!(a.truncated);
        let b = ChannelsAnswer::local(vec![(c("a"), 3)], &q);
        let m = ChannelsAnswer::merge([a, b], 2);
        assert_eq!(
            m.channels,
            vec![
                ChannelCount {
                    channel: "a".into(),
                    subscribers: 5
                },
                ChannelCount {
                    channel: "b".into(),
                    subscribers: 1
                }
            ]
        );
        assert!(m.truncated);
    }
}
