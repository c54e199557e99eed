//! One typed configuration, assembled from flags, `HERALD_*` environment variables and an
//! optional TOML file (in that order of precedence), validated before any port is bound.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use herald_control::{ApiKeys, ControlConfig, TlsFiles};
use herald_core::{HistoryLimits, MemoryBrokerConfig};
use herald_edge::EdgeConfig;
use herald_nats::{LiveInterest, NatsAuth, NatsBrokerConfig, StorageKind};
use serde::Deserialize;

/// Default client port address.
pub(crate) const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";
/// Default gRPC address.
pub(crate) const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";
/// Default HTTP/JSON API address.
pub(crate) const DEFAULT_API_ADDR: &str = "0.0.0.0:8081";
/// Default admin (metrics, health) address.
pub(crate) const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9464";
/// Default NATS URL.
pub(crate) const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default time allowed for draining on SIGTERM before the process exits anyway.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default pace of drain: connections told to reconnect per second (raised if needed to
/// finish within half the drain timeout).
pub(crate) const DEFAULT_DRAIN_RATE: usize = 2000;

/// Which broker carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BrokerKind {
    /// Embedded, in-process: one node, nothing to install.
    Memory,
    /// NATS JetStream: any number of nodes.
    Nats,
}

/// `HERALD_CONSOLE`: whether the admin port serves the console (docs/console.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConsoleSetting {
    /// Behind a login with an API key when keys are configured; not served without keys.
    Auto,
    /// Never served.
    Off,
    /// Also served without API keys, with no login (anyone reaching the admin port).
    Insecure,
}

/// JetStream storage kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NatsStorage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

/// How a node subscribes to live messages on NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum NatsLiveInterest {
    /// One subscription per channel with local subscribers.
    PerChannel,
    /// One wildcard subscription per node, demultiplexed locally.
    Wildcard,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Rules of one channel namespace (`[namespaces.NAME]` in the config file).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NamespaceSettings {
    /// Clients without a token may subscribe [default: HERALD_ANONYMOUS].
    pub(crate) anonymous: Option<bool>,
    /// Most messages a client may resume over (at most HERALD_HISTORY_SIZE).
    pub(crate) history_size: Option<usize>,
    /// Oldest message a client may resume to, e.g. 1m (at most HERALD_HISTORY_TTL).
    #[serde(with = "humantime_serde")]
    pub(crate) history_ttl: Option<Duration>,
    /// `Presence` and `PresenceStats` answer for its channels [default: false].
    pub(crate) presence: Option<bool>,
    /// Subscribers of its channels get join/leave events [default: false].
    pub(crate) join_leave: Option<bool>,
    /// Clients may publish to its channels: a token's `publish` claim must grant the channel
    /// (on a node that verifies tokens), or the publish hook decides [default: false].
    pub(crate) publish: Option<bool>,
    /// The subscribe hook decides who may subscribe (docs/hooks.md) [default: false].
    pub(crate) subscribe_hook: Option<bool>,
    /// The publish hook decides client publishes, and may change them [default: false].
    pub(crate) publish_hook: Option<bool>,
}

/// Every setting of `herald serve`, each optional so flags, env and file can be layered.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    /// TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "HERALD_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Client address (WebSocket, SSE, polling) [default: 0.0.0.0:8080].
    #[arg(long, env = "HERALD_HTTP_ADDR")]
    pub(crate) http_addr: Option<SocketAddr>,
    /// gRPC control-plane address [default: 0.0.0.0:50051 with API keys, 127.0.0.1:50051
    /// without; a non-loopback address without keys needs HERALD_API_INSECURE=true].
    #[arg(long, env = "HERALD_GRPC_ADDR")]
    pub(crate) grpc_addr: Option<SocketAddr>,
    /// HTTP/JSON API address (`/api/v1/...`, same methods and keys as gRPC) [default:
    /// 0.0.0.0:8081 with API keys, 127.0.0.1:8081 without; same rule as HERALD_GRPC_ADDR].
    #[arg(long, env = "HERALD_API_ADDR")]
    pub(crate) api_addr: Option<SocketAddr>,
    /// Admin address: /metrics, /healthz, /readyz [default: 0.0.0.0:9464].
    #[arg(long, env = "HERALD_ADMIN_ADDR")]
    pub(crate) admin_addr: Option<SocketAddr>,
    /// Admin console at /console on the admin port: auto (login with an API key; not served
    /// without keys), off, or insecure (also served without keys, with no login)
    /// [default: auto].
    #[arg(long, env = "HERALD_CONSOLE")]
    pub(crate) console: Option<ConsoleSetting>,
    /// Broker: memory (single node) or nats [default: memory].
    #[arg(long, env = "HERALD_BROKER")]
    pub(crate) broker: Option<BrokerKind>,
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "HERALD_NATS_URL")]
    pub(crate) nats_url: Option<String>,
    /// JetStream stream name [default: HERALD].
    #[arg(long, env = "HERALD_NATS_STREAM")]
    pub(crate) nats_stream: Option<String>,
    /// JetStream replicas of the stream: 1 or 3 [default: 1].
    #[arg(long, env = "HERALD_NATS_REPLICAS")]
    pub(crate) nats_replicas: Option<usize>,
    /// JetStream storage: file or memory [default: file]. On nats-server 2.9, memory storage
    /// stores about 3k messages/s in Herald's stream shape against 28-33k/s for file storage
    /// (docs/benchmarks.md): prefer file.
    #[arg(long, env = "HERALD_NATS_STORAGE")]
    pub(crate) nats_storage: Option<NatsStorage>,
    /// Live interest on NATS: per-channel or wildcard [default: per-channel] (docs/scaling.md).
    #[arg(long, env = "HERALD_NATS_LIVE_INTEREST")]
    pub(crate) nats_live_interest: Option<NatsLiveInterest>,
    /// NATS user (with HERALD_NATS_PASSWORD).
    #[arg(long, env = "HERALD_NATS_USER")]
    pub(crate) nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "HERALD_NATS_PASSWORD", hide_env_values = true)]
    pub(crate) nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "HERALD_NATS_TOKEN", hide_env_values = true)]
    pub(crate) nats_token: Option<String>,
    /// NATS .creds file (JWT + NKey).
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub(crate) nats_creds: Option<PathBuf>,
    /// PEM file of CA certificates for NATS TLS (implies TLS).
    #[arg(long, env = "HERALD_NATS_CA")]
    pub(crate) nats_ca: Option<PathBuf>,
    /// Refuse NATS connections without TLS.
    #[arg(long, env = "HERALD_NATS_TLS")]
    pub(crate) nats_tls: Option<bool>,
    /// This node's id in logs, metrics and stats [default: host name].
    #[arg(long, env = "HERALD_NODE_ID")]
    pub(crate) node_id: Option<String>,
    /// Messages kept per channel [default: 100].
    #[arg(long, env = "HERALD_HISTORY_SIZE")]
    pub(crate) history_size: Option<usize>,
    /// How long messages are kept, e.g. 5m, 1h [default: 5m].
    #[arg(long, env = "HERALD_HISTORY_TTL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) history_ttl: Option<Duration>,
    /// Largest message data accepted, bytes [default: 65536].
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    /// Outbound queue bound per connection, bytes [default: 1048576].
    #[arg(long, env = "HERALD_OUTBOX_BYTES")]
    pub(crate) outbox_bytes: Option<usize>,
    /// Memory for the recent messages of channels with local interest (resumes and polls
    /// near the head are served from it), all channels together, bytes; 0 turns it off
    /// [default: 67108864].
    #[arg(long, env = "HERALD_RECENT_CACHE_BYTES")]
    pub(crate) recent_cache_bytes: Option<usize>,
    /// Local subscribers from which one channel's fan-out is split across the runtime's
    /// workers; 0 never splits [default: 0].
    #[arg(long, env = "HERALD_FANOUT_SHARD_MIN")]
    pub(crate) fanout_shard_min: Option<usize>,
    /// Held connections per node [default: 100000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Channels per connection [default: 100].
    #[arg(long, env = "HERALD_MAX_CHANNELS_PER_CONNECTION")]
    pub(crate) max_channels_per_connection: Option<usize>,
    /// Held connections (WebSocket, SSE, long-poll) one user may have on this node; 0 for no
    /// limit [default: 0].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER")]
    pub(crate) max_connections_per_user: Option<usize>,
    /// Revocations (RevokeToken, RevokeUser) held at once [default: 100000].
    #[arg(long, env = "HERALD_MAX_REVOCATIONS")]
    pub(crate) max_revocations: Option<usize>,
    /// Largest `data` a client may publish where its namespace has `publish = true`, bytes
    /// [default: 16384].
    #[arg(long, env = "HERALD_CLIENT_PUBLISH_MAX_BYTES")]
    pub(crate) client_publish_max_bytes: Option<usize>,
    /// Publishes per second one client may send (a WebSocket connection; over HTTP a user, or
    /// an address without a token), bursts of twice that; 0 turns client publishes off
    /// [default: 20].
    #[arg(long, env = "HERALD_CLIENT_PUBLISH_RATE")]
    pub(crate) client_publish_rate: Option<u32>,
    /// Origins allowed by CORS on /sse and /poll, comma-separated; * for any [default: *].
    #[arg(long, env = "HERALD_CORS_ORIGINS")]
    pub(crate) cors_origins: Option<String>,
    /// Client transports this node refuses (403), comma-separated: websocket, sse, longpoll,
    /// poll [default: none].
    #[arg(long, env = "HERALD_DISABLED_TRANSPORTS")]
    pub(crate) disabled_transports: Option<String>,
    /// SSE heartbeat interval [default: 15s].
    #[arg(long, env = "HERALD_SSE_HEARTBEAT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) sse_heartbeat: Option<Duration>,
    /// SSE retry: delay sent to clients [default: 2s].
    #[arg(long, env = "HERALD_SSE_RETRY", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) sse_retry: Option<Duration>,
    /// WebSocket ping interval [default: 30s].
    #[arg(long, env = "HERALD_WS_PING_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) ws_ping_interval: Option<Duration>,
    /// Time allowed to drain on SIGTERM [default: 20s].
    #[arg(long, env = "HERALD_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) drain_timeout: Option<Duration>,
    /// Connections told to reconnect per second while draining [default: 2000].
    #[arg(long, env = "HERALD_DRAIN_RATE")]
    pub(crate) drain_rate: Option<usize>,
    /// gRPC API keys, comma-separated; callers send `authorization: Bearer <key>`. None
    /// configured (and no file): the API listens on loopback only (see HERALD_API_INSECURE).
    #[arg(long, env = "HERALD_API_KEYS", hide_env_values = true)]
    pub(crate) api_keys: Option<String>,
    /// File of gRPC API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "HERALD_API_KEYS_FILE")]
    pub(crate) api_keys_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on the gRPC port (with HERALD_GRPC_TLS_KEY).
    #[arg(long, env = "HERALD_GRPC_TLS_CERT")]
    pub(crate) grpc_tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC port (with HERALD_GRPC_TLS_CERT).
    #[arg(long, env = "HERALD_GRPC_TLS_KEY")]
    pub(crate) grpc_tls_key: Option<PathBuf>,
    /// How often nodes announce themselves to each other (nats broker) [default: 2s]; a node
    /// silent for 3 intervals is dropped from Stats and Channels.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Client-token HMAC secrets (HS256/384/512), comma-separated, each at least 32 bytes.
    #[arg(long, env = "HERALD_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub(crate) auth_hmac_secret: Option<String>,
    /// JWKS file with the public keys (RS*, PS*, ES256/384, EdDSA) client tokens are signed
    /// with.
    #[arg(long, env = "HERALD_AUTH_JWKS_FILE")]
    pub(crate) auth_jwks_file: Option<PathBuf>,
    /// Required `iss` of client tokens.
    #[arg(long, env = "HERALD_AUTH_ISSUER")]
    pub(crate) auth_issuer: Option<String>,
    /// Required `aud` of client tokens.
    #[arg(long, env = "HERALD_AUTH_AUDIENCE")]
    pub(crate) auth_audience: Option<String>,
    /// Clock skew allowed on token `exp` and `nbf` [default: 5s].
    #[arg(long, env = "HERALD_AUTH_LEEWAY", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) auth_leeway: Option<Duration>,
    /// Whether clients without a token may subscribe to channels whose namespace does not
    /// say otherwise [default: true without token keys, false with them].
    #[arg(long, env = "HERALD_ANONYMOUS")]
    pub(crate) anonymous: Option<bool>,
    /// Per-namespace rules (config file only: `[namespaces.chat]`).
    #[arg(skip)]
    pub(crate) namespaces: Option<HashMap<String, NamespaceSettings>>,
    /// Origins allowed to open browser WebSockets, comma-separated; * for any [default: the
    /// CORS origins].
    #[arg(long, env = "HERALD_WS_ORIGINS")]
    pub(crate) ws_origins: Option<String>,
    /// New connections per second one client IP may open (burst twice that); 0 = no limit
    /// [default: 0].
    #[arg(long, env = "HERALD_CONNECTION_RATE_PER_IP")]
    pub(crate) connection_rate_per_ip: Option<u32>,
    /// Time a client has to send its request headers before it is disconnected
    /// (slowloris guard) [default: 10s].
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) header_read_timeout: Option<Duration>,
    /// How long a poll client (address and channel set) counts in `herald_connections`
    /// after its last request [default: 30s].
    #[arg(long, env = "HERALD_POLL_CLIENT_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) poll_client_window: Option<Duration>,
    /// Serve the gRPC API without API keys on a non-loopback address (anyone who reaches the
    /// port can publish and drain) [default: false: without keys the API listens on loopback
    /// only].
    #[arg(long, env = "HERALD_API_INSECURE")]
    pub(crate) api_insecure: Option<bool>,
    /// Proxies (CIDR list, e.g. 10.0.0.0/8,192.168.1.7) whose forwarding header names the
    /// client address; from any other peer, the peer address is the client [default: none].
    #[arg(long, env = "HERALD_TRUSTED_PROXIES")]
    pub(crate) trusted_proxies: Option<String>,
    /// The header trusted proxies maintain: x-forwarded-for or forwarded (RFC 7239)
    /// [default: x-forwarded-for].
    #[arg(long, env = "HERALD_FORWARDED_HEADER")]
    pub(crate) forwarded_header: Option<String>,
    /// The application's backend for hooks (docs/hooks.md): http://host:port/base (HTTP/JSON)
    /// or grpc://host:port (herald.proxy.v1) [default: none].
    #[arg(long, env = "HERALD_HOOKS_TARGET")]
    pub(crate) hooks_target: Option<String>,
    /// Longest wait for one hook answer, e.g. 500ms [default: 1s].
    #[arg(long, env = "HERALD_HOOKS_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub(crate) hooks_timeout: Option<Duration>,
    /// Hook calls in flight per node; one more is refused at once (hook_overloaded)
    /// [default: 256].
    #[arg(long, env = "HERALD_HOOKS_MAX_CONCURRENT")]
    pub(crate) hooks_max_concurrent: Option<usize>,
    /// Client request headers passed to hooks, comma-separated
    /// [default: authorization,cookie,origin,user-agent].
    #[arg(long, env = "HERALD_HOOKS_FORWARD_HEADERS")]
    pub(crate) hooks_forward_headers: Option<String>,
    /// Ask the connect hook before accepting each WebSocket, SSE stream, poll and HTTP
    /// publish/RPC request [default: false].
    #[arg(long, env = "HERALD_CONNECT_HOOK")]
    pub(crate) connect_hook: Option<bool>,
    /// Pass client RPCs (WebSocket `rpc`, `POST /rpc`) to the RPC hook [default: false].
    #[arg(long, env = "HERALD_RPC_HOOK")]
    pub(crate) rpc_hook: Option<bool>,
    /// File descriptors kept out of the client connection budget for the admin port, gRPC,
    /// NATS and files [default: 5% of the descriptor limit, 64 to 2048].
    #[arg(long, env = "HERALD_FD_RESERVE")]
    pub(crate) fd_reserve: Option<u64>,
    /// Log filter, RUST_LOG syntax [default: info].
    #[arg(long, env = "HERALD_LOG")]
    pub(crate) log: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
}

macro_rules! layer {
    ($top:ident, $bottom:ident; $($field:ident),* $(,)?) => {
        $( if $top.$field.is_none() { $top.$field = $bottom.$field; } )*
    };
}

impl Settings {
    /// Fills every unset setting from the file named by `--config` / `HERALD_CONFIG`.
    pub(crate) fn with_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config file {} (HERALD_CONFIG)", path.display()))?;
        let file: Settings = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        layer!(self, file; http_addr, grpc_addr, api_addr, admin_addr, console, broker, nats_url, node_id,
            nats_stream, nats_replicas, nats_storage, nats_live_interest, nats_user, nats_password, nats_token,
            nats_creds, nats_ca, nats_tls,
            history_size, history_ttl, max_message_bytes, outbox_bytes, recent_cache_bytes, fanout_shard_min, max_connections,
            max_channels_per_connection, max_connections_per_user, max_revocations, client_publish_max_bytes, client_publish_rate, cors_origins, disabled_transports, sse_heartbeat, sse_retry,
            ws_ping_interval, drain_timeout, drain_rate, log, log_format, api_keys,
            api_keys_file, grpc_tls_cert, grpc_tls_key, heartbeat_interval, auth_hmac_secret,
            auth_jwks_file, auth_issuer, auth_audience, auth_leeway, anonymous, namespaces,
            ws_origins, connection_rate_per_ip, header_read_timeout, poll_client_window, api_insecure,
            trusted_proxies, forwarded_header, fd_reserve, hooks_target, hooks_timeout,
            hooks_max_concurrent, hooks_forward_headers, connect_hook, rpc_hook);
        Ok(self)
    }
}

/// The validated configuration of a node.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) http_addr: SocketAddr,
    pub(crate) grpc_addr: SocketAddr,
    pub(crate) api_addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    /// `HERALD_CONSOLE`.
    pub(crate) console: herald_control::console::ConsoleMode,
    pub(crate) broker: BrokerKind,
    pub(crate) nats: NatsBrokerConfig,
    pub(crate) node_id: String,
    pub(crate) history: HistoryLimits,
    pub(crate) edge: EdgeConfig,
    pub(crate) control: ControlConfig,
    pub(crate) drain_timeout: Duration,
    pub(crate) drain_rate: usize,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) grpc_tls: Option<TlsFiles>,
    /// `HERALD_API_INSECURE`: the API may be served without keys beyond loopback.
    pub(crate) api_insecure: bool,
    /// No API key and no `HERALD_GRPC_ADDR`: the API was moved to loopback.
    pub(crate) grpc_loopback_only: bool,
    /// No API key and no `HERALD_API_ADDR`: the HTTP/JSON API was moved to loopback.
    pub(crate) api_loopback_only: bool,
    /// `HERALD_FD_RESERVE`, if set.
    pub(crate) fd_reserve: Option<u64>,
    /// Where and how backend hooks are called (`HERALD_HOOKS_*`), if configured.
    pub(crate) hooks: Option<herald_hooks::HookConfig>,
    pub(crate) log: String,
    pub(crate) log_format: LogFormat,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

/// Builds the client-access policy: token keys, anonymous access, namespaces.
fn policy(s: &Settings, history: &HistoryLimits) -> anyhow::Result<herald_auth::Policy> {
    let secrets: Vec<Vec<u8>> = s
        .auth_hmac_secret
        .as_deref()
        .map(split_list)
        .unwrap_or_default()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    let jwks = match &s.auth_jwks_file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading HERALD_AUTH_JWKS_FILE {}: give a readable JWKS JSON file",
                path.display()
            )
        })?),
        None => None,
    };
    let configured = !secrets.is_empty() || jwks.is_some();
    let verifier = if configured {
        let config = herald_auth::AuthConfig {
            hmac_secrets: secrets,
            jwks,
            issuer: s.auth_issuer.clone(),
            audience: s.auth_audience.clone(),
            leeway: s.auth_leeway.unwrap_or(herald_auth::DEFAULT_LEEWAY),
        };
        Some(
            herald_auth::Verifier::new(&config)
                .context("client tokens (HERALD_AUTH_HMAC_SECRET / HERALD_AUTH_JWKS_FILE)")?,
        )
    } else {
        if s.auth_issuer.is_some() || s.auth_audience.is_some() {
            bail!(
                "HERALD_AUTH_ISSUER / HERALD_AUTH_AUDIENCE need a key: set HERALD_AUTH_HMAC_SECRET or HERALD_AUTH_JWKS_FILE"
            );
        }
        None
    };
    let anonymous = s.anonymous.unwrap_or(!configured);
    let default = herald_auth::NamespaceRule {
        anonymous,
        ..Default::default()
    };
    let mut namespaces = HashMap::new();
    for (name, ns) in s.namespaces.clone().unwrap_or_default() {
        if ns.history_size.is_some_and(|n| n > history.max_messages) {
            bail!(
                "namespace {name:?}: history_size exceeds HERALD_HISTORY_SIZE ({}), which bounds every channel",
                history.max_messages
            );
        }
        if ns.history_ttl.is_some_and(|t| t > history.max_age) {
            bail!(
                "namespace {name:?}: history_ttl exceeds HERALD_HISTORY_TTL ({:?})",
                history.max_age
            );
        }
        let rule = herald_auth::NamespaceRule {
            anonymous: ns.anonymous.unwrap_or(anonymous),
            history_size: ns.history_size,
            history_ttl: ns.history_ttl,
            presence: ns.presence.unwrap_or(false),
            join_leave: ns.join_leave.unwrap_or(false),
            publish: ns.publish.unwrap_or(false),
            subscribe_hook: ns.subscribe_hook.unwrap_or(false),
            publish_hook: ns.publish_hook.unwrap_or(false),
        };
        if rule.publish_hook && !rule.publish {
            bail!("namespace {name:?}: publish_hook needs publish = true");
        }
        namespaces.insert(name, rule);
    }
    herald_auth::Policy::new(verifier, default, namespaces).map_err(anyhow::Error::from)
}

/// `HERALD_HOOKS_*` as a hook configuration, `None` without a target.
fn hook_config(s: &Settings) -> anyhow::Result<Option<herald_hooks::HookConfig>> {
    let Some(target) = s.hooks_target.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    let target = herald_hooks::HookTarget::parse(target.trim())
        .map_err(|e| anyhow::anyhow!("HERALD_HOOKS_TARGET: {e}"))?;
    let mut c = herald_hooks::HookConfig::new(target);
    if let Some(t) = s.hooks_timeout {
        c.timeout = t;
    }
    if let Some(n) = s.hooks_max_concurrent {
        c.max_concurrent = n;
    }
    if let Some(list) = &s.hooks_forward_headers {
        c.forward_headers = split_list(list)
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
    }
    c.validate()
        .map_err(|e| anyhow::anyhow!("HERALD_HOOKS_*: {e}"))?;
    Ok(Some(c))
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("herald-{}", std::process::id()))
}

impl Config {
    /// Applies defaults and validates; errors name the setting and how to fix it.
    pub(crate) fn from_settings(s: Settings) -> anyhow::Result<Self> {
        let history = HistoryLimits {
            max_messages: s
                .history_size
                .unwrap_or(HistoryLimits::DEFAULT_MAX_MESSAGES),
            max_age: s.history_ttl.unwrap_or(HistoryLimits::DEFAULT_MAX_AGE),
        };
        if history.max_messages == 0 || history.max_messages > 1_000_000 {
            bail!(
                "HERALD_HISTORY_SIZE (--history-size) must be 1 to 1000000, got {}",
                history.max_messages
            );
        }
        if history.max_age < Duration::from_secs(1) {
            bail!(
                "HERALD_HISTORY_TTL (--history-ttl) must be at least 1s, got {:?}",
                history.max_age
            );
        }
        let mut edge = EdgeConfig::default();
        let mut control = ControlConfig::default();
        if let Some(v) = s.max_message_bytes {
            if !(16..=16 << 20).contains(&v) {
                bail!(
                    "HERALD_MAX_MESSAGE_BYTES (--max-message-bytes) must be 16 to 16777216, got {v}"
                );
            }
            control.max_message_bytes = v;
        }
        if let Some(v) = s.outbox_bytes {
            if v < 4096 {
                bail!("HERALD_OUTBOX_BYTES (--outbox-bytes) must be at least 4096, got {v}");
            }
            edge.outbox_bytes = v;
        }
        if edge.outbox_bytes < control.max_message_bytes + 256 {
            bail!(
                "HERALD_OUTBOX_BYTES ({}) must exceed HERALD_MAX_MESSAGE_BYTES ({}): one message must fit a client's queue",
                edge.outbox_bytes,
                control.max_message_bytes
            );
        }
        if let Some(v) = s.max_connections {
            if v == 0 {
                bail!("HERALD_MAX_CONNECTIONS (--max-connections) must be at least 1");
            }
            edge.max_connections = v;
        }
        if let Some(v) = s.max_channels_per_connection {
            if v == 0 {
                bail!("HERALD_MAX_CHANNELS_PER_CONNECTION must be at least 1");
            }
            edge.max_channels_per_connection = v;
        }
        if let Some(origins) = &s.cors_origins {
            let list: Vec<String> = origins
                .split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
            if list.is_empty() {
                bail!(
                    "HERALD_CORS_ORIGINS is empty: give origins like https://app.example.com, or *"
                );
            }
            edge.cors_origins = list;
        }
        edge.ws_origins = match &s.ws_origins {
            Some(origins) => {
                let list = split_list(origins);
                if list.is_empty() {
                    bail!(
                        "HERALD_WS_ORIGINS is empty: give origins like https://app.example.com, or *"
                    );
                }
                list
            }
            None => edge.cors_origins.clone(),
        };
        edge.connection_rate_per_ip = s.connection_rate_per_ip.unwrap_or(0);
        if let Some(t) = s.header_read_timeout {
            if t < Duration::from_millis(100) || t > Duration::from_secs(300) {
                bail!("HERALD_HEADER_READ_TIMEOUT must be 100ms to 5m, got {t:?}");
            }
            edge.header_read_timeout = t;
        }
        if let Some(w) = s.poll_client_window {
            if w < Duration::from_secs(1) || w > Duration::from_secs(3600) {
                bail!("HERALD_POLL_CLIENT_WINDOW must be 1s to 1h, got {w:?}");
            }
            edge.poll_client_window = w;
        }
        edge.policy = Arc::new(policy(&s, &history)?);
        control.policy = edge.policy.clone();
        edge.max_connections_per_user = s.max_connections_per_user.unwrap_or(0);
        if let Some(v) = s.max_revocations {
            if v == 0 {
                bail!("HERALD_MAX_REVOCATIONS must be at least 1");
            }
            edge.max_revocations = v;
        }
        if let Some(v) = s.client_publish_max_bytes {
            if v == 0 || v > control.max_message_bytes {
                bail!(
                    "HERALD_CLIENT_PUBLISH_MAX_BYTES must be 1 to HERALD_MAX_MESSAGE_BYTES ({}), got {v}",
                    control.max_message_bytes
                );
            }
            edge.client_publish_max_bytes = v;
        } else {
            edge.client_publish_max_bytes =
                edge.client_publish_max_bytes.min(control.max_message_bytes);
        }
        if let Some(v) = s.client_publish_rate {
            edge.client_publish_rate = v;
        }
        if let Some(list) = &s.disabled_transports {
            for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !EdgeConfig::TRANSPORTS.contains(&t) {
                    bail!(
                        "HERALD_DISABLED_TRANSPORTS: unknown transport {t:?}; use websocket, sse, longpoll, poll"
                    );
                }
                edge.disabled_transports.push(t.to_owned());
            }
        }
        for (name, value, min) in [
            (
                "HERALD_SSE_HEARTBEAT",
                s.sse_heartbeat,
                Duration::from_millis(100),
            ),
            (
                "HERALD_WS_PING_INTERVAL",
                s.ws_ping_interval,
                Duration::from_millis(100),
            ),
        ] {
            if value.is_some_and(|v| v < min) {
                bail!("{name} must be at least {min:?}");
            }
        }
        edge.sse_heartbeat = s.sse_heartbeat.unwrap_or(edge.sse_heartbeat);
        edge.sse_retry = s.sse_retry.unwrap_or(edge.sse_retry);
        edge.ws_ping_interval = s.ws_ping_interval.unwrap_or(edge.ws_ping_interval);
        edge.recent_node_bytes = s.recent_cache_bytes.unwrap_or(edge.recent_node_bytes);
        edge.fanout_shard_min = s.fanout_shard_min.unwrap_or(edge.fanout_shard_min);
        edge.recent_messages = history.max_messages;
        edge.history_max_age = history.max_age;
        edge.max_client_frame = edge.max_client_frame.max(control.max_message_bytes);
        let mut keys: Vec<String> = s
            .api_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(path) = &s.api_keys_file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "reading HERALD_API_KEYS_FILE {}: give a readable file with one key per line",
                    path.display()
                )
            })?;
            let before = keys.len();
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
            if keys.len() == before {
                bail!(
                    "HERALD_API_KEYS_FILE {} holds no key: write one key per line, or unset it",
                    path.display()
                );
            }
        }
        if let Some(k) = keys
            .iter()
            .find(|k| k.len() < 16 || k.chars().any(|c| !c.is_ascii_graphic()))
        {
            bail!(
                "HERALD_API_KEYS: a key of {} characters is too weak or holds spaces/control characters: use at least 16 printable ASCII characters (e.g. `openssl rand -hex 32`)",
                k.len()
            );
        }
        control.api_keys = ApiKeys::new(keys);
        let grpc_tls = match (&s.grpc_tls_cert, &s.grpc_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let read = |p: &PathBuf, name: &str| {
                    std::fs::read(p)
                        .with_context(|| format!("reading {name} {}: give a PEM file", p.display()))
                };
                let files = TlsFiles {
                    cert_pem: read(cert, "HERALD_GRPC_TLS_CERT")?,
                    key_pem: read(key, "HERALD_GRPC_TLS_KEY")?,
                };
                Some(files)
            }
            _ => bail!(
                "HERALD_GRPC_TLS_CERT and HERALD_GRPC_TLS_KEY go together: set both or neither"
            ),
        };
        let heartbeat_interval = s
            .heartbeat_interval
            .unwrap_or(herald_core::DEFAULT_HEARTBEAT_INTERVAL);
        if heartbeat_interval < Duration::from_millis(100)
            || heartbeat_interval > Duration::from_secs(600)
        {
            bail!("HERALD_HEARTBEAT_INTERVAL must be 100ms to 10m, got {heartbeat_interval:?}");
        }
        let header = match &s.forwarded_header {
            Some(h) => h
                .parse::<herald_edge::ForwardedHeader>()
                .map_err(|e| anyhow::anyhow!("HERALD_FORWARDED_HEADER: {e}"))?,
            None => herald_edge::ForwardedHeader::default(),
        };
        let proxies = herald_edge::TrustedProxies::parse(
            s.trusted_proxies.as_deref().unwrap_or(""),
            header,
        )
        .map_err(|e| {
            anyhow::anyhow!("HERALD_TRUSTED_PROXIES: {e} (give a comma-separated CIDR list like 10.0.0.0/8,192.168.1.7)")
        })?;
        edge.trusted_proxies = Arc::new(proxies);
        if s.fd_reserve == Some(0) {
            bail!("HERALD_FD_RESERVE must be at least 1");
        }
        let hooks = hook_config(&s)?;
        edge.connect_hook = s.connect_hook.unwrap_or(false);
        edge.rpc_hook = s.rpc_hook.unwrap_or(false);
        let hooked_namespaces = edge.policy.uses_hooks();
        if hooks.is_none() && (edge.connect_hook || edge.rpc_hook || hooked_namespaces) {
            bail!(
                "HERALD_CONNECT_HOOK, HERALD_RPC_HOOK, subscribe_hook and publish_hook need HERALD_HOOKS_TARGET (the application's backend: http://host:port/base or grpc://host:port)"
            );
        }
        // Secure by default: without API keys, the control plane (publish, drain) is only
        // reachable from this machine unless the operator says otherwise.
        // The HTTP/JSON API runs the same methods with the same keys: same rule.
        let api_insecure = s.api_insecure.unwrap_or(false);
        let open = control.api_keys.is_open() && !api_insecure;
        let (grpc_addr, grpc_loopback_only) =
            control_addr(s.grpc_addr, DEFAULT_GRPC_ADDR, "HERALD_GRPC_ADDR", open)?;
        let (api_addr, api_loopback_only) =
            control_addr(s.api_addr, DEFAULT_API_ADDR, "HERALD_API_ADDR", open)?;
        let node_id = s.node_id.unwrap_or_else(default_node_id);
        if node_id.is_empty() || node_id.len() > 128 {
            bail!("HERALD_NODE_ID must be 1 to 128 characters");
        }
        edge.node_id = node_id.clone();
        Ok(Self {
            http_addr: s.http_addr.unwrap_or_else(|| parse_addr(DEFAULT_HTTP_ADDR)),
            grpc_addr,
            api_addr,
            admin_addr: s
                .admin_addr
                .unwrap_or_else(|| parse_addr(DEFAULT_ADMIN_ADDR)),
            console: match s.console.unwrap_or(ConsoleSetting::Auto) {
                ConsoleSetting::Auto => herald_control::console::ConsoleMode::Auto,
                ConsoleSetting::Off => herald_control::console::ConsoleMode::Off,
                ConsoleSetting::Insecure => herald_control::console::ConsoleMode::Insecure,
            },
            broker: s.broker.unwrap_or(BrokerKind::Memory),
            nats: NatsBrokerConfig {
                urls: s
                    .nats_url
                    .as_deref()
                    .unwrap_or(DEFAULT_NATS_URL)
                    .split(',')
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect(),
                stream: s
                    .nats_stream
                    .unwrap_or_else(|| NatsBrokerConfig::default().stream),
                history,
                replicas: s.nats_replicas.unwrap_or(1),
                storage: match s.nats_storage.unwrap_or(NatsStorage::File) {
                    NatsStorage::File => StorageKind::File,
                    NatsStorage::Memory => StorageKind::Memory,
                },
                live_interest: match s.nats_live_interest.unwrap_or(NatsLiveInterest::PerChannel) {
                    NatsLiveInterest::PerChannel => LiveInterest::PerChannel,
                    NatsLiveInterest::Wildcard => LiveInterest::Wildcard,
                },
                auth: NatsAuth {
                    user: s.nats_user,
                    password: s.nats_password,
                    token: s.nats_token,
                    creds_file: s.nats_creds,
                    ca_file: s.nats_ca,
                    require_tls: s.nats_tls.unwrap_or(false),
                },
                ..NatsBrokerConfig::default()
            },
            node_id,
            history,
            edge,
            control,
            drain_timeout: s.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            drain_rate: s.drain_rate.unwrap_or(DEFAULT_DRAIN_RATE).max(1),
            heartbeat_interval,
            grpc_tls,
            api_insecure,
            grpc_loopback_only,
            api_loopback_only,
            fd_reserve: s.fd_reserve,
            hooks,
            log: s.log.unwrap_or_else(|| "info".to_owned()),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
        })
    }

    /// Settings of the memory broker.
    pub(crate) fn memory_broker(&self) -> MemoryBrokerConfig {
        MemoryBrokerConfig {
            history: self.history,
            ..Default::default()
        }
    }
}

/// The address of a control-plane listener (gRPC, HTTP/JSON API) and whether it was moved to
/// loopback. `open`: no API key is configured and `HERALD_API_INSECURE` is not set; then the
/// default address becomes loopback, and a non-loopback address given is refused.
fn control_addr(
    given: Option<SocketAddr>,
    default: &str,
    key: &str,
    open: bool,
) -> anyhow::Result<(SocketAddr, bool)> {
    let mut addr = given.unwrap_or_else(|| parse_addr(default));
    if !open {
        return Ok((addr, false));
    }
    match given {
        None => {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            Ok((addr, true))
        }
        Some(addr) if !addr.ip().is_loopback() => bail!(
            "{key} {addr} is not a loopback address and no API key is configured: \
             anyone reaching it could publish and drain. Set HERALD_API_KEYS or \
             HERALD_API_KEYS_FILE, listen on 127.0.0.1, or set HERALD_API_INSECURE=true \
             to serve the API without keys"
        ),
        Some(addr) => Ok((addr, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.grpc_addr.port(), 50051);
        assert_eq!(c.admin_addr.port(), 9464);
        assert_eq!(c.broker, BrokerKind::Memory);
        assert_eq!(c.history, HistoryLimits::default());
    }

    #[test]
    fn without_keys_the_api_stays_on_loopback() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert!(c.grpc_loopback_only);
        let given = |addr: &str, keys: Option<&str>, insecure: Option<bool>| {
            Config::from_settings(Settings {
                grpc_addr: Some(addr.parse().unwrap()),
                api_keys: keys.map(str::to_owned),
                api_insecure: insecure,
                ..Default::default()
            })
        };
        let e = given("0.0.0.0:50051", None, None).unwrap_err().to_string();
        assert!(
            e.contains("HERALD_API_INSECURE") && e.contains("HERALD_API_KEYS"),
            "{e}"
        );
        assert!(given("10.1.2.3:50051", None, Some(false)).is_err());
        assert!(given("127.0.0.1:7", None, None).is_ok());
        assert!(given("[::1]:7", None, None).is_ok());
        let c = given("0.0.0.0:50051", None, Some(true)).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "0.0.0.0:50051");
        let c = given("0.0.0.0:50051", Some("0123456789abcdef0123"), None).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "0.0.0.0:50051");
        let c = Config::from_settings(Settings {
            api_keys: Some("0123456789abcdef0123".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert!(!c.grpc_loopback_only);
        let c = Config::from_settings(Settings {
            api_insecure: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
    }

    #[test]
    fn the_console_setting_is_read_and_defaults_to_auto() {
        use herald_control::console::{ConsoleAccess, ConsoleMode};
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.console, ConsoleMode::Auto);
        // Auto without keys: not served (the console logs in with a key).
        assert_eq!(c.console.access(&c.control.api_keys), None);
        let file: Settings = toml::from_str("console = \"insecure\"").unwrap();
        let c = Config::from_settings(file).unwrap();
        assert_eq!(c.console, ConsoleMode::Insecure);
        assert_eq!(
            c.console.access(&c.control.api_keys),
            Some(ConsoleAccess::Open)
        );
        let c = Config::from_settings(Settings {
            console: Some(ConsoleSetting::Off),
            api_keys: Some("0123456789abcdef0123".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.console.access(&c.control.api_keys), None);
        assert!(toml::from_str::<Settings>("console = \"maybe\"").is_err());
    }

    #[test]
    fn the_http_api_follows_the_grpc_rule() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.api_addr.to_string(), "127.0.0.1:8081");
        assert!(c.api_loopback_only);
        let given = |addr: &str, keys: Option<&str>, insecure: Option<bool>| {
            Config::from_settings(Settings {
                api_addr: Some(addr.parse().unwrap()),
                api_keys: keys.map(str::to_owned),
                api_insecure: insecure,
                ..Default::default()
            })
        };
        let e = given("0.0.0.0:8081", None, None).unwrap_err().to_string();
        assert!(e.contains("HERALD_API_ADDR"), "{e}");
        assert!(given("127.0.0.1:7", None, None).is_ok());
        assert_eq!(
            given("0.0.0.0:8081", None, Some(true))
                .unwrap()
                .api_addr
                .to_string(),
            "0.0.0.0:8081"
        );
        let c = Config::from_settings(Settings {
            api_keys: Some("0123456789abcdef0123".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.api_addr.to_string(), DEFAULT_API_ADDR);
        assert!(!c.api_loopback_only);
    }

    #[test]
    fn trusted_proxies_are_parsed() {
        let c = Config::from_settings(Settings {
            trusted_proxies: Some("10.0.0.0/8, 192.168.1.7".into()),
            forwarded_header: Some("Forwarded".into()),
            ..Default::default()
        })
        .unwrap();
        let p = &c.edge.trusted_proxies;
        assert_eq!(p.nets().len(), 2);
        assert_eq!(p.header(), herald_edge::ForwardedHeader::Forwarded);
        assert!(p.trusts("10.3.3.3".parse().unwrap()));
        for (proxies, header, key) in [
            ("10.0.0.1/8", None, "HERALD_TRUSTED_PROXIES"),
            ("lb.example.com", None, "HERALD_TRUSTED_PROXIES"),
            ("10.0.0.0/8", Some("x-real-ip"), "HERALD_FORWARDED_HEADER"),
        ] {
            let e = Config::from_settings(Settings {
                trusted_proxies: Some(proxies.into()),
                forwarded_header: header.map(str::to_owned),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn disabled_transports_are_checked() {
        let s = Settings {
            disabled_transports: Some("websocket, sse".into()),
            ..Default::default()
        };
        let c = Config::from_settings(s).unwrap();
        assert_eq!(c.edge.disabled_transports, ["websocket", "sse"]);
        let s = Settings {
            disabled_transports: Some("ws".into()),
            ..Default::default()
        };
        let e = Config::from_settings(s).unwrap_err().to_string();
        assert!(e.contains("HERALD_DISABLED_TRANSPORTS"), "{e}");
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(
            &path,
            "history_size = 7\nhistory_ttl = \"2m\"\nhttp_addr = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let s = Settings {
            config: Some(path),
            http_addr: Some("127.0.0.1:2".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::from_settings(s.with_file().unwrap()).unwrap();
        assert_eq!(c.http_addr.port(), 2, "flag wins over file");
        assert_eq!(c.history.max_messages, 7);
        assert_eq!(c.history.max_age, Duration::from_secs(120));
    }

    #[test]
    fn bad_values_name_the_key() {
        let s = Settings {
            history_size: Some(0),
            ..Default::default()
        };
        let e = Config::from_settings(s).unwrap_err().to_string();
        assert!(e.contains("HERALD_HISTORY_SIZE"), "{e}");
        let s = Settings {
            outbox_bytes: Some(5000),
            ..Default::default()
        };
        let e = Config::from_settings(s).unwrap_err().to_string();
        assert!(e.contains("HERALD_OUTBOX_BYTES"), "{e}");
        let s = Settings {
            api_keys: Some("short".into()),
            ..Default::default()
        };
        let e = Config::from_settings(s).unwrap_err().to_string();
        assert!(e.contains("HERALD_API_KEYS"), "{e}");
        let s = Settings {
            grpc_tls_cert: Some("/nonexistent".into()),
            ..Default::default()
        };
        let e = Config::from_settings(s).unwrap_err().to_string();
        assert!(e.contains("HERALD_GRPC_TLS_KEY"), "{e}");
    }

    #[test]
    fn api_keys_come_from_env_list_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# ops\nfile-key-0123456789abcdef\n\n").unwrap();
        let s = Settings {
            api_keys: Some("env-key-0123456789abcdef, other-key-0123456789ab".into()),
            api_keys_file: Some(path),
            ..Default::default()
        };
        let c = Config::from_settings(s).unwrap();
        assert_eq!(c.control.api_keys.len(), 3);
        assert!(
            Config::from_settings(Settings::default())
                .unwrap()
                .control
                .api_keys
                .is_open()
        );
    }

    #[test]
    fn client_auth_settings() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert!(!c.edge.policy.verifies_tokens() && !c.edge.policy.requires_tokens());
        let s = Settings {
            auth_hmac_secret: Some("0123456789abcdef0123456789abcdef".into()),
            cors_origins: Some("https://a.example".into()),
            ..Default::default()
        };
        let c = Config::from_settings(s).unwrap();
        assert!(c.edge.policy.verifies_tokens());
        assert!(
            c.edge.policy.requires_tokens(),
            "keys make tokens required by default"
        );
        assert_eq!(
            c.edge.ws_origins,
            ["https://a.example"],
            "WS origins follow CORS"
        );

        let err = |s: Settings| Config::from_settings(s).unwrap_err();
        let e = format!(
            "{:#}",
            err(Settings {
                auth_hmac_secret: Some("short".into()),
                ..Default::default()
            })
        );
        assert!(
            e.contains("HERALD_AUTH_HMAC_SECRET") && e.contains("32"),
            "{e}"
        );
        let e = err(Settings {
            auth_issuer: Some("https://iss".into()),
            ..Default::default()
        })
        .to_string();
        assert!(e.contains("HERALD_AUTH_ISSUER"), "{e}");
        let e = err(Settings {
            anonymous: Some(false),
            ..Default::default()
        })
        .to_string();
        assert!(e.contains("requires a token but no key"), "{e}");
        let ns = |rule: NamespaceSettings| Some(HashMap::from([("chat".to_owned(), rule)]));
        let e = err(Settings {
            history_size: Some(10),
            namespaces: ns(NamespaceSettings {
                history_size: Some(11),
                ..Default::default()
            }),
            ..Default::default()
        })
        .to_string();
        assert!(e.contains("HERALD_HISTORY_SIZE"), "{e}");
        let e = err(Settings {
            namespaces: ns(NamespaceSettings {
                anonymous: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        })
        .to_string();
        assert!(e.contains("namespace \"chat\""), "{e}");
        let e = err(Settings {
            ws_origins: Some(" , ".into()),
            ..Default::default()
        })
        .to_string();
        assert!(e.contains("HERALD_WS_ORIGINS"), "{e}");
    }

    #[test]
    fn namespaces_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            "auth_hmac_secret = \"0123456789abcdef0123456789abcdef\"\n[namespaces.public]\nanonymous = true\n[namespaces.chat]\nhistory_size = 5\nhistory_ttl = \"30s\"\n",
        )
        .unwrap();
        let s = Settings {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = Config::from_settings(s.with_file().unwrap()).unwrap();
        let p = &c.edge.policy;
        let ch = |n: &str| herald_core::ChannelName::new(n).unwrap();
        assert!(p.rule(&ch("public:x")).anonymous);
        assert!(!p.rule(&ch("chat:x")).anonymous);
        assert_eq!(p.rule(&ch("chat:x")).history_size, Some(5));
        assert_eq!(
            p.rule(&ch("chat:x")).history_ttl,
            Some(Duration::from_secs(30))
        );
        std::fs::write(&path, "[namespaces.chat]\nhistory_sise = 5\n").unwrap();
        let s = Settings {
            config: Some(path),
            ..Default::default()
        };
        let e = format!("{:#}", s.with_file().unwrap_err());
        assert!(e.contains("history_sise"), "{e}");
    }
}
