//! Herald's backend hooks ("proxies"): before a client connects, subscribes, publishes, or
//! when it calls an RPC, Herald asks the application's backend over HTTP/JSON or gRPC and
//! obeys its answer. This crate is the calling side; the edge decides when to call.
//!
//! # Contract
//!
//! The full contract, with example bodies, is docs/hooks.md; the gRPC one is
//! `proto/herald/proxy/v1/proxy.proto`. In short:
//!
//! - **HTTP**: `POST {base}/connect|subscribe|publish|rpc`, `content-type: application/json`,
//!   `traceparent` header when known. Request fields (snake_case): `client`, `remote_addr`,
//!   `protocol`, `user`, `headers` (object of the allow-listed client headers), plus
//!   `token` and `channels` (connect), `channel` (subscribe, publish), `data` (publish, rpc),
//!   `method` (rpc). Answers: `{"allow":true,"user":..,"info":..}`,
//!   `{"allow":false,"code":..,"reason":..}`, publish `{"allow":true,"data":..}` or
//!   `{"published":true}`, rpc `{"result":..}` or `{"error":{"code":..,"reason":..}}`.
//! - **gRPC**: `herald.proxy.v1.HeraldProxy` (`Connect`, `Subscribe`, `Publish`, `Rpc`),
//!   JSON as UTF-8 bytes, the same meanings.
//! - **Failures** are never answers. Each call is bounded by [`HookConfig::timeout`] (the
//!   answer's body included, at most [`MAX_ANSWER_BYTES`]); at most
//!   [`HookConfig::max_concurrent`] calls are in flight per node (one more fails at once
//!   with [`HookError::Overloaded`], nothing queues). The caller refuses the client with
//!   [`HookError::code`] (`hook_timeout`, `hook_unavailable`, `hook_overloaded`,
//!   `hook_bad_answer`): a backend that is down means refusal, never a hang and never a
//!   silent allow. Nothing is retried.
//!
//! Every finished call is counted in `herald_hook_calls_total{hook,outcome}` and
//! `herald_hook_duration_seconds`; `herald_hook_in_flight` shows the pool in use.
//!
//! Connections are reused: one keep-alive HTTP client (no TLS: `https` targets are refused
//! at configuration, see [`HookConfigError::TlsUnsupported`]) or one lazily connected,
//! multiplexed tonic channel, per [`Hooks`].

mod config;
mod grpc;
mod http;
#[cfg(feature = "testing")]
pub mod testing;

use std::{fmt, sync::Arc, time::Instant};

use herald_telemetry::HookMetrics;
use tokio::sync::Semaphore;

pub use config::{
    DEFAULT_FORWARD_HEADERS, DEFAULT_MAX_CONCURRENT, DEFAULT_TIMEOUT, HookConfig, HookConfigError,
    HookTarget, MAX_ANSWER_BYTES,
};
pub use herald_core::hooks::{
    ClientContext, ConnectAnswer, ConnectCall, Decision, HookCaller, HookError, PublishAnswer,
    PublishCall, Refusal, RpcAnswer, RpcCall, SubscribeCall,
};

/// Which hook a call is (its HTTP path segment and `hook` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Connect,
    Subscribe,
    Publish,
    Rpc,
}

impl Hook {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::Rpc => "rpc",
        }
    }
}

/// The configured hooks of a node. Cheap to clone (one `Arc`); every clone shares the
/// connection pool, the in-flight bound and the metrics.
#[derive(Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

struct Inner {
    config: HookConfig,
    transport: Transport,
    /// The in-flight bound: `try_acquire`, never waited on.
    permits: Arc<Semaphore>,
    /// `None` in tests that do not look at metrics.
    metrics: Option<Arc<HookMetrics>>,
}

enum Transport {
    Http(http::HttpHooks),
    Grpc(grpc::GrpcHooks),
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("target", &self.inner.config.target.to_string())
            .field("timeout", &self.inner.config.timeout)
            .field("max_concurrent", &self.inner.config.max_concurrent)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Keeps `herald_hook_in_flight` right even when the caller drops the call's future.
struct InFlight(Option<Arc<HookMetrics>>);

impl InFlight {
    fn new(metrics: &Option<Arc<HookMetrics>>) -> Self {
        if let Some(m) = metrics {
            m.in_flight.inc();
        }
        Self(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.in_flight.dec();
        }
    }
}

impl Hooks {
    /// Validates `config` and builds the client. No I/O: the gRPC channel connects on the
    /// first call (gRPC targets must be created inside a Tokio runtime).
    pub fn new(
        config: HookConfig,
        metrics: Option<Arc<HookMetrics>>,
    ) -> Result<Self, HookConfigError> {
        config.validate()?;
        let transport = match &config.target {
            HookTarget::Http(base) => Transport::Http(http::HttpHooks::new(base, &config)?),
            HookTarget::Grpc(uri) => Transport::Grpc(grpc::GrpcHooks::new(uri, &config)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(config.max_concurrent)),
                config,
                transport,
                metrics,
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &HookConfig {
        &self.inner.config
    }

    /// `"http"` or `"grpc"`.
    pub fn target_kind(&self) -> &'static str {
        self.inner.config.target.kind()
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.config.max_concurrent - self.inner.permits.available_permits()
    }

    /// Asks whether a client may connect, and as whom.
    pub async fn connect(&self, req: ConnectCall) -> Result<ConnectAnswer, HookError> {
        let cfg = &self.inner.config;
        self.run(
            Hook::Connect,
            async {
                match &self.inner.transport {
                    Transport::Http(t) => t.connect(cfg, &req).await,
                    Transport::Grpc(t) => t.connect(cfg, &req).await,
                }
            },
            |a| match a {
                ConnectAnswer::Allow {
                    user: None,
                    info: None,
                } => "allow",
                ConnectAnswer::Allow { .. } => "modify",
                ConnectAnswer::Refuse(_) => "refuse",
            },
        )
        .await
    }

    /// Asks whether a client may subscribe to a channel.
    pub async fn subscribe(&self, req: SubscribeCall) -> Result<Decision, HookError> {
        let cfg = &self.inner.config;
        self.run(
            Hook::Subscribe,
            async {
                match &self.inner.transport {
                    Transport::Http(t) => t.subscribe(cfg, &req).await,
                    Transport::Grpc(t) => t.subscribe(cfg, &req).await,
                }
            },
            |d| match d {
                Decision::Allow => "allow",
                Decision::Refuse(_) => "refuse",
            },
        )
        .await
    }

    /// Asks whether a client may publish, and what.
    pub async fn publish(&self, req: PublishCall) -> Result<PublishAnswer, HookError> {
        let cfg = &self.inner.config;
        self.run(
            Hook::Publish,
            async {
                match &self.inner.transport {
                    Transport::Http(t) => t.publish(cfg, &req).await,
                    Transport::Grpc(t) => t.publish(cfg, &req).await,
                }
            },
            |a| match a {
                PublishAnswer::Allow { data: None } => "allow",
                PublishAnswer::Allow { data: Some(_) } => "modify",
                PublishAnswer::Published => "published",
                PublishAnswer::Refuse(_) => "refuse",
            },
        )
        .await
    }

    /// Passes a client's RPC to the backend.
    pub async fn rpc(&self, req: RpcCall) -> Result<RpcAnswer, HookError> {
        let cfg = &self.inner.config;
        self.run(
            Hook::Rpc,
            async {
                match &self.inner.transport {
                    Transport::Http(t) => t.rpc(cfg, &req).await,
                    Transport::Grpc(t) => t.rpc(cfg, &req).await,
                }
            },
            |a| match a {
                RpcAnswer::Result(_) => "allow",
                RpcAnswer::Error(_) => "refuse",
            },
        )
        .await
    }

    /// One call under the in-flight bound and the timeout, counted in the metrics.
    async fn run<T>(
        &self,
        hook: Hook,
        call: impl Future<Output = Result<T, HookError>>,
        outcome: impl FnOnce(&T) -> &'static str,
    ) -> Result<T, HookError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let result = match inner.permits.try_acquire() {
            Err(_) => Err(HookError::Overloaded),
            Ok(_permit) => {
                let _in_flight = InFlight::new(&inner.metrics);
                match tokio::time::timeout(inner.config.timeout, call).await {
                    // A failure once the budget is spent is the timeout, whoever noticed it
                    // first: tonic enforces the `grpc-timeout` it sends and reports it as
                    // `CANCELLED` a moment before our own timer fires.
                    Ok(Err(_)) if started.elapsed() >= inner.config.timeout => {
                        Err(HookError::Timeout)
                    }
                    Ok(r) => r,
                    Err(_) => Err(HookError::Timeout),
                }
            }
        };
        let label = match &result {
            Ok(answer) => outcome(answer),
            Err(e) => e.outcome(),
        };
        if let Some(m) = &inner.metrics {
            m.record(hook.as_str(), label, started.elapsed().as_secs_f64());
        }
        if let Err(e) = &result {
            tracing::debug!(hook = hook.as_str(), error = %e, "backend hook failed");
        }
        result
    }
}

/// What the edge calls (`herald_core::hooks::HookCaller`): the methods above.
#[async_trait::async_trait]
impl HookCaller for Hooks {
    fn forwards(&self, name: &str) -> bool {
        self.inner.config.forwards(name)
    }

    async fn connect(&self, req: ConnectCall) -> Result<ConnectAnswer, HookError> {
        Hooks::connect(self, req).await
    }

    async fn subscribe(&self, req: SubscribeCall) -> Result<Decision, HookError> {
        Hooks::subscribe(self, req).await
    }

    async fn publish(&self, req: PublishCall) -> Result<PublishAnswer, HookError> {
        Hooks::publish(self, req).await
    }

    async fn rpc(&self, req: RpcCall) -> Result<RpcAnswer, HookError> {
        Hooks::rpc(self, req).await
    }
}
