//! What a held connection (WebSocket, SSE) tells its client, in one place: which queued item
//! reaches the client and in what order, how each delivery moves the client's position, what
//! is counted, and every way the server ends a connection. `ws` and `sse` only encode.

use std::sync::Arc;

use herald_core::{Message, Protocol, unix_micros};
use herald_telemetry::CloseReason;

use crate::{
    outbox::{Closed, Item},
    session::{Session, Step},
};

/// Why the server ends a held connection. Each row of the table: what the client is told,
/// in which words, with which WebSocket close code, and what it should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The client read too slowly and its outbound queue overflowed.
    SlowConsumer,
    /// The node is going away (SIGTERM, drain).
    Drain,
    /// The client's token expired without a refresh.
    TokenExpired,
    /// The operator disconnected the client's user.
    Disconnected {
        /// Whether the client may reconnect.
        reconnect: bool,
        /// The operator's words.
        reason: Arc<str>,
    },
    /// The client's token or user was revoked.
    Revoked,
}

impl Ending {
    /// The ending an outbox closed with.
    pub(crate) fn of(closed: Closed) -> Ending {
        match closed {
            Closed::SlowConsumer => Ending::SlowConsumer,
            Closed::Drain => Ending::Drain,
            Closed::Disconnected { reconnect, reason } => {
                Ending::Disconnected { reconnect, reason }
            }
            Closed::Revoked => Ending::Revoked,
        }
    }

    /// The frame `type` (WebSocket) or event name (SSE) that says it.
    pub(crate) const fn kind(&self) -> &'static str {
        match self {
            Ending::Drain => "reconnect",
            Ending::Disconnected { .. } => "disconnect",
            Ending::SlowConsumer | Ending::TokenExpired | Ending::Revoked => "error",
        }
    }

    /// What the frame or event carries (WebSocket adds `"type"`).
    pub(crate) fn body(&self) -> serde_json::Value {
        match self {
            Ending::SlowConsumer => serde_json::json!({"code": "slow_consumer",
                "message": "outbound queue full: reconnect and resume from your last position"}),
            Ending::Drain => serde_json::json!({"reason": "draining"}),
            Ending::TokenExpired => serde_json::json!({"code": "token_expired",
                "message": "token expired: reconnect with a fresh token and your last position"}),
            Ending::Disconnected { reconnect, reason } => serde_json::json!({
            "code": "disconnected", "reason": &**reason, "reconnect": reconnect,
            "message": if *reconnect {
                "disconnected by the server: you may reconnect and resume"
            } else {
                "disconnected by the server: do not reconnect"
            }}),
            Ending::Revoked => serde_json::json!({"code": "token_revoked",
                "message": "token revoked: do not reconnect with it"}),
        }
    }

    /// WebSocket close code and reason. All of them mean "reconnect and resume": 1013 and
    /// 1012 at once (any node), 4001 with a fresh token.
    pub(crate) const fn ws_close(&self) -> (u16, &'static str) {
        match self {
            Ending::SlowConsumer => (1013, "slow consumer"),
            Ending::Drain => (1012, "draining"),
            Ending::TokenExpired => (4001, "token expired"),
            Ending::Disconnected {
                reconnect: false, ..
            } => (4002, "disconnected"),
            Ending::Disconnected {
                reconnect: true, ..
            } => (4003, "disconnected: reconnect"),
            Ending::Revoked => (4004, "token revoked"),
        }
    }

    /// How the connection-closed metric counts it.
    pub(crate) const fn close_reason(&self) -> CloseReason {
        match self {
            Ending::SlowConsumer => CloseReason::SlowConsumer,
            Ending::Drain => CloseReason::Drain,
            Ending::TokenExpired => CloseReason::Normal,
            Ending::Disconnected { .. } => CloseReason::Disconnected,
            Ending::Revoked => CloseReason::Revoked,
        }
    }
}

/// Hands `emit` each queued item the client must see, in queue order (each channel's feed is
/// in cursor order): messages after their channel's position (moved past them first, so
/// `emit` sees the position that includes them) and gaps of subscribed channels.
pub(crate) fn live(
    session: &mut Session,
    protocol: Protocol,
    batch: &mut Vec<Item>,
    mut emit: impl FnMut(&mut Session, &Step),
) {
    let now = unix_micros();
    for item in batch.drain(..) {
        let step = match item {
            Item::Message(m) if session.admit(&m) => {
                count_delivery(session, protocol, &m, now);
                Step::Message(m)
            }
            Item::Gap(c) if session.is_subscribed(&c) => {
                count_gap(session, protocol);
                Step::Gap(c)
            }
            Item::Presence(e) if session.is_subscribed_name(&e.channel) => Step::Presence(e),
            Item::Unsubscribe(c) if session.is_subscribed(&c) => {
                if protocol == Protocol::Sse {
                    session.pin_token_set();
                }
                session.unsubscribe(std::slice::from_ref(&c));
                Step::Unsubscribed(c)
            }
            Item::Subscribe(c) if !session.is_subscribed(&c) => {
                if protocol == Protocol::Sse {
                    session.pin_token_set();
                }
                Step::Subscribe(c)
            }
            _ => continue,
        };
        emit(session, &step);
    }
}

/// Hands `emit` each catch-up step, recording it as delivered first.
pub(crate) fn catch_up(
    session: &mut Session,
    protocol: Protocol,
    steps: &mut Vec<Step>,
    mut emit: impl FnMut(&mut Session, &Step),
) {
    let now = unix_micros();
    for step in steps.drain(..) {
        match &step {
            Step::Message(m) => {
                session.record(m);
                count_delivery(session, protocol, m, now);
            }
            Step::Gap(_) => count_gap(session, protocol),
            Step::Presence(_) | Step::Unsubscribed(_) | Step::Subscribe(_) => {}
        }
        emit(session, &step);
    }
}

fn count_delivery(session: &Session, protocol: Protocol, m: &Message, now_us: u64) {
    session
        .edge
        .metrics
        .delivered(protocol, m.published_us, now_us);
}

fn count_gap(session: &Session, protocol: Protocol) {
    session
        .edge
        .metrics
        .gaps
        .with_label_values(&[protocol.as_str()])
        .inc();
}
