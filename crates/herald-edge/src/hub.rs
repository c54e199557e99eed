//! Local interest: one broker subscription per channel that has subscribers on this node,
//! fanned out to each subscriber's [`Outbox`].
//!
//! A channel's subscription starts with its first local subscriber and is dropped a short
//! linger after its last one leaves, so polling clients (which come and go per request) do
//! not make the node subscribe and unsubscribe at every poll. Fan-out never waits: a full
//! outbox closes itself (slow consumer). When the broker says it may have dropped messages
//! (`Lagged`, a reconnect), the hub repairs from history once for all local subscribers.
//!
//! Each channel also keeps its most recent messages ([`Recent`]), appended under the same lock
//! as the fan-out, with the cursor from which it is known to be complete. A resume or poll
//! whose position lies inside that window is answered from memory: thousands of clients
//! resuming one channel after a deploy cost one broker read (the fill), not one each.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_core::{
    Broker, BrokerError, ChannelName, Cursor, HistoryQuery, LiveEvent, Message, PresenceEntry,
    PresenceEvent, Protocol, Subscription, unix_micros,
};
use herald_telemetry::Metrics;
use parking_lot::Mutex;
use tokio::{sync::Notify, sync::watch, time::Instant};

use crate::outbox::{Item, Outbox};

/// First wait before re-subscribing a channel whose broker feed ended; doubles up to
/// [`RESUBSCRIBE_MAX_BACKOFF`].
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between re-subscribe attempts.
const RESUBSCRIBE_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Bounds of the per-channel recent-message caches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecentLimits {
    /// Most messages kept per channel (no more than the broker retains per channel).
    pub(crate) messages: usize,
    /// Most bytes kept per channel.
    pub(crate) channel_bytes: usize,
    /// Most bytes kept by all channels of the node together; past it, each channel trims its
    /// own oldest messages as it appends.
    pub(crate) node_bytes: usize,
    /// The broker's history age limit: cached messages close to it are not served (the broker
    /// decides, and reports a gap if it evicted them).
    pub(crate) max_age: Duration,
}

/// Most messages one fill reads (one broker call).
const FILL_PAGE: usize = 500;

/// Cached messages this close to the age limit are left to the broker: clocks of the node
/// that stamped a message and of the broker that expires it may differ a little.
const AGE_MARGIN: Duration = Duration::from_secs(2);
/// Outboxes per shard at least, whatever the split threshold (smaller shards cost more to hand
/// over than they save).
const MIN_SHARD: usize = 512;

/// The node's table of channels with local interest.
pub(crate) struct Hub {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    /// How long a channel keeps its broker subscription after its last local subscriber.
    linger: Duration,
    /// Most messages read per history call when repairing a feed or filling a cache.
    repair_batch: usize,
    /// Bounds of the recent-message caches.
    recent: RecentLimits,
    /// Bytes held by all recent-message caches.
    recent_bytes: AtomicUsize,
    /// Local subscribers from which a channel's fan-out is split into one shard per runtime
    /// worker (below it one worker pushes every outbox under the lock); 0 never splits.
    shard_min: usize,
    slots: Mutex<HashMap<ChannelName, Arc<Slot>>>,
}

struct Slot {
    channel: ChannelName,
    members: Mutex<Members>,
    /// Pending until the broker subscription is in place, then Live (or Failed).
    ready: watch::Sender<Readiness>,
    /// Woken when the last member leaves, so the pump starts its linger.
    emptied: Notify,
    /// Held while the cache is filled from the broker: joiners needing the same fill wait for
    /// it instead of each reading the broker.
    filling: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Members {
    /// Connection id to its outbox.
    conns: HashMap<u64, Arc<Outbox>>,
    /// `conns`' outboxes as one shared list, for fan-outs that run outside the lock in
    /// parallel shards; dropped at every membership change and rebuilt by the next fan-out.
    listed: Option<Arc<[Arc<Outbox>]>>,
    /// Set once the slot left the table; a joiner must create a new one.
    retired: bool,
    /// The channel's most recent messages, appended with each fan-out.
    recent: Recent,
}

/// A channel's most recent messages, oldest first, and where they are known to be complete.
#[derive(Default)]
struct Recent {
    messages: VecDeque<Arc<Message>>,
    /// Bytes of `messages` (as [`Message::wire_size`] counts them).
    bytes: usize,
    /// Every message of the channel with a cursor after `floor`, up to the newest fanned out,
    /// is in `messages`. `None` while that is not known (the feed lagged and its repair
    /// failed, or the feed is not live yet): then nothing is served from here.
    floor: Option<Cursor>,
}

/// What a joiner's resume position found in the channel's recent messages.
pub(crate) enum Resume {
    /// Joined from now, or the position is outside the cached window: read the broker.
    Uncovered,
    /// Every message after the position, from memory; with them the channel is delivered
    /// completely through `through`.
    Covered {
        messages: Vec<Arc<Message>>,
        through: Cursor,
    },
}

impl Recent {
    /// The messages after `since`, when the window covers it: `floor <= since <= newest`
    /// (a position past the newest message this node saw may be one the broker never
    /// issued; the broker judges those) and none of them is near its age limit.
    fn after(&self, since: Cursor, oldest_us: u64) -> Option<(Vec<Arc<Message>>, Cursor)> {
        let floor = self.floor?;
        let newest = self.messages.back().map_or(floor, |m| m.cursor);
        if since < floor || since > newest {
            return None;
        }
        let start = self.messages.partition_point(|m| m.cursor <= since);
        if self
            .messages
            .get(start)
            .is_some_and(|m| m.published_us < oldest_us)
        {
            return None;
        }
        Some((self.messages.range(start..).cloned().collect(), newest))
    }
}

#[derive(Clone)]
enum Readiness {
    Pending,
    Live,
    Failed(BrokerError),
}

impl Slot {
    fn fan_out(&self, item: &Item) {
        let members = self.members.lock();
        for outbox in members.conns.values() {
            // A false return means the outbox closed (slow consumer or drain); its
            // connection notices, leaves, and the client resumes from its cursor.
            outbox.push(item.clone());
        }
    }

    /// Fans out the channel's next message and appends it to the recent messages, under one
    /// lock, so a joiner sees each message either in the cache or in its outbox. A channel
    /// with at least `shard_min` local subscribers on a runtime with several workers, or with
    /// `UNLOCKED_MIN` when the message may be written directly (`direct`), is only listed
    /// here: the returned [`Shards`] push it, and must finish before the next message is
    /// delivered (each outbox sees the channel in order). A joiner that
    /// lands between the listing and the push finds the message in the cache and is not
    /// listed; a leaver still listed gets one push its connection never reads.
    fn deliver(
        &self,
        hub: &Hub,
        message: &Arc<Message>,
        workers: usize,
        direct: bool,
    ) -> Option<Shards> {
        let mut members = self.members.lock();
        hub.remember(&mut members.recent, message);
        let item = Item::Message(message.clone());
        let sharded = workers >= 2 && hub.shard_min > 0 && members.conns.len() >= hub.shard_min;
        if !sharded && (!direct || members.conns.len() < UNLOCKED_MIN) {
            for outbox in members.conns.values() {
                outbox.push_with(item.clone(), direct);
            }
            return None;
        }
        let listed = match &members.listed {
            Some(listed) => listed.clone(),
            None => {
                let listed: Arc<[Arc<Outbox>]> = members.conns.values().cloned().collect();
                members.listed = Some(listed.clone());
                listed
            }
        };
        // Direct writes are system calls: a big channel's are made outside the lock, as the
        // shards' pushes are (a joiner after the listing found the message in the cache), and
        // in one shard that yields now and then (see [`Shards::run`]).
        Some(Shards {
            outboxes: listed,
            item,
            shards: if sharded { workers } else { 1 },
        })
    }

    /// Forgets the recent messages; `floor` says from where the next ones are complete.
    fn reset_recent(&self, hub: &Hub, floor: Option<Cursor>) {
        let mut members = self.members.lock();
        let recent = std::mem::take(&mut members.recent);
        hub.recent_bytes.fetch_sub(recent.bytes, Ordering::Relaxed);
        members.recent.floor = floor;
    }

    /// [`Slot::fan_out`] for a message whose publish was traced, when this node exports
    /// traces: a `herald.edge.receive` span continuing the publish's trace, and in it one
    /// `herald.deliver` span per protocol with subscribers here (never one per connection),
    /// covering the hand-off to those connections' outbound queues.
    fn fan_out_traced(&self, hub: &Hub, message: &Arc<Message>, traceparent: &str) {
        let receive = tracing::info_span!(
            "herald.edge.receive",
            otel.kind = "consumer",
            channel = %self.channel,
            cursor = message.cursor.0,
            trace_id = tracing::field::Empty,
        );
        herald_telemetry::trace::set_parent(&receive, traceparent);
        let _receiving = receive.enter();
        let item = Item::Message(message.clone());
        let mut members = self.members.lock();
        hub.remember(&mut members.recent, message);
        for protocol in Protocol::ALL {
            let subscribers = members
                .conns
                .values()
                .filter(|o| o.protocol == protocol)
                .count();
            if subscribers == 0 {
                continue;
            }
            let deliver = tracing::info_span!(
                "herald.deliver",
                otel.name = format!("herald.deliver {}", protocol.as_str()),
                protocol = protocol.as_str(),
                subscribers,
            );
            let _delivering = deliver.enter();
            tracing::debug!("delivering traced message");
            for outbox in members.conns.values().filter(|o| o.protocol == protocol) {
                outbox.push(item.clone());
            }
        }
    }
}

impl Hub {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        linger: Duration,
        repair_batch: usize,
        recent: RecentLimits,
        shard_min: usize,
    ) -> Self {
        Self {
            broker,
            metrics,
            linger,
            repair_batch,
            recent,
            recent_bytes: AtomicUsize::new(0),
            shard_min,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Appends `message` to a channel's recent messages (when they are complete up to it) and
    /// trims them to their bounds.
    fn remember(&self, recent: &mut Recent, message: &Arc<Message>) {
        let Some(floor) = recent.floor else { return };
        let newest = recent.messages.back().map_or(floor, |m| m.cursor);
        if message.cursor <= newest {
            return;
        }
        let size = message.wire_size();
        recent.messages.push_back(message.clone());
        recent.bytes += size;
        let mut total = self.recent_bytes.fetch_add(size, Ordering::Relaxed) + size;
        let limits = &self.recent;
        while recent.messages.len() > limits.messages
            || recent.bytes > limits.channel_bytes
            || (total > limits.node_bytes && !recent.messages.is_empty())
        {
            let Some(old) = recent.messages.pop_front() else {
                break;
            };
            let size = old.wire_size();
            recent.bytes -= size;
            total = self.recent_bytes.fetch_sub(size, Ordering::Relaxed) - size;
            recent.floor = Some(old.cursor);
        }
    }

    /// Oldest publish time (µs) a cached message may have to be served.
    fn oldest_servable_us(&self) -> u64 {
        let keep = self.recent.max_age.saturating_sub(AGE_MARGIN);
        unix_micros().saturating_sub(keep.as_micros() as u64)
    }

    /// The retained messages of `channel` after `since`, from this node's memory when its
    /// recent window covers `since` (no broker read); `None` otherwise. For polls, which do
    /// not join.
    pub(crate) fn recent(
        &self,
        channel: &ChannelName,
        since: Cursor,
    ) -> Option<(Vec<Arc<Message>>, Cursor)> {
        let slot = self.slots.lock().get(channel).cloned()?;
        let got = slot
            .members
            .lock()
            .recent
            .after(since, self.oldest_servable_us());
        self.count_recent(got.is_some());
        got
    }

    fn count_recent(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.metrics.recent_cache.with_label_values(&[result]).inc();
    }

    /// Adds a connection to a channel's local subscribers and waits until the broker feed
    /// is live: once this returns, nothing published to the channel can be missed. With a
    /// resume position, also says whether the channel's recent messages cover it, filling
    /// them from the broker first when the position lies just below them (one read for all
    /// joiners that need it).
    pub(crate) async fn join(
        self: &Arc<Self>,
        channel: &ChannelName,
        conn: u64,
        outbox: &Arc<Outbox>,
        since: Option<Cursor>,
    ) -> Result<Resume, BrokerError> {
        let slot = {
            let mut slots = self.slots.lock();
            let existing = slots
                .get(channel)
                .filter(|s| !s.members.lock().retired)
                .cloned();
            let slot = match existing {
                Some(slot) => slot,
                None => {
                    let slot = Arc::new(Slot {
                        channel: channel.clone(),
                        members: Mutex::new(Members::default()),
                        ready: watch::Sender::new(Readiness::Pending),
                        emptied: Notify::new(),
                        filling: tokio::sync::Mutex::new(()),
                    });
                    slots.insert(channel.clone(), slot.clone());
                    self.metrics.channels.set(slots.len() as i64);
                    tokio::spawn(pump(self.clone(), slot.clone()));
                    slot
                }
            };
            let mut members = slot.members.lock();
            members.listed = None;
            if members.conns.insert(conn, outbox.clone()).is_none() {
                self.metrics.subscriptions.inc();
            }
            drop(members);
            slot
        };
        let mut ready = slot.ready.subscribe();
        let state = ready
            .wait_for(|r| !matches!(r, Readiness::Pending))
            .await
            .map(|r| r.clone())
            .unwrap_or(Readiness::Failed(BrokerError::Closed));
        match state {
            Readiness::Live => {
                let Some(since) = since else {
                    return Ok(Resume::Uncovered);
                };
                // Checked after joining: anything fanned out from here on is in the outbox.
                let oldest = self.oldest_servable_us();
                let mut found = slot.members.lock().recent.after(since, oldest);
                if found.is_none() && self.fill(&slot, since).await {
                    found = slot.members.lock().recent.after(since, oldest);
                }
                self.count_recent(found.is_some());
                Ok(match found {
                    Some((messages, through)) => Resume::Covered { messages, through },
                    None => Resume::Uncovered,
                })
            }
            Readiness::Failed(e) => {
                self.leave(channel, conn);
                Err(e)
            }
            Readiness::Pending => Err(BrokerError::Closed),
        }
    }

    /// Removes a connection from a channel's local subscribers.
    pub(crate) fn leave(&self, channel: &ChannelName, conn: u64) {
        let slots = self.slots.lock();
        if let Some(slot) = slots.get(channel) {
            let mut members = slot.members.lock();
            if members.conns.remove(&conn).is_some() {
                members.listed = None;
                self.metrics.subscriptions.dec();
                if members.conns.is_empty() {
                    slot.emptied.notify_one();
                }
            }
        }
    }

    /// The held streams subscribed to `channel` here, as presence lists them.
    pub(crate) fn presence(&self, channel: &ChannelName, node: &str) -> Vec<PresenceEntry> {
        let Some(slot) = self.slots.lock().get(channel).cloned() else {
            return Vec::new();
        };
        let outboxes: Vec<Arc<Outbox>> = slot.members.lock().conns.values().cloned().collect();
        crate::registry::Registry::presence_of(outboxes.into_iter(), node)
    }

    /// Queues a join/leave for every local subscriber of its channel, behind the messages
    /// already queued for them.
    pub(crate) fn deliver_event(&self, event: &Arc<PresenceEvent>) {
        let slot = self.slots.lock().get(event.channel.as_str()).cloned();
        if let Some(slot) = slot {
            slot.fan_out(&Item::Presence(event.clone()));
        }
    }

    /// Channels with local interest right now.
    pub(crate) fn channel_count(&self) -> usize {
        self.slots.lock().len()
    }

    /// Every channel with local interest and its local subscriber count.
    pub(crate) fn channel_subscribers(&self) -> Vec<(ChannelName, u64)> {
        self.slots
            .lock()
            .values()
            .map(|s| (s.channel.clone(), s.members.lock().conns.len() as u64))
            .collect()
    }

    /// Extends the slot's recent messages down to `since` with one broker read (or a few
    /// pages), when `since` is below their floor and the gap is small enough to keep. Returns
    /// whether the window now reaches `since`. Concurrent callers wait for one fill.
    async fn fill(&self, slot: &Slot, since: Cursor) -> bool {
        let _filling = slot.filling.lock().await;
        let floor = match slot.members.lock().recent.floor {
            Some(floor) if floor > since => floor,
            Some(_) => return true, // another joiner filled it meanwhile
            None => return false,
        };
        let mut got: Vec<Arc<Message>> = Vec::new();
        let mut bytes = 0;
        // One page at most: a fill is for positions just below the window (a storm after a
        // deploy or a blip); a deeper resume reads the broker itself, page by page.
        let limit = FILL_PAGE.min(self.recent.messages);
        if limit == 0 {
            return false;
        }
        self.metrics.history_reads.inc();
        let query = HistoryQuery {
            after: since,
            limit,
        };
        let page = match self.broker.history(&slot.channel, query).await {
            Ok(page) if !page.gap => page,
            // A gap is the broker's to report, with the messages after it.
            _ => return false,
        };
        let reached =
            page.messages.len() < limit || page.messages.iter().any(|m| m.cursor >= floor);
        if !reached {
            return false;
        }
        for m in page.messages {
            if m.cursor > floor {
                break; // joined up with the cached window
            }
            bytes += m.wire_size();
            got.push(m);
        }
        if bytes > self.recent.channel_bytes {
            return false;
        }
        let mut members = slot.members.lock();
        let recent = &mut members.recent;
        if recent.floor != Some(floor) {
            return false; // the feed lagged or trimmed meanwhile: the read may not join up
        }
        for m in got.into_iter().rev() {
            recent.messages.push_front(m);
        }
        recent.bytes += bytes;
        self.recent_bytes.fetch_add(bytes, Ordering::Relaxed);
        recent.floor = Some(since);
        true
    }

    /// Takes `slot` out of the table. Unless `force`, only when it has no members.
    fn retire(&self, slot: &Arc<Slot>, force: bool) -> bool {
        let mut slots = self.slots.lock();
        let mut members = slot.members.lock();
        if !force && !members.conns.is_empty() {
            return false;
        }
        members.retired = true;
        self.metrics.subscriptions.sub(members.conns.len() as i64);
        members.conns.clear();
        members.listed = None;
        let recent = std::mem::take(&mut members.recent);
        self.recent_bytes.fetch_sub(recent.bytes, Ordering::Relaxed);
        if slots
            .get(&slot.channel)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            slots.remove(&slot.channel);
        }
        self.metrics.channels.set(slots.len() as i64);
        true
    }

    /// Re-reads history after `last` and fans out what the live feed dropped. Tells the
    /// subscribers about a gap when history no longer covers it or cannot be read. Returns
    /// whether the feed is continuous again from `last` (history could be read).
    async fn repair(&self, slot: &Slot, last: &mut Option<Cursor>) -> bool {
        let Some(mut after) = *last else {
            slot.fan_out(&Item::Gap(slot.channel.clone()));
            return false;
        };
        loop {
            self.metrics.history_reads.inc();
            let query = HistoryQuery {
                after,
                limit: self.repair_batch,
            };
            match self.broker.history(&slot.channel, query).await {
                Ok(page) => {
                    if page.gap {
                        slot.fan_out(&Item::Gap(slot.channel.clone()));
                    }
                    let full = page.messages.len() >= self.repair_batch;
                    for m in page.messages {
                        if m.cursor > after {
                            after = m.cursor;
                            slot.fan_out(&Item::Message(m));
                        }
                    }
                    *last = Some(after);
                    if !full {
                        return true;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, channel = %slot.channel, "could not repair a live feed");
                    slot.fan_out(&Item::Gap(slot.channel.clone()));
                    return false;
                }
            }
        }
    }
}

/// One message's fan-out to a big channel, split into up to `shards` contiguous parts of its
/// subscriber list: the caller's worker pushes the first part while the runtime's other
/// workers push the rest, so the wake-ups of the connections land on every worker's queue.
struct Shards {
    outboxes: Arc<[Arc<Outbox>]>,
    item: Item,
    shards: usize,
}

impl Shards {
    async fn run(self) {
        if self.shards == 1 {
            // One shard, in this task: it yields between slices, so the node's other tasks
            // are not held up by many direct writes in a row.
            for slice in self.outboxes.chunks(YIELD_EVERY) {
                push_all(slice, &self.item);
                tokio::task::yield_now().await;
            }
            return;
        }
        let n = self.outboxes.len();
        let shards = self.shards.clamp(1, (n / MIN_SHARD).max(1));
        let size = n.div_ceil(shards);
        let mut others = Vec::with_capacity(shards - 1);
        for shard in 1..shards {
            let (outboxes, item) = (self.outboxes.clone(), self.item.clone());
            others.push(tokio::spawn(async move {
                let end = ((shard + 1) * size).min(outboxes.len());
                push_all(&outboxes[(shard * size).min(end)..end], &item);
            }));
        }
        push_all(&self.outboxes[..size.min(n)], &self.item);
        for other in others {
            // A shard cannot fail (push never panics); a cancelled one only means the
            // runtime is shutting down.
            let _ = other.await;
        }
    }
}

/// Local subscribers from which a channel's direct writes are made outside its members lock.
const UNLOCKED_MIN: usize = 256;
/// Pushes between two yields of a fan-out made outside the lock.
const YIELD_EVERY: usize = 256;

/// When a channel's fan-out may write to idle sockets itself (`direct`).
///
/// Direct writes save each connection's wake-up, but every message then costs one system call
/// per connection, and the fan-out holds the channel's feed until it is done. A connection's
/// task, woken for a message, writes everything that queued up meanwhile in one call, which is
/// what a channel needs once its fan-out cannot keep up. So a channel writes directly while its
/// last direct fan-out took no longer than the time between the publishes of its last two
/// messages (the broker's timestamps: a feed that fell behind does not look idle), and goes
/// through the outboxes otherwise. Measured, 10,000 subscribers on one core
/// (docs/benchmarks.md): at 5 msg/s a direct fan-out takes 130-160 ms of the 200 between
/// messages and p99 falls from 1.4x Nchan's (outboxes) to 0.9-1.2x; at 10 msg/s it takes
/// about the 100 ms between messages and the channel mostly stays on the outboxes.
#[derive(Default)]
struct Pace {
    /// When the previous message was published, in µs since the epoch.
    last_published_us: Option<u64>,
    direct_cost: Duration,
}

impl Pace {
    /// Whether the message `m` may be written directly.
    fn arrive(&mut self, m: &Message) -> bool {
        let gap = self.last_published_us.map_or(Duration::MAX, |p| {
            Duration::from_micros(m.published_us.saturating_sub(p))
        });
        self.last_published_us = Some(m.published_us);
        self.direct_cost <= gap
    }
}

fn push_all(outboxes: &[Arc<Outbox>], item: &Item) {
    for outbox in outboxes {
        // A false return means the outbox closed (slow consumer or drain); its connection
        // notices, leaves, and the client resumes from its cursor.
        outbox.push(item.clone());
    }
}

/// Feeds one channel's broker subscription to its local subscribers until the channel has
/// had no local subscriber for the linger period.
async fn pump(hub: Arc<Hub>, slot: Arc<Slot>) {
    let mut sub = match hub.broker.subscribe(&slot.channel).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(error = %e, channel = %slot.channel, "broker subscribe failed");
            slot.ready.send_replace(Readiness::Failed(e));
            hub.retire(&slot, true);
            return;
        }
    };
    // Where a repair starts if the feed lags before its first message, and from where the
    // recent messages are complete: everything after it comes through this feed.
    let mut last: Option<Cursor> = hub.broker.head().await.ok();
    slot.reset_recent(&hub, last);
    slot.ready.send_replace(Readiness::Live);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let mut idle_deadline: Option<Instant> = None;
    let mut pace = Pace::default();
    loop {
        let idle = slot.members.lock().conns.is_empty();
        idle_deadline = match (idle, idle_deadline) {
            (false, _) => None,
            (true, None) => Some(Instant::now() + hub.linger),
            (true, d) => d,
        };
        let linger = async {
            match idle_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = sub.next() => match ev {
                Some(LiveEvent::Message(m)) => {
                    if last.is_none_or(|l| m.cursor > l) {
                        last = Some(m.cursor);
                        match m.traceparent() {
                            Some(tp) if herald_telemetry::trace::enabled() => {
                                slot.fan_out_traced(&hub, &m, tp)
                            }
                            _ => {
                                let direct = pace.arrive(&m);
                                let started = Instant::now();
                                if let Some(shards) = slot.deliver(&hub, &m, workers, direct) {
                                    shards.run().await;
                                }
                                if direct {
                                    pace.direct_cost = started.elapsed();
                                }
                            }
                        }
                    }
                }
                Some(LiveEvent::Lagged) => repair_and_recache(&hub, &slot, &mut last).await,
                None => match resubscribe(&hub, &slot).await {
                    Some(new) => {
                        sub = new;
                        repair_and_recache(&hub, &slot, &mut last).await;
                    }
                    None => return,
                },
            },
            () = slot.emptied.notified() => {}
            () = linger => {
                if hub.retire(&slot, false) {
                    return;
                }
            }
        }
    }
}

/// A lagged feed may have lost messages: the recent messages stop being served, the repair
/// fans out what was missed, and from its end the window is complete again (unless the
/// repair could not read the broker).
async fn repair_and_recache(hub: &Hub, slot: &Slot, last: &mut Option<Cursor>) {
    slot.reset_recent(hub, None);
    if hub.repair(slot, last).await {
        slot.reset_recent(hub, *last);
    }
}

/// Re-subscribes after the broker ended a feed, with backoff. Gives up (and retires the
/// slot) once nobody is listening any more.
async fn resubscribe(hub: &Arc<Hub>, slot: &Arc<Slot>) -> Option<Subscription> {
    let mut backoff = RESUBSCRIBE_BACKOFF;
    loop {
        tokio::time::sleep(backoff).await;
        if slot.members.lock().conns.is_empty() && hub.retire(slot, false) {
            return None;
        }
        match hub.broker.subscribe(&slot.channel).await {
            Ok(sub) => return Some(sub),
            Err(e) => {
                tracing::warn!(error = %e, channel = %slot.channel, "broker re-subscribe failed");
                backoff = (backoff * 2).min(RESUBSCRIBE_MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channels this big fan out in parallel shards in these tests.
    const SHARD_MIN: usize = 2_048;
    use herald_core::{MemoryBroker, MemoryBrokerConfig, Payload, PublishRequest};

    /// The pace rule reads the gap between publishes, not between the feed's deliveries:
    /// a feed that fell behind hands the pump messages back to back, and those must not look
    /// like a quiet channel.
    #[test]
    fn a_channel_writes_directly_while_its_fan_out_keeps_up_with_the_publishes() {
        let at = |us: u64| {
            let data = Payload::from_json("1", 100).unwrap();
            Message::new(ChannelName::new("c").unwrap(), Cursor(us), us, data)
        };
        let mut pace = Pace::default();
        assert!(pace.arrive(&at(1_000_000)), "the first message");
        pace.direct_cost = Duration::from_millis(80);
        assert!(
            pace.arrive(&at(1_100_000)),
            "100 ms apart, an 80 ms fan-out: direct"
        );
        pace.direct_cost = Duration::from_millis(120);
        assert!(
            !pace.arrive(&at(1_200_000)),
            "120 ms for 100 ms apart: outboxes"
        );
        assert!(
            !pace.arrive(&at(1_300_000)),
            "the cost stays until measured again"
        );
        assert!(pace.arrive(&at(1_500_000)), "200 ms apart: direct again");
        assert!(!pace.arrive(&at(1_500_010)), "a burst: outboxes");
        assert!(!pace.arrive(&at(1_400_000)), "a clock step back: outboxes");
    }

    fn setup(live_buffer: usize) -> (MemoryBroker, Arc<Hub>) {
        let broker = MemoryBroker::new(MemoryBrokerConfig {
            live_buffer,
            ..Default::default()
        });
        let metrics = Arc::new(Metrics::new("t", "0").unwrap());
        let hub = Arc::new(Hub::new(
            Arc::new(broker.clone()),
            metrics,
            Duration::from_millis(200),
            100,
            RecentLimits {
                messages: 100,
                channel_bytes: 1 << 20,
                node_bytes: 64 << 20,
                max_age: Duration::from_secs(300),
            },
            SHARD_MIN,
        ));
        (broker, hub)
    }

    async fn publish(b: &MemoryBroker, ch: &ChannelName, n: usize) -> Cursor {
        let data = Payload::from_json(n.to_string(), 100).unwrap();
        b.publish(PublishRequest {
            channel: ch.clone(),
            data,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .cursor
    }

    #[tokio::test]
    async fn repairs_a_lagged_feed_from_history() {
        let (broker, hub) = setup(2);
        let ch = ChannelName::new("lag").unwrap();
        let outbox = Arc::new(Outbox::new(1 << 20, herald_core::Protocol::WebSocket));
        hub.join(&ch, 1, &outbox, None).await.unwrap();
        // No await point yields here, so the pump cannot drain its 2-message buffer.
        let mut sent = Vec::new();
        for n in 0..10 {
            sent.push(publish(&broker, &ch, n).await);
        }
        let mut got = Vec::new();
        let mut batch = Vec::new();
        while got.len() < sent.len() {
            tokio::time::timeout(Duration::from_secs(5), outbox.next_batch(&mut batch))
                .await
                .expect("repair delivers")
                .unwrap();
            for item in batch.drain(..) {
                match item {
                    Item::Message(m) => got.push(m.cursor),
                    other => panic!("history still had everything: got {other:?}"),
                }
            }
        }
        assert_eq!(got, sent, "every message once, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn interest_ends_after_the_linger() {
        let (broker, hub) = setup(16);
        let ch = ChannelName::new("linger").unwrap();
        let outbox = Arc::new(Outbox::new(1 << 20, herald_core::Protocol::WebSocket));
        hub.join(&ch, 1, &outbox, None).await.unwrap();
        assert_eq!((hub.channel_count(), broker.live_subscriptions()), (1, 1));
        hub.leave(&ch, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hub.channel_count(), 1, "still lingering");
        // A join during the linger reuses the subscription.
        hub.join(&ch, 2, &outbox, None).await.unwrap();
        hub.leave(&ch, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(broker.live_subscriptions(), 0, "broker interest dropped");
    }

    fn covered(r: Resume) -> (Vec<Cursor>, Cursor) {
        match r {
            Resume::Covered { messages, through } => {
                (messages.iter().map(|m| m.cursor).collect(), through)
            }
            Resume::Uncovered => panic!("expected the recent messages to cover the position"),
        }
    }

    /// Waits until the hub's pump has fanned out everything published so far.
    async fn drain(outbox: &Outbox, n: usize) {
        let mut seen = 0;
        let mut batch = Vec::new();
        while seen < n {
            tokio::time::timeout(Duration::from_secs(5), outbox.next_batch(&mut batch))
                .await
                .expect("fan-out")
                .unwrap();
            seen += batch.drain(..).count();
        }
    }

    /// A channel big enough for parallel shards: every subscriber gets every message once,
    /// in order, while others join and leave during the fan-out; a late joiner finds what it
    /// missed in the recent messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_channel_fans_out_in_parallel_shards_in_order() {
        let (broker, hub) = setup(1024);
        let ch = ChannelName::new("big").unwrap();
        let subscribers = SHARD_MIN * 2 + 7;
        let mut outboxes = Vec::new();
        for conn in 0..subscribers as u64 {
            let outbox = Arc::new(Outbox::new(1 << 20, Protocol::WebSocket));
            hub.join(&ch, conn, &outbox, None).await.unwrap();
            outboxes.push(outbox);
        }
        let churn = {
            let (hub, ch) = (hub.clone(), ch.clone());
            tokio::spawn(async move {
                for conn in 1_000_000..1_000_200u64 {
                    let outbox = Arc::new(Outbox::new(1 << 20, Protocol::Sse));
                    hub.join(&ch, conn, &outbox, None).await.unwrap();
                    tokio::task::yield_now().await;
                    hub.leave(&ch, conn);
                }
            })
        };
        let mut sent = Vec::new();
        for n in 0..40 {
            sent.push(publish(&broker, &ch, n).await);
        }
        churn.await.unwrap();
        for outbox in &outboxes {
            let mut got = Vec::new();
            let mut batch = Vec::new();
            while got.len() < sent.len() {
                tokio::time::timeout(Duration::from_secs(10), outbox.next_batch(&mut batch))
                    .await
                    .expect("fan-out reached every subscriber")
                    .unwrap();
                got.extend(batch.drain(..).map(|item| match item {
                    Item::Message(m) => m.cursor,
                    other => panic!("only messages expected, got {other:?}"),
                }));
            }
            assert_eq!(got, sent);
        }
        let late = Arc::new(Outbox::new(1 << 20, Protocol::WebSocket));
        match hub
            .join(&ch, 9_999_999, &late, Some(sent[9]))
            .await
            .unwrap()
        {
            Resume::Covered { messages, through } => {
                let cursors: Vec<_> = messages.iter().map(|m| m.cursor).collect();
                assert_eq!(cursors, sent[10..]);
                assert_eq!(through, sent[39]);
            }
            Resume::Uncovered => panic!("the recent messages cover a late joiner"),
        }
    }

    #[tokio::test]
    async fn resumes_inside_the_recent_window_read_no_history() {
        let (broker, hub) = setup(1024);
        let ch = ChannelName::new("recent").unwrap();
        let first = Arc::new(Outbox::new(1 << 20, herald_core::Protocol::WebSocket));
        hub.join(&ch, 1, &first, None).await.unwrap();
        let mut sent = Vec::new();
        for n in 0..20 {
            sent.push(publish(&broker, &ch, n).await);
        }
        drain(&first, 20).await;
        let reads = hub.metrics.history_reads.get();
        let second = Arc::new(Outbox::new(1 << 20, herald_core::Protocol::WebSocket));
        let (got, through) = covered(hub.join(&ch, 2, &second, Some(sent[4])).await.unwrap());
        assert_eq!(got, sent[5..], "every message after the position, in order");
        assert_eq!(through, sent[19]);
        assert_eq!(hub.metrics.history_reads.get(), reads, "served from memory");
        // A position past anything this node saw is the broker's to judge.
        let ahead = Cursor(sent[19].0 + 1_000_000);
        assert!(matches!(
            hub.join(&ch, 3, &second, Some(ahead)).await.unwrap(),
            Resume::Uncovered
        ));
    }

    #[tokio::test]
    async fn many_joiners_below_the_window_share_one_fill() {
        let (broker, hub) = setup(1024);
        let ch = ChannelName::new("storm").unwrap();
        let mut sent = Vec::new();
        for n in 0..50 {
            sent.push(publish(&broker, &ch, n).await);
        }
        let reads = hub.metrics.history_reads.get();
        let outbox = Arc::new(Outbox::new(1 << 20, herald_core::Protocol::WebSocket));
        let joins = (0..200u64).map(|conn| {
            let (hub, ch, outbox) = (hub.clone(), ch.clone(), outbox.clone());
            let since = sent[9];
            tokio::spawn(async move { hub.join(&ch, conn, &outbox, Some(since)).await })
        });
        for j in joins {
            let (got, _) = covered(j.await.unwrap().unwrap());
            assert_eq!(got, sent[10..]);
        }
        assert_eq!(
            hub.metrics.history_reads.get() - reads,
            1,
            "200 resumes of one channel cost one broker read"
        );
    }

    #[tokio::test]
    async fn a_lagged_feed_stops_serving_from_memory_until_repaired() {
        let (broker, hub) = setup(2);
        let ch = ChannelName::new("lagged").unwrap();
        let outbox = Arc::new(Outbox::new(1 << 20, herald_core::Protocol::WebSocket));
        hub.join(&ch, 1, &outbox, None).await.unwrap();
        let mut sent = Vec::new();
        for n in 0..10 {
            sent.push(publish(&broker, &ch, n).await);
        }
        drain(&outbox, 10).await;
        // The repair read history; the window is complete again from where it ended.
        let (got, _) = covered(hub.join(&ch, 2, &outbox, Some(sent[9])).await.unwrap());
        assert!(got.is_empty());
        sent.push(publish(&broker, &ch, 10).await);
        drain(&outbox, 1).await;
        let (got, _) = covered(hub.join(&ch, 3, &outbox, Some(sent[9])).await.unwrap());
        assert_eq!(got, sent[10..]);
    }
}
