//! Up before the broker: the broker and cluster view a node serves with while NATS has not
//! been reached yet.
//!
//! Pods start in any order, so a node may come up before NATS answers. It serves at once:
//! the admin port (`/healthz` 200, `/readyz` 503 with the reason, `/metrics`), the gRPC port
//! (health NOT_SERVING, calls `UNAVAILABLE`) and the client port (subscriptions refused with
//! 503 `broker_unavailable`, so clients retry). Once the first connection succeeds,
//! [`PendingBroker::connected`] installs the real broker and every call goes to it; from then
//! on its own state (outages, reconnects) is reported.

use std::sync::{Arc, Mutex, OnceLock};

use herald_core::{
    Broker, BrokerError, BrokerState, ChannelName, ChannelsAnswer, ChannelsQuery, Cluster,
    ClusterError, Cursor, HistoryPage, HistoryQuery, LocalCluster, NodeStats, PublishRequest,
    Published, Subscription,
};
use tokio::sync::watch;

/// A broker that is [`BrokerState::Disconnected`] and refuses every call until the real one
/// is installed.
pub(crate) struct PendingBroker {
    inner: OnceLock<Arc<dyn Broker>>,
    state: watch::Sender<BrokerState>,
    kind: &'static str,
    /// What the node is waiting for, for `/readyz` (e.g. the last connect error).
    waiting: Mutex<String>,
}

impl PendingBroker {
    pub(crate) fn new(kind: &'static str, waiting: String) -> Arc<Self> {
        Arc::new(Self {
            inner: OnceLock::new(),
            state: watch::Sender::new(BrokerState::Disconnected),
            kind,
            waiting: Mutex::new(waiting),
        })
    }

    /// Records why the broker is not there yet (shown by `/readyz`).
    pub(crate) fn set_waiting(&self, why: String) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// While no broker is installed: what the node is waiting for.
    pub(crate) fn waiting(&self) -> Option<String> {
        self.inner.get().is_none().then(|| {
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Installs the connected broker; its state is followed from now on.
    pub(crate) fn connected(self: &Arc<Self>, broker: Arc<dyn Broker>) {
        let mut state = broker.state();
        if self.inner.set(broker).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let now = *state.borrow_and_update();
                let Some(me) = weak.upgrade() else { return };
                me.state.send_replace(now);
                drop(me);
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn get(&self) -> Result<&Arc<dyn Broker>, BrokerError> {
        self.inner.get().ok_or_else(|| {
            BrokerError::Unavailable("not connected to NATS yet: the node is starting".into())
        })
    }
}

#[async_trait::async_trait]
impl Broker for PendingBroker {
    async fn publish(&self, request: PublishRequest) -> Result<Published, BrokerError> {
        self.get()?.publish(request).await
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription, BrokerError> {
        self.get()?.subscribe(channel).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        self.get()?.history(channel, query).await
    }

    async fn head(&self) -> Result<Cursor, BrokerError> {
        self.get()?.head().await
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.subscribe()
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

/// The cluster view: this node alone until the NATS cluster view is installed.
pub(crate) struct PendingCluster {
    local: LocalCluster,
    inner: OnceLock<Arc<dyn Cluster>>,
    changes: watch::Sender<u64>,
}

impl PendingCluster {
    pub(crate) fn new(local: LocalCluster) -> Arc<Self> {
        Arc::new(Self {
            local,
            inner: OnceLock::new(),
            changes: watch::Sender::new(0),
        })
    }

    /// Installs the real cluster view; its changes are passed on from now on.
    pub(crate) fn connected(self: &Arc<Self>, cluster: Arc<dyn Cluster>) {
        let mut changes = cluster.changes();
        if self.inner.set(cluster).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                me.changes.send_modify(|n| *n += 1);
                drop(me);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn current(&self) -> &dyn Cluster {
        match self.inner.get() {
            Some(c) => &**c,
            None => &self.local,
        }
    }
}

#[async_trait::async_trait]
impl Cluster for PendingCluster {
    fn local_id(&self) -> String {
        self.current().local_id()
    }

    fn nodes(&self) -> Vec<NodeStats> {
        self.current().nodes()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn channels(&self, query: &ChannelsQuery) -> Result<ChannelsAnswer, ClusterError> {
        self.current().channels(query).await
    }

    async fn drain(&self, node_id: &str, rate: Option<usize>) -> Result<u64, ClusterError> {
        self.current().drain(node_id, rate).await
    }

    async fn presence(
        &self,
        channel: &herald_core::ChannelName,
    ) -> Result<herald_core::PresenceAnswer, ClusterError> {
        self.current().presence(channel).await
    }

    async fn user_connections(
        &self,
        user: &str,
    ) -> Result<herald_core::PresenceAnswer, ClusterError> {
        self.current().user_connections(user).await
    }

    async fn act(
        &self,
        action: &herald_core::UserAction,
    ) -> Result<herald_core::ActionAnswer, ClusterError> {
        self.current().act(action).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{MemoryBroker, MemoryBrokerConfig};

    #[tokio::test]
    async fn refuses_until_connected_then_follows_the_broker() {
        let pending = PendingBroker::new("nats", "waiting for NATS".into());
        let mut state = pending.state();
        assert_eq!(*state.borrow(), BrokerState::Disconnected);
        assert_eq!(pending.waiting().as_deref(), Some("waiting for NATS"));
        let err = pending.head().await.unwrap_err();
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        pending.connected(Arc::new(MemoryBroker::new(MemoryBrokerConfig::default())));
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            state.wait_for(|s| *s == BrokerState::Connected),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(pending.waiting().is_none());
        assert!(pending.head().await.is_ok());
    }
}
