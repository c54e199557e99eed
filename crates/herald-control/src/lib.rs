//! Herald's control plane: the `herald.v1.Herald` gRPC service, with `grpc.health.v1`
//! (serving follows broker readiness) and server reflection.
//!
//! This is the only place broker, cluster and validation errors become gRPC statuses. Every
//! `herald.v1` call checks the API key first ([`ApiKeys`]); health and reflection stay open.

mod auth;
pub mod console;
pub mod http;
mod stats;
mod stream;

use std::{pin::Pin, sync::Arc, time::Instant};

use futures_util::Stream;
use herald_core::{
    Broker, BrokerError, BrokerState, ChannelName, ChannelPattern, ChannelsQuery, Cluster,
    ClusterError, Cursor, HistoryQuery, InvalidPayload, Payload, PublishRequest, Revocation,
    Revoked, UserAction,
};
use herald_proto::v1::{
    self, BroadcastRequest, BroadcastResponse, BroadcastResult, ChannelInfo, ChannelsRequest,
    ChannelsResponse, DisconnectRequest, DrainNodeRequest, DrainNodeResponse, HistoryMessage,
    HistoryRequest, HistoryResponse, PresenceClient, PresenceRequest, PresenceResponse,
    PresenceStatsResponse, PublishResponse, PublishStreamRequest, PublishStreamResponse,
    RevokeTokenRequest, RevokeUserRequest, StatsRequest, StatsResponse, UserActionResponse,
    UserChannelRequest, WatchStatsRequest,
    broadcast_result::Outcome,
    herald_server::{Herald, HeraldServer},
};
use herald_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, transport::Server};
use tracing::Instrument;

pub use auth::ApiKeys;

/// Most messages in one `History` answer.
pub const MAX_HISTORY_LIMIT: u32 = 10_000;
/// Messages in a `History` answer when the request leaves `limit` unset (0).
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// Most channels in one `Channels` answer (and its default).
pub const MAX_CHANNELS_LIMIT: u32 = 1000;
/// Default `WatchStats` interval.
pub const DEFAULT_WATCH_INTERVAL_MS: u32 = 2000;
/// Shortest and longest `WatchStats` interval.
pub const WATCH_INTERVAL_RANGE_MS: (u32, u32) = (100, 60_000);

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Largest message `data` accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most channels in one `Broadcast`.
    pub max_broadcast_channels: usize,
    /// Longest idempotency key accepted, in bytes.
    pub max_idempotency_key: usize,
    /// Publishes in flight per `PublishStream`; beyond it the server stops reading the
    /// stream until one completes (HTTP/2 flow control pushes back on the client).
    pub stream_in_flight: usize,
    /// Accepted API keys; empty: open.
    pub api_keys: ApiKeys,
    /// Namespace rules: which channels have presence.
    pub policy: Arc<herald_auth::Policy>,
}

impl ControlConfig {
    /// Default largest message: 64 KiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;
    /// Default most channels per broadcast.
    pub const DEFAULT_MAX_BROADCAST_CHANNELS: usize = 1000;
    /// Default longest idempotency key.
    pub const DEFAULT_MAX_IDEMPOTENCY_KEY: usize = 256;
    /// Default publishes in flight per stream.
    pub const DEFAULT_STREAM_IN_FLIGHT: usize = 1024;
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_broadcast_channels: Self::DEFAULT_MAX_BROADCAST_CHANNELS,
            max_idempotency_key: Self::DEFAULT_MAX_IDEMPOTENCY_KEY,
            stream_in_flight: Self::DEFAULT_STREAM_IN_FLIGHT,
            api_keys: ApiKeys::default(),
            policy: Arc::new(herald_auth::Policy::open()),
        }
    }
}

/// The `herald.v1.Herald` service.
#[derive(Clone)]
pub struct HeraldService {
    broker: Arc<dyn Broker>,
    cluster: Arc<dyn Cluster>,
    metrics: Arc<Metrics>,
    config: ControlConfig,
    /// Cancelled when the server stops: ends `WatchStats` streams so shutdown is not held.
    stop: CancellationToken,
}

fn broker_status(e: BrokerError) -> Status {
    match e {
        BrokerError::Unavailable(m) => Status::unavailable(format!("broker unavailable: {m}")),
        BrokerError::Closed => Status::unavailable("broker is shut down"),
        BrokerError::Rejected(m) => Status::failed_precondition(format!("broker refused: {m}")),
    }
}

fn cluster_status(e: ClusterError) -> Status {
    match e {
        ClusterError::UnknownNode(_) => Status::not_found(e.to_string()),
        ClusterError::Unavailable(_) => Status::unavailable(e.to_string()),
        ClusterError::Refused(_) => Status::invalid_argument(e.to_string()),
        ClusterError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
    }
}

/// Most bytes of a user id in a request (the token's `sub` is bounded the same).
const MAX_USER: usize = 256;
/// Default lifetime of a revocation without `until`.
const DEFAULT_REVOCATION: u64 = 24 * 3600;
/// Longest lifetime of a revocation (what the NATS revocation stream retains), so both
/// brokers accept the same requests.
const MAX_REVOCATION: u64 = 30 * 24 * 3600;

fn user(user: &str) -> Result<String, Status> {
    if user.is_empty() || user.len() > MAX_USER {
        return Err(Status::invalid_argument(format!(
            "user must be 1-{MAX_USER} bytes, got {}",
            user.len()
        )));
    }
    Ok(user.to_owned())
}

/// `until` of a revocation: 0 is 24 hours from now; the past is refused.
fn until(until: u64, now: u64) -> Result<u64, Status> {
    match until {
        0 => Ok(now + DEFAULT_REVOCATION),
        t if t <= now => Err(Status::invalid_argument(format!(
            "until ({t}) is not in the future (now {now})"
        ))),
        t if t > now + MAX_REVOCATION => Err(Status::invalid_argument(format!(
            "until ({t}) is more than 30 days ahead: revocations are kept 30 days at most; revoke again later, or rotate the signing key"
        ))),
        t => Ok(t),
    }
}

/// The client's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`). tonic
/// enforces it for producing a response, not for the life of a server stream, so streams
/// check it themselves.
fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    tokio::time::Instant::now().checked_add(d)
}

/// Sleeps until the deadline, forever without one.
async fn until_deadline(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A server stream of the service.
type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl HeraldService {
    /// Builds the service.
    pub fn new(
        broker: Arc<dyn Broker>,
        cluster: Arc<dyn Cluster>,
        metrics: Arc<Metrics>,
        config: ControlConfig,
    ) -> Self {
        Self {
            broker,
            cluster,
            metrics,
            config,
            stop: CancellationToken::new(),
        }
    }

    /// Runs a unary call: checks the API key, runs `f`, records the method's metrics.
    async fn unary<Q, R, F>(
        &self,
        method: &'static str,
        request: Request<Q>,
        f: impl FnOnce(Q) -> F,
    ) -> Result<Response<R>, Status>
    where
        F: std::future::Future<Output = Result<R, Status>>,
    {
        let start = Instant::now();
        let span = rpc_span(method, &request);
        let api = api_label(&request);
        let r = match self.config.api_keys.check(request.metadata()) {
            Ok(()) => f(request.into_inner())
                .instrument(span)
                .await
                .map(Response::new),
            Err(s) => Err(s),
        };
        self.record_api(method, api, start, &r);
        r
    }

    fn channel(name: &str) -> Result<ChannelName, Status> {
        ChannelName::new(name)
            .map_err(|e| Status::invalid_argument(format!("channel {:?}: {e}", truncate(name))))
    }

    fn payload(&self, data: bytes::Bytes) -> Result<Payload, Status> {
        Payload::from_json(data, self.config.max_message_bytes).map_err(|e| match e {
            InvalidPayload::TooLarge { .. } => Status::invalid_argument(e.to_string()),
            InvalidPayload::NotJson(_) => Status::invalid_argument(format!(
                "{e} (data must be one JSON value, UTF-8 encoded)"
            )),
        })
    }

    fn key(&self, key: String) -> Result<Option<String>, Status> {
        if key.len() > self.config.max_idempotency_key {
            return Err(Status::invalid_argument(format!(
                "idempotency_key is {} bytes; the limit is {}",
                key.len(),
                self.config.max_idempotency_key
            )));
        }
        Ok((!key.is_empty()).then_some(key))
    }

    async fn publish_one(&self, request: PublishRequest) -> Result<herald_core::Published, Status> {
        let start = Instant::now();
        let result = if herald_telemetry::trace::enabled() {
            // The broker span's context rides with the message (NATS header `traceparent`), so
            // each node's receive and delivery spans join this trace.
            let span = tracing::info_span!(
                "herald.broker.publish",
                otel.kind = "producer",
                channel = %request.channel,
                trace_id = tracing::field::Empty,
            );
            herald_telemetry::trace::record_trace_id(&span);
            let parent = herald_telemetry::trace::traceparent(&span);
            herald_core::trace::with_traceparent(parent, self.broker.publish(request))
                .instrument(span)
                .await
        } else {
            self.broker.publish(request).await
        };
        self.metrics
            .broker_publish_duration
            .observe(start.elapsed().as_secs_f64());
        let published = result.map_err(broker_status)?;
        if !published.duplicate {
            self.metrics.messages_published.inc();
        }
        Ok(published)
    }

    /// Records a gRPC call (`api="grpc"`).
    fn record<T>(&self, method: &str, start: Instant, r: &Result<T, Status>) {
        self.record_api(method, "grpc", start, r);
    }

    fn record_api<T>(&self, method: &str, api: &str, start: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics
            .grpc_requests
            .with_label_values(&[method, code_name(code), api])
            .inc();
        self.metrics
            .grpc_duration
            .with_label_values(&[method, api])
            .observe(start.elapsed().as_secs_f64());
        if code == tonic::Code::InvalidArgument {
            self.metrics.refuse("invalid_request");
        }
    }
}

/// Marks a call made through the HTTP/JSON API (a request extension set by [`http`]): its
/// metrics carry `api="http"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpCall;

/// The `api` label of a call: `http` for the HTTP/JSON API, else `grpc`.
fn api_label<Q>(request: &Request<Q>) -> &'static str {
    if request.extensions().get::<HttpCall>().is_some() {
        "http"
    } else {
        "grpc"
    }
}

/// The server span of one `herald.v1.Herald` call when traces are exported (else a disabled
/// span): a child of the caller's W3C `traceparent` metadata when it sends one.
fn rpc_span<Q>(method: &'static str, request: &Request<Q>) -> tracing::Span {
    if !herald_telemetry::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "herald.grpc",
        otel.name = format!("herald.v1.Herald/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        trace_id = tracing::field::Empty,
    );
    match request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        Some(tp) => herald_telemetry::trace::set_parent(&span, tp),
        None => herald_telemetry::trace::record_trace_id(&span),
    }
    span
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The canonical upper-snake name of a status code (the `code` label).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[tonic::async_trait]
impl Herald for HeraldService {
    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.unary("Publish", request, |req| async move {
            let channel = Self::channel(&req.channel)?;
            let data = self.payload(req.data)?;
            let idempotency_key = self.key(req.idempotency_key)?;
            let published = self
                .publish_one(PublishRequest {
                    channel,
                    data,
                    idempotency_key,
                })
                .await?;
            Ok(PublishResponse {
                cursor: published.cursor.to_string(),
                duplicate: published.duplicate,
            })
        })
        .await
    }

    async fn broadcast(
        &self,
        request: Request<BroadcastRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        self.unary("Broadcast", request, |req| async move {
            if req.channels.is_empty() {
                return Err(Status::invalid_argument(
                    "channels is empty: name at least one",
                ));
            }
            if req.channels.len() > self.config.max_broadcast_channels {
                return Err(Status::invalid_argument(format!(
                    "{} channels; at most {} per broadcast",
                    req.channels.len(),
                    self.config.max_broadcast_channels
                )));
            }
            let mut channels = Vec::with_capacity(req.channels.len());
            for name in &req.channels {
                let c = Self::channel(name)?;
                if channels.contains(&c) {
                    return Err(Status::invalid_argument(format!(
                        "channel {c} is listed twice"
                    )));
                }
                channels.push(c);
            }
            let data = self.payload(req.data)?;
            let key = self.key(req.idempotency_key)?;
            let mut results = Vec::with_capacity(channels.len());
            for channel in channels {
                let idempotency_key = key.as_ref().map(|k| format!("{k}/{channel}"));
                let request = PublishRequest {
                    channel: channel.clone(),
                    data: data.clone(),
                    idempotency_key,
                };
                let (outcome, duplicate) = match self.publish_one(request).await {
                    Ok(p) => (Outcome::Cursor(p.cursor.to_string()), p.duplicate),
                    Err(status) => (Outcome::Error(status.message().to_owned()), false),
                };
                results.push(BroadcastResult {
                    channel: channel.to_string(),
                    outcome: Some(outcome),
                    duplicate,
                });
            }
            Ok(BroadcastResponse { results })
        })
        .await
    }

    type PublishStreamStream = ServerStream<PublishStreamResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        stream::publish_stream(self.clone(), request)
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.unary("History", request, |req| async move {
            let channel = Self::channel(&req.channel)?;
            let since = match req.since.as_str() {
                "" => Cursor::ZERO,
                s => s.parse::<Cursor>().map_err(|e| {
                    Status::invalid_argument(format!("since {:?}: {e}", truncate(s)))
                })?,
            };
            let limit = match req.limit {
                0 => DEFAULT_HISTORY_LIMIT,
                n if n > MAX_HISTORY_LIMIT => {
                    return Err(Status::invalid_argument(format!(
                        "limit must be 0 (default, {DEFAULT_HISTORY_LIMIT}) to {MAX_HISTORY_LIMIT}, got {n}"
                    )));
                }
                n => n,
            };
            self.metrics.history_reads.inc();
            let page = self
                .broker
                .history(
                    &channel,
                    HistoryQuery {
                        after: since,
                        limit: limit as usize,
                    },
                )
                .await
                .map_err(broker_status)?;
            let cursor = page.messages.last().map_or(since, |m| m.cursor);
            Ok(HistoryResponse {
                messages: page
                    .messages
                    .iter()
                    .map(|m| HistoryMessage {
                        cursor: m.cursor.to_string(),
                        data: m.data.bytes().clone(),
                        ts: m.ts_ms(),
                    })
                    .collect(),
                gap: page.gap,
                cursor: cursor.to_string(),
            })
        })
        .await
    }

    async fn channels(
        &self,
        request: Request<ChannelsRequest>,
    ) -> Result<Response<ChannelsResponse>, Status> {
        self.unary("Channels", request, |req| async move {
            let pattern = match req.pattern.as_str() {
                "" => None,
                p => Some(ChannelPattern::new(p).map_err(|e| {
                    Status::invalid_argument(format!("pattern {:?}: {e}", truncate(p)))
                })?),
            };
            let limit = match req.limit {
                0 => MAX_CHANNELS_LIMIT,
                n if n > MAX_CHANNELS_LIMIT => {
                    return Err(Status::invalid_argument(format!(
                        "limit must be 0 (default) to {MAX_CHANNELS_LIMIT}, got {n}"
                    )));
                }
                n => n,
            };
            let answer = self
                .cluster
                .channels(&ChannelsQuery {
                    pattern,
                    limit: limit as usize,
                })
                .await
                .map_err(cluster_status)?;
            Ok(ChannelsResponse {
                channels: answer
                    .channels
                    .into_iter()
                    .map(|c| ChannelInfo {
                        channel: c.channel,
                        subscribers: c.subscribers,
                    })
                    .collect(),
                truncated: answer.truncated,
                missing_nodes: answer.missing_nodes,
            })
        })
        .await
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.unary("Stats", request, |_| async move {
            Ok(stats::response(self.cluster.nodes()))
        })
        .await
    }

    type WatchStatsStream = ServerStream<StatsResponse>;

    async fn watch_stats(
        &self,
        request: Request<WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        stats::watch(self.clone(), request)
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        self.unary("DrainNode", request, |req| async move {
            if req.node_id.is_empty() {
                return Err(Status::invalid_argument(
                    "node_id is empty: name the node to drain (see Stats)",
                ));
            }
            if req.node_id.len() > 128 {
                return Err(Status::invalid_argument(
                    "node_id is longer than 128 characters",
                ));
            }
            let rate = (req.rate > 0).then_some(req.rate as usize);
            let connections = self
                .cluster
                .drain(&req.node_id, rate)
                .await
                .map_err(cluster_status)?;
            Ok(DrainNodeResponse { connections })
        })
        .await
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        self.unary("Presence", request, |req| async move {
            let answer = self.presence_of(&req.channel).await?;
            Ok(presence_response(answer))
        })
        .await
    }

    async fn connections(
        &self,
        request: Request<v1::ConnectionsRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        self.unary("Connections", request, |req| async move {
            let user = user(&req.user)?;
            let answer = self
                .cluster
                .user_connections(&user)
                .await
                .map_err(cluster_status)?;
            Ok(presence_response(answer))
        })
        .await
    }

    async fn presence_stats(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceStatsResponse>, Status> {
        self.unary("PresenceStats", request, |req| async move {
            let answer = self.presence_of(&req.channel).await?;
            Ok(PresenceStatsResponse {
                clients: answer.connections(),
                users: answer.users(),
                missing_nodes: answer.missing_nodes,
            })
        })
        .await
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<UserActionResponse>, Status> {
        self.unary("Disconnect", request, |req| async move {
            if req.reason.len() > 256 {
                return Err(Status::invalid_argument("reason is longer than 256 bytes"));
            }
            self.act(UserAction::Disconnect {
                user: user(&req.user)?,
                reconnect: req.reconnect,
                reason: req.reason,
            })
            .await
        })
        .await
    }

    async fn unsubscribe(
        &self,
        request: Request<UserChannelRequest>,
    ) -> Result<Response<UserActionResponse>, Status> {
        self.unary("Unsubscribe", request, |req| async move {
            self.act(UserAction::Unsubscribe {
                user: user(&req.user)?,
                channel: Self::channel(&req.channel)?.as_str().to_owned(),
            })
            .await
        })
        .await
    }

    async fn subscribe(
        &self,
        request: Request<UserChannelRequest>,
    ) -> Result<Response<UserActionResponse>, Status> {
        self.unary("Subscribe", request, |req| async move {
            self.act(UserAction::Subscribe {
                user: user(&req.user)?,
                channel: Self::channel(&req.channel)?.as_str().to_owned(),
            })
            .await
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<UserActionResponse>, Status> {
        self.unary("RevokeToken", request, |req| async move {
            let now = herald_auth::now_secs();
            let r = Revocation {
                what: Revoked::Token { jti: req.jti },
                until: until(req.until, now)?,
            };
            r.validate(now)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.act(UserAction::Revoke(r)).await
        })
        .await
    }

    async fn revoke_user(
        &self,
        request: Request<RevokeUserRequest>,
    ) -> Result<Response<UserActionResponse>, Status> {
        self.unary("RevokeUser", request, |req| async move {
            let now = herald_auth::now_secs();
            let issued_before = match req.issued_before {
                0 => now + 1,
                t => t,
            };
            let r = Revocation {
                what: Revoked::User {
                    user: user(&req.user)?,
                    issued_before,
                },
                until: until(req.until, now)?,
            };
            r.validate(now)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.act(UserAction::Revoke(r)).await
        })
        .await
    }
}

impl HeraldService {
    /// Presence of a channel whose namespace has it, across the cluster.
    async fn presence_of(&self, channel: &str) -> Result<herald_core::PresenceAnswer, Status> {
        let channel = Self::channel(channel)?;
        if !self.config.policy.rule(&channel).presence {
            return Err(Status::failed_precondition(format!(
                "channel {channel}: its namespace does not keep presence (set presence = true in its namespace config)"
            )));
        }
        self.cluster
            .presence(&channel)
            .await
            .map_err(cluster_status)
    }

    /// Applies a user action on every node.
    async fn act(&self, action: UserAction) -> Result<UserActionResponse, Status> {
        tracing::info!(?action, "user action requested through the control plane");
        let answer = self.cluster.act(&action).await.map_err(cluster_status)?;
        Ok(UserActionResponse {
            connections: answer.connections,
            missing_nodes: answer.missing_nodes,
        })
    }
}

/// A presence answer (a channel's clients, or a user's connections) as its protobuf.
fn presence_response(answer: herald_core::PresenceAnswer) -> PresenceResponse {
    PresenceResponse {
        clients: answer
            .clients
            .into_iter()
            .map(|c| PresenceClient {
                client: c.client,
                user: c.user,
                info: c.info.unwrap_or_default(),
                node: c.node,
                protocol: c.protocol,
                since_unix_ms: c.since_unix_ms,
            })
            .collect(),
        missing_nodes: answer.missing_nodes,
    }
}

/// Largest request accepted, in bytes: a gRPC message, or an HTTP/JSON API body. Twice the
/// message limit (room for the other fields, e.g. a broadcast's channel list), at least 4 MiB.
pub(crate) fn decode_limit(config: &ControlConfig) -> usize {
    (config.max_message_bytes * 2).max(4 << 20)
}

/// TLS for the gRPC port: PEM certificate chain and private key.
#[derive(Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles")
    }
}

/// Serves the control plane on `listener` (with TLS when given) until `stop` is cancelled: `herald.v1.Herald`,
/// `grpc.health.v1.Health` (SERVING while the broker is connected) and reflection.
pub async fn serve(
    listener: TcpListener,
    mut service: HeraldService,
    tls: Option<TlsFiles>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    service.stop = stop.clone();
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut state = service.broker.state();
    let metrics = service.metrics.clone();
    let health_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let connected = *state.borrow_and_update() == BrokerState::Connected;
            metrics.broker_connected.set(i64::from(connected));
            let status = if connected {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("herald.v1.Herald", status)
                .await;
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                () = health_stop.cancelled() => return,
            }
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "reflection descriptors are invalid");
            e
        });
    let decode_limit = decode_limit(&service.config);
    let herald = HeraldServer::new(service).max_decoding_message_size(decode_limit);
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let mut router = builder.add_service(health).add_service(herald);
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    // Nagle off on every accepted socket, as tonic's own listener would do: without it an
    // answer written in two parts (a `Presence` list) waits for the caller's delayed ACK,
    // about 40 ms (docs/benchmarks.md, Presence).
    let incoming = futures_util::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| {
            accepted.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    );
    router
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(grpc_deadline(&m).is_none());
        let now = tokio::time::Instant::now();
        m.insert("grpc-timeout", "500m".parse().unwrap());
        let d = grpc_deadline(&m).unwrap();
        assert!(d >= now + std::time::Duration::from_millis(500));
        assert!(d <= now + std::time::Duration::from_secs(5));
        for bad in ["5", "x", "12X", "1234567890S"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert!(grpc_deadline(&m).is_none(), "{bad}");
        }
    }
}
