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

use herald_auth::Principal;
use herald_core::{ChannelName, PresenceEntry, Protocol, Revocations, UserAction};
use herald_telemetry::{CloseReason, Metrics};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    EdgeError,
    identity::Client,
    outbox::{Closed, Item, Outbox},
};

/// Every held connection of this node.
pub(crate) struct Registry {
    next_id: AtomicU64,
    /// Held connections right now (all protocols), checked against `max`.
    count: AtomicUsize,
    /// Most held connections at once.
    max: usize,
    /// Most held connections of one (named) user; 0: no limit.
    max_per_user: usize,
    /// Held connections per named user.
    per_user: Mutex<HashMap<Arc<str>, usize>>,
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
    pub(crate) fn new(max: usize, max_per_user: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
            max,
            max_per_user,
            per_user: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            metrics,
            full: crate::limits::Throttled::new(),
        }
    }

    /// Admits a connection of `who`, unless the node holds its maximum
    /// ([`EdgeError::TooManyConnections`]) or the user holds theirs here
    /// ([`EdgeError::TooManyUserConnections`]).
    pub(crate) fn register(
        self: &Arc<Self>,
        protocol: Protocol,
        outbox_bytes: usize,
        kill: CancellationToken,
        who: Option<&Principal>,
    ) -> Result<Registration, EdgeError> {
        self.register_as(protocol, outbox_bytes, kill, who, None)
    }

    /// [`Registry::register`] with the client id chosen beforehand (the connect hook told the
    /// backend about it), or a fresh one.
    pub(crate) fn register_as(
        self: &Arc<Self>,
        protocol: Protocol,
        outbox_bytes: usize,
        kill: CancellationToken,
        who: Option<&Principal>,
        id: Option<Box<str>>,
    ) -> Result<Registration, EdgeError> {
        let client = Client::new(who, id);
        if self.max_per_user > 0 && !client.user.is_empty() {
            let mut per_user = self.per_user.lock();
            let n = per_user.entry(client.user.clone()).or_insert(0);
            if *n >= self.max_per_user {
                return Err(EdgeError::TooManyUserConnections {
                    max: self.max_per_user,
                });
            }
            *n += 1;
        }
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.release_user(&client.user);
            self.count.fetch_sub(1, Ordering::AcqRel);
            if let Some(refused) = self.full.hit() {
                tracing::warn!(
                    held = self.max,
                    refused,
                    "held connection limit reached (HERALD_MAX_CONNECTIONS, or lower when the descriptor limit allows fewer): new WebSocket, SSE and long-poll requests get 503 too_many_connections (count since the last such line)"
                );
            }
            return Err(EdgeError::TooManyConnections);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::for_client(outbox_bytes, protocol, client));
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
        Ok(Registration {
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

    fn release_user(&self, user: &str) {
        if self.max_per_user == 0 || user.is_empty() {
            return;
        }
        let mut per_user = self.per_user.lock();
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }

    /// Applies an operator's action to the connections it covers; returns how many. A
    /// revocation is remembered first (an error when the set is full).
    pub(crate) fn act(
        &self,
        action: &UserAction,
        revocations: &Revocations,
    ) -> Result<u64, herald_core::RevocationError> {
        let now = herald_auth::now_secs();
        if let UserAction::Revoke(r) = action {
            revocations.insert(r, now)?;
        }
        let held = |o: &Outbox| matches!(o.protocol, Protocol::WebSocket | Protocol::Sse);
        let mut n = 0;
        for (outbox, _) in self.conns.lock().values() {
            let who = &outbox.client;
            let hit = match action {
                UserAction::Disconnect {
                    user,
                    reconnect,
                    reason,
                } if *who.user == **user => {
                    outbox.close(Closed::Disconnected {
                        reconnect: *reconnect,
                        reason: reason.as_str().into(),
                    });
                    true
                }
                UserAction::Unsubscribe { user, channel }
                    if *who.user == **user && held(outbox) =>
                {
                    ChannelName::new(channel).is_ok_and(|c| outbox.push(Item::Unsubscribe(c)))
                }
                UserAction::Subscribe { user, channel } if *who.user == **user && held(outbox) => {
                    ChannelName::new(channel).is_ok_and(|c| outbox.push(Item::Subscribe(c)))
                }
                UserAction::Revoke(r)
                    if who.with_token(|t| Revocations::covers(r, t))
                        && outbox.closed().is_none() =>
                {
                    outbox.close(Closed::Revoked);
                    true
                }
                _ => false,
            };
            n += u64::from(hit);
        }
        Ok(n)
    }

    /// The connections of `user` held here (WebSocket, SSE, held long-polls).
    pub(crate) fn user_connections(&self, user: &str, node: &str) -> Vec<PresenceEntry> {
        let conns = self.conns.lock();
        conns
            .values()
            .filter(|(o, _)| !user.is_empty() && &*o.client.user == user)
            .map(|(o, _)| PresenceEntry {
                client: o.client.id.to_string(),
                user: o.client.user.to_string(),
                info: o.client.info.as_deref().map(str::to_owned),
                node: node.to_owned(),
                protocol: o.protocol.as_str().to_owned(),
                since_unix_ms: o.client.since_ms,
            })
            .collect()
    }

    /// Presence entries of the held streams among `outboxes`.
    pub(crate) fn presence_of(
        outboxes: impl Iterator<Item = Arc<Outbox>>,
        node: &str,
    ) -> Vec<PresenceEntry> {
        outboxes
            .filter(|o| matches!(o.protocol, Protocol::WebSocket | Protocol::Sse))
            .map(|o| PresenceEntry {
                client: o.client.id.to_string(),
                user: o.client.user.to_string(),
                info: o.client.info.as_deref().map(str::to_owned),
                node: node.to_owned(),
                protocol: o.protocol.as_str().to_owned(),
                since_unix_ms: o.client.since_ms,
            })
            .collect()
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
        r.release_user(&self.outbox.client.user);
        let p = self.protocol.as_str();
        // A connection aborted while stuck never got to record why; its outbox knows.
        if self.reason == CloseReason::Normal {
            match self.outbox.closed() {
                Some(Closed::SlowConsumer) => self.reason = CloseReason::SlowConsumer,
                Some(Closed::Drain) => self.reason = CloseReason::Drain,
                Some(Closed::Disconnected { .. }) => self.reason = CloseReason::Disconnected,
                Some(Closed::Revoked) => self.reason = CloseReason::Revoked,
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
