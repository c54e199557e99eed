//! Herald's JetStream broker: [`NatsBroker`] implements [`herald_core::Broker`] on NATS
//! JetStream (async-nats), so any number of edge nodes share one history and one global order.
//!
//! # Layout on NATS
//!
//! - Stream `<stream>` (default `HERALD`) captures `<prefix>.ch.>`; channel `c` is stored on
//!   `<prefix>.ch.<token(c)>`, where the token is the name with `.` replaced by `~` (a character
//!   outside the channel alphabet): one token, never a wildcard, injective. The stream keeps
//!   `max_msgs_per_subject` / `max_age` from [`herald_core::HistoryLimits`], has `allow_direct`,
//!   and republishes every stored message to `<prefix>.live.<token>` (core NATS), which is what
//!   live subscriptions listen to. The cursor is the stream sequence.
//! - Stream `<stream>_TIPS` captures `<prefix>.tip.>` with one message per subject: the newest
//!   sequence a channel ever had, so a channel whose history fully expired still knows it. Each
//!   node writes the newest sequence of each channel it published to once per 100 ms flush (not
//!   once per publish: the tip only matters minutes later, once the channel fully expired).
//! - Stream `<stream>_REVOCATIONS` captures `<prefix>.revoked.>` with one message per revoked
//!   token or user (see [`NatsCluster`]): what every node reads at start and follows, so a
//!   revocation reaches nodes that were away when it was made.
//!
//! # Exact gap detection
//!
//! JetStream does not store the per-subject predecessor (only republished copies carry
//! `Nats-Last-Sequence`), so every publish carries it itself: header `Herald-Prev: P`, the
//! channel's previous sequence. Its correctness is enforced by the server: the same publish
//! carries `Nats-Expected-Last-Subject-Sequence: E` (what the subject's last retained sequence
//! must be), so a stale belief is refused rather than stored. Publishes are serialized per channel
//! on each node (an async mutex), so only publishes from different nodes race; the refusal names
//! the winner's sequence ("wrong last sequence: N"), which is the next attempt's `E` and `P`
//! without a read, so each round of a race has one winner and the losers retry at once (no pause:
//! the winner's next publish leaves at once too, and a loser that waited would keep losing). A
//! race is retried until the publish timeout, never refused after a fixed number of attempts: 8 publishers through 3 nodes into one
//! channel all succeed (`tests/contention.rs`); lost races are counted
//! (`herald_publish_conflicts_total`). `E` and `P` differ only when the channel has nothing
//! retained (everything expired): then `E = 0` and `P` comes from the tip stream.
//!
//! `history(c, after C)` then decides exactly:
//! - the first retained message `F` after `C` has `Herald-Prev = P`: a gap iff `P > C` (`P` was on
//!   this channel, after `C`, and is gone);
//! - nothing retained after `C`: a gap iff `C` is beyond the stream's last sequence (never
//!   issued), or the channel has nothing retained at all and its tip is after `C`; a channel
//!   whose newest retained message is at or before `C` lost nothing (eviction takes the oldest
//!   first), and a channel without a tip was never published.
//! - a hole met while walking (a message evicted mid-read) ends the page before it, so the next
//!   read from the page's last cursor reports it in its place.
//!
//! Limits, all conservative (a false gap, never a silent one) except the last: with
//! [`NatsBrokerConfig::tip_max_age`] set, a channel silent for longer than it falls back to
//! "gap iff `C` is older than the oldest message of the whole stream"; the tip is written
//! fire-and-forget at the next flush after the stored message (at most 100 ms later), so a node
//! dying between the two (or two nodes racing the tip writes) can leave a stale tip, which matters only if the channel then fully
//! expires and a client resumes from a cursor between the stale and the true tip. Age eviction
//! is assumed to follow sequence order (JetStream stamps messages on the stream leader).
//!
//! # Reading a page fast
//!
//! A direct get is one round trip per message (about 10,000 messages/s on loopback). So a page
//! reads its first message and up to 7 more by direct get (the first one drives the gap
//! decision above; a short tail is cheapest this way), and the rest through an ephemeral pull
//! consumer on the stream: filtered on the channel's subject, starting at the next sequence,
//! no acks, in memory, one replica, fetched with `no_wait` for at most what the page still has
//! room for and what the consumer counts as pending (at first: the channel's messages up to the
//! stream's end when it was created). Every message, however it was read, passes the same
//! check: it must name the message before it in `Herald-Prev`, or the page ends before it (a
//! hole), exactly as above; payloads that are not JSON are skipped as before. The consumer is
//! deleted when the read ends or is cancelled, without waiting for the answer, and expires on
//! its own after twice `request_timeout` of inactivity should the delete be lost. Every wait is
//! bounded by `request_timeout`. On a busy 2-core test machine (nats-server 2.9.10, file storage),
//! reading 20,000 messages of a channel in pages of 1000 ran at 95,000-170,000 messages/s
//! (direct gets: 5,000-8,000) and a first page of 500 took 4-12 ms (direct gets: 60-100 ms);
//! `examples/history_read.rs` measures it.
//!
//! Nothing makes a read fail that direct gets would have answered: if the consumer cannot be
//! created, a fetch fails or times out, the page goes on by direct get from its last message
//! (logged at debug). nats-server 2.9.10 to 2.9.14 has a slow case: a filtered consumer starting
//! in the first half of the last stored block that holds the channel recounts its pending
//! messages for every delivery (a scan of the block up to its position, up to milliseconds per
//! message). A consumer that delivers two windows of 16 messages in a row at more than 50 µs a
//! message is therefore given up: a channel that makes up at least 1 in 8 of the stream's
//! messages so far is read on through an unfiltered consumer (other channels' messages are
//! skipped here, at most 16 per message wanted), a sparser one by direct get.
//! [`NatsBroker::history_stats`] counts consumers, the messages they delivered and the
//! fallbacks.
//!
//! # Live path
//!
//! A subscription is a core NATS subscription on the republish subject, returned only after a
//! flush (the server has registered it). Each message is checked against the chain
//! (`Herald-Prev`, falling back to `Nats-Last-Sequence`): a message whose predecessor is not the
//! one last yielded means a republish was lost, and the subscription yields
//! [`herald_core::LiveEvent::Lagged`] before it; the reader repairs from history. It does not
//! fill holes itself: the reader's repair already handles gaps and ordering in one place. After
//! a reconnect (and after async-nats reports a slow consumer) the subscription re-subscribes on
//! the new connection and yields `Lagged`.
//!
//! With [`LiveInterest::Wildcard`] a node instead subscribes once to `<prefix>.live.>` and
//! demultiplexes locally (module `demux`): the same chain check per subscription, no
//! per-channel state on the servers or round trip per channel, but every message of the stream
//! reaches every node. docs/scaling.md has the measured costs of both.
//!
//! # Failing fast, and no ghost publishes
//!
//! A publish that was answered with an error must never be delivered later. async-nats keeps
//! commands queued while it reconnects and sends them on the new connection, which would turn a
//! timed-out publish into a late delivery. So a client here never reconnects by itself (its
//! reconnect attempt is made to wait forever): on any break the supervisor marks the broker
//! disconnected, abandons that client with whatever it still had queued, and opens a fresh one
//! (re-checking both streams). Publishes check the connection first and wait at most
//! [`NatsBrokerConfig::publish_timeout`]. What remains is the ambiguity every network has: a
//! publish that reached the server whose acknowledgement was lost is stored although the caller
//! saw `Unavailable`; normally at once, but a server that stalls (a frozen process, a partition
//! that heals) with the publish already in its socket buffer may store it when it resumes.
//! Idempotency keys make the caller's retry safe in both cases. (The expected-sequence header
//! also refuses such a late message if anything else was stored on its channel meanwhile.) A half-open connection is noticed after about two
//! [`NatsBrokerConfig::ping_interval`]s. Each abandoned client leaves one idle task and its
//! socket behind (a few KiB and one file descriptor) per outage, for the life of the process.
//!
//! Every (re)connect creates or updates both streams with this node's settings, so nodes of
//! one deployment must agree on them (the last to connect wins).
//!
//! With replicas 3, direct gets may be served by a follower that is slightly behind: a read
//! right after a publish can miss the newest message (never reported as a gap), and the tip
//! read before a publish can be stale, which the expected-sequence check turns into a retry.
//! The consumer of a batched read lives on the stream leader; creating one there goes through
//! the cluster's meta leader, which makes it slower than on a single server.

mod broker;
mod chain;
mod cluster;
mod config;
mod demux;
mod error;
mod history;
mod live;
mod revocations;
mod shared;
pub mod subject;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

pub use broker::NatsBroker;
pub use cluster::{NatsCluster, NatsClusterConfig, node_token};
pub use config::{LiveInterest, NatsAuth, NatsBrokerConfig, StorageKind};
pub use error::NatsError;
pub use history::HistoryStats;
#[cfg(feature = "testing")]
pub use history::HistoryWay;
