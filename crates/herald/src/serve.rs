//! `herald serve`: config → broker → cluster view → edge, control plane, admin; then the
//! SIGTERM drain.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use herald_control::HeraldService;
use herald_core::{
    Broker, ChannelName, Cluster, ClusterError, LocalCluster, LocalNode, MemoryBroker, NodeStats,
    PresenceEntry, PresenceEvent, RevocationError, UserAction,
};
use herald_edge::Edge;
use herald_nats::{NatsBroker, NatsCluster, NatsClusterConfig};
use herald_telemetry::Metrics;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    VERSION, admin,
    config::{BrokerKind, Config, LogFormat, Settings},
    descriptors,
    pending::{PendingBroker, PendingCluster},
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

    fn presence(&self, channel: &ChannelName) -> Vec<PresenceEntry> {
        self.edge.presence(channel)
    }

    fn act(&self, action: &UserAction) -> Result<u64, ClusterError> {
        self.edge.act(action).map_err(|e| match e {
            RevocationError::Full(_) => ClusterError::Exhausted(e.to_string()),
            RevocationError::Invalid(_) => ClusterError::Refused(e.to_string()),
        })
    }

    fn user_connections(&self, user: &str) -> Vec<PresenceEntry> {
        self.edge.user_connections(user)
    }

    fn deliver_event(&self, event: &PresenceEvent) {
        self.edge.deliver_event(event);
    }

    fn take_events(&self) -> Option<tokio::sync::mpsc::Receiver<PresenceEvent>> {
        self.edge.take_events()
    }
}

async fn bind(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key}): choose a free address"))
}

pub(crate) async fn serve(settings: Settings) -> anyhow::Result<()> {
    let mut config = Config::from_settings(settings.with_file()?)?;
    let traces = herald_telemetry::trace::init(
        &config.log,
        config.log_format == LogFormat::Json,
        &config.node_id,
    );
    if traces.exporting() {
        tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)");
    }
    apply_descriptor_limit(&mut config)?;

    let http = bind(config.http_addr, "HERALD_HTTP_ADDR").await?;
    let grpc = bind(config.grpc_addr, "HERALD_GRPC_ADDR").await?;
    let api = bind(config.api_addr, "HERALD_API_ADDR").await?;
    let admin = bind(config.admin_addr, "HERALD_ADMIN_ADDR").await?;

    let metrics = Arc::new(Metrics::new(&config.node_id, VERSION)?);
    metrics.set_broker(match config.broker {
        BrokerKind::Memory => "memory",
        BrokerKind::Nats => "nats",
    });
    // With NATS, the node serves at once and connects in the background (see `pending`).
    let pending = match config.broker {
        BrokerKind::Memory => None,
        BrokerKind::Nats => Some(PendingBroker::new(
            "nats",
            format!(
                "waiting for the first connection to NATS ({})",
                config.nats.urls.join(",")
            ),
        )),
    };
    let broker: Arc<dyn Broker> = match &pending {
        None => Arc::new(MemoryBroker::new(config.memory_broker())),
        Some(p) => p.clone(),
    };
    let mut edge_config = config.edge.clone();
    if let Some(hooks) = &config.hooks {
        let hooks = herald_hooks::Hooks::new(hooks.clone(), Some(metrics.hooks.clone()))
            .map_err(|e| anyhow::anyhow!("HERALD_HOOKS_TARGET: {e}"))?;
        tracing::info!(
            target = %hooks.config().target,
            timeout = ?hooks.config().timeout,
            max_concurrent = hooks.config().max_concurrent,
            connect = config.edge.connect_hook,
            rpc = config.edge.rpc_hook,
            "backend hooks on (docs/hooks.md)"
        );
        edge_config.hooks = Some(Arc::new(hooks));
    }
    let edge = Edge::new(edge_config, broker.clone(), metrics.clone());
    let node = Arc::new(Node {
        id: config.node_id.clone(),
        started: std::time::Instant::now(),
        edge: edge.clone(),
        drain_rate: config.drain_rate,
    });
    let local = LocalCluster::new(node.clone());
    let pending_cluster = pending.as_ref().map(|_| PendingCluster::new(local));
    let cluster: Arc<dyn Cluster> = match &pending_cluster {
        Some(c) => c.clone(),
        None => Arc::new(LocalCluster::new(node.clone())),
    };
    if config.control.api_keys.is_open() {
        if config.grpc_loopback_only || config.api_loopback_only {
            tracing::warn!(
                grpc = %config.grpc_addr,
                api = %config.api_addr,
                "NO API KEY CONFIGURED: the control plane (gRPC and HTTP/JSON APIs: publish, drain) listens on loopback only; set HERALD_API_KEYS or HERALD_API_KEYS_FILE to serve it on other addresses (or HERALD_API_INSECURE=true to do so without keys)"
            );
        } else if config.grpc_addr.ip().is_loopback() && config.api_addr.ip().is_loopback() {
            tracing::warn!(grpc = %config.grpc_addr, api = %config.api_addr, "NO API KEY CONFIGURED: the gRPC API and the HTTP/JSON API are open to anyone on this machine");
        } else {
            tracing::warn!(
                "NO API KEY CONFIGURED and HERALD_API_INSECURE=true: the gRPC API ({}) and the HTTP/JSON API ({}) (publish, drain) are open to anyone who can reach them",
                config.grpc_addr,
                config.api_addr
            );
        }
    } else {
        tracing::info!(
            keys = config.control.api_keys.len(),
            ignored_api_insecure = config.api_insecure,
            "API keys required (gRPC and HTTP/JSON API)"
        );
    }
    let policy = &config.edge.policy;
    let proxies = &config.edge.trusted_proxies;
    tracing::info!(
        verifies_tokens = policy.verifies_tokens(),
        requires_tokens = policy.requires_tokens(),
        ws_origins = ?config.edge.ws_origins,
        cors_origins = ?config.edge.cors_origins,
        connection_rate_per_ip = config.edge.connection_rate_per_ip,
        trusted_proxies = %proxies.nets().iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        forwarded_header = ?proxies.header(),
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
    let api_task = tokio::spawn(herald_control::http::serve(
        api,
        control.clone(),
        stop_rest.clone(),
        config.edge.header_read_timeout,
    ));
    let console = config
        .console
        .announce(&config.control.api_keys, config.admin_addr)
        .map(|access| {
            herald_control::console::router(
                control.clone(),
                herald_control::console::ConsoleOptions {
                    access,
                    node_id: config.node_id.clone(),
                    client_port: config.http_addr.port(),
                },
            )
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
        metrics: metrics.clone(),
        pending: pending.clone(),
    });
    let admin_router = match console {
        Some(console) => admin_router.merge(console),
        None => admin_router,
    };
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
        http = %config.http_addr, grpc = %config.grpc_addr, api = %config.api_addr, grpc_tls = config.grpc_tls.is_some(), admin = %config.admin_addr,
        "herald is serving"
    );

    // NATS: connect in the background; a settings error ends the node.
    let nats_cluster: Arc<std::sync::OnceLock<Arc<NatsCluster>>> = Arc::default();
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let connect_task = match (&pending, &pending_cluster) {
        (Some(pending), Some(pending_cluster)) => {
            let (pending, pending_cluster) = (pending.clone(), pending_cluster.clone());
            let (nats_config, heartbeat_interval) =
                (config.nats.clone(), config.heartbeat_interval);
            let (node, metrics, slot) = (node.clone(), metrics.clone(), nats_cluster.clone());
            Some(tokio::spawn(async move {
                let broker = match connect_nats(&nats_config, &pending).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = fatal_tx.send(e).await;
                        return;
                    }
                };
                let cluster = Arc::new(NatsCluster::new(
                    &broker,
                    node,
                    NatsClusterConfig {
                        heartbeat_interval,
                        ..NatsClusterConfig::default()
                    },
                ));
                let _ = slot.set(cluster.clone());
                pending_cluster.connected(cluster);
                pending.connected(Arc::new(broker.clone()));
                let reconnects = metrics.broker_reconnects.clone();
                let conflicts = metrics.publish_conflicts.clone();
                let mut seen = (0, 0);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = (broker.reconnects(), broker.publish_conflicts());
                    reconnects.inc_by(now.0.saturating_sub(seen.0));
                    conflicts.inc_by(now.1.saturating_sub(seen.1));
                    seen = now;
                }
            }))
        }
        _ => None,
    };

    let signal = tokio::select! {
        signal = shutdown_signal() => signal?,
        Some(error) = fatal_rx.recv() => {
            stop_http.cancel();
            stop_rest.cancel();
            return Err(error);
        }
    };
    if let Some(task) = &connect_task
        && pending.as_ref().is_some_and(|p| p.waiting().is_some())
    {
        task.abort();
    }
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
    if let Some(c) = nats_cluster.get() {
        c.leave().await;
    }
    if let Some(task) = connect_task {
        task.abort();
    }
    stop_rest.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), api_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing::info!("stopped");
    traces.shutdown().await;
    Ok(())
}

/// Raises the descriptor limit, caps client sockets and held connections to what it allows,
/// and says what was chosen.
fn apply_descriptor_limit(config: &mut Config) -> anyhow::Result<()> {
    let budget = descriptors::raise_and_split(config.fd_reserve)?;
    let sockets = usize::try_from(budget.client_sockets).unwrap_or(usize::MAX);
    let asked = config.edge.max_connections;
    config.edge.max_client_sockets = sockets;
    config.edge.max_connections = asked.min(sockets);
    tracing::info!(
        nofile = budget.limit,
        nofile_before = budget.soft_before,
        reserve = budget.reserve,
        client_connections = sockets,
        held_connections = config.edge.max_connections,
        "file descriptors: soft limit {} (was {}); {} kept for admin, gRPC, NATS and files; up to {} client connections",
        budget.limit,
        budget.soft_before,
        budget.reserve,
        sockets
    );
    if asked > sockets {
        tracing::warn!(
            max_connections = asked,
            allowed = sockets,
            "HERALD_MAX_CONNECTIONS ({asked}) is more than the descriptor limit allows: holding at most {sockets}; raise the limit (ulimit -n / LimitNOFILE / the container runtime) to hold more"
        );
    }
    Ok(())
}

/// Connects to NATS, retrying until it answers: at start-up NATS may not be up yet. Attempts
/// follow each other quickly (backoff 250 ms doubling to at most 1 s), so the node is ready
/// within about a second of NATS appearing. Settings errors end the wait.
async fn connect_nats(
    nats: &herald_nats::NatsBrokerConfig,
    pending: &PendingBroker,
) -> anyhow::Result<NatsBroker> {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(1);
    let mut backoff = FIRST;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        match NatsBroker::connect(nats.clone()).await {
            Ok(b) => {
                tracing::info!(attempts, "NATS reached: ready");
                return Ok(b);
            }
            Err(e @ herald_nats::NatsError::Config { .. }) => return Err(e.into()),
            Err(e) => {
                pending.set_waiting(format!(
                    "waiting for the first connection to NATS ({}): {e}",
                    nats.urls.join(",")
                ));
                // Every attempt at first, then one line in 20 (about every 20 s).
                if attempts <= 3 || attempts.is_multiple_of(20) {
                    tracing::warn!(error = %e, urls = ?nats.urls, attempts, retry_in = ?backoff, "NATS not reachable yet; serving health, metrics and refusals meanwhile");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX);
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
