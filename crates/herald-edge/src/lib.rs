//! Herald's edge: holds client connections over WebSocket (`/ws`), Server-Sent Events
//! (`/sse`), long-poll and interval poll (`/poll`), and feeds them from a [`Broker`] through
//! local per-channel interest.
//!
//! The edge keeps nothing a restart may lose: a client's position is its cursor, so it can
//! resume on any node.

mod assets;
mod auth;
mod conn;
mod deliver;
mod direct;
mod error;
mod hooks;
mod hub;
mod identity;
mod limits;
mod outbox;
mod params;
mod poll;
mod proxy;
mod publish;
mod rawhttp;
mod rawpoll;
mod rawsse;
mod registry;
mod server;
mod session;
mod sse;
mod ws;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{ConnectInfo, RawQuery, State},
    http::{HeaderMap, HeaderValue, Method},
    response::{IntoResponse, Response},
    routing::get,
};
use herald_core::{Broker, PresenceEntry, PresenceEvent, Protocol, UserAction};
use herald_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::EdgeError;
pub use proxy::{ForwardedHeader, IpNet, TrustedProxies};

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): the parsers that see
/// untrusted client input, each checked for the properties its callers rely on.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a WebSocket command with a limit of `max` channels; panics if an accepted
    /// command breaks the limit or holds an invalid name.
    pub fn ws_command(text: &str, max: usize) {
        crate::ws::fuzz_command(text, max);
    }

    /// Parses a `/sse` or `/poll` query string with a limit of `max` channels; panics if an
    /// accepted query breaks a documented bound.
    pub fn client_query(raw: &str, max: usize) {
        if let Ok(q) = crate::params::parse(Some(raw), max) {
            assert!(q.channels.len() <= max, "channel limit broken");
            for (i, c) in q.channels.iter().enumerate() {
                assert!(!q.channels[..i].contains(c), "duplicate channel {c}");
                assert!(herald_core::ChannelName::validate(c.as_str()).is_ok());
            }
            assert!(q.wait.is_none_or(|w| w <= crate::MAX_WAIT_SECS));
        }
    }
}
pub use params::MAX_WAIT_SECS;

/// Settings of the edge. Every field has a named default constant.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Bytes a connection's outbound queue may hold before it is disconnected as a slow
    /// consumer.
    pub outbox_bytes: usize,
    /// Channels one connection (or poll request) may subscribe to.
    pub max_channels_per_connection: usize,
    /// Held connections (WebSocket, SSE, long-poll) this node accepts at once.
    pub max_connections: usize,
    /// Largest WebSocket frame or message a client may send.
    pub max_client_frame: usize,
    /// Interval of SSE comment lines that keep proxies from closing idle streams.
    pub sse_heartbeat: Duration,
    /// The `retry:` delay SSE clients wait before reconnecting.
    pub sse_retry: Duration,
    /// Interval of server pings on idle WebSockets; a peer silent for two is dropped.
    pub ws_ping_interval: Duration,
    /// Initial WebSocket read buffer per connection (grows for larger frames).
    pub ws_read_buffer: usize,
    /// WebSocket write buffer target per connection (frames are flushed past it).
    pub ws_write_buffer: usize,
    /// Most messages in one poll reply (the client polls again for the rest).
    pub poll_max_messages: usize,
    /// A poll client counts as connected this long after its last request.
    pub poll_client_window: Duration,
    /// Most recent messages kept in memory per channel with local interest (the broker's
    /// history size: keeping more could serve what the broker evicted).
    pub recent_messages: usize,
    /// Most bytes of recent messages kept per channel.
    pub recent_channel_bytes: usize,
    /// Most bytes of recent messages kept by all channels together; 0 turns the cache off.
    pub recent_node_bytes: usize,
    /// Local subscribers from which one channel's fan-out is split into one shard per
    /// runtime worker; 0 never splits.
    pub fanout_shard_min: usize,
    /// The broker's history age limit (recent messages close to it are left to the broker).
    pub history_max_age: Duration,
    /// How long a channel keeps its broker subscription after its last local subscriber.
    pub interest_linger: Duration,
    /// Origins allowed by CORS on `/sse` and `/poll`; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Time a client has to send its request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_request_head: usize,
    /// Transports refused with 403 (`websocket`, `sse`, `longpoll`, `poll`).
    pub disabled_transports: Vec<String>,
    /// Origins a browser WebSocket may come from; `*` allows any. Requests without an
    /// `Origin` header (non-browser clients) are not checked.
    pub ws_origins: Vec<String>,
    /// New TCP connections per second one client IP may open (burst: twice that); 0 = no
    /// limit.
    pub connection_rate_per_ip: u32,
    /// Who may read which channel: token verification and namespace rules.
    pub policy: Arc<herald_auth::Policy>,
    /// Sockets the client port may hold open at once, whatever they carry (held connections,
    /// polls, idle keep-alive, heads being read); beyond it a new socket is answered 503
    /// `too_many_connections` and closed. The binary derives it from the descriptor limit.
    pub max_client_sockets: usize,
    /// Proxies whose forwarding header names the client (per-IP rate, poll clients, logs).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// This node's id, shown in presence.
    pub node_id: String,
    /// Most held connections one user may have on this node; 0: no limit.
    pub max_connections_per_user: usize,
    /// Most revocations held.
    pub max_revocations: usize,
    /// The application's backend hooks (docs/hooks.md); `None`: no hooks.
    pub hooks: Option<Arc<dyn herald_core::hooks::HookCaller>>,
    /// Ask the connect hook before accepting each WebSocket, SSE stream and poll request.
    pub connect_hook: bool,
    /// Pass WebSocket `rpc` commands and `POST /rpc` to the RPC hook.
    pub rpc_hook: bool,
    /// Largest `data` a client may publish (WebSocket `publish`, `POST /publish`).
    pub client_publish_max_bytes: usize,
    /// Publishes per second one client may send (a WebSocket connection; over HTTP one user,
    /// or one address without a token); bursts of twice that pass. 0 turns client publishes
    /// off on this node.
    pub client_publish_rate: u32,
}

impl EdgeConfig {
    /// Names accepted in [`EdgeConfig::disabled_transports`].
    pub const TRANSPORTS: [&str; 4] = ["websocket", "sse", "longpoll", "poll"];
    /// Default outbound queue bound: 1 MiB.
    pub const DEFAULT_OUTBOX_BYTES: usize = 1 << 20;
    /// Default channels per connection.
    pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 100;
    /// Default held connections per node.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
    /// Default largest client frame: 64 KiB.
    pub const DEFAULT_MAX_CLIENT_FRAME: usize = 64 << 10;
    /// Default SSE heartbeat.
    pub const DEFAULT_SSE_HEARTBEAT: Duration = Duration::from_secs(15);
    /// Default SSE `retry:`.
    pub const DEFAULT_SSE_RETRY: Duration = Duration::from_secs(2);
    /// Default WebSocket ping interval.
    pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(30);
    /// Default WebSocket read buffer: small, since client frames are small commands.
    pub const DEFAULT_WS_READ_BUFFER: usize = 1024;
    /// Default WebSocket write buffer target.
    pub const DEFAULT_WS_WRITE_BUFFER: usize = 4096;
    /// Default most messages per poll reply.
    pub const DEFAULT_POLL_MAX_MESSAGES: usize = 1000;
    /// Default poll client window.
    pub const DEFAULT_POLL_CLIENT_WINDOW: Duration = Duration::from_secs(30);
    /// Default recent messages per channel (the default history size).
    pub const DEFAULT_RECENT_MESSAGES: usize = 100;
    /// Default recent-message bytes per channel: 1 MiB.
    pub const DEFAULT_RECENT_CHANNEL_BYTES: usize = 1 << 20;
    /// Default recent-message bytes per node: 64 MiB.
    pub const DEFAULT_RECENT_NODE_BYTES: usize = 64 << 20;
    /// Default [`EdgeConfig::fanout_shard_min`]: off. On the 2-core test machine, with the load
    /// generator on the second core, splitting a 10,000-subscriber fan-out raised p99 from
    /// 0.5-0.7 s to 2.6-2.7 s (docs/benchmarks.md); turn it on where a node has cores to itself.
    pub const DEFAULT_FANOUT_SHARD_MIN: usize = 0;
    /// Default history age (the default history TTL).
    pub const DEFAULT_HISTORY_MAX_AGE: Duration = Duration::from_secs(300);
    /// Messages read per broker call when a live feed is repaired or a cache filled.
    const REPAIR_BATCH: usize = 1000;
    /// Default interest linger.
    pub const DEFAULT_INTEREST_LINGER: Duration = Duration::from_secs(5);
    /// Default header read timeout.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default largest request head: 16 KiB.
    pub const DEFAULT_MAX_REQUEST_HEAD: usize = 16 << 10;
    /// Default most revocations held.
    pub const DEFAULT_MAX_REVOCATIONS: usize = 100_000;
    /// Default [`EdgeConfig::client_publish_max_bytes`]: 16 KiB.
    pub const DEFAULT_CLIENT_PUBLISH_MAX_BYTES: usize = 16 << 10;
    /// Default [`EdgeConfig::client_publish_rate`].
    pub const DEFAULT_CLIENT_PUBLISH_RATE: u32 = 20;
    /// Join/leave events queued for the other nodes at most.
    const RELAY_QUEUE: usize = 10_000;
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            outbox_bytes: Self::DEFAULT_OUTBOX_BYTES,
            max_channels_per_connection: Self::DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_client_frame: Self::DEFAULT_MAX_CLIENT_FRAME,
            sse_heartbeat: Self::DEFAULT_SSE_HEARTBEAT,
            sse_retry: Self::DEFAULT_SSE_RETRY,
            ws_ping_interval: Self::DEFAULT_WS_PING_INTERVAL,
            ws_read_buffer: Self::DEFAULT_WS_READ_BUFFER,
            ws_write_buffer: Self::DEFAULT_WS_WRITE_BUFFER,
            poll_max_messages: Self::DEFAULT_POLL_MAX_MESSAGES,
            poll_client_window: Self::DEFAULT_POLL_CLIENT_WINDOW,
            recent_messages: Self::DEFAULT_RECENT_MESSAGES,
            recent_channel_bytes: Self::DEFAULT_RECENT_CHANNEL_BYTES,
            recent_node_bytes: Self::DEFAULT_RECENT_NODE_BYTES,
            fanout_shard_min: Self::DEFAULT_FANOUT_SHARD_MIN,
            history_max_age: Self::DEFAULT_HISTORY_MAX_AGE,
            interest_linger: Self::DEFAULT_INTEREST_LINGER,
            cors_origins: vec!["*".into()],
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            max_request_head: Self::DEFAULT_MAX_REQUEST_HEAD,
            disabled_transports: Vec::new(),
            ws_origins: vec!["*".into()],
            connection_rate_per_ip: 0,
            policy: Arc::new(herald_auth::Policy::open()),
            max_client_sockets: usize::MAX,
            trusted_proxies: Arc::new(TrustedProxies::default()),
            node_id: "herald".into(),
            max_connections_per_user: 0,
            max_revocations: Self::DEFAULT_MAX_REVOCATIONS,
            hooks: None,
            connect_hook: false,
            rpc_hook: false,
            client_publish_max_bytes: Self::DEFAULT_CLIENT_PUBLISH_MAX_BYTES,
            client_publish_rate: Self::DEFAULT_CLIENT_PUBLISH_RATE,
        }
    }
}

/// How long a connection may stay open after its outbox closed (overflow or drain) before it
/// is aborted as stuck.
const STUCK_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Per-HTTP-connection abort switch, put in each request's extensions by the accept loop.
#[derive(Clone)]
pub(crate) struct ConnKill(pub(crate) CancellationToken);

impl ConnKill {
    /// The token from the request, or a fresh one (requests served without the accept loop).
    pub(crate) fn token(kill: Option<axum::Extension<ConnKill>>) -> CancellationToken {
        kill.map(|axum::Extension(k)| k.0).unwrap_or_default()
    }
}

/// State shared by every connection of the edge.
pub(crate) struct EdgeInner {
    pub(crate) config: EdgeConfig,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) hub: Arc<hub::Hub>,
    pub(crate) registry: Arc<registry::Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) poll_clients: poll::PollClients,
    /// Set when the node starts draining: new held connections are refused.
    draining: AtomicBool,
    /// Revoked tokens and users, checked at connect, subscribe and refresh.
    pub(crate) revocations: herald_core::Revocations,
    /// Where this node's join/leave events go to reach the other nodes (once a cluster
    /// layer took the receiver).
    relay: parking_lot::Mutex<Option<tokio::sync::mpsc::Sender<PresenceEvent>>>,
    /// Events dropped at a full relay, logged at most every few seconds.
    relay_full: limits::Throttled,
    /// Rates of `POST /publish`, per user or address.
    pub(crate) publish_rates: publish::HttpRates,
}

impl EdgeInner {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A join or leave of a client of this node: to this node's subscribers of the channel
    /// now, and to the other nodes' through the relay (dropped, and counted, when its
    /// queue is full).
    pub(crate) fn announce(&self, event: PresenceEvent) {
        let event = Arc::new(event);
        self.hub.deliver_event(&event);
        if let Some(relay) = &*self.relay.lock()
            && relay.try_send((*event).clone()).is_err()
            && let Some(dropped) = self.relay_full.hit()
        {
            tracing::warn!(
                dropped,
                "join/leave relay to other nodes is full (NATS slow or down): events dropped (count since the last such line)"
            );
        }
    }
}

/// The client-facing edge of one node. Cheap to clone.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<EdgeInner>,
}

impl Edge {
    /// Builds the edge over `broker`. Must be called inside a tokio runtime (it starts the
    /// poll-client bookkeeping task).
    pub fn new(config: EdgeConfig, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Self {
        let hub = Arc::new(hub::Hub::new(
            broker.clone(),
            metrics.clone(),
            config.interest_linger,
            EdgeConfig::REPAIR_BATCH,
            hub::RecentLimits {
                messages: if config.recent_node_bytes == 0 {
                    0
                } else {
                    config.recent_messages
                },
                channel_bytes: config.recent_channel_bytes.min(config.recent_node_bytes),
                node_bytes: config.recent_node_bytes,
                max_age: config.history_max_age,
            },
            config.fanout_shard_min,
        ));
        let inner = Arc::new(EdgeInner {
            registry: Arc::new(registry::Registry::new(
                config.max_connections,
                config.max_connections_per_user,
                metrics.clone(),
            )),
            revocations: herald_core::Revocations::new(config.max_revocations),
            relay: parking_lot::Mutex::new(None),
            relay_full: limits::Throttled::new(),
            publish_rates: publish::HttpRates::new(config.client_publish_rate),
            poll_clients: poll::PollClients::new(config.poll_client_window),
            config,
            broker,
            hub,
            metrics,
            draining: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.poll_clients.prune(&inner.metrics);
                inner.registry.reap_stuck(STUCK_CLOSE_GRACE);
                inner.revocations.prune(herald_auth::now_secs());
            }
        });
        Self { inner }
    }

    /// The HTTP routes: `/ws`, `/sse`, `/poll`, `POST /publish`, with CORS on all but `/ws`.
    pub fn router(&self) -> Router {
        let cors = cors_layer(&self.inner.config.cors_origins);
        let polled = Router::new()
            .route("/sse", get(sse_route))
            .route("/poll", get(poll_route))
            .route("/publish", axum::routing::post(publish::route))
            .route("/rpc", axum::routing::post(publish::rpc_route))
            .layer(cors);
        let mut routes = Router::new()
            .route("/ws", get(ws_route))
            .merge(polled)
            .merge(assets::routes());
        // Only when a transport is disabled: the check costs every request a boxed future
        // and a clone of the route's service stack.
        if !self.inner.config.disabled_transports.is_empty() {
            routes = routes.layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                assets::refuse_disabled,
            ));
        }
        routes.fallback(not_found).with_state(self.inner.clone())
    }

    /// Serves the routes on `listener` until `stop` is cancelled, then waits for open HTTP
    /// requests (SSE streams, held polls) to finish. Upgraded WebSockets are not waited
    /// for here; [`Edge::drain`] closes them.
    pub async fn serve(&self, listener: TcpListener, stop: CancellationToken) {
        server::serve(
            listener,
            self.router(),
            self.poll_endpoint(),
            stop,
            &self.inner,
        )
        .await;
    }

    /// `GET /poll` exactly as [`Edge::router`] answers it, for the raw poll path.
    fn poll_endpoint(&self) -> PollEndpoint {
        let cors = cors_layer(&self.inner.config.cors_origins);
        PollEndpoint {
            edge: self.inner.clone(),
            without_origin: cors_without_origin(&cors),
            cors: tower::Layer::layer(&cors, PollHandler(self.inner.clone())),
        }
    }

    /// Starts draining: new held connections are refused, and every held connection is told
    /// to reconnect elsewhere, `rate` per second. Returns when all were told.
    pub async fn drain(&self, rate: usize) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.metrics.draining.set(1);
        self.inner.registry.drain(rate).await;
    }

    /// Whether the edge is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.is_draining()
    }

    /// Held connections (WebSocket, SSE, long-poll) right now.
    pub fn held_connections(&self) -> usize {
        self.inner.registry.len()
    }

    /// Channels with local interest right now.
    pub fn active_channels(&self) -> usize {
        self.inner.hub.channel_count()
    }

    /// The WebSocket and SSE connections of this node subscribed to `channel`.
    pub fn presence(&self, channel: &herald_core::ChannelName) -> Vec<PresenceEntry> {
        self.inner.hub.presence(channel, &self.inner.config.node_id)
    }

    /// The connections of `user` held by this node (WebSocket, SSE, held long-polls).
    pub fn user_connections(&self, user: &str) -> Vec<PresenceEntry> {
        self.inner
            .registry
            .user_connections(user, &self.inner.config.node_id)
    }

    /// Applies an operator's action to this node's connections; returns how many it reached.
    pub fn act(&self, action: &UserAction) -> Result<u64, herald_core::RevocationError> {
        let n = self.inner.registry.act(action, &self.inner.revocations)?;
        tracing::info!(?action, connections = n, "user action applied");
        Ok(n)
    }

    /// Hands another node's join/leave to this node's subscribers of the channel.
    pub fn deliver_event(&self, event: &PresenceEvent) {
        self.inner.hub.deliver_event(&Arc::new(event.clone()));
    }

    /// The join/leave events of this node's clients, for the cluster layer to relay; the
    /// first caller gets the receiver.
    pub fn take_events(&self) -> Option<tokio::sync::mpsc::Receiver<PresenceEvent>> {
        let mut relay = self.inner.relay.lock();
        if relay.is_some() {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(EdgeConfig::RELAY_QUEUE);
        *relay = Some(tx);
        Some(rx)
    }

    /// Every channel with local subscribers right now, and how many connections (WebSocket,
    /// SSE, held long-polls) are subscribed to it. Interval polls hold no subscription.
    pub fn channel_subscribers(&self) -> Vec<(herald_core::ChannelName, u64)> {
        self.inner.hub.channel_subscribers()
    }

    /// Client connections per protocol, as `herald_connections{protocol}` reports them (poll
    /// and long-poll: distinct recently active clients; see docs/protocol.md).
    pub fn connections(&self) -> herald_core::ProtocolCounts {
        let mut counts = herald_core::ProtocolCounts::default();
        for p in Protocol::ALL {
            let n = self
                .inner
                .metrics
                .connections
                .with_label_values(&[p.as_str()])
                .get();
            counts.set(p, n.max(0) as u64);
        }
        counts
    }

    /// Connection-channel subscriptions on this node right now.
    pub fn subscriptions(&self) -> u64 {
        self.inner.metrics.subscriptions.get().max(0) as u64
    }
}

/// `GET /poll` as the router answers it, without the routing: the disabled-transport check
/// ([`assets::disabled`]), the same CORS layer as the route, and [`poll_route`]. The raw poll
/// path (`rawpoll`) calls it for each request it recognised as `GET /poll` (path exactly
/// `/poll`), sparing every poll the router's matching, boxing and per-layer service clones.
#[derive(Clone)]
pub(crate) struct PollEndpoint {
    edge: Arc<EdgeInner>,
    cors: tower_http::cors::Cors<PollHandler>,
    /// The headers the CORS layer adds to the answer of a request without `Origin`, read off
    /// the layer itself at start-up ([`cors_without_origin`]): such a request (any client
    /// that is not a browser on another origin) skips the layer's per-request work.
    without_origin: Option<HeaderMap>,
}

impl PollEndpoint {
    pub(crate) async fn call(&self, request: axum::extract::Request) -> Response {
        if let Some(refused) = assets::disabled(&self.edge, request.uri()) {
            return refused;
        }
        if let Some(added) = &self.without_origin
            && request.method() != Method::OPTIONS
            && !request.headers().contains_key(axum::http::header::ORIGIN)
        {
            let mut response = poll_route(State(self.edge.clone()), request).await;
            add_cors_headers(response.headers_mut(), added);
            return response;
        }
        tower::ServiceExt::oneshot(self.cors.clone(), request)
            .await
            .unwrap_or_else(|e| match e {})
    }
}

/// What `cors` adds to the answer of a `GET` without `Origin`, found by asking it once; `None`
/// if it did not answer at once (then every request goes through the layer).
fn cors_without_origin(cors: &CorsLayer) -> Option<HeaderMap> {
    let inner = tower::service_fn(|_: axum::extract::Request| async {
        Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::empty()))
    });
    let service = tower::Layer::layer(cors, inner);
    let mut request = axum::extract::Request::new(axum::body::Body::empty());
    *request.uri_mut() = axum::http::Uri::from_static("/poll");
    let answer =
        futures_util::FutureExt::now_or_never(tower::ServiceExt::oneshot(service, request))?;
    answer.ok().map(|r| r.into_parts().0.headers)
}

/// Adds `added` to `headers` as the CORS layer's answer does: `Vary` values are appended, any
/// other header replaces a value of the same name.
fn add_cors_headers(headers: &mut HeaderMap, added: &HeaderMap) {
    for name in added.keys() {
        let mut values = added.get_all(name).iter();
        if name != axum::http::header::VARY
            && let Some(first) = values.next()
        {
            headers.insert(name.clone(), first.clone());
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// [`poll_route`] as a service.
#[derive(Clone)]
pub(crate) struct PollHandler(Arc<EdgeInner>);

impl tower::Service<axum::extract::Request> for PollHandler {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let edge = self.0.clone();
        Box::pin(async move { Ok(poll_route(State(edge), request).await) })
    }
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(600))
}

async fn ws_route(
    State(edge): State<Arc<EdgeInner>>,
    RawQuery(query): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
    addr: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    upgrade: ws::Handshake,
) -> Response {
    let result = async {
        let upgrade = upgrade.accept()?;
        if edge.is_draining() {
            return Err(EdgeError::Draining);
        }
        auth::check_origin(&edge, &headers)?;
        let initial = params::parse(query.as_deref(), edge.config.max_channels_per_connection)?;
        let who = auth::authenticate(&edge, &headers, &initial)?;
        // With hooks, the client id is chosen now so the backend hears of it, and the
        // connection keeps what later subscribe, publish and RPC calls tell the backend.
        let ip = addr.map(|axum::Extension(ConnectInfo(a))| a.ip());
        let id = edge.config.hooks.is_some().then(identity::client_id);
        let ctx = |hooks: &dyn herald_core::hooks::HookCaller,
                   who: Option<&herald_auth::Principal>| {
            hooks::context(
                hooks,
                id.as_deref().unwrap_or(""),
                "websocket",
                ip,
                who,
                Some(&headers),
            )
        };
        let token = auth::token(&headers, &initial).ok().flatten();
        let who = hooks::connect(&edge, who, token, &initial.channels, ctx).await?;
        let hook_ctx = edge
            .config
            .hooks
            .as_deref()
            .map(|h| Box::new(ctx(h, who.as_ref())));
        hooks::authorize(&edge, who.as_ref(), &initial.channels, |h| {
            ctx(h, who.as_ref())
        })
        .await?;
        let reg = edge.registry.register_as(
            Protocol::WebSocket,
            edge.config.outbox_bytes,
            ConnKill::token(kill),
            who.as_ref(),
            id,
        )?;
        Ok(ws::upgrade(
            edge.clone(),
            upgrade,
            reg,
            initial,
            who,
            hook_ctx,
        ))
    }
    .await;
    result.unwrap_or_else(|e: EdgeError| {
        edge.metrics.refuse(e.refusal());
        e.into_response()
    })
}

async fn sse_route(
    State(edge): State<Arc<EdgeInner>>,
    RawQuery(query): RawQuery,
    kill: Option<axum::Extension<ConnKill>>,
    addr: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    sink: Option<axum::Extension<Arc<direct::DirectSink>>>,
    headers: HeaderMap,
) -> Response {
    let ip = addr.map(|axum::Extension(ConnectInfo(a))| a.ip());
    let sink = sink.map(|axum::Extension(s)| s);
    sse::handle(
        edge.clone(),
        query,
        headers,
        ConnKill::token(kill),
        ip,
        sink,
    )
    .await
    .unwrap_or_else(|e| {
        edge.metrics.refuse(e.refusal());
        e.into_response()
    })
}

async fn poll_route(
    State(edge): State<Arc<EdgeInner>>,
    request: axum::extract::Request,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // Checked on the request as it is (no copy of its query or headers), which is then
    // dropped: a held poll keeps none of it.
    let mut prepared = poll::prepare(&edge, ip, request.uri().query(), request.headers());
    if edge.config.hooks.is_some()
        && let Ok(p) = prepared
    {
        prepared = poll::ask_hooks(&edge, p, ip, request.uri().query(), request.headers()).await;
    }
    drop(request);
    let answer = match prepared {
        Ok(prepared) => poll::handle(edge.clone(), prepared).await,
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(|e| {
        edge.metrics.refuse(e.refusal());
        e.into_response()
    })
}

async fn not_found() -> Response {
    let body = serde_json::json!({"error": {"code": "not_found",
        "message": "no such endpoint: use /ws, /sse or /poll"}});
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
