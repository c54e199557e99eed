//! Publishes from clients: the WebSocket `publish` command and `POST /publish` on the client
//! port (for SSE and polling clients).
//!
//! Both go through [`publish`], the one place with the rules: the namespace must allow client
//! publishes and the token's `publish` claim must grant the channel (`Policy::authorize_publish`),
//! a revoked token is refused, the data must be one JSON value of at most
//! `client_publish_max_bytes`, and the message is then stored by the broker exactly like a
//! `Publish` from the gRPC API: it gets a cursor, is ordered and kept in history like any
//! other, and reaches every node. Rates are limited per WebSocket connection and, over HTTP,
//! per user (or per address without a token). A WebSocket connection's publishes are stored
//! one after the other, in the order it sent them, from a queue of at most
//! [`MAX_QUEUED`]; the connection keeps reading and writing meanwhile.

use std::{
    collections::VecDeque,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    Json,
    body::Body,
    extract::{ConnectInfo, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use herald_auth::Principal;
use herald_core::{
    BrokerError, ChannelName, InvalidPayload, Payload, PublishRequest, Published,
    hooks::{ClientContext, HookError, PublishAnswer, PublishCall, RpcAnswer, RpcCall},
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::{EdgeError, EdgeInner, limits::ConnRate};

/// Publishes one WebSocket connection may have waiting for the broker; more are refused with
/// `publish_rate_exceeded` until some are stored.
pub(crate) const MAX_QUEUED: usize = 16;
/// Longest request id a client may attach to a command (echoed in the answer).
const MAX_ID_LEN: usize = 64;

/// Where a client publish came from (for metrics).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transport {
    WebSocket,
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

/// What became of an accepted client publish.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stored {
    /// Stored by the broker: the cursor subscribers see.
    Message(Published),
    /// The publish hook answered that the application published it itself.
    ByApp,
}

/// Checks and stores one client publish of `data` (the raw JSON text) to `channel`. `ctx`:
/// what the publish hook is told about the client (built when the node has hooks).
pub(crate) async fn publish(
    edge: &EdgeInner,
    who: Option<&Principal>,
    ctx: Option<&ClientContext>,
    channel: &ChannelName,
    data: Bytes,
    transport: Transport,
) -> Result<Stored, EdgeError> {
    let result = checked_publish(edge, who, ctx, channel, data).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => {
            edge.metrics.refuse(e.refusal());
            e.code()
        }
    };
    edge.metrics
        .client_publishes
        .with_label_values(&[transport.as_str(), outcome])
        .inc();
    result
}

fn payload(edge: &EdgeInner, data: Bytes) -> Result<Payload, EdgeError> {
    let max = edge.config.client_publish_max_bytes;
    Payload::from_json(data, max).map_err(|e| match e {
        InvalidPayload::TooLarge { size, .. } => EdgeError::PublishTooLarge { size, max },
        InvalidPayload::NotJson(m) => EdgeError::InvalidData(format!(
            "data is not valid JSON: {m} (data must be one JSON value)"
        )),
    })
}

async fn checked_publish(
    edge: &EdgeInner,
    who: Option<&Principal>,
    ctx: Option<&ClientContext>,
    channel: &ChannelName,
    data: Bytes,
) -> Result<Stored, EdgeError> {
    if edge.config.client_publish_rate == 0 {
        return Err(herald_auth::Denied::PublishDisabled(channel.to_string()).into());
    }
    crate::auth::check_revoked(edge, who)?;
    edge.config.policy.authorize_publish(who, channel)?;
    let mut data = payload(edge, data)?;
    if edge.config.policy.rule(channel).publish_hook {
        let (Some(hooks), Some(ctx)) = (edge.config.hooks.as_deref(), ctx) else {
            return Err(HookError::Unavailable("no hook target".into()).into());
        };
        let raw = RawValue::from_string(String::from_utf8_lossy(data.bytes()).into_owned())
            .map_err(|e| EdgeError::InvalidData(e.to_string()))?;
        let answer = hooks
            .publish(PublishCall {
                ctx: ctx.clone(),
                channel: channel.as_str().to_owned(),
                data: raw,
            })
            .await?;
        match answer {
            PublishAnswer::Allow { data: None } => {}
            // The backend's data obeys the same rules as the client's.
            PublishAnswer::Allow { data: Some(new) } => {
                data = payload(edge, Bytes::from(String::from(Box::<str>::from(new))))?;
            }
            PublishAnswer::Published => return Ok(Stored::ByApp),
            PublishAnswer::Refuse(r) => return Err(EdgeError::AppRefused(r)),
        }
    }
    let published = edge
        .broker
        .publish(PublishRequest {
            channel: channel.clone(),
            data,
            idempotency_key: None,
        })
        .await
        .map_err(|e| match e {
            BrokerError::Rejected(m) => EdgeError::InvalidData(m),
            e => EdgeError::Broker(e),
        })?;
    if !published.duplicate {
        edge.metrics.messages_published.inc();
    }
    Ok(Stored::Message(published))
}

/// Passes a client's RPC to the backend's RPC hook: its result, or its refusal.
pub(crate) async fn rpc(
    edge: &EdgeInner,
    who: Option<&Principal>,
    ctx: Option<&ClientContext>,
    method: &str,
    data: Box<RawValue>,
) -> Result<Box<RawValue>, EdgeError> {
    let result = async {
        let (Some(hooks), Some(ctx), true) =
            (edge.config.hooks.as_deref(), ctx, edge.config.rpc_hook)
        else {
            return Err(EdgeError::RpcDisabled);
        };
        crate::auth::check_revoked(edge, who)?;
        match hooks
            .rpc(RpcCall {
                ctx: ctx.clone(),
                method: method.to_owned(),
                data,
            })
            .await?
        {
            RpcAnswer::Result(r) => Ok(r),
            RpcAnswer::Error(r) => Err(EdgeError::AppRefused(r)),
        }
    }
    .await;
    if let Err(e) = &result {
        edge.metrics.refuse(e.refusal());
    }
    result
}

/// Checks an RPC method name: 1-64 characters of `A-Z a-z 0-9 _ - . : /`.
pub(crate) fn method_name(method: Option<String>) -> Result<String, EdgeError> {
    match method {
        Some(m)
            if !m.is_empty()
                && m.len() <= crate::hooks::MAX_METHOD_LEN
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b)) =>
        {
            Ok(m)
        }
        _ => Err(EdgeError::BadCommand(format!(
            "\"method\" must be 1-{} characters of A-Z a-z 0-9 _ - . : /",
            crate::hooks::MAX_METHOD_LEN
        ))),
    }
}

/// A client's request id, echoed in the answer: a string of at most [`MAX_ID_LEN`] bytes or
/// an integer.
pub(crate) fn request_id(id: Option<serde_json::Value>) -> Result<serde_json::Value, EdgeError> {
    match id {
        None | Some(serde_json::Value::Null) => Ok(serde_json::Value::Null),
        Some(serde_json::Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(s.into()),
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.into()),
        Some(_) => Err(EdgeError::BadCommand(format!(
            "\"id\" must be a string of at most {MAX_ID_LEN} bytes or an integer"
        ))),
    }
}

/// Token bucket of one connection's publishes.
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            tokens: f64::from(rate) * 2.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self, rate: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(rate);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One queued WebSocket publish or RPC.
pub(crate) struct Pending {
    pub(crate) id: serde_json::Value,
    pub(crate) what: Request,
}

/// What a queued command asks.
pub(crate) enum Request {
    Publish { channel: ChannelName, data: Bytes },
    Rpc { method: String, data: Box<RawValue> },
}

/// What a command achieved.
pub(crate) enum Done {
    Stored(Stored),
    Rpc(Box<RawValue>),
}

/// A command's answer for the WebSocket: the request id, what it was, and its outcome.
pub(crate) type Answer = (serde_json::Value, Asked, Result<Done, EdgeError>);

/// What an answer is about (for its frame).
pub(crate) enum Asked {
    Publish(Option<ChannelName>),
    Rpc,
}

type Flight = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A WebSocket connection's publishes: a bounded queue stored one at a time, in order.
pub(crate) struct Publishes {
    queue: VecDeque<Pending>,
    flight: Option<Flight>,
    bucket: Option<Bucket>,
}

impl Publishes {
    pub(crate) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            flight: None,
            bucket: None,
        }
    }

    /// Whether a publish is waiting for the broker.
    pub(crate) fn busy(&self) -> bool {
        self.flight.is_some()
    }

    /// Queues `p`, or refuses it at once when the connection publishes too fast (publishes
    /// and RPCs share the rate).
    pub(crate) fn push(
        &mut self,
        edge: &Arc<EdgeInner>,
        who: Option<&Principal>,
        ctx: Option<&ClientContext>,
        p: Pending,
    ) -> Result<(), EdgeError> {
        let rate = edge.config.client_publish_rate;
        let limited = EdgeError::PublishRate {
            rate,
            burst: rate.saturating_mul(2),
        };
        if rate == 0 {
            return Err(match &p.what {
                Request::Publish { channel, .. } => {
                    herald_auth::Denied::PublishDisabled(channel.to_string()).into()
                }
                Request::Rpc { .. } => EdgeError::RpcDisabled,
            });
        }
        if self.queue.len() >= MAX_QUEUED {
            return Err(limited);
        }
        if !self
            .bucket
            .get_or_insert_with(|| Bucket::new(rate))
            .take(rate)
        {
            edge.metrics.refuse(limited.refusal());
            edge.metrics
                .client_publishes
                .with_label_values(&[Transport::WebSocket.as_str(), limited.code()])
                .inc();
            return Err(limited);
        }
        self.queue.push_back(p);
        if self.flight.is_none() {
            self.start(edge, who, ctx);
        }
        Ok(())
    }

    fn start(
        &mut self,
        edge: &Arc<EdgeInner>,
        who: Option<&Principal>,
        ctx: Option<&ClientContext>,
    ) {
        if let Some(p) = self.queue.pop_front() {
            let edge = edge.clone();
            let who = who.cloned();
            let ctx = ctx.cloned();
            self.flight = Some(Box::pin(async move {
                match p.what {
                    Request::Publish { channel, data } => {
                        let result = publish(
                            &edge,
                            who.as_ref(),
                            ctx.as_ref(),
                            &channel,
                            data,
                            Transport::WebSocket,
                        )
                        .await;
                        (
                            p.id,
                            Asked::Publish(Some(channel)),
                            result.map(Done::Stored),
                        )
                    }
                    Request::Rpc { method, data } => {
                        let result = rpc(&edge, who.as_ref(), ctx.as_ref(), &method, data).await;
                        (p.id, Asked::Rpc, result.map(Done::Rpc))
                    }
                }
            }));
        }
    }

    /// The next answer, once the publish in flight is stored or refused; the next queued one
    /// then leaves.
    pub(crate) fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
        edge: &Arc<EdgeInner>,
        who: Option<&Principal>,
        ctx: Option<&ClientContext>,
    ) -> Poll<Answer> {
        let Some(flight) = self.flight.as_mut() else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(flight.as_mut().poll(cx));
        self.flight = None;
        self.start(edge, who, ctx);
        Poll::Ready(answer)
    }
}

/// The WebSocket frame answering a publish or an RPC.
pub(crate) fn answer_frame(answer: Answer) -> serde_json::Value {
    let (id, asked, result) = answer;
    let mut body = match result {
        Ok(Done::Stored(Stored::Message(p))) => {
            serde_json::json!({"type": "published", "cursor": p.cursor.to_string()})
        }
        Ok(Done::Stored(Stored::ByApp)) => {
            serde_json::json!({"type": "published", "cursor": null, "by": "app"})
        }
        Ok(Done::Rpc(result)) => {
            // Valid JSON by construction.
            let result = serde_json::from_str::<serde_json::Value>(result.get())
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({"type": "rpc", "result": result})
        }
        Err(e) => {
            let mut body = e.body();
            body["type"] = "error".into();
            body["op"] = match asked {
                Asked::Publish(_) => "publish",
                Asked::Rpc => "rpc",
            }
            .into();
            body
        }
    };
    if let Asked::Publish(Some(channel)) = asked {
        body["channel"] = channel.as_str().into();
    }
    if !id.is_null() {
        body["id"] = id;
    }
    body
}

/// Who an HTTP publish counts against: the token's user, else the client's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Publisher {
    User(String),
    Addr(IpAddr),
}

/// Per-publisher rates of `POST /publish`.
pub(crate) struct HttpRates(Option<ConnRate<Publisher>>);

impl HttpRates {
    pub(crate) fn new(rate: u32) -> Self {
        Self(ConnRate::new(rate))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcBody<'a> {
    method: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Which HTTP endpoint.
#[derive(Clone, Copy)]
enum Call {
    Publish,
    Rpc,
}

/// `POST /publish`: `{"channel":"..","data":<JSON>}` with the token as for `/sse`
/// (`Authorization: Bearer`, else `?token=`). Answers `{"channel":"..","cursor":".."}`.
pub(crate) async fn route(
    State(edge): State<Arc<EdgeInner>>,
    request: axum::extract::Request,
) -> Response {
    http_route(edge, request, Call::Publish).await
}

/// `POST /rpc`: `{"method":"..","data":<JSON>}`, answered `{"result":<JSON>}` (docs/hooks.md).
pub(crate) async fn rpc_route(
    State(edge): State<Arc<EdgeInner>>,
    request: axum::extract::Request,
) -> Response {
    http_route(edge, request, Call::Rpc).await
}

async fn http_route(edge: Arc<EdgeInner>, request: axum::extract::Request, call: Call) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let (parts, body) = request.into_parts();
    let result = http_call(&edge, parts.uri.query(), &parts.headers, ip, body, call).await;
    result.unwrap_or_else(|e| {
        edge.metrics.refuse(e.refusal());
        if let Call::Publish = call {
            edge.metrics
                .client_publishes
                .with_label_values(&[Transport::Http.as_str(), e.code()])
                .inc();
        }
        e.into_response()
    })
}

/// Errors before the call is carried out are counted by the caller; those of the publish
/// or RPC itself by [`publish`] and [`rpc`] (so they are returned as `Ok` responses here).
async fn http_call(
    edge: &Arc<EdgeInner>,
    query: Option<&str>,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
    body: Body,
    call: Call,
) -> Result<Response, EdgeError> {
    let token = crate::auth::request_token(headers, query)?;
    let who = edge.config.policy.authenticate(token.as_deref())?;
    crate::auth::check_revoked(edge, who.as_ref())?;
    let ctx = |hooks: &dyn herald_core::hooks::HookCaller, who: Option<&Principal>| {
        crate::hooks::context(hooks, "", "http", ip, who, Some(headers))
    };
    let who = crate::hooks::connect(edge, who, token.as_deref(), &[], ctx).await?;
    let ctx = edge.config.hooks.as_deref().map(|h| ctx(h, who.as_ref()));
    let rate = edge.config.client_publish_rate;
    let publisher = match (&who, ip) {
        (Some(p), _) => Some(Publisher::User(p.user.clone())),
        (None, Some(ip)) => Some(Publisher::Addr(ip)),
        (None, None) => None,
    };
    if let (Some(limiter), Some(publisher)) = (&edge.publish_rates.0, publisher)
        && !limiter.admit(publisher)
    {
        return Err(EdgeError::PublishRate {
            rate,
            burst: rate.saturating_mul(2),
        });
    }
    // The envelope around `data` is small: a channel name and a few keys.
    let max = edge.config.client_publish_max_bytes;
    let limit = max + 1024;
    let bytes =
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| EdgeError::PublishTooLarge {
                size: limit + 1,
                max,
            })?;
    let shape = |e: serde_json::Error, what: &str| {
        EdgeError::BadCommand(format!("body must be {what}: {e}"))
    };
    let missing = || EdgeError::InvalidData("\"data\" is required (any JSON value)".into());
    match call {
        Call::Publish => {
            let parsed: HttpBody<'_> = serde_json::from_slice(&bytes)
                .map_err(|e| shape(e, "{\"channel\":\"..\",\"data\":<JSON>}"))?;
            let channel = ChannelName::new(&parsed.channel)?;
            let data = Bytes::copy_from_slice(parsed.data.ok_or_else(missing)?.get().as_bytes());
            let answer = match publish(
                edge,
                who.as_ref(),
                ctx.as_ref(),
                &channel,
                data,
                Transport::Http,
            )
            .await
            {
                Ok(Stored::Message(p)) => serde_json::json!({
                    "channel": channel.as_str(),
                    "cursor": p.cursor.to_string(),
                    "duplicate": p.duplicate,
                }),
                Ok(Stored::ByApp) => serde_json::json!({
                    "channel": channel.as_str(), "cursor": null, "by": "app",
                }),
                // Counted by `publish`.
                Err(e) => return Ok(e.into_response()),
            };
            Ok(Json(answer).into_response())
        }
        Call::Rpc => {
            let parsed: RpcBody<'_> = serde_json::from_slice(&bytes)
                .map_err(|e| shape(e, "{\"method\":\"..\",\"data\":<JSON>}"))?;
            let method = method_name(parsed.method)?;
            let data = parsed
                .data
                .map(|d| d.to_owned())
                .unwrap_or_else(|| RawValue::from_string("null".into()).unwrap_or_default());
            match rpc(edge, who.as_ref(), ctx.as_ref(), &method, data).await {
                Ok(result) => {
                    let result: serde_json::Value =
                        serde_json::from_str(result.get()).unwrap_or(serde_json::Value::Null);
                    Ok(Json(serde_json::json!({"result": result})).into_response())
                }
                Err(e) => Ok(e.into_response()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded() {
        assert_eq!(request_id(None).unwrap(), serde_json::Value::Null);
        assert_eq!(request_id(Some("r1".into())).unwrap(), "r1");
        assert_eq!(request_id(Some(7.into())).unwrap(), 7);
        assert!(request_id(Some("x".repeat(65).into())).is_err());
        assert!(request_id(Some(1.5.into())).is_err());
        assert!(request_id(Some(serde_json::json!({"a": 1}))).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_bursts_of_twice_the_rate() {
        let mut b = Bucket::new(5);
        assert_eq!((0..20).filter(|_| b.take(5)).count(), 10);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| b.take(5)).count(), 5);
    }
}
