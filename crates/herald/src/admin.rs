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
    let body = Json(serde_json::json!({
        "ready": ready,
        "broker": if connected { "connected" } else { "disconnected" },
        "draining": draining,
    }));
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
