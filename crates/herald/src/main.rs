//! The `herald` binary: `herald serve` runs a node; `herald publish` publishes from a shell.

mod admin;
mod config;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_control::HeraldService;
use herald_core::{Broker, MemoryBroker};
use herald_edge::Edge;
use herald_nats::NatsBroker;
use herald_telemetry::Metrics;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerKind, Config, LogFormat, Settings};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Herald: a real-time push server (WebSocket, SSE, long-poll, polling) that scales out.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<Settings>),
    /// Publish one JSON message through a node's gRPC API; prints the cursor.
    Publish {
        /// Channel name.
        channel: String,
        /// JSON data, e.g. '{"text":"hi"}'.
        data: String,
        /// gRPC endpoint of any node.
        #[arg(
            long,
            env = "HERALD_GRPC_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        grpc: String,
        /// Idempotency key: a retry with the same key is not stored twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(settings) => serve(*settings).await,
            Command::Publish {
                channel,
                data,
                grpc,
                idempotency_key,
            } => publish(grpc, channel, data, idempotency_key).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bind(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key}): choose a free address"))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let config = Config::from_settings(settings.with_file()?)?;
    herald_telemetry::init_tracing(&config.log, config.log_format == LogFormat::Json);

    let http = bind(config.http_addr, "HERALD_HTTP_ADDR").await?;
    let grpc = bind(config.grpc_addr, "HERALD_GRPC_ADDR").await?;
    let admin = bind(config.admin_addr, "HERALD_ADMIN_ADDR").await?;

    let metrics = Arc::new(Metrics::new(&config.node_id, VERSION)?);
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
            Arc::new(broker)
        }
    };
    let edge = Edge::new(config.edge.clone(), broker.clone(), metrics.clone());
    let control = HeraldService::new(broker.clone(), metrics.clone(), config.control.clone());

    let stop_http = CancellationToken::new();
    let stop_rest = CancellationToken::new();
    let http_task = tokio::spawn({
        let (edge, stop) = (edge.clone(), stop_http.clone());
        async move { edge.serve(http, stop).await }
    });
    let grpc_task = tokio::spawn(herald_control::serve(grpc, control, stop_rest.clone()));
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
        http = %config.http_addr, grpc = %config.grpc_addr, admin = %config.admin_addr,
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
    stop_rest.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    tracing::info!("stopped");
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

async fn publish(
    grpc: String,
    channel: String,
    data: String,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    use herald_proto::v1::{PublishRequest, herald_client::HeraldClient};
    let mut client = HeraldClient::connect(grpc.clone())
        .await
        .with_context(|| format!("connecting to {grpc}"))?;
    let reply = client
        .publish(PublishRequest {
            channel,
            data: bytes::Bytes::from(data),
            idempotency_key: idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({"cursor": reply.cursor, "duplicate": reply.duplicate})
    );
    Ok(())
}
