//! Held client connections (WebSocket, SSE, long-poll): counted per protocol against the
//! node's limit, and reachable for draining.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_core::Protocol;
use herald_telemetry::{CloseReason, Metrics};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Closed, Outbox};

/// Every held connection of this node.
pub(crate) struct Registry {
    next_id: AtomicU64,
    /// Held connections right now (all protocols), checked against `max`.
    count: AtomicUsize,
    /// Most held connections at once.
    max: usize,
    /// Outbox per connection: closing it with [`Closed::Drain`] makes the connection leave.
    conns: Mutex<HashMap<u64, (Arc<Outbox>, CancellationToken)>>,
    metrics: Arc<Metrics>,
    /// Refusals at the limit, logged at most every few seconds.
    full: crate::limits::Throttled,
}

/// A registered connection; unregisters (and counts the close) when dropped.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    /// Node-unique connection id.
    pub(crate) id: u64,
    pub(crate) protocol: Protocol,
    /// The connection's outbound queue.
    pub(crate) outbox: Arc<Outbox>,
    /// Cancelled to abort the connection when it is stuck writing to a client that does
    /// not read, after its outbox closed (see [`Registry::reap_stuck`]).
    pub(crate) kill: CancellationToken,
    /// Why it ended, recorded by the protocol handler before dropping.
    pub(crate) reason: CloseReason,
}

impl Registry {
    pub(crate) fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
            max,
            conns: Mutex::new(HashMap::new()),
            metrics,
            full: crate::limits::Throttled::new(),
        }
    }

    /// Admits a connection, or `None` when the node holds its maximum.
    pub(crate) fn register(
        self: &Arc<Self>,
        protocol: Protocol,
        outbox_bytes: usize,
        kill: CancellationToken,
    ) -> Option<Registration> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            if let Some(refused) = self.full.hit() {
                tracing::warn!(
                    held = self.max,
                    refused,
                    "held connection limit reached (HERALD_MAX_CONNECTIONS, or lower when the descriptor limit allows fewer): new WebSocket, SSE and long-poll requests get 503 too_many_connections (count since the last such line)"
                );
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(outbox_bytes, protocol));
        self.conns.lock().insert(id, (outbox.clone(), kill.clone()));
        if counts_itself(protocol) {
            self.metrics
                .connections
                .with_label_values(&[protocol.as_str()])
                .inc();
            self.metrics
                .connections_opened
                .with_label_values(&[protocol.as_str()])
                .inc();
        }
        Some(Registration {
            registry: self.clone(),
            id,
            protocol,
            outbox,
            kill,
            reason: CloseReason::Normal,
        })
    }

    /// Aborts connections whose outbox closed (overflow or drain) more than `grace` ago but
    /// which are still open: their writes are blocked on a client that stopped reading, and
    /// nothing else would ever end them.
    pub(crate) fn reap_stuck(&self, grace: Duration) {
        for (outbox, kill) in self.conns.lock().values() {
            if outbox.closed_longer_than(grace) {
                kill.cancel();
            }
        }
    }

    /// Connections held right now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Asks every held connection to leave, `rate` per second (at least one batch every
    /// 10 ms), so clients reconnect elsewhere without a storm. Returns when all were asked.
    pub(crate) async fn drain(&self, rate: usize) {
        let outboxes: Vec<Arc<Outbox>> =
            self.conns.lock().values().map(|(o, _)| o.clone()).collect();
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for chunk in outboxes.chunks(per_tick) {
            tick.tick().await;
            for outbox in chunk {
                outbox.close(Closed::Drain);
            }
        }
    }
}

/// Whether a registration moves the per-protocol connection gauges. A long-poll request is
/// already counted by the poll-client tracking (one client, in flight or recently seen; see
/// `poll.rs`), so counting its registration too would show one held long-poll as two.
fn counts_itself(protocol: Protocol) -> bool {
    protocol != Protocol::LongPoll
}

impl Drop for Registration {
    fn drop(&mut self) {
        let r = &self.registry;
        r.conns.lock().remove(&self.id);
        r.count.fetch_sub(1, Ordering::AcqRel);
        let p = self.protocol.as_str();
        // A connection aborted while stuck never got to record why; its outbox knows.
        if self.reason == CloseReason::Normal {
            match self.outbox.closed() {
                Some(Closed::SlowConsumer) => self.reason = CloseReason::SlowConsumer,
                Some(Closed::Drain) => self.reason = CloseReason::Drain,
                None => {}
            }
        }
        if counts_itself(self.protocol) {
            r.metrics.connections.with_label_values(&[p]).dec();
            r.metrics
                .connections_closed
                .with_label_values(&[p, self.reason.as_str()])
                .inc();
        }
        if self.reason == CloseReason::SlowConsumer {
            r.metrics
                .slow_consumer_disconnects
                .with_label_values(&[p])
                .inc();
        }
    }
}
