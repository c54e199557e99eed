//! The admin port: `/healthz` (alive), `/readyz` (broker connected and not draining) and
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use herald_core::{Broker, BrokerState};
use herald_edge::Edge;
use herald_telemetry::Metrics;

/// What the admin routes read.
#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) edge: Edge,
    pub(crate) metrics: Arc<Metrics>,
    /// Set while the node waits for its first broker connection (NATS).
    pub(crate) pending: Option<Arc<crate::pending::PendingBroker>>,
}

pub(crate) fn router(admin: Admin) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(a): State<Admin>) -> Response {
    let connected = *a.broker.state().borrow() == BrokerState::Connected;
    let draining = a.edge.is_draining();
    let ready = connected && !draining;
    let waiting = a.pending.as_ref().and_then(|p| p.waiting());
    let mut body = serde_json::json!({
        "ready": ready,
        "broker": if connected { "connected" } else if waiting.is_some() { "connecting" } else { "disconnected" },
        "draining": draining,
    });
    if !ready {
        body["reason"] = serde_json::Value::String(if draining {
            "draining: this node is leaving; clients are moved to other nodes".to_owned()
        } else if let Some(w) = waiting {
            w
        } else {
            format!(
                "the {} broker connection is down; reconnecting",
                a.broker.kind()
            )
        });
    }
    let body = Json(body);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(a): State<Admin>) -> Response {
    let connected = *a.broker.state().borrow() == BrokerState::Connected;
    a.metrics.broker_connected.set(i64::from(connected));
    a.metrics
        .ready
        .set(i64::from(connected && !a.edge.is_draining()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        a.metrics.render(),
    )
        .into_response()
}
