//! Settings of the JetStream broker: where NATS is, how the stream is shaped, how long calls
//! may take, and how to authenticate.

use std::{path::PathBuf, time::Duration};

use herald_core::HistoryLimits;

/// Where JetStream keeps the stream's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageKind {
    /// On disk: survives a server restart (the default, and what production wants).
    #[default]
    File,
    /// In memory: faster, but a restarted server forgets history and restarts sequences.
    Memory,
}

/// How to authenticate to NATS. At most one method is used; `Creds` wins over the others.
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    /// User name for user/password authentication (with `password`).
    pub user: Option<String>,
    /// Password for user/password authentication (with `user`).
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// A `.creds` file (JWT + NKey seed), as issued by `nsc`.
    pub creds_file: Option<PathBuf>,
    /// A PEM file of root certificates to trust (a private CA); implies TLS.
    pub ca_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    pub require_tls: bool,
}

/// How a node receives the live copies of stored messages (`<prefix>.live.<token>`).
///
/// Both keep exact gap detection (each channel's chain is checked per subscription). Measured
/// costs and when to pick which: docs/scaling.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveInterest {
    /// One core NATS subscription per channel with local subscribers: the node receives only
    /// what it delivers, but every such channel costs a subscription on every NATS server
    /// (interest is propagated over routes), a round trip to set up, and about 6-8 KiB in the
    /// node (async-nats' per-subscription queue); a reconnect re-subscribes each one.
    #[default]
    PerChannel,
    /// One wildcard subscription per node, demultiplexed locally: subscribing a channel is a
    /// table insert and costs nothing on the servers, but the node receives every message of the
    /// stream, with or without local interest. Pays when a node has subscribers on a large share
    /// of the channels that are published to, or on very many channels.
    Wildcard,
}

/// Settings of [`crate::NatsBroker`].
#[derive(Debug, Clone)]
pub struct NatsBrokerConfig {
    /// Server URLs to try (`nats://host:4222`); several give failover within a cluster.
    pub urls: Vec<String>,
    /// JetStream stream holding every channel's history. Distinct Herald deployments sharing
    /// a NATS account need distinct names (and prefixes).
    pub stream: String,
    /// Subject prefix: channels live under `<prefix>.ch.*`, the live feed under
    /// `<prefix>.live.*`, chain tips under `<prefix>.tip.*`.
    pub subject_prefix: String,
    /// What each channel retains (stream `max_msgs_per_subject` and `max_age`).
    pub history: HistoryLimits,
    /// Stream replicas: 1, or 3 on a JetStream cluster so history survives a node loss.
    pub replicas: usize,
    /// File or memory storage for the stream.
    pub storage: StorageKind,
    /// How long an idempotency key (`Nats-Msg-Id`) is remembered by the stream (at most
    /// `history.max_age`: JetStream refuses a longer window, so it is capped).
    pub duplicate_window: Duration,
    /// How long a publish may wait for its acknowledgement before failing with
    /// `Unavailable`; short, so callers fail fast while NATS is away.
    pub publish_timeout: Duration,
    /// How long a JetStream API request (history reads, stream info) may take.
    pub request_timeout: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Client PING period; a connection that misses two PONGs is declared dead, so this bounds
    /// how long a silently broken (half-open) connection goes unnoticed.
    pub ping_interval: Duration,
    /// How long the tip of a channel (its newest sequence, kept in a side stream so a fully
    /// expired channel still knows what it had) is remembered. `Duration::ZERO` (the default)
    /// keeps tips forever: one tiny message per channel ever used, and exact gap reports. With a
    /// limit, a channel silent for longer falls back to a conservative rule (see crate docs).
    pub tip_max_age: Duration,
    /// Per-subscription buffer of live events, in messages. A reader that falls this far
    /// behind gets [`herald_core::LiveEvent::Lagged`] and repairs from history.
    pub live_buffer: usize,
    /// How a node tells NATS which channels it wants live: one subscription per channel
    /// (the default), or one wildcard subscription for everything (see [`LiveInterest`]).
    pub live_interest: LiveInterest,
    /// Credentials and TLS.
    pub auth: NatsAuth,
}

impl NatsBrokerConfig {
    /// Default server URL.
    pub const DEFAULT_URL: &'static str = "nats://127.0.0.1:4222";
    /// Default stream name.
    pub const DEFAULT_STREAM: &'static str = "HERALD";
    /// Default subject prefix.
    pub const DEFAULT_SUBJECT_PREFIX: &'static str = "herald";
    /// Default replicas (single server).
    pub const DEFAULT_REPLICAS: usize = 1;
    /// Default duplicate window (JetStream's own default).
    pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
    /// Default publish acknowledgement timeout.
    pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default JetStream API request timeout.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default connection attempt timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default client PING period.
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
    /// Default tip retention: forever.
    pub const DEFAULT_TIP_MAX_AGE: Duration = Duration::ZERO;
    /// Default per-subscription live buffer.
    pub const DEFAULT_LIVE_BUFFER: usize = 1024;
}

impl Default for NatsBrokerConfig {
    fn default() -> Self {
        Self {
            urls: vec![Self::DEFAULT_URL.to_owned()],
            stream: Self::DEFAULT_STREAM.to_owned(),
            subject_prefix: Self::DEFAULT_SUBJECT_PREFIX.to_owned(),
            history: HistoryLimits::default(),
            replicas: Self::DEFAULT_REPLICAS,
            storage: StorageKind::File,
            duplicate_window: Self::DEFAULT_DUPLICATE_WINDOW,
            publish_timeout: Self::DEFAULT_PUBLISH_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            ping_interval: Self::DEFAULT_PING_INTERVAL,
            tip_max_age: Self::DEFAULT_TIP_MAX_AGE,
            live_buffer: Self::DEFAULT_LIVE_BUFFER,
            live_interest: LiveInterest::PerChannel,
            auth: NatsAuth::default(),
        }
    }
}

impl NatsBrokerConfig {
    /// Checks the settings that NATS would otherwise refuse obscurely.
    pub(crate) fn validate(&self) -> Result<(), crate::NatsError> {
        let bad = |key: &'static str, why: String| Err(crate::NatsError::Config { key, why });
        if self.urls.is_empty() {
            return bad("urls", "give at least one nats:// URL".into());
        }
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !token_ok(&self.stream) {
            return bad(
                "stream",
                format!("{:?}: use letters, digits, _ and -", self.stream),
            );
        }
        if self.subject_prefix.is_empty() || !self.subject_prefix.split('.').all(token_ok) {
            return bad(
                "subject_prefix",
                format!(
                    "{:?}: use dot-separated tokens of letters, digits, _ and -",
                    self.subject_prefix
                ),
            );
        }
        if !matches!(self.replicas, 1 | 3) {
            return bad(
                "replicas",
                format!("{}: use 1, or 3 on a cluster", self.replicas),
            );
        }
        if self.history.max_messages == 0 || self.history.max_messages > i64::MAX as usize {
            return bad("history.max_messages", "must be at least 1".into());
        }
        if self.history.max_age.is_zero() {
            return bad("history.max_age", "must be more than zero".into());
        }
        for (key, d) in [
            ("publish_timeout", self.publish_timeout),
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("ping_interval", self.ping_interval),
            ("duplicate_window", self.duplicate_window),
        ] {
            if d.is_zero() {
                return bad(key, "must be more than zero".into());
            }
        }
        if self.auth.user.is_some() != self.auth.password.is_some() {
            return bad("auth.user", "user and password go together".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_name_their_key() {
        assert!(NatsBrokerConfig::default().validate().is_ok());
        let cases: Vec<(&str, NatsBrokerConfig)> = vec![
            (
                "urls",
                NatsBrokerConfig {
                    urls: vec![],
                    ..Default::default()
                },
            ),
            (
                "stream",
                NatsBrokerConfig {
                    stream: "A.B".into(),
                    ..Default::default()
                },
            ),
            (
                "subject_prefix",
                NatsBrokerConfig {
                    subject_prefix: "a.*".into(),
                    ..Default::default()
                },
            ),
            (
                "subject_prefix",
                NatsBrokerConfig {
                    subject_prefix: "a..b".into(),
                    ..Default::default()
                },
            ),
            (
                "replicas",
                NatsBrokerConfig {
                    replicas: 2,
                    ..Default::default()
                },
            ),
            (
                "publish_timeout",
                NatsBrokerConfig {
                    publish_timeout: Duration::ZERO,
                    ..Default::default()
                },
            ),
        ];
        for (key, c) in cases {
            match c.validate() {
                Err(crate::NatsError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
