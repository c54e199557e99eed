//! Client-facing errors: the one place that maps failures to HTTP status codes and the JSON
//! body `{"error":{"code":"...","message":"..."}}` (and WebSocket `error` frames).

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use herald_auth::{AuthError, Denied};
use herald_core::{BrokerError, InvalidChannel, InvalidCursor};

/// Why a client request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A channel name is invalid.
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] InvalidChannel),
    /// `since` / `Last-Event-ID` is not a cursor.
    #[error("{0}")]
    InvalidCursor(#[from] InvalidCursor),
    /// `wait` is not 0-60.
    #[error("invalid wait {0:?}: expected whole seconds from 0 to 60")]
    InvalidWait(String),
    /// A query parameter appeared twice where only one is allowed.
    #[error("parameter {0:?} given more than once")]
    Repeated(&'static str),
    /// The request named no channel.
    #[error("no channel given: add ?channel=NAME (repeat it for several channels)")]
    NoChannels,
    /// More channels than one connection may hold.
    #[error("too many channels: at most {max} per connection")]
    TooManyChannels {
        /// The configured limit.
        max: usize,
    },
    /// The node holds its maximum number of connections.
    #[error("this node is at its connection limit; retry another node or later")]
    TooManyConnections,
    /// The node is draining (shutting down or being rolled).
    #[error("this node is draining; reconnect to another node")]
    Draining,
    /// The broker could not serve the request.
    #[error("message broker unavailable; retry shortly")]
    Broker(#[from] BrokerError),
    /// A WebSocket command that could not be understood.
    #[error("{0}")]
    BadCommand(String),
    /// A request to `/ws` that is not a WebSocket upgrade.
    #[error("expected a WebSocket upgrade request: {0}")]
    NotWebSocket(String),
    /// The client's token was refused.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// The client may not read a channel.
    #[error("{0}")]
    Denied(#[from] Denied),
    /// A browser WebSocket from an origin not on the allow-list.
    #[error("origin {0:?} is not allowed to open WebSockets here")]
    OriginForbidden(String),
    /// The user holds `HERALD_MAX_CONNECTIONS_PER_USER` connections on this node.
    #[error("this user holds {max} connections on this node, the most allowed")]
    TooManyUserConnections {
        /// The configured limit.
        max: usize,
    },
    /// The token, or every token of its user issued before some time, was revoked.
    #[error("token revoked: do not reconnect with it")]
    TokenRevoked,
    /// A client publish's data is not one JSON value.
    #[error("{0}")]
    InvalidData(String),
    /// A client publish's data is larger than the limit.
    #[error("data is {size} bytes; clients may publish at most {max} bytes")]
    PublishTooLarge {
        /// The data's size.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The client publishes faster than its rate allows.
    #[error("publishing too fast: at most {rate} publishes per second (burst {burst})")]
    PublishRate {
        /// Sustained publishes per second.
        rate: u32,
        /// Publishes allowed in a burst.
        burst: u32,
    },
    /// The application's backend refused (a hook answered no): its code and reason.
    #[error("{}", if .0.reason.is_empty() { "refused by the application" } else { .0.reason.as_str() })]
    AppRefused(herald_core::hooks::Refusal),
    /// A backend hook gave no usable answer (timeout, down, overloaded, garbage).
    #[error("{0}")]
    Hook(#[from] herald_core::hooks::HookError),
    /// RPC over the connection is not configured on this node.
    #[error("RPC is not enabled on this node (HERALD_RPC_HOOK)")]
    RpcDisabled,
    /// The operator disconnected the user while this request was held.
    #[error("disconnected by the server")]
    Disconnected {
        /// Whether the client may reconnect.
        reconnect: bool,
        /// The operator's words.
        reason: std::sync::Arc<str>,
    },
}

impl EdgeError {
    /// Machine-readable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            EdgeError::InvalidChannel(_) => "invalid_channel",
            EdgeError::InvalidCursor(_) => "invalid_cursor",
            EdgeError::InvalidWait(_) => "invalid_wait",
            EdgeError::Repeated(_) => "invalid_request",
            EdgeError::NoChannels => "missing_channel",
            EdgeError::TooManyChannels { .. } => "too_many_channels",
            EdgeError::TooManyConnections => "too_many_connections",
            EdgeError::Draining => "draining",
            EdgeError::Broker(_) => "broker_unavailable",
            EdgeError::BadCommand(_) => "bad_command",
            EdgeError::NotWebSocket(_) => "not_websocket",
            EdgeError::Unauthorized(e) => e.code(),
            EdgeError::Denied(d) => d.code(),
            EdgeError::OriginForbidden(_) => "origin_forbidden",
            EdgeError::TooManyUserConnections { .. } => "too_many_connections_for_user",
            EdgeError::TokenRevoked => "token_revoked",
            EdgeError::Disconnected { .. } => "disconnected",
            EdgeError::InvalidData(_) => "invalid_data",
            EdgeError::PublishTooLarge { .. } => "message_too_large",
            EdgeError::PublishRate { .. } => "publish_rate_exceeded",
            // The application's own code is in the body (`body`).
            EdgeError::AppRefused(_) => "forbidden_by_app",
            EdgeError::Hook(e) => e.code(),
            EdgeError::RpcDisabled => "rpc_disabled",
        }
    }

    /// The metric reason this refusal counts under.
    pub(crate) fn refusal(&self) -> &'static str {
        match self {
            EdgeError::TooManyChannels { .. } => "too_many_channels",
            EdgeError::TooManyConnections => "too_many_connections",
            EdgeError::Draining => "draining",
            EdgeError::Broker(_) => "broker_unavailable",
            EdgeError::Unauthorized(_) | EdgeError::Denied(Denied::TokenRequired(_)) => {
                "unauthorized"
            }
            EdgeError::Denied(
                Denied::Forbidden(_) | Denied::PublishForbidden(_) | Denied::PublishDisabled(_),
            ) => "forbidden",
            EdgeError::PublishRate { .. } => "rate_limited",
            EdgeError::PublishTooLarge { .. } => "message_too_large",
            EdgeError::AppRefused(_) | EdgeError::RpcDisabled => "forbidden",
            EdgeError::Hook(_) => "hook_failed",
            EdgeError::OriginForbidden(_) => "origin_forbidden",
            EdgeError::TooManyUserConnections { .. } => "too_many_connections_for_user",
            EdgeError::TokenRevoked => "unauthorized",
            _ => "invalid_request",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            EdgeError::TooManyConnections
            | EdgeError::Draining
            | EdgeError::Broker(_)
            | EdgeError::Hook(_) => StatusCode::SERVICE_UNAVAILABLE,
            EdgeError::NotWebSocket(_) => StatusCode::UPGRADE_REQUIRED,
            EdgeError::Unauthorized(_)
            | EdgeError::Denied(Denied::TokenRequired(_))
            | EdgeError::TokenRevoked => StatusCode::UNAUTHORIZED,
            EdgeError::TooManyUserConnections { .. } | EdgeError::PublishRate { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            EdgeError::PublishTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EdgeError::Disconnected { .. } => StatusCode::CONFLICT,
            EdgeError::Denied(
                Denied::Forbidden(_) | Denied::PublishForbidden(_) | Denied::PublishDisabled(_),
            )
            | EdgeError::OriginForbidden(_)
            | EdgeError::AppRefused(_)
            | EdgeError::RpcDisabled => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON error object (also the body of WebSocket `error` frames).
    pub(crate) fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"code": self.code(), "message": self.to_string()});
        if let EdgeError::AppRefused(r) = self {
            body["code"] = r.code.as_str().into();
        }
        if let EdgeError::Disconnected { reconnect, reason } = self {
            body["reconnect"] = (*reconnect).into();
            body["reason"] = (**reason).into();
        }
        body
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        if let EdgeError::Broker(e) = &self {
            tracing::warn!(error = %e, "client request failed on the broker");
        }
        let status = self.status();
        let mut resp = (status, Json(serde_json::json!({"error": self.body()}))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald\""),
            );
        }
        if let EdgeError::NotWebSocket(_) = self {
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        resp
    }
}
