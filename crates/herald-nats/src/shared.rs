//! State shared by the broker handle, its connection supervisor, its live feeds and the
//! wildcard demultiplexer: the current connection ([`Link`]) and everything kept across
//! connections ([`Shared`]). Only data and the accessors every module needs live here; the
//! broker, live feeds and demultiplexer add their own behaviour in their modules.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
};

use async_nats::{
    connection::State,
    jetstream::{self, stream},
};
use herald_core::{BrokerError, BrokerState, ChannelName};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{NatsBrokerConfig, chain::Chain, history::HistoryCounters, subject::Subjects};

/// One NATS connection and the handles built on it. Replaced whole on every reconnect, never
/// reused after it broke (see the crate docs on ghost publishes).
pub(crate) struct Link {
    /// The core client (live subscriptions, tip writes).
    pub(crate) client: async_nats::Client,
    /// The JetStream context (publishes).
    pub(crate) js: jetstream::Context,
    /// The history stream (direct gets, stream info).
    pub(crate) stream: stream::Stream,
    /// The side stream of channel tips.
    pub(crate) tips: stream::Stream,
    /// Increases with every connection, so subscriptions notice a new one.
    pub(crate) generation: u64,
}

impl Link {
    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

/// What this node believes about a channel's newest stored message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainTip {
    /// What JetStream holds as the subject's last sequence (0: nothing retained), sent as
    /// `Nats-Expected-Last-Subject-Sequence` so a stale belief is refused, not stored.
    pub(crate) expected: u64,
    /// The channel's true previous sequence, sent as `Herald-Prev`.
    pub(crate) prev: u64,
}

/// State shared by the broker handle, its supervisor and its subscriptions.
pub(crate) struct Shared {
    /// Settings, validated.
    pub(crate) config: NatsBrokerConfig,
    /// Subject names for this deployment.
    pub(crate) subjects: Subjects,
    /// The current connection; `None` while disconnected.
    pub(crate) link: watch::Sender<Option<Arc<Link>>>,
    /// Connected / disconnected, for readiness and metrics.
    pub(crate) state: watch::Sender<BrokerState>,
    /// Successful reconnections since start-up.
    pub(crate) reconnects: AtomicU64,
    /// Slow-consumer events reported by async-nats (a live message was dropped locally).
    pub(crate) slow_consumers: AtomicU64,
    /// Per channel subject: this node's belief about the chain tip, behind an async mutex
    /// that serializes this node's publishes to the channel.
    pub(crate) tips: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ChainTip>>>>>,
    /// Counts of batched history reads.
    pub(crate) history: HistoryCounters,
    /// Publish races lost to another node (each was retried on the winner's link).
    pub(crate) contended: AtomicU64,
    /// Channel tips not yet written to the tip stream: the newest sequence per channel,
    /// written together every `TIP_FLUSH` (broker) instead of one stored write per publish. At most
    /// `MAX_PENDING_TIPS`; past it a tip is written at once.
    pub(crate) pending_tips: parking_lot::Mutex<HashMap<ChannelName, u64>>,
    /// `head()` calls waiting for the next stream-info request: one request answers every
    /// call that was waiting when it was sent (a burst of channel joins costs one request per
    /// round trip, not one each). Bounded by the callers in flight.
    pub(crate) heads: parking_lot::Mutex<HeadReads>,
    /// Live subscriptions behind the node's wildcard ([`crate::LiveInterest::Wildcard`]).
    pub(crate) demux: Demux,
}

impl Shared {
    /// The current link, if it is connected right now.
    pub(crate) fn connected_link(&self) -> Result<Arc<Link>, BrokerError> {
        let link = self.link.borrow().clone();
        match link {
            Some(link) if link.is_connected() => Ok(link),
            _ => Err(BrokerError::Unavailable("not connected to NATS".into())),
        }
    }
}

/// `head()` calls waiting for a stream-info request, and whether one is being read.
#[derive(Default)]
pub(crate) struct HeadReads {
    pub(crate) waiting: Vec<tokio::sync::oneshot::Sender<Result<u64, BrokerError>>>,
    pub(crate) reading: bool,
}

/// The node's table of channel subscriptions behind the wildcard
/// ([`crate::LiveInterest::Wildcard`]; the demultiplexer in `demux` runs it).
#[derive(Default)]
pub(crate) struct Demux {
    pub(crate) table: Mutex<Table>,
    /// Bumped whenever `Table::registered` changes, for subscribers waiting on it.
    pub(crate) changed: watch::Sender<u64>,
}

/// The wildcard's subscriptions and registration state.
#[derive(Default)]
pub(crate) struct Table {
    /// Whether the demultiplexer task runs.
    pub(crate) started: bool,
    /// Generation of the connection the wildcard is registered on; 0: none.
    pub(crate) registered: u64,
    pub(crate) next_id: u64,
    /// Live subject to the subscriptions of that channel (usually one: the edge subscribes
    /// once per channel).
    pub(crate) taps: HashMap<String, Vec<(u64, Chain)>>,
}
