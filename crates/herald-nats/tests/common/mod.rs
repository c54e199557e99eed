//! Shared helpers for the integration tests: a broker bundled with the server it talks to.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use herald_core::{
    Broker, BrokerError, BrokerState, ChannelName, Cursor, HistoryLimits, HistoryPage,
    HistoryQuery, PublishRequest, Published, Subscription,
};
use herald_nats::{LiveInterest, NatsBroker, NatsBrokerConfig, StorageKind, testing::NatsServer};
use tokio::sync::watch;

/// A test config for `urls`, with fast timeouts and the given limits.
pub fn config(urls: Vec<String>, limits: HistoryLimits) -> NatsBrokerConfig {
    NatsBrokerConfig {
        urls,
        history: limits,
        storage: StorageKind::File,
        ping_interval: Duration::from_secs(1),
        ..Default::default()
    }
}

/// A broker that owns its own server, so each test is isolated and cleaned up.
pub struct ServerBroker {
    pub broker: NatsBroker,
    pub server: NatsServer,
}

impl ServerBroker {
    pub async fn start(limits: HistoryLimits) -> Self {
        Self::start_with(limits, LiveInterest::PerChannel).await
    }

    /// Like [`ServerBroker::start`], with the given way of subscribing to live messages.
    pub async fn start_with(limits: HistoryLimits, live_interest: LiveInterest) -> Self {
        let server = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .expect("server");
        let broker = NatsBroker::connect(NatsBrokerConfig {
            live_interest,
            ..config(vec![server.url()], limits)
        })
        .await
        .expect("connect");
        Self { broker, server }
    }
}

#[async_trait::async_trait]
impl Broker for ServerBroker {
    async fn publish(&self, r: PublishRequest) -> Result<Published, BrokerError> {
        self.broker.publish(r).await
    }
    async fn subscribe(&self, c: &ChannelName) -> Result<Subscription, BrokerError> {
        self.broker.subscribe(c).await
    }
    async fn history(&self, c: &ChannelName, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        self.broker.history(c, q).await
    }
    async fn head(&self) -> Result<Cursor, BrokerError> {
        self.broker.head().await
    }
    fn state(&self) -> watch::Receiver<BrokerState> {
        self.broker.state()
    }
    fn kind(&self) -> &'static str {
        "nats"
    }
}
