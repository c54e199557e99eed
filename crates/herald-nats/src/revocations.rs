//! Revocations kept cluster-wide for [`crate::NatsCluster`]: a JetStream stream beside the
//! message stream, read by every node at start (and after every reconnect) and followed live.
//!
//! - Stream `<stream>_REVOCATIONS` captures `<prefix>.revoked.>`, one message per subject
//!   (`max_msgs_per_subject = 1`), `max_age` = [`crate::NatsClusterConfig::revocation_max_age`],
//!   the broker's replicas and storage. Every (re)connect of every node creates or updates it
//!   with that node's settings, like the broker's streams.
//! - A revocation of token `jti` is stored on `<prefix>.revoked.token.<k>`, of user `u` on
//!   `<prefix>.revoked.user.<k>`, `k` being the key as one subject token
//!   ([`crate::node_token`]'s escaping). The payload is the [`Revocation`] as JSON.
//! - Storing reads the subject's current revocation and stores the merge (the later `until`,
//!   for a user the later `issued_before`: what a node keeps when it learns both), guarded by
//!   `Nats-Expected-Last-Subject-Sequence` so two nodes storing the same key at once cannot
//!   lose one another's.
//! - Each node follows the stream with an ordered consumer from its first message: stored
//!   revocations first, then new ones as they are stored. A node that was down or cut off
//!   during a revoke learns it when it (re)connects. Lapsed ones are skipped.
//!
//! A revocation reaches a node twice: through this stream and through the `act` broadcast that
//! counts the connections it ended. Both paths go through [`RevocationLog::apply`], which
//! applies each stored message (sequence and content) once per node and hands the second path
//! the first one's count, so the count is right whichever path came first.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull},
        context::PublishErrorKind,
        stream::{self, LastRawMessageErrorKind},
    },
};
use futures_util::StreamExt;
use herald_core::{Broker, BrokerState, ClusterError, LocalNode, Revocation, Revoked, UserAction};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{NatsBroker, StorageKind, node_token, wire::HDR_EXPECTED_LAST_SUBJECT_SEQ};

/// How many applied revocations a node remembers, to apply each once although it arrives
/// twice (a forgotten one is applied again: harmless, the node keeps the later bounds).
const REMEMBERED: usize = 4096;
/// Largest stored revocation accepted by the stream (a key is at most 256 bytes).
const MAX_RECORD_BYTES: i32 = 4096;
/// Pause before following the stream again after a failure while connected.
const RETRY: Duration = Duration::from_secs(1);

/// A revocation as stored: its stream sequence and the (merged) revocation.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) revocation: Revocation,
}

/// Revocations already applied on this node, by stream sequence.
#[derive(Default)]
struct Applied {
    counts: HashMap<u64, (Revocation, u64)>,
    order: VecDeque<u64>,
}

/// The revocation stream of one deployment, and what this node applied from it.
pub(crate) struct RevocationLog {
    stream: String,
    prefix: String,
    replicas: usize,
    storage: stream::StorageType,
    max_age: Duration,
    request_timeout: Duration,
    publish_timeout: Duration,
    applied: Mutex<Applied>,
    /// False until the stored revocations were read once (on the first connection).
    loaded: watch::Sender<bool>,
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    herald_core::unix_micros() / 1_000_000
}

/// The later bounds of two revocations of the same key (what a node keeps of both).
fn merge(old: &Revocation, new: &Revocation) -> Revocation {
    let what = match (&old.what, &new.what) {
        (
            Revoked::User {
                issued_before: a, ..
            },
            Revoked::User {
                user,
                issued_before: b,
            },
        ) => Revoked::User {
            user: user.clone(),
            issued_before: (*a).max(*b),
        },
        _ => new.what.clone(),
    };
    Revocation {
        what,
        until: old.until.max(new.until),
    }
}

impl RevocationLog {
    pub(crate) fn new(broker: &NatsBroker, max_age: Duration) -> Self {
        let config = broker.config();
        Self {
            stream: format!("{}_REVOCATIONS", config.stream),
            prefix: config.subject_prefix.clone(),
            replicas: config.replicas,
            storage: match config.storage {
                StorageKind::File => stream::StorageType::File,
                StorageKind::Memory => stream::StorageType::Memory,
            },
            max_age,
            request_timeout: config.request_timeout,
            publish_timeout: config.publish_timeout,
            applied: Mutex::new(Applied::default()),
            loaded: watch::Sender::new(false),
        }
    }

    /// The stream's name.
    pub(crate) fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The subject a revocation is stored on.
    pub(crate) fn subject(&self, what: &Revoked) -> String {
        match what {
            Revoked::Token { jti } => format!("{}.revoked.token.{}", self.prefix, node_token(jti)),
            Revoked::User { user, .. } => {
                format!("{}.revoked.user.{}", self.prefix, node_token(user))
            }
        }
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.revoked.>", self.prefix)],
            max_messages_per_subject: 1,
            max_age: self.max_age,
            max_message_size: MAX_RECORD_BYTES,
            allow_direct: true,
            num_replicas: self.replicas,
            storage: self.storage,
            ..Default::default()
        }
    }

    /// Becomes true once the revocations stored when this node first connected are applied.
    pub(crate) fn loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    fn context(&self, client: &async_nats::Client) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(self.request_timeout)
            .build(client.clone())
    }

    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<stream::Stream<()>, String> {
        let config = self.stream_config();
        tokio::time::timeout(self.request_timeout, js.create_or_update_stream(config))
            .await
            .map_err(|_| format!("stream {}: timed out", self.stream))?
            .map_err(|e| format!("stream {}: {e}", self.stream))?;
        js.get_stream_no_info(&self.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", self.stream))
    }

    /// Stores `r` (merged with what its key already holds) and returns what was stored.
    /// `Unavailable` when JetStream does not take it within the publish timeout.
    pub(crate) async fn store(
        &self,
        client: &async_nats::Client,
        r: &Revocation,
    ) -> Result<Stored, ClusterError> {
        let unavailable =
            |e: String| ClusterError::Unavailable(format!("revocation not stored: {e}"));
        let js = self.context(client);
        let stream = self.ensure_stream(&js).await.map_err(unavailable)?;
        let subject = self.subject(&r.what);
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        loop {
            // Read from the stream leader (a direct get may be served by a follower behind it).
            let last = tokio::time::timeout(
                self.request_timeout,
                stream.get_last_raw_message_by_subject(&subject),
            )
            .await
            .map_err(|_| unavailable("reading the stored one timed out".into()))?;
            let (expected, merged) = match last {
                Ok(m) => match serde_json::from_slice::<Revocation>(&m.payload) {
                    Ok(old) if old.what_key() == r.what_key() => (m.sequence, merge(&old, r)),
                    _ => (m.sequence, r.clone()),
                },
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => (0, r.clone()),
                Err(e) => return Err(unavailable(e.to_string())),
            };
            let body = serde_json::to_vec(&merged).map_err(|e| unavailable(e.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert(HDR_EXPECTED_LAST_SUBJECT_SEQ, expected.to_string());
            let sent = tokio::time::timeout(self.publish_timeout, async {
                js.publish_with_headers(subject.clone(), headers, body.into())
                    .await?
                    .await
            })
            .await
            .map_err(|_| unavailable("not acknowledged in time".into()))?;
            match sent {
                Ok(ack) => {
                    info!(seq = ack.sequence, subject, "revocation stored");
                    return Ok(Stored {
                        seq: ack.sequence,
                        revocation: merged,
                    });
                }
                // Another node stored the same key meanwhile: merge with theirs.
                Err(e)
                    if e.kind() == PublishErrorKind::WrongLastSequence
                        && tokio::time::Instant::now() < deadline =>
                {
                    debug!(subject, "revocation stored concurrently; merging again");
                }
                Err(e) => return Err(unavailable(e.to_string())),
            }
        }
    }

    /// Applies stored revocation `seq` on `node` once: a repeat (the same sequence and
    /// revocation, from the broadcast or the stream, whichever comes second) answers the first
    /// application's count without asking the node again. Failures are not remembered.
    pub(crate) fn apply(
        &self,
        node: &dyn LocalNode,
        seq: u64,
        r: &Revocation,
    ) -> Result<u64, ClusterError> {
        let mut applied = self.applied.lock();
        if let Some((known, count)) = applied.counts.get(&seq)
            && known == r
        {
            return Ok(*count);
        }
        // Held while the node applies it, so the other path waits and sees the count.
        let count = node.act(&UserAction::Revoke(r.clone()))?;
        if applied.counts.insert(seq, (r.clone(), count)).is_none() {
            applied.order.push_back(seq);
        }
        while applied.order.len() > REMEMBERED {
            if let Some(old) = applied.order.pop_front() {
                applied.counts.remove(&old);
            }
        }
        Ok(count)
    }

    /// Follows the stream while the broker lives: on every connection, reads every stored
    /// revocation from the first and then the new ones, applying each that has not lapsed.
    pub(crate) async fn follow(self: Arc<Self>, broker: NatsBroker, node: Arc<dyn LocalNode>) {
        let mut state = broker.state();
        loop {
            let client = loop {
                if *state.borrow_and_update() == BrokerState::Connected
                    && let Some(c) = broker.client()
                {
                    break c;
                }
                if state.changed().await.is_err() {
                    return;
                }
            };
            let disconnected = async {
                loop {
                    if state.changed().await.is_err() {
                        return true;
                    }
                    if *state.borrow_and_update() != BrokerState::Connected {
                        return false;
                    }
                }
            };
            tokio::select! {
                error = self.read(&client, &*node) => {
                    warn!(stream = %self.stream, %error, "following revocations failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                ended = disconnected => if ended { return },
            }
        }
    }

    /// Reads the stream from its first message and follows it; returns only on an error.
    async fn read(&self, client: &async_nats::Client, node: &dyn LocalNode) -> String {
        let js = self.context(client);
        let stream = match self.ensure_stream(&js).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let config = pull::OrderedConfig {
            filter_subject: format!("{}.revoked.>", self.prefix),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let consumer = match tokio::time::timeout(
            self.request_timeout,
            stream.create_consumer(config),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return format!("consumer: {e}"),
            Err(_) => return "consumer: timed out".into(),
        };
        let mut pending = consumer.cached_info().num_pending;
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => return format!("consumer messages: {e}"),
        };
        let (mut read, mut applied) = (0u64, 0u64);
        loop {
            if pending == 0 && !*self.loaded.borrow() {
                info!(stream = %self.stream, read, applied, "stored revocations loaded");
                self.loaded.send_replace(true);
            }
            let m = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return format!("consumer: {e}"),
                None => return "consumer ended".into(),
            };
            let Ok(meta) = m.info() else { continue };
            let seq = meta.stream_sequence;
            pending = meta.pending;
            read += 1;
            let r = match serde_json::from_slice::<Revocation>(&m.payload) {
                Ok(r) => r,
                Err(e) => {
                    warn!(seq, subject = %m.subject, error = %e, "ignoring a malformed stored revocation");
                    continue;
                }
            };
            if r.until <= now_secs() {
                debug!(seq, "stored revocation lapsed; skipped");
                continue;
            }
            match self.apply(node, seq, &r) {
                Ok(_) => applied += 1,
                Err(e) => warn!(seq, error = %e, "stored revocation not applied"),
            }
        }
    }
}

/// The key a revocation is stored under (a user's cut-off is not part of it).
trait WhatKey {
    fn what_key(&self) -> (&'static str, &str);
}

impl WhatKey for Revocation {
    fn what_key(&self) -> (&'static str, &str) {
        match &self.what {
            Revoked::Token { jti } => ("token", jti),
            Revoked::User { user, .. } => ("user", user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_later_bounds() {
        let user = |before, until| Revocation {
            what: Revoked::User {
                user: "bob".into(),
                issued_before: before,
            },
            until,
        };
        assert_eq!(merge(&user(10, 500), &user(20, 300)), user(20, 500));
        assert_eq!(merge(&user(30, 100), &user(20, 300)), user(30, 300));
        let tok = |until| Revocation {
            what: Revoked::Token { jti: "t".into() },
            until,
        };
        assert_eq!(merge(&tok(500), &tok(300)), tok(500));
    }
}
