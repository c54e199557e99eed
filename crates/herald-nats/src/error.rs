//! Errors of setting up the JetStream broker (calls on a running broker report
//! [`herald_core::BrokerError`] instead).

/// Why [`crate::NatsBroker::connect`] failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NatsError {
    /// A setting is unusable; `key` names it and `why` says how to fix it.
    #[error("invalid NATS setting `{key}`: {why}")]
    Config {
        /// The offending setting.
        key: &'static str,
        /// What is wrong and what to use instead.
        why: String,
    },
    /// No server could be reached or the handshake (TLS, auth) failed.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// The server refused to create or update the stream (JetStream off, conflicting
    /// settings, replicas above the cluster size, permissions).
    #[error("cannot set up JetStream stream: {0}")]
    Stream(String),
}
