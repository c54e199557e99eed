//! Herald's telemetry: the Prometheus metric families every component records into, the
//! `tracing` subscriber set-up and OpenTelemetry trace export ([`trace`]).
//!
//! Every family is registered and every `protocol` series initialised at zero at start-up,
//! so dashboards and alerts never see a missing series. No label ever holds a channel name or
//! a client id.

pub mod hooks;
pub mod trace;

pub use hooks::HookMetrics;

use std::sync::Arc;

use herald_core::Protocol;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why a client connection ended (the `reason` label of `herald_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away or the request completed normally.
    Normal,
    /// Its outbound queue overflowed.
    SlowConsumer,
    /// The node is draining.
    Drain,
    /// It broke the protocol (oversized frame, flood).
    ProtocolError,
    /// The broker failed while serving it.
    BrokerError,
    /// The operator disconnected its user (`Disconnect`).
    Disconnected,
    /// Its token or user was revoked.
    Revoked,
}

impl CloseReason {
    /// Every reason, in a fixed order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Normal,
        CloseReason::SlowConsumer,
        CloseReason::Drain,
        CloseReason::ProtocolError,
        CloseReason::BrokerError,
        CloseReason::Disconnected,
        CloseReason::Revoked,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Drain => "drain",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::BrokerError => "broker_error",
            CloseReason::Disconnected => "disconnected",
            CloseReason::Revoked => "revoked",
        }
    }
}

/// Requests refused by a limit or validation (the `reason` label of
/// `herald_requests_refused_total`).
pub const REFUSAL_REASONS: [&str; 14] = [
    "invalid_request",
    "header_timeout",
    "request_head_too_large",
    "unauthorized",
    "forbidden",
    "origin_forbidden",
    "rate_limited",
    "too_many_connections",
    "too_many_connections_for_user",
    "hook_failed",
    "too_many_channels",
    "message_too_large",
    "broker_unavailable",
    "draining",
];

/// The `herald.v1.Herald` methods (the `method` label of the gRPC families), each exported from
/// start-up.
pub const GRPC_METHODS: [&str; 16] = [
    "Publish",
    "Broadcast",
    "PublishStream",
    "History",
    "Channels",
    "Stats",
    "WatchStats",
    "DrainNode",
    "Presence",
    "PresenceStats",
    "Connections",
    "Disconnect",
    "Unsubscribe",
    "Subscribe",
    "RevokeToken",
    "RevokeUser",
];

/// The methods the HTTP/JSON API serves (every unary one), exported with `api="http"`.
pub const HTTP_API_METHODS: [&str; 14] = [
    "Publish",
    "Broadcast",
    "History",
    "Channels",
    "Stats",
    "DrainNode",
    "Presence",
    "PresenceStats",
    "Connections",
    "Disconnect",
    "Unsubscribe",
    "Subscribe",
    "RevokeToken",
    "RevokeUser",
];

/// Latency buckets (seconds) for delivery and publish histograms: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets (bytes) for the outbound queue histogram: 256 B to 4 MiB (the default bound is 1 MiB).
const QUEUE_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 524288.0, 1048576.0, 4194304.0,
];

/// The broker kinds (the `broker` label of `herald_broker_info`).
pub const BROKER_KINDS: [&str; 2] = ["memory", "nats"];

/// Every metric family of a node. Cheap to share (`Arc<Metrics>`); recording is lock-free.
pub struct Metrics {
    registry: Registry,
    /// Open client connections by protocol (poll: see docs/observability.md).
    pub connections: IntGaugeVec,
    /// Client connections opened, by protocol.
    pub connections_opened: IntCounterVec,
    /// Client connections closed, by protocol and reason.
    pub connections_closed: IntCounterVec,
    /// Messages accepted by the broker through this node's gRPC API.
    pub messages_published: IntCounter,
    /// Publishes from clients (WebSocket `publish`, `POST /publish`), by `transport`
    /// (`websocket`, `http`) and `outcome` (`ok`, or the refusal's error code).
    pub client_publishes: IntCounterVec,
    /// Messages written to clients, by protocol.
    pub messages_delivered: IntCounterVec,
    /// Publish accepted to written to a client, seconds.
    pub delivery_latency: Histogram,
    /// (connection, channel) pairs with live interest on this node.
    pub subscriptions: IntGauge,
    /// Channels with live interest on this node.
    pub channels: IntGauge,
    /// 1 when the broker is reachable.
    pub broker_connected: IntGauge,
    /// Times the broker connection was re-established.
    pub broker_reconnects: IntCounter,
    /// Publish races lost to another node publishing to the same channel at the same moment
    /// (each was retried on the winner's link; a high rate means hot channels published from
    /// many nodes).
    pub publish_conflicts: IntCounter,
    /// Broker publish call duration, seconds.
    pub broker_publish_duration: Histogram,
    /// History reads issued to the broker (resumes, polls, repairs, cache fills).
    pub history_reads: IntCounter,
    /// Resumes and polls looked up in the node's recent-message caches, by `result`
    /// (`hit`: served from memory; `miss`: the broker was read).
    pub recent_cache: IntCounterVec,
    /// Clients disconnected because their outbound queue overflowed, by protocol.
    pub slow_consumer_disconnects: IntCounterVec,
    /// Gap signals sent to clients, by protocol.
    pub gaps: IntCounterVec,
    /// Requests refused by validation or a limit, by reason.
    pub refused: IntCounterVec,
    /// Control-plane requests by method, status code and `api` (`grpc`, or `http` for the
    /// HTTP/JSON API, which runs the same methods).
    pub grpc_requests: IntCounterVec,
    /// Control-plane request duration by method and `api`, seconds.
    pub grpc_duration: HistogramVec,
    /// 1 while the node drains.
    pub draining: IntGauge,
    /// 1 while the node is ready (broker connected and not draining): what `/readyz` says.
    pub ready: IntGauge,
    /// Bytes in a connection's outbound queue each time its writer drains it.
    pub outbox_queued_bytes: Histogram,
    /// Live messages the fan-out wrote straight to an idle stream's socket (also counted in
    /// `messages_delivered`).
    pub direct_writes: IntCounter,
    /// Which broker this node uses (one series at 1, the others at 0).
    pub broker_info: IntGaugeVec,
    /// The backend hooks' families ([`hooks`]), handed to herald-hooks.
    pub hooks: Arc<HookMetrics>,
    /// `messages_delivered` resolved per protocol ([`Protocol::index`]): the hot path must
    /// not hash label values for every delivery.
    delivered_by: [IntCounter; 4],
}

impl Metrics {
    /// Registers every family (and the process collector) in a fresh registry.
    pub fn new(node_id: &str, version: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let protocols: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();

        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(m.clone()))?;
                Ok(m)
            };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let m = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(m.clone()))?;
                Ok(m)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let m = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let m = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let m = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )?;
            registry.register(Box::new(m.clone()))?;
            Ok(m)
        };

        let delivered = counter_vec(
            "herald_messages_delivered_total",
            "Messages written to clients, by protocol.",
            &["protocol"],
        )?;
        let m = Self {
            connections: gauge_vec(
                "herald_connections",
                "Open client connections by protocol.",
                &["protocol"],
            )?,
            connections_opened: counter_vec(
                "herald_connections_opened_total",
                "Client connections opened, by protocol.",
                &["protocol"],
            )?,
            connections_closed: counter_vec(
                "herald_connections_closed_total",
                "Client connections closed, by protocol and reason.",
                &["protocol", "reason"],
            )?,
            client_publishes: counter_vec(
                "herald_client_publishes_total",
                "Publishes from clients (WebSocket publish, POST /publish), by transport and outcome (ok or the error code).",
                &["transport", "outcome"],
            )?,
            messages_published: counter(
                "herald_messages_published_total",
                "Messages accepted by the broker through this node's gRPC API.",
            )?,
            messages_delivered: delivered.clone(),
            delivery_latency: histogram(
                "herald_delivery_latency_seconds",
                "Time from publish accepted by the broker to the message written to a client.",
            )?,
            subscriptions: gauge(
                "herald_subscriptions",
                "Connection-channel subscriptions with live interest on this node.",
            )?,
            channels: gauge(
                "herald_channels",
                "Channels with live interest on this node.",
            )?,
            broker_connected: gauge(
                "herald_broker_connected",
                "1 when the broker is reachable, else 0.",
            )?,
            broker_reconnects: counter(
                "herald_broker_reconnects_total",
                "Times the broker connection was re-established.",
            )?,
            publish_conflicts: counter(
                "herald_publish_conflicts_total",
                "Publish races lost to another node on the same channel, each retried.",
            )?,
            broker_publish_duration: histogram(
                "herald_broker_publish_duration_seconds",
                "Duration of broker publish calls.",
            )?,
            direct_writes: counter(
                "herald_direct_writes_total",
                "Live messages the fan-out wrote straight to an idle connection's socket (WebSocket or SSE), without waking its task (also counted in herald_messages_delivered_total).",
            )?,
            history_reads: counter(
                "herald_history_reads_total",
                "History reads issued to the broker (resumes, polls, repairs, cache fills).",
            )?,
            recent_cache: counter_vec(
                "herald_recent_cache_lookups_total",
                "Resume and poll positions looked up in the node's recent-message caches, by result (hit: served from memory, miss: read from the broker).",
                &["result"],
            )?,
            slow_consumer_disconnects: counter_vec(
                "herald_slow_consumer_disconnects_total",
                "Clients disconnected because their outbound queue overflowed, by protocol.",
                &["protocol"],
            )?,
            gaps: counter_vec(
                "herald_gaps_total",
                "Gap signals sent to clients (history could not cover a resume), by protocol.",
                &["protocol"],
            )?,
            refused: counter_vec(
                "herald_requests_refused_total",
                "Client and API requests refused by validation or a limit, by reason.",
                &["reason"],
            )?,
            grpc_requests: counter_vec(
                "herald_grpc_requests_total",
                "herald.v1.Herald requests by method, status code and api (grpc, or http for the HTTP/JSON API).",
                &["method", "code", "api"],
            )?,
            grpc_duration: {
                let m = HistogramVec::new(
                    HistogramOpts::new(
                        "herald_grpc_request_duration_seconds",
                        "herald.v1.Herald request duration by method and api (grpc or http).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["method", "api"],
                )?;
                registry.register(Box::new(m.clone()))?;
                m
            },
            draining: gauge(
                "herald_draining",
                "1 while the node drains its clients, else 0.",
            )?,
            ready: gauge(
                "herald_ready",
                "1 while the node is ready to serve (broker connected and not draining), else 0.",
            )?,
            outbox_queued_bytes: {
                let m = Histogram::with_opts(
                    HistogramOpts::new(
                        "herald_outbox_queued_bytes",
                        "Bytes waiting in a connection's outbound queue each time its writer drains it (WebSocket and SSE).",
                    )
                    .buckets(QUEUE_BUCKETS.to_vec()),
                )?;
                registry.register(Box::new(m.clone()))?;
                m
            },
            broker_info: gauge_vec(
                "herald_broker_info",
                "1 for the broker kind this node uses (memory or nats), 0 for the others.",
                &["broker"],
            )?,
            hooks: Arc::new(HookMetrics::register(&registry)?),
            delivered_by: Protocol::ALL.map(|p| delivered.with_label_values(&[p.as_str()])),
            registry,
        };
        for p in &protocols {
            m.connections.with_label_values(&[p]);
            m.connections_opened.with_label_values(&[p]);
            m.messages_delivered.with_label_values(&[p]);
            m.slow_consumer_disconnects.with_label_values(&[p]);
            m.gaps.with_label_values(&[p]);
            for r in CloseReason::ALL {
                m.connections_closed.with_label_values(&[p, r.as_str()]);
            }
        }
        for r in REFUSAL_REASONS {
            m.refused.with_label_values(&[r]);
        }
        for b in BROKER_KINDS {
            m.broker_info.with_label_values(&[b]);
        }
        for r in ["hit", "miss"] {
            m.recent_cache.with_label_values(&[r]);
        }
        for method in GRPC_METHODS {
            m.grpc_duration.with_label_values(&[method, "grpc"]);
            m.grpc_requests.with_label_values(&[method, "OK", "grpc"]);
        }
        for method in HTTP_API_METHODS {
            m.grpc_duration.with_label_values(&[method, "http"]);
            m.grpc_requests.with_label_values(&[method, "OK", "http"]);
        }
        let info = IntGaugeVec::new(
            Opts::new(
                "herald_build_info",
                "Always 1; labels carry the version and node id.",
            ),
            &["version", "node"],
        )?;
        info.with_label_values(&[version, node_id]).set(1);
        m.registry.register(Box::new(info))?;
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "encoding metrics failed");
                String::new()
            })
    }

    /// Records one delivery of a message published at `published_us` (µs since the epoch).
    pub fn delivered(&self, protocol: Protocol, published_us: u64, now_us: u64) {
        self.delivered_by[protocol.index()].inc();
        self.delivery_latency
            .observe(now_us.saturating_sub(published_us) as f64 / 1e6);
    }

    /// Marks `kind` (one of [`BROKER_KINDS`]) as this node's broker in `herald_broker_info`.
    pub fn set_broker(&self, kind: &str) {
        for b in BROKER_KINDS {
            self.broker_info
                .with_label_values(&[b])
                .set(i64::from(b == kind));
        }
    }

    /// Counts a refused request.
    pub fn refuse(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

/// Installs the global `tracing` subscriber: `RUST_LOG`-style filter (default `info`), text or
/// JSON lines on stderr. No OpenTelemetry export: servers use [`trace::init`].
pub fn init_tracing(filter: &str, json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("tracing was already initialised: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_at_start() {
        let m = Metrics::new("n1", "0.0.0").unwrap();
        let text = m.render();
        for name in [
            "herald_connections{protocol=\"websocket\"} 0",
            "herald_connections{protocol=\"sse\"} 0",
            "herald_connections{protocol=\"longpoll\"} 0",
            "herald_connections{protocol=\"poll\"} 0",
            "herald_messages_published_total 0",
            "herald_delivery_latency_seconds_count 0",
            "herald_slow_consumer_disconnects_total{protocol=\"poll\"} 0",
            "herald_broker_connected 0",
            "herald_subscriptions 0",
            "herald_channels 0",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
