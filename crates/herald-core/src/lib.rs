//! Herald's core model: validated channel names, messages and their cursors, the [`Broker`]
//! trait every backbone implements, the embedded [`MemoryBroker`], and (feature
//! `conformance`) the suite that every broker must pass.
//!
//! Nothing in this crate knows about HTTP, gRPC or NATS.

mod broker;
mod channel;
mod cluster;
#[cfg(feature = "conformance")]
pub mod conformance;
mod cursor;
pub mod hooks;
mod json;
mod memory;
mod message;
pub mod position;
mod presence;
pub mod trace;

pub use broker::{
    Broker, BrokerError, BrokerState, HistoryPage, HistoryQuery, LiveEvent, PublishRequest,
    Published, Subscription,
};
pub use channel::{ChannelName, InvalidChannel, MAX_CHANNEL_LEN};
pub use cluster::{
    ChannelCount, ChannelPattern, ChannelsAnswer, ChannelsQuery, Cluster, ClusterError,
    DEFAULT_HEARTBEAT_INTERVAL, InvalidPattern, LocalCluster, LocalNode, MISSED_HEARTBEATS,
    NodeStats, ProtocolCounts, uptime_secs,
};
pub use cursor::{Cursor, InvalidCursor};
pub use json::{InvalidPayload, Payload};
pub use memory::{MemoryBroker, MemoryBrokerConfig};
pub use message::{Message, unix_micros};
pub use position::Since;
pub use presence::{
    ActionAnswer, MAX_REVOCATION_KEY, PresenceAnswer, PresenceEntry, PresenceEvent, PresenceKind,
    Revocation, RevocationError, Revocations, Revoked, TokenRef, UserAction,
};

/// Limits on what a channel keeps, shared by every broker implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most recent messages kept per channel; older ones are evicted (and a resume from
    /// before them is reported as a gap).
    pub max_messages: usize,
    /// Messages older than this are evicted.
    pub max_age: std::time::Duration,
}

impl HistoryLimits {
    /// Default messages kept per channel (`HERALD_HISTORY_SIZE`).
    pub const DEFAULT_MAX_MESSAGES: usize = 100;
    /// Default age after which messages are evicted (`HERALD_HISTORY_TTL`).
    pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }
}

/// The four client protocols. Used as the `protocol` label of metrics and in node stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `GET /ws`.
    WebSocket,
    /// `GET /sse`.
    Sse,
    /// `GET /poll?wait=N` (N >= 1).
    LongPoll,
    /// `GET /poll` without `wait`.
    Poll,
}

impl Protocol {
    /// Every protocol, in a fixed order.
    pub const ALL: [Protocol; 4] = [
        Protocol::WebSocket,
        Protocol::Sse,
        Protocol::LongPoll,
        Protocol::Poll,
    ];

    /// Position in [`Protocol::ALL`], for per-protocol arrays.
    pub const fn index(self) -> usize {
        match self {
            Protocol::WebSocket => 0,
            Protocol::Sse => 1,
            Protocol::LongPoll => 2,
            Protocol::Poll => 3,
        }
    }

    /// The metric label / stats key: `websocket`, `sse`, `longpoll`, `poll`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::WebSocket => "websocket",
            Protocol::Sse => "sse",
            Protocol::LongPoll => "longpoll",
            Protocol::Poll => "poll",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
