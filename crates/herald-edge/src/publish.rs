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
use herald_core::{BrokerError, ChannelName, InvalidPayload, Payload, PublishRequest, Published};
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

/// Checks and stores one client publish of `data` (the raw JSON text) to `channel`.
pub(crate) async fn publish(
    edge: &EdgeInner,
    who: Option<&Principal>,
    channel: &ChannelName,
    data: Bytes,
    transport: Transport,
) -> Result<Published, EdgeError> {
    let result = checked_publish(edge, who, channel, data).await;
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

async fn checked_publish(
    edge: &EdgeInner,
    who: Option<&Principal>,
    channel: &ChannelName,
    data: Bytes,
) -> Result<Published, EdgeError> {
    if edge.config.client_publish_rate == 0 {
        return Err(herald_auth::Denied::PublishDisabled(channel.to_string()).into());
    }
    crate::auth::check_revoked(edge, who)?;
    edge.config.policy.authorize_publish(who, channel)?;
    let max = edge.config.client_publish_max_bytes;
    let data = Payload::from_json(data, max).map_err(|e| match e {
        InvalidPayload::TooLarge { size, .. } => EdgeError::PublishTooLarge { size, max },
        InvalidPayload::NotJson(m) => EdgeError::InvalidData(format!(
            "data is not valid JSON: {m} (data must be one JSON value)"
        )),
    })?;
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
    Ok(published)
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

/// One queued WebSocket publish.
pub(crate) struct Pending {
    pub(crate) id: serde_json::Value,
    pub(crate) channel: ChannelName,
    pub(crate) data: Bytes,
}

/// A publish's answer for the WebSocket: the request id, the channel, and the cursor or the
/// refusal.
pub(crate) type Answer = (
    serde_json::Value,
    Option<ChannelName>,
    Result<Published, EdgeError>,
);

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

    /// Queues `p`, or refuses it at once when the connection publishes too fast.
    pub(crate) fn push(
        &mut self,
        edge: &Arc<EdgeInner>,
        who: Option<&Principal>,
        p: Pending,
    ) -> Result<(), EdgeError> {
        let rate = edge.config.client_publish_rate;
        let limited = EdgeError::PublishRate {
            rate,
            burst: rate.saturating_mul(2),
        };
        if rate == 0 {
            return Err(herald_auth::Denied::PublishDisabled(p.channel.to_string()).into());
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
            self.start(edge, who);
        }
        Ok(())
    }

    fn start(&mut self, edge: &Arc<EdgeInner>, who: Option<&Principal>) {
        if let Some(p) = self.queue.pop_front() {
            let edge = edge.clone();
            let who = who.cloned();
            self.flight = Some(Box::pin(async move {
                let result = publish(
                    &edge,
                    who.as_ref(),
                    &p.channel,
                    p.data,
                    Transport::WebSocket,
                )
                .await;
                (p.id, Some(p.channel), result)
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
    ) -> Poll<Answer> {
        let Some(flight) = self.flight.as_mut() else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(flight.as_mut().poll(cx));
        self.flight = None;
        self.start(edge, who);
        Poll::Ready(answer)
    }
}

/// The WebSocket frame answering a publish.
pub(crate) fn answer_frame(answer: Answer) -> serde_json::Value {
    let (id, channel, result) = answer;
    let mut body = match result {
        Ok(p) => serde_json::json!({"type": "published", "cursor": p.cursor.to_string()}),
        Err(e) => {
            let mut body = e.body();
            body["type"] = "error".into();
            body["op"] = "publish".into();
            body
        }
    };
    if let Some(channel) = channel {
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

/// `POST /publish`: `{"channel":"..","data":<JSON>}` with the token as for `/sse`
/// (`Authorization: Bearer`, else `?token=`). Answers `{"channel":"..","cursor":".."}`.
pub(crate) async fn route(
    State(edge): State<Arc<EdgeInner>>,
    request: axum::extract::Request,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let (parts, body) = request.into_parts();
    http_publish(&edge, parts.uri.query(), &parts.headers, ip, body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn http_publish(
    edge: &Arc<EdgeInner>,
    query: Option<&str>,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
    body: Body,
) -> Result<Response, EdgeError> {
    let refused = |edge: &EdgeInner, e: EdgeError| {
        edge.metrics.refuse(e.refusal());
        edge.metrics
            .client_publishes
            .with_label_values(&[Transport::Http.as_str(), e.code()])
            .inc();
        e
    };
    let token = crate::auth::request_token(headers, query).map_err(|e| refused(edge, e))?;
    let who = edge
        .config
        .policy
        .authenticate(token.as_deref())
        .map_err(|e| refused(edge, e.into()))?;
    let rate = edge.config.client_publish_rate;
    let publisher = match (&who, ip) {
        (Some(p), _) => Some(Publisher::User(p.user.clone())),
        (None, Some(ip)) => Some(Publisher::Addr(ip)),
        (None, None) => None,
    };
    if let (Some(limiter), Some(publisher)) = (&edge.publish_rates.0, publisher)
        && !limiter.admit(publisher)
    {
        return Err(refused(
            edge,
            EdgeError::PublishRate {
                rate,
                burst: rate.saturating_mul(2),
            },
        ));
    }
    // The envelope around `data` is small: a channel name and a few keys.
    let max = edge.config.client_publish_max_bytes;
    let limit = max + 1024;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        refused(
            edge,
            EdgeError::PublishTooLarge {
                size: limit + 1,
                max,
            },
        )
    })?;
    let parsed: HttpBody<'_> = serde_json::from_slice(&bytes).map_err(|e| {
        refused(
            edge,
            EdgeError::BadCommand(format!(
                "body must be {{\"channel\":\"..\",\"data\":<JSON>}}: {e}"
            )),
        )
    })?;
    let channel = ChannelName::new(&parsed.channel).map_err(|e| refused(edge, e.into()))?;
    let Some(data) = parsed.data else {
        return Err(refused(
            edge,
            EdgeError::InvalidData("\"data\" is required (any JSON value)".into()),
        ));
    };
    let data = Bytes::copy_from_slice(data.get().as_bytes());
    let published = publish(edge, who.as_ref(), &channel, data, Transport::Http).await?;
    Ok(Json(serde_json::json!({
        "channel": channel.as_str(),
        "cursor": published.cursor.to_string(),
        "duplicate": published.duplicate,
    }))
    .into_response())
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
