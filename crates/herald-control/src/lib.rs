//! Herald's control plane: the `herald.v1.Herald` gRPC service, with `grpc.health.v1`
//! (serving follows broker readiness) and server reflection.
//!
//! This is the only place broker and validation errors become gRPC statuses.

use std::{sync::Arc, time::Instant};

use herald_core::{
    Broker, BrokerError, BrokerState, ChannelName, InvalidPayload, Payload, PublishRequest,
};
use herald_proto::v1::{
    self, BroadcastRequest, BroadcastResponse, BroadcastResult, PublishResponse,
    broadcast_result::Outcome,
    herald_server::{Herald, HeraldServer},
};
use herald_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Server};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Largest message `data` accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most channels in one `Broadcast`.
    pub max_broadcast_channels: usize,
    /// Longest idempotency key accepted, in bytes.
    pub max_idempotency_key: usize,
}

impl ControlConfig {
    /// Default largest message: 64 KiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 10;
    /// Default most channels per broadcast.
    pub const DEFAULT_MAX_BROADCAST_CHANNELS: usize = 1000;
    /// Default longest idempotency key.
    pub const DEFAULT_MAX_IDEMPOTENCY_KEY: usize = 256;
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_broadcast_channels: Self::DEFAULT_MAX_BROADCAST_CHANNELS,
            max_idempotency_key: Self::DEFAULT_MAX_IDEMPOTENCY_KEY,
        }
    }
}

/// The `herald.v1.Herald` service.
#[derive(Clone)]
pub struct HeraldService {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    config: ControlConfig,
}

fn broker_status(e: BrokerError) -> Status {
    match e {
        BrokerError::Unavailable(m) => Status::unavailable(format!("broker unavailable: {m}")),
        BrokerError::Closed => Status::unavailable("broker is shut down"),
        BrokerError::Rejected(m) => Status::failed_precondition(format!("broker refused: {m}")),
    }
}

impl HeraldService {
    /// Builds the service.
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<Metrics>, config: ControlConfig) -> Self {
        Self {
            broker,
            metrics,
            config,
        }
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
        let result = self.broker.publish(request).await;
        self.metrics
            .broker_publish_duration
            .observe(start.elapsed().as_secs_f64());
        let published = result.map_err(broker_status)?;
        if !published.duplicate {
            self.metrics.messages_published.inc();
        }
        Ok(published)
    }

    fn record<T>(&self, method: &str, start: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics
            .grpc_requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        self.metrics
            .grpc_duration
            .with_label_values(&[method])
            .observe(start.elapsed().as_secs_f64());
        if code == tonic::Code::InvalidArgument {
            self.metrics.refuse("invalid_request");
        }
    }
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
        let start = Instant::now();
        let r = async {
            let req = request.into_inner();
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
            Ok(Response::new(PublishResponse {
                cursor: published.cursor.to_string(),
                duplicate: published.duplicate,
            }))
        }
        .await;
        self.record("Publish", start, &r);
        r
    }

    async fn broadcast(
        &self,
        request: Request<BroadcastRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        let start = Instant::now();
        let r = async {
            let req = request.into_inner();
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
            Ok(Response::new(BroadcastResponse { results }))
        }
        .await;
        self.record("Broadcast", start, &r);
        r
    }
}

/// Serves the control plane on `listener` until `stop` is cancelled: `herald.v1.Herald`,
/// `grpc.health.v1.Health` (SERVING while the broker is connected) and reflection.
pub async fn serve(
    listener: TcpListener,
    service: HeraldService,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
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
    let decode_limit = (service.config.max_message_bytes * 2).max(4 << 20);
    let herald = HeraldServer::new(service).max_decoding_message_size(decode_limit);
    let mut router = Server::builder().add_service(health).add_service(herald);
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    router
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}
