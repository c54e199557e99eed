//! Backend hooks, transport-free: what Herald asks the application's backend
//! ([`ConnectCall`], ...), what it may answer ([`ConnectAnswer`], ...), why there may be no
//! answer ([`HookError`]), and [`HookCaller`], which the edge calls and `herald-hooks`
//! implements over HTTP/JSON and gRPC (docs/hooks.md).

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::value::RawValue;

/// The client connection a call is about.
#[derive(Debug, Clone)]
pub struct ClientContext {
    /// Herald's id of the client connection (stable for a held connection).
    pub client: String,
    /// The client's IP address (after trusted-proxy resolution), when known.
    pub remote_addr: Option<IpAddr>,
    /// `websocket`, `sse`, `longpoll`, `poll` or `http`.
    pub protocol: &'static str,
    /// The user the client is authenticated as (from its token), `None` when anonymous.
    pub user: Option<String>,
    /// Client request headers, already filtered by the caller with
    /// [`HookCaller::forwards`] (filtered again before sending). Names in any case;
    /// sent lower-case, repeated names joined with `", "` (`cookie`: `"; "`).
    pub headers: Vec<(String, String)>,
    /// W3C `traceparent` of the client's request span, sent as the `traceparent` HTTP header
    /// or gRPC metadata so the backend's trace joins Herald's.
    pub traceparent: Option<String>,
}

impl ClientContext {
    /// The headers as sent: allowed names only, lower-case, repeats joined.
    pub fn wire_headers(&self, allowed: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &self.headers {
            if !allowed(name) {
                continue;
            }
            let name = name.to_ascii_lowercase();
            let sep = if name == "cookie" { "; " } else { ", " };
            out.entry(name)
                .and_modify(|v| {
                    v.push_str(sep);
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        out
    }
}

/// A client connects.
#[derive(Debug, Clone)]
pub struct ConnectCall {
    /// The client.
    pub ctx: ClientContext,
    /// The raw token the client sent, if any (the backend may verify it itself).
    pub token: Option<String>,
    /// Channels the client asked for at connect time (may be empty).
    pub channels: Vec<String>,
}

/// The backend's answer to a connect.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectAnswer {
    /// Accept the connection.
    Allow {
        /// `Some`: the connection's user; `None`: keep the token's user (or anonymous).
        user: Option<String>,
        /// `Some`: JSON info attached to the connection (presence); `None`: none.
        info: Option<serde_json::Value>,
    },
    /// Refuse it.
    Refuse(Refusal),
}

/// A client subscribes to a channel.
#[derive(Debug, Clone)]
pub struct SubscribeCall {
    /// The client.
    pub ctx: ClientContext,
    /// The channel (already validated by Herald).
    pub channel: String,
}

/// Allow or refuse (the subscribe answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused.
    Refuse(Refusal),
}

/// A client publishes to a channel.
#[derive(Debug, Clone)]
pub struct PublishCall {
    /// The client.
    pub ctx: ClientContext,
    /// The channel (already validated by Herald).
    pub channel: String,
    /// The JSON the client publishes (valid JSON by construction of `RawValue`).
    pub data: Box<RawValue>,
}

/// The backend's answer to a publish.
#[derive(Debug, Clone)]
pub enum PublishAnswer {
    /// Publish it.
    Allow {
        /// `Some`: publish this JSON instead of the client's; `None`: unchanged.
        data: Option<Box<RawValue>>,
    },
    /// The application published it itself: Herald must not publish it (and tells the client
    /// it succeeded).
    Published,
    /// Refused: nothing is published.
    Refuse(Refusal),
}

/// A client calls a method of the application over its connection.
#[derive(Debug, Clone)]
pub struct RpcCall {
    /// The client.
    pub ctx: ClientContext,
    /// The method name.
    pub method: String,
    /// The call's JSON argument.
    pub data: Box<RawValue>,
}

/// The backend's answer to an RPC.
#[derive(Debug, Clone)]
pub enum RpcAnswer {
    /// The JSON result for the client.
    Result(Box<RawValue>),
    /// The error for the client.
    Error(Refusal),
}

/// Why the backend refused: an application code and a reason, both safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The application's code: 1-64 chars of `[a-z0-9_]`; anything else becomes
    /// [`Refusal::DEFAULT_CODE`].
    pub code: String,
    /// Human-readable reason, at most [`Refusal::MAX_REASON_CHARS`] chars (truncated).
    pub reason: String,
}

impl Refusal {
    /// The code used when the backend gives none or an invalid one.
    pub const DEFAULT_CODE: &'static str = "forbidden_by_app";
    /// Longest code kept.
    pub const MAX_CODE_CHARS: usize = 64;
    /// Longest reason kept (longer ones are cut at this many chars).
    pub const MAX_REASON_CHARS: usize = 256;

    /// A refusal with `code` validated and `reason` truncated.
    pub fn new(code: Option<&str>, reason: Option<&str>) -> Self {
        let code = match code {
            Some(c)
                if !c.is_empty()
                    && c.len() <= Self::MAX_CODE_CHARS
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                c.to_owned()
            }
            _ => Self::DEFAULT_CODE.to_owned(),
        };
        let reason: String = reason
            .unwrap_or_default()
            .chars()
            .take(Self::MAX_REASON_CHARS)
            .collect();
        Self { code, reason }
    }
}

/// Why there is no usable answer. The caller refuses the client's action with
/// [`HookError::code`]; it never waits longer and never retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No complete answer within the configured timeout.
    #[error("the backend did not answer in time")]
    Timeout,
    /// The backend could not be reached or said it is unavailable: connection refused or
    /// reset, HTTP 5xx, gRPC `UNAVAILABLE` / `DEADLINE_EXCEEDED`, transport errors.
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// `max_concurrent` calls are already in flight on this node.
    #[error("too many backend hook calls in flight")]
    Overloaded,
    /// The backend answered something that is not an answer: unparseable or contradictory
    /// body, larger than 64 KiB, HTTP status neither 2xx nor 5xx, any other gRPC status.
    #[error("the backend's answer is unusable: {0}")]
    BadAnswer(String),
}

impl HookError {
    /// The error code the client is refused with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout => "hook_timeout",
            Self::Unavailable(_) => "hook_unavailable",
            Self::Overloaded => "hook_overloaded",
            Self::BadAnswer(_) => "hook_bad_answer",
        }
    }

    /// The `outcome` label of `herald_hook_calls_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "error_timeout",
            Self::Unavailable(_) => "error_unavailable",
            Self::Overloaded => "error_overloaded",
            Self::BadAnswer(_) => "error_bad_answer",
        }
    }
}

/// Calls the application's backend hooks; implemented by `herald_hooks::Hooks`. Every call
/// is bounded in time and in calls in flight: an error is a refusal, never a hang.
#[async_trait::async_trait]
pub trait HookCaller: Send + Sync + std::fmt::Debug + 'static {
    /// Whether client header `name` is forwarded to the backend.
    fn forwards(&self, name: &str) -> bool;
    /// Asks whether a client may connect, and as whom.
    async fn connect(&self, req: ConnectCall) -> Result<ConnectAnswer, HookError>;
    /// Asks whether a client may subscribe to a channel.
    async fn subscribe(&self, req: SubscribeCall) -> Result<Decision, HookError>;
    /// Asks whether a client may publish, and what.
    async fn publish(&self, req: PublishCall) -> Result<PublishAnswer, HookError>;
    /// Passes a client's RPC to the backend.
    async fn rpc(&self, req: RpcCall) -> Result<RpcAnswer, HookError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_are_validated_and_reasons_truncated() {
        let r = Refusal::new(Some("banned_2"), Some("no"));
        assert_eq!((r.code.as_str(), r.reason.as_str()), ("banned_2", "no"));
        for bad in [
            None,
            Some(""),
            Some("Banned"),
            Some("a-b"),
            Some(&*"a".repeat(65)),
        ] {
            assert_eq!(
                Refusal::new(bad, None).code,
                Refusal::DEFAULT_CODE,
                "{bad:?}"
            );
        }
        let long = "é".repeat(300);
        assert_eq!(Refusal::new(None, Some(&long)).reason.chars().count(), 256);
    }

    #[test]
    fn headers_are_filtered_lowercased_and_joined() {
        let ctx = ClientContext {
            client: "c".into(),
            remote_addr: None,
            protocol: "websocket",
            user: None,
            headers: vec![
                ("Cookie".into(), "a=1".into()),
                ("cookie".into(), "b=2".into()),
                ("X-Secret".into(), "s".into()),
                ("Origin".into(), "https://x".into()),
            ],
            traceparent: None,
        };
        let h = ctx.wire_headers(|n| !n.eq_ignore_ascii_case("x-secret"));
        assert_eq!(h.len(), 2);
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["origin"], "https://x");
    }
}
