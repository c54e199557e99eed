//! Reading one page of a channel's history: the chain check shared by every way of reading,
//! and the batched read through a short-lived JetStream consumer.
//!
//! A page starts with direct gets (`direct_get_next_for_subject`, one round trip per message)
//! and, when it still has room after [`DIRECT_PREFIX`] messages, reads the rest through an
//! ephemeral pull consumer: one request brings up to the whole remaining page. Whatever way a
//! message arrives, it goes through [`Page::offer`], so every way builds the same page from the
//! same stored messages.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        consumer::{AckPolicy, DeliverPolicy, pull},
        stream,
    },
};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{ChannelName, Message};
use tracing::debug;

use crate::wire::{HDR_PREV, header_u64, to_message};

/// Messages read by direct get before a page switches to a consumer. Setting up a consumer
/// (create, then the first fetch round trip; its deletion is not waited for) costs about as much
/// as 5 direct gets, so a short tail is read faster one by one, and a long one pays at most
/// this many round trips on top of the batched read.
pub(crate) const DIRECT_PREFIX: usize = 8;
/// Messages per window of the delivery pace check (see [`WINDOW_BUDGET`]).
const WINDOW: u32 = 16;
/// How long a consumer may take to deliver [`WINDOW`] messages (a consumer delivers one every
/// few µs, a direct get takes about 100 µs on loopback). Two slow windows in a row (one is a
/// hiccup) give the consumer up: nats-server 2.9.10 to 2.9.14 recounts a channel-filtered
/// consumer's pending messages for every delivery when the consumer starts in the first half of
/// the last stored block holding the channel (the count comes back without its last sequence,
/// so it is never cached), a scan of the block up to the consumer's position: up to
/// milliseconds per message.
const WINDOW_BUDGET: Duration = Duration::from_micros(WINDOW as u64 * 50);
/// A channel holding at least 1 in this many of the stream's messages (where the page has read
/// so far) is read through an unfiltered consumer when the filtered one is too slow (see
/// [`Scope::Stream`]); a sparser one by direct get.
const DENSE: u64 = 8;
/// An unfiltered consumer gives up after delivering this many messages per message the page
/// still has room for (the channel turned out sparser than it looked).
const MAX_SCANNED_PER_MESSAGE: usize = 2 * DENSE as usize;

/// Most messages asked for in one pull request: far below the client's buffer of a
/// subscription (65,536 messages), which drops messages when full.
const MAX_FETCH: usize = 4096;

/// Counts of batched history reads since the broker started (see
/// [`crate::NatsBroker::history_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Consumers created for history reads.
    pub consumers: u64,
    /// Messages of the read channel those consumers delivered.
    pub consumer_messages: u64,
    /// Consumers given up because they delivered too slowly.
    pub slow: u64,
    /// Unfiltered consumers used in place of a slow filtered one.
    pub unfiltered: u64,
    /// Batched reads that could not go on (consumer refused, a timeout, an error, a channel
    /// too sparse for an unfiltered read) and were finished by direct get.
    pub fell_back: u64,
}

#[derive(Default)]
pub(crate) struct HistoryCounters {
    consumers: AtomicU64,
    consumer_messages: AtomicU64,
    slow: AtomicU64,
    unfiltered: AtomicU64,
    fell_back: AtomicU64,
}

impl HistoryCounters {
    pub(crate) fn snapshot(&self) -> HistoryStats {
        HistoryStats {
            consumers: self.consumers.load(Ordering::Relaxed),
            consumer_messages: self.consumer_messages.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
            unfiltered: self.unfiltered.load(Ordering::Relaxed),
            fell_back: self.fell_back.load(Ordering::Relaxed),
        }
    }

    fn count(&self, outcome: &Batched) {
        let counter = match outcome {
            Batched::Done => return,
            Batched::Slow => &self.slow,
            Batched::Failed => &self.fell_back,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a history read goes on after its first messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// Direct gets only (chosen only by the `testing` comparisons; production reads batch).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Direct,
    /// A consumer of this scope after [`DIRECT_PREFIX`] messages (then, if a filtered one is
    /// too slow and the channel dense, an unfiltered one; else direct gets).
    Batched(Scope),
}

/// How [`crate::NatsBroker::history_by`] reads a page (feature `testing`): to compare the ways
/// on the same data. [`herald_core::Broker::history`] reads [`HistoryWay::Batched`].
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryWay {
    /// One direct get per message: how every read went before the batched read.
    DirectGet,
    /// What [`herald_core::Broker::history`] does.
    Batched,
    /// Batched, but through the unfiltered consumer that stands in for a slow filtered one.
    Unfiltered,
}

#[cfg(feature = "testing")]
impl From<HistoryWay> for Way {
    fn from(way: HistoryWay) -> Self {
        match way {
            HistoryWay::DirectGet => Way::Direct,
            HistoryWay::Batched => Way::Batched(Scope::Channel),
            HistoryWay::Unfiltered => Way::Batched(Scope::Stream),
        }
    }
}

/// A page being built: takes stored messages in order while they form an unbroken chain.
pub(crate) struct Page<'a> {
    channel: &'a ChannelName,
    limit: usize,
    pub(crate) messages: Vec<Arc<Message>>,
    /// Sequence of the first message.
    first: u64,
    /// Sequence of the last message taken (kept, or skipped as not JSON).
    pub(crate) last: u64,
    /// Messages taken (kept or skipped).
    taken: u64,
    /// A hole was met: the page ends before it.
    ended: bool,
}

impl<'a> Page<'a> {
    /// An empty page whose first message will be the one at `first`.
    pub(crate) fn new(channel: &'a ChannelName, limit: usize, first: u64) -> Self {
        Self {
            channel,
            limit,
            messages: Vec::with_capacity(limit.min(1024)),
            first,
            last: first,
            taken: 0,
            ended: false,
        }
    }

    /// True while the page wants more messages.
    pub(crate) fn open(&self) -> bool {
        !self.ended && self.messages.len() < self.limit
    }

    /// Messages the page still has room for.
    fn room(&self) -> usize {
        if self.ended {
            0
        } else {
            self.limit - self.messages.len()
        }
    }

    /// Whether the channel held at least 1 in [`DENSE`] messages of the stream over the span
    /// read so far.
    pub(crate) fn dense(&self) -> bool {
        self.taken.saturating_mul(DENSE) > self.last - self.first
    }

    /// Offers the next stored message of the channel (in sequence order); returns whether the
    /// page wants more. The first message taken needs no link; every later one must name the
    /// one before it in `Herald-Prev`. A message that does not is preceded by a hole (a message
    /// evicted while the page was read): the page ends before it, so the caller resumes from
    /// [`Page::last`] and the next read reports the gap in its proper place. Payloads that are
    /// not JSON are skipped (logged) but still link the chain.
    pub(crate) fn offer(
        &mut self,
        seq: u64,
        headers: &HeaderMap,
        payload: Bytes,
        fallback_us: impl FnOnce() -> u64,
    ) -> bool {
        if !self.open() {
            return false;
        }
        if self.messages.is_empty() || header_u64(headers, HDR_PREV) == Some(self.last) {
            self.last = seq;
            self.taken += 1;
            if let Some(msg) = to_message(self.channel, seq, headers, payload, fallback_us) {
                self.messages.push(Arc::new(msg));
            }
        } else {
            self.ended = true;
        }
        self.open()
    }
}

/// Which messages a consumer delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Only the channel's (filtered on its subject): the normal way.
    Channel,
    /// Every message of the stream, the channel's picked out here: for a dense channel where
    /// the filtered consumer is slow (see [`WINDOW_BUDGET`]); an unfiltered consumer keeps
    /// its pending count cheaply.
    Stream,
}

/// How a batched read ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Batched {
    /// The page is complete: full, ended at a hole, or nothing more is stored.
    Done,
    /// The consumer delivered too slowly and was given up.
    Slow,
    /// The consumer could not be used (or was given up for another reason). Either way the
    /// caller goes on with direct gets after [`Page::last`]; what was delivered before is in
    /// the page.
    Failed,
}

/// The pace check of one fetch: windows of [`WINDOW`] messages, from the first message on.
#[derive(Default)]
struct Pace {
    window_start: Option<Instant>,
    in_window: u32,
    slow_windows: u32,
}

impl Pace {
    /// When the current window runs out of time; `None` before the first message.
    fn due(&self) -> Option<Instant> {
        self.window_start.map(|start| start + WINDOW_BUDGET)
    }

    /// A message arrived (before [`Pace::due`]).
    fn arrived(&mut self, now: Instant) {
        match self.window_start {
            None => self.window_start = Some(now),
            Some(_) => {
                self.in_window += 1;
                if self.in_window == WINDOW {
                    self.window_start = Some(now);
                    self.in_window = 0;
                    self.slow_windows = 0;
                }
            }
        }
    }

    /// The window ran out of time before it filled; returns whether to give up.
    fn overdue(&mut self, now: Instant) -> bool {
        self.window_start = Some(now);
        self.in_window = 0;
        self.slow_windows += 1;
        self.slow_windows >= 2
    }
}

/// Deletes the consumer when dropped (also when the read is cancelled), without making the read
/// wait for the answer; the consumer's inactivity threshold removes it should the delete fail.
struct ConsumerGuard {
    stream: stream::Stream,
    name: String,
    timeout: Duration,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let stream = self.stream.clone();
        let name = std::mem::take(&mut self.name);
        let timeout = self.timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, stream.delete_consumer(&name)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => debug!(%error, consumer = name, "history consumer not deleted"),
                Err(_) => debug!(consumer = name, "history consumer delete timed out"),
            }
        });
    }
}

/// Reads the rest of `page` (messages of `subject` after [`Page::last`]) through an ephemeral
/// pull consumer: created at the next sequence, without acks, in memory, fetched with `no_wait`
/// for at most what the page has room for and what the consumer counts as pending (at first:
/// up to the stream's end when it was created), deleted afterwards. Never fails: any trouble
/// (creation refused, timeouts, a status error, slow delivery) ends it early and the caller
/// goes on with direct gets, which report a real outage themselves.
pub(crate) async fn read_batched(
    stream: &stream::Stream,
    subject: &str,
    scope: Scope,
    request_timeout: Duration,
    counters: &HistoryCounters,
    page: &mut Page<'_>,
) -> Batched {
    if scope == Scope::Stream {
        counters.unfiltered.fetch_add(1, Ordering::Relaxed);
    }
    let before = page.messages.len();
    let outcome = consume(stream, subject, scope, request_timeout, counters, page).await;
    counters.count(&outcome);
    let delivered = page.messages.len().saturating_sub(before) as u64;
    counters
        .consumer_messages
        .fetch_add(delivered, Ordering::Relaxed);
    outcome
}

async fn consume(
    stream: &stream::Stream,
    subject: &str,
    scope: Scope,
    request_timeout: Duration,
    counters: &HistoryCounters,
    page: &mut Page<'_>,
) -> Batched {
    let config = pull::Config {
        description: Some("herald history read".into()),
        filter_subject: match scope {
            Scope::Channel => subject.to_owned(),
            Scope::Stream => String::new(),
        },
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: page.last + 1,
        },
        ack_policy: AckPolicy::None,
        memory_storage: true,
        num_replicas: 1,
        // Only a consumer whose delete was lost lives this long.
        inactive_threshold: request_timeout
            .saturating_mul(2)
            .max(Duration::from_secs(1)),
        ..Default::default()
    };
    // Created in a task that hands over the consumer with its guard: a read cancelled while
    // the creation is under way (the request sent, the answer not yet in) drops the task's
    // result when it arrives, and with it the consumer.
    let create = {
        let stream = stream.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(request_timeout, stream.create_consumer(config)).await {
                Ok(Ok(consumer)) => {
                    let guard = ConsumerGuard {
                        name: consumer.cached_info().name.clone(),
                        stream,
                        timeout: request_timeout,
                    };
                    Ok((consumer, guard))
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        })
    };
    let (consumer, _guard) = match create.await {
        Ok(Ok(created)) => created,
        Ok(Err(error)) => {
            debug!(%error, subject, "history consumer not created; reading by direct get");
            return Batched::Failed;
        }
        Err(error) => {
            debug!(%error, subject, "history consumer creation failed; reading by direct get");
            return Batched::Failed;
        }
    };
    counters.consumers.fetch_add(1, Ordering::Relaxed);
    let info = consumer.cached_info();
    // Nothing pending when the consumer was created: the page is complete (a message stored
    // since then comes with the next read).
    let mut pending = usize::try_from(info.num_pending).unwrap_or(usize::MAX);
    let mut scan_left = match scope {
        Scope::Channel => usize::MAX,
        Scope::Stream => page.room().saturating_mul(MAX_SCANNED_PER_MESSAGE),
    };
    let started = Instant::now();
    let mut delivered = 0usize;
    while pending > 0 && page.open() {
        if scan_left == 0 {
            debug!(
                subject,
                "history channel sparser than it looked; reading by direct get"
            );
            return Batched::Failed;
        }
        let want = match scope {
            Scope::Channel => page.room(),
            // Other channels' messages come in between: ask for more than the page has room for.
            Scope::Stream => page.room().saturating_mul(DENSE as usize),
        };
        let want = want.min(pending).min(scan_left).min(MAX_FETCH);
        let mut batch = match tokio::time::timeout(
            request_timeout,
            consumer.fetch().max_messages(want).messages(),
        )
        .await
        {
            Ok(Ok(batch)) => batch,
            Ok(Err(error)) => {
                debug!(%error, subject, "history fetch refused; reading by direct get");
                return Batched::Failed;
            }
            Err(_) => {
                debug!(subject, "history fetch timed out; reading by direct get");
                return Batched::Failed;
            }
        };
        let mut pace = Pace::default();
        let mut last_heard = Instant::now();
        let mut got = 0usize;
        loop {
            let silence = last_heard + request_timeout;
            let deadline = pace.due().map_or(silence, |due| due.min(silence));
            let message = match tokio::time::timeout_at(deadline.into(), batch.next()).await {
                Ok(Some(Ok(message))) => message,
                // The request is served: `want` delivered, or nothing more (`no_wait`).
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    debug!(%error, subject, "history fetch failed; reading by direct get");
                    return Batched::Failed;
                }
                Err(_) if Instant::now() >= silence => {
                    debug!(subject, "history fetch timed out; reading by direct get");
                    return Batched::Failed;
                }
                Err(_) => {
                    if pace.overdue(Instant::now()) {
                        debug!(
                            subject,
                            ?scope,
                            delivered,
                            elapsed = ?started.elapsed(),
                            "history consumer too slow; giving it up"
                        );
                        return Batched::Slow;
                    }
                    continue;
                }
            };
            last_heard = Instant::now();
            pace.arrived(last_heard);
            let Ok(meta) = message.info() else {
                return Batched::Failed;
            };
            let (seq, left, published) = (meta.stream_sequence, meta.pending, meta.published);
            if seq <= page.last {
                return Batched::Failed;
            }
            got += 1;
            delivered += 1;
            scan_left = scan_left.saturating_sub(1);
            pending = usize::try_from(left).unwrap_or(usize::MAX);
            if message.subject.as_str() != subject {
                if scope == Scope::Channel {
                    return Batched::Failed;
                }
                continue;
            }
            let async_nats::Message {
                headers, payload, ..
            } = message.message;
            let headers = headers.unwrap_or_default();
            if !page.offer(seq, &headers, payload, || {
                (published.unix_timestamp_nanos() / 1000) as u64
            }) {
                return Batched::Done;
            }
        }
        if got == 0 {
            // Counted as pending, gone by now (evicted): nothing more to read.
            break;
        }
    }
    Batched::Done
}
