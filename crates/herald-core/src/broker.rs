//! The `Broker` trait: what the edge and the control plane need from a message backbone.

use std::{fmt, pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use crate::{ChannelName, Cursor, Message, Payload};

/// A request to publish one message.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Destination channel.
    pub channel: ChannelName,
    /// Validated JSON payload.
    pub data: Payload,
    /// When set, a repeat publish with the same key (within the broker's duplicate window)
    /// is not stored again and answers with the original cursor.
    pub idempotency_key: Option<String>,
}

/// The answer to a successful publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The cursor (`id`) of the stored message.
    pub cursor: Cursor,
    /// True when the idempotency key matched an earlier publish; nothing new was stored.
    pub duplicate: bool,
}

/// What to read from a channel's history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Return messages strictly after this cursor ([`Cursor::ZERO`]: from the oldest retained).
    pub after: Cursor,
    /// Return at most this many messages (the oldest first).
    pub limit: usize,
}

/// A slice of a channel's history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Retained messages after the cursor, in cursor order, at most `limit`.
    pub messages: Vec<Arc<Message>>,
    /// True when messages of this channel after the cursor are no longer retained (evicted
    /// by count or age, lost in a restart of a memory broker), or the cursor is ahead of
    /// anything the broker has issued. The client must be told before `messages`.
    pub gap: bool,
}

/// One event of a live subscription.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The next message of the channel, in cursor order.
    Message(Arc<Message>),
    /// The broker may have dropped messages of this channel since the last one it yielded
    /// (a slow reader, a reconnect). The reader repairs from history after its last cursor.
    Lagged,
}

/// A live feed of one channel. Every message published after the subscription was returned
/// is yielded, in order, or a [`LiveEvent::Lagged`] says where it could not be. Dropping it
/// ends the broker-side interest. `None` means the broker ended it (shut down).
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = LiveEvent> + Send>>,
}

impl Subscription {
    /// Wraps a broker's stream.
    pub fn new(stream: impl Stream<Item = LiveEvent> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// The next event.
    pub async fn next(&mut self) -> Option<LiveEvent> {
        self.inner.next().await
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// Whether the broker can currently serve publishes and subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Connected and serving.
    Connected,
    /// Not reachable; calls fail fast with [`BrokerError::Unavailable`].
    Disconnected,
}

/// Errors a broker reports. Callers map them to client errors at the edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backbone is unreachable or did not answer in time; retrying later may succeed.
    /// A publish that failed this way was not stored and will not be delivered later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request was refused by the backbone (a limit, a bad argument).
    #[error("broker refused the request: {0}")]
    Rejected(String),
    /// The broker has shut down.
    #[error("broker is shut down")]
    Closed,
}

/// A message backbone: stores per-channel history under one global order and feeds live
/// subscribers. Implementations: [`crate::MemoryBroker`] here, JetStream in `herald-nats`.
/// Both pass the same conformance suite (`herald_core::conformance`).
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Stores a message and returns its cursor. Cursors increase strictly with every stored
    /// message, across all channels. Returns only once the message is retained.
    async fn publish(&self, request: PublishRequest) -> Result<Published, BrokerError>;

    /// Starts a live feed of `channel`. Once this returns, no message published afterwards
    /// can be missed by the returned subscription (without a `Lagged` saying so).
    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription, BrokerError>;

    /// Reads retained messages of `channel` after a cursor, and whether any were lost.
    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError>;

    /// The cursor of the newest stored message (of any channel): "now" for a client that
    /// starts without a cursor.
    async fn head(&self) -> Result<Cursor, BrokerError>;

    /// Connection state, as a watch so callers can follow changes (readiness, metrics).
    fn state(&self) -> watch::Receiver<BrokerState>;

    /// Short name for logs and metrics (`memory`, `nats`).
    fn kind(&self) -> &'static str;
}
