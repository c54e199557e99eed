//! `herald serve`: config → broker → cluster view → edge, control plane, admin; then the
//! SIGTERM drain.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use herald_control::HeraldService;
use herald_core::{Broker, ChannelName, Cluster, LocalCluster, LocalNode, MemoryBroker, NodeStats};
use herald_edge::Edge;
use herald_nats::{NatsBroker, NatsCluster, NatsClusterConfig};
use herald_telemetry::Metrics;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    VERSION, admin,
    config::{BrokerKind, Config, LogFormat, Settings},
};

/// This node as the cluster layer sees it.
struct Node {
    id: String,
    started: std::time::Instant,
    edge: Edge,
    /// `HERALD_DRAIN_RATE`, used by `DrainNode` without a rate.
    drain_rate: usize,
}

impl LocalNode for Node {
    fn stats(&self) -> NodeStats {
        NodeStats {
            node_id: self.id.clone(),
            version: VERSION.to_owned(),
            uptime_secs: herald_core::uptime_secs(self.started),
            connections: self.edge.connections(),
            subscriptions: self.edge.subscriptions(),
            channels: self.edge.active_channels() as u64,
            draining: self.edge.is_draining(),
        }
    }

    fn channels(&self) -> Vec<(ChannelName, u64)> {
        self.edge.channel_subscribers()
    }

    fn drain(&self, rate: Option<usize>) -> u64 {
        let held = self.edge.held_connections() as u64;
        let rate = rate.unwrap_or(self.drain_rate).max(1);
        let edge = self.edge.clone();
        tracing::warn!(
            held,
            rate,
            "draining on request (DrainNode); the node keeps running"
        );
        tokio::spawn(async move { edge.drain(rate).await });
        held
    }
}

async fn bind(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key}): choose a free address"))
}

pub(crate) async fn serve(settings: Settings) -> anyhow::Result<()> {
    let config = Config::from_settings(settings.with_file()?)?;
    let traces = herald_telemetry::trace::init(
        &config.log,
        config.log_format == LogFormat::Json,
        &config.node_id,
    );
    if traces.exporting() {
        tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)");
    }

    let http = bind(config.http_addr, "HERALD_HTTP_ADDR").await?;
    let grpc = bind(config.grpc_addr, "HERALD_GRPC_ADDR").await?;
    let admin = bind(config.admin_addr, "HERALD_ADMIN_ADDR").await?;

    let metrics = Arc::new(Metrics::new(&config.node_id, VERSION)?);
    metrics.set_broker(match config.broker {
        BrokerKind::Memory => "memory",
        BrokerKind::Nats => "nats",
    });
    let mut nats = None;
    let broker: Arc<dyn Broker> = match config.broker {
        BrokerKind::Memory => Arc::new(MemoryBroker::new(config.memory_broker())),
        BrokerKind::Nats => {
            let broker = connect_nats(&config).await?;
            let reconnects = metrics.broker_reconnects.clone();
            let watched = broker.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = watched.reconnects();
                    reconnects.inc_by(now.saturating_sub(seen));
                    seen = now;
                }
            });
            nats = Some(broker.clone());
            Arc::new(broker)
        }
    };
    let edge = Edge::new(config.edge.clone(), broker.clone(), metrics.clone());
    let node = Arc::new(Node {
        id: config.node_id.clone(),
        started: std::time::Instant::now(),
        edge: edge.clone(),
        drain_rate: config.drain_rate,
    });
    let (cluster, nats_cluster): (Arc<dyn Cluster>, Option<Arc<NatsCluster>>) = match &nats {
        Some(nats) => {
            let c = Arc::new(NatsCluster::new(
                nats,
                node.clone(),
                NatsClusterConfig {
                    heartbeat_interval: config.heartbeat_interval,
                    ..NatsClusterConfig::default()
                },
            ));
            (c.clone(), Some(c))
        }
        None => (Arc::new(LocalCluster::new(node.clone())), None),
    };
    if config.control.api_keys.is_open() {
        tracing::warn!(
            "NO API KEY CONFIGURED: the gRPC API (publish, drain) is open to anyone who can reach {}; set HERALD_API_KEYS or HERALD_API_KEYS_FILE",
            config.grpc_addr
        );
    } else {
        tracing::info!(
            keys = config.control.api_keys.len(),
            "gRPC API keys required"
        );
    }
    let policy = &config.edge.policy;
    tracing::info!(
        verifies_tokens = policy.verifies_tokens(),
        requires_tokens = policy.requires_tokens(),
        ws_origins = ?config.edge.ws_origins,
        cors_origins = ?config.edge.cors_origins,
        connection_rate_per_ip = config.edge.connection_rate_per_ip,
        "client access"
    );
    let control = HeraldService::new(
        broker.clone(),
        cluster,
        metrics.clone(),
        config.control.clone(),
    );

    let stop_http = CancellationToken::new();
    let stop_rest = CancellationToken::new();
    let http_task = tokio::spawn({
        let (edge, stop) = (edge.clone(), stop_http.clone());
        async move { edge.serve(http, stop).await }
    });
    let grpc_task = tokio::spawn(herald_control::serve(
        grpc,
        control,
        config.grpc_tls.clone(),
        stop_rest.clone(),
    ));
    let admin_router = admin::router(admin::Admin {
        broker: broker.clone(),
        edge: edge.clone(),
        metrics,
    });
    let admin_task = tokio::spawn({
        let stop = stop_rest.clone();
        async move {
            axum::serve(admin, admin_router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });
    tracing::info!(
        node = %config.node_id, version = VERSION, broker = broker.kind(),
        http = %config.http_addr, grpc = %config.grpc_addr, grpc_tls = config.grpc_tls.is_some(), admin = %config.admin_addr,
        "herald is serving"
    );

    let signal = shutdown_signal().await?;
    tracing::info!(signal, held = edge.held_connections(), "draining");
    let deadline = Instant::now() + config.drain_timeout;
    stop_http.cancel();
    // Pace so that every client is told within half the drain timeout.
    let budget = (config.drain_timeout / 2).as_secs_f64().max(0.1);
    let rate = config
        .drain_rate
        .max((edge.held_connections() as f64 / budget) as usize);
    let drained = async {
        edge.drain(rate).await;
        let _ = http_task.await;
        while edge.held_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout_at(deadline, drained) => {
            if r.is_err() {
                tracing::warn!(held = edge.held_connections(), "drain timeout reached; exiting anyway");
            }
        }
        _ = shutdown_signal() => tracing::warn!("second signal: exiting without finishing the drain"),
    }
    if let Some(c) = &nats_cluster {
        c.leave().await;
    }
    stop_rest.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing::info!("stopped");
    traces.shutdown().await;
    Ok(())
}

/// Connects to NATS, retrying with backoff until it answers (or a signal stops the wait):
/// at start-up NATS may not be ready yet.
async fn connect_nats(config: &Config) -> anyhow::Result<NatsBroker> {
    let mut backoff = Duration::from_millis(500);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        match NatsBroker::connect(config.nats.clone()).await {
            Ok(b) => return Ok(b),
            Err(e @ herald_nats::NatsError::Config { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, urls = ?config.nats.urls, retry_in = ?backoff, "NATS not reachable yet")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = &mut stop => anyhow::bail!("stopped while waiting for NATS"),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
