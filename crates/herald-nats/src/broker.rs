//! [`NatsBroker`]: the connection supervisor, publish with chain headers, history with exact
//! gap detection, and head.

use std::{
    collections::HashMap,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    ConnectOptions, Event, HeaderMap, ServerAddr,
    jetstream::{
        self,
        context::PublishErrorKind,
        message::{PublishMessage, StreamMessage},
        stream::{self, DirectGetErrorKind, Republish},
    },
};
use herald_core::{
    Broker, BrokerError, BrokerState, ChannelName, Cursor, HistoryPage, HistoryQuery,
    PublishRequest, Published, Subscription, unix_micros,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::{
    NatsBrokerConfig, NatsError, StorageKind,
    history::{
        Batched, DIRECT_PREFIX, HistoryCounters, HistoryStats, Page, Scope, Way, read_batched,
    },
    shared::{ChainTip, HeadReads, Link, Shared},
    subject::Subjects,
    wire::{
        HDR_EXPECTED_LAST_SUBJECT_SEQ, HDR_MSG_ID, HDR_PREV, HDR_TRACEPARENT, HDR_TS, header_u64,
    },
};

/// How long a channel's newest sequence may wait before it is written to the tip stream. The
/// tip only matters once every message of the channel has expired (minutes later), so one
/// write per channel per flush replaces one stored write per publish.
const TIP_FLUSH: Duration = Duration::from_millis(100);
/// Most channel tips waiting for a flush (a bound on memory between flushes).
const MAX_PENDING_TIPS: usize = 100_000;
/// Longest idempotency key accepted (it becomes a header).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 1024;
/// Above this many cached channel tips, unused ones are forgotten (they are re-read on demand).
const MAX_CACHED_TIPS: usize = 100_000;
/// Connection events buffered between async-nats and the supervisor; overflow only delays a
/// state change until the next [`SUPERVISE_TICK`].
const EVENT_BUFFER: usize = 64;
/// How often the supervisor re-checks the connection state even without events.
const SUPERVISE_TICK: Duration = Duration::from_millis(200);
/// First and longest pause between reconnection attempts.
const RECONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

impl Shared {
    fn tip_slot(&self, subject: &str) -> Arc<tokio::sync::Mutex<Option<ChainTip>>> {
        let mut tips = self.tips.lock();
        if tips.len() >= MAX_CACHED_TIPS && !tips.contains_key(subject) {
            tips.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        tips.entry(subject.to_owned()).or_default().clone()
    }

    /// Records `seq` as the newest sequence of `channel`, for the next tip flush.
    fn note_tip(&self, link: &Link, channel: &ChannelName, seq: u64) {
        let mut pending = self.pending_tips.lock();
        if pending.len() < MAX_PENDING_TIPS || pending.contains_key(channel) {
            let tip = pending.entry(channel.clone()).or_default();
            *tip = (*tip).max(seq);
            return;
        }
        drop(pending);
        write_tips(self, link, vec![(channel.clone(), seq)]);
    }

    fn forget_tips(&self) {
        self.tips
            .lock()
            .retain(|_, slot| Arc::strong_count(slot) > 1);
    }
}

/// The JetStream broker. Cheap to clone (shared); the connection is supervised in the
/// background and replaced after any break.
#[derive(Clone)]
pub struct NatsBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("stream", &self.shared.config.stream)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl NatsBroker {
    /// Connects, creates or updates the stream (idempotent), and starts supervising the
    /// connection. Fails when the settings are invalid, no server answers, or the stream cannot
    /// be set up; once it has succeeded, outages are reported through [`Broker::state`] and
    /// calls fail fast with `Unavailable` until the connection is back.
    pub async fn connect(config: NatsBrokerConfig) -> Result<Self, NatsError> {
        config.validate()?;
        let subjects = Subjects::new(&config.subject_prefix);
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let link = Arc::new(open_link(&config, &subjects, events_tx, 1).await?);
        info!(stream = %config.stream, generation = 1, "connected to NATS");
        let shared = Arc::new(Shared {
            config,
            subjects,
            link: watch::Sender::new(Some(link)),
            state: watch::Sender::new(BrokerState::Connected),
            reconnects: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            tips: parking_lot::Mutex::new(HashMap::new()),
            history: HistoryCounters::default(),
            contended: AtomicU64::new(0),
            pending_tips: parking_lot::Mutex::new(HashMap::new()),
            heads: parking_lot::Mutex::new(HeadReads::default()),
            demux: crate::shared::Demux::default(),
        });
        tokio::spawn(supervise(Arc::downgrade(&shared), events_rx));
        tokio::spawn(flush_tips(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// Successful reconnections since [`NatsBroker::connect`] (for metrics).
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Publish races lost to another node on the same channel since start-up (each was retried;
    /// for metrics).
    pub fn publish_conflicts(&self) -> u64 {
        self.shared.contended.load(Ordering::Relaxed)
    }

    /// Live messages dropped locally because a subscription could not keep up (for metrics;
    /// every such drop is followed by a `Lagged` on the affected subscriptions).
    pub fn slow_consumer_events(&self) -> u64 {
        self.shared.slow_consumers.load(Ordering::Relaxed)
    }

    /// The settings this broker runs with.
    pub fn config(&self) -> &NatsBrokerConfig {
        &self.shared.config
    }

    /// The current NATS client while connected, `None` during an outage. The broker replaces
    /// its client after every break, so hold this only while [`Broker::state`] stays
    /// `Connected`, then ask again (this is what [`crate::NatsCluster`] does).
    pub fn client(&self) -> Option<async_nats::Client> {
        self.shared
            .link
            .borrow()
            .as_ref()
            .filter(|l| l.is_connected())
            .map(|l| l.client.clone())
    }

    async fn publish_inner(&self, request: PublishRequest) -> Result<Published, BrokerError> {
        let shared = &*self.shared;
        let config = &shared.config;
        if let Some(key) = &request.idempotency_key
            && (key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY_LEN
                || key.chars().any(|c| c.is_control()))
        {
            return Err(BrokerError::Rejected(format!(
                "idempotency key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} bytes without control characters"
            )));
        }
        let subject = shared.subjects.stored(&request.channel);
        let slot = shared.tip_slot(&subject);
        let mut tip = tokio::time::timeout(config.publish_timeout, slot.lock())
            .await
            .map_err(|_| {
                BrokerError::Unavailable("channel busy: publish queue timed out".into())
            })?;

        // Lost races are retried until the publish timeout, not a fixed number of times: a
        // busy channel published from several nodes at once must never refuse a valid publish.
        // Each lost race tells the winner's sequence, which becomes the next attempt's link
        // without a read, so every round one contender wins and the rest retry at once.
        let deadline = tokio::time::Instant::now() + config.publish_timeout;
        let mut lost = 0u32;
        loop {
            if lost > 0 && tokio::time::Instant::now() >= deadline {
                shared
                    .contended
                    .fetch_add(u64::from(lost), Ordering::Relaxed);
                return Err(BrokerError::Unavailable(format!(
                    "channel {} stayed contended for {:?} ({lost} races lost)",
                    request.channel, config.publish_timeout
                )));
            }
            let link = shared.connected_link()?;
            let current = match *tip {
                Some(t) => t,
                None => {
                    let t = read_tip(shared, &link, &request.channel).await?;
                    *tip = Some(t);
                    t
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(HDR_PREV, current.prev.to_string());
            headers.insert(HDR_EXPECTED_LAST_SUBJECT_SEQ, current.expected.to_string());
            headers.insert(HDR_TS, unix_micros().to_string());
            if let Some(key) = &request.idempotency_key {
                headers.insert(HDR_MSG_ID, key.as_str());
            }
            if let Some(tp) = herald_core::trace::current_traceparent() {
                headers.insert(HDR_TRACEPARENT, &*tp);
            }
            let message = PublishMessage::build()
                .payload(request.data.bytes().clone())
                .headers(headers);
            // Checked again right before handing the message to the client: a message handed
            // to a client that is not connected could sit in its queue (see crate docs).
            if !link.is_connected() {
                return Err(BrokerError::Unavailable("not connected to NATS".into()));
            }
            // Each attempt gets the whole timeout (a message timed out after it was sent may
            // still be stored; a shorter last attempt would make that likelier).
            let sent = tokio::time::timeout(config.publish_timeout, async {
                link.js.send_publish(subject.clone(), message).await?.await
            })
            .await;
            match sent {
                Ok(Ok(ack)) => {
                    if !ack.duplicate {
                        *tip = Some(ChainTip {
                            expected: ack.sequence,
                            prev: ack.sequence,
                        });
                        shared.note_tip(&link, &request.channel, ack.sequence);
                    }
                    if lost > 0 {
                        shared
                            .contended
                            .fetch_add(u64::from(lost), Ordering::Relaxed);
                    }
                    return Ok(Published {
                        cursor: Cursor(ack.sequence),
                        duplicate: ack.duplicate,
                    });
                }
                Ok(Err(error)) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    lost += 1;
                    *tip = winner_sequence(&error).map(|seq| ChainTip {
                        expected: seq,
                        prev: seq,
                    });
                    debug!(subject, lost, tip = ?*tip, "chain tip moved; retrying on the winner's link");
                    // No pause: the winner's next publish leaves at once too, so a loser that
                    // waited would lose the next round as well (measured: one node starved for
                    // 404 rounds while it backed off).
                }
                Ok(Err(error)) => {
                    *tip = None;
                    return Err(match error.kind() {
                        PublishErrorKind::MaxPayloadExceeded => {
                            BrokerError::Rejected(error.to_string())
                        }
                        _ => BrokerError::Unavailable(format!("publish failed: {error}")),
                    });
                }
                Err(_) => {
                    *tip = None;
                    shared
                        .contended
                        .fetch_add(u64::from(lost), Ordering::Relaxed);
                    return Err(BrokerError::Unavailable(format!(
                        "publish not acknowledged within {:?}",
                        config.publish_timeout
                    )));
                }
            }
        }
    }

    /// One page of history, read as `way` says after its first message.
    async fn history_inner(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
        way: Way,
    ) -> Result<HistoryPage, BrokerError> {
        let shared = &*self.shared;
        let link = shared.connected_link()?;
        let subject = shared.subjects.stored(channel);
        let after = query.after.0;
        let Some(first) = next_after(shared, &link, &subject, after.saturating_add(1)).await?
        else {
            return Ok(HistoryPage {
                messages: Vec::new(),
                gap: nothing_after(shared, &link, channel, after).await?,
            });
        };
        // The first retained message after the cursor names its predecessor: if that one is
        // after the cursor too, it (and maybe more) is gone.
        let gap = match header_u64(&first.headers, HDR_PREV) {
            Some(prev) => prev > after,
            // Not stored by Herald: no chain to check; only a contiguous sequence proves nothing
            // is missing.
            None => first.sequence > after.saturating_add(1),
        };
        let mut page = Page::new(channel, query.limit, first.sequence);
        let mut next = Some(first);
        let mut direct = 0;
        while let Some(m) = next.take() {
            let time = m.time;
            if !page.offer(m.sequence, &m.headers, m.payload, || {
                (time.unix_timestamp_nanos() / 1000) as u64
            }) {
                break;
            }
            direct += 1;
            if let Way::Batched(scope) = way
                && direct == DIRECT_PREFIX
            {
                let (timeout, counters) = (shared.config.request_timeout, &shared.history);
                let mut read =
                    read_batched(&link.stream, &subject, scope, timeout, counters, &mut page).await;
                if read == Batched::Slow && scope == Scope::Channel && page.open() && page.dense() {
                    let scope = Scope::Stream;
                    read =
                        read_batched(&link.stream, &subject, scope, timeout, counters, &mut page)
                            .await;
                }
                if read == Batched::Done || !page.open() {
                    break;
                }
                // Go on one by one after what the consumer delivered.
            }
            next = next_after(shared, &link, &subject, page.last + 1).await?;
        }
        Ok(HistoryPage {
            messages: page.messages,
            gap,
        })
    }

    /// Counts of batched history reads since start-up (consumers created, messages they
    /// delivered, and how often a read fell back to direct gets).
    pub fn history_stats(&self) -> HistoryStats {
        self.shared.history.snapshot()
    }

    /// [`Broker::history`], read the given way (feature `testing`): to compare the batched read
    /// with direct gets (what every read did before it) on the same data.
    #[cfg(feature = "testing")]
    pub async fn history_by(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
        way: crate::HistoryWay,
    ) -> Result<HistoryPage, BrokerError> {
        self.history_inner(channel, query, way.into()).await
    }
}

/// Whether messages of `channel` after `after` were lost, given none is retained after it.
async fn nothing_after(
    shared: &Shared,
    link: &Link,
    channel: &ChannelName,
    after: u64,
) -> Result<bool, BrokerError> {
    let state = stream_state(shared, link).await?;
    if after > state.last_sequence {
        return Ok(true); // a cursor this stream never issued
    }
    if last_for_subject(shared, &link.stream, &shared.subjects.stored(channel))
        .await?
        .is_some()
    {
        // Its newest retained message is at or before the cursor; anything newer would be
        // retained too (eviction takes the oldest first).
        return Ok(false);
    }
    // Nothing retained at all: every message it had expired. Its tip says what the last was.
    match read_tip_record(shared, link, channel).await? {
        Some(tip) => Ok(tip > after),
        None if shared.config.tip_max_age.is_zero() => Ok(false), // never published
        None => Ok(after.saturating_add(1) < oldest_retained(&state)),
    }
}

/// Sequence of the oldest message still in the stream (last + 1 when empty).
fn oldest_retained(state: &stream::State) -> u64 {
    if state.messages == 0 {
        state.last_sequence + 1
    } else {
        state.first_sequence
    }
}

/// What this node should send as the next link of `channel`'s chain, read from JetStream.
async fn read_tip(
    shared: &Shared,
    link: &Link,
    channel: &ChannelName,
) -> Result<ChainTip, BrokerError> {
    if let Some(last) =
        last_for_subject(shared, &link.stream, &shared.subjects.stored(channel)).await?
    {
        return Ok(ChainTip {
            expected: last.sequence,
            prev: last.sequence,
        });
    }
    let prev = match read_tip_record(shared, link, channel).await? {
        Some(tip) => tip,
        None if shared.config.tip_max_age.is_zero() => 0,
        // The tip expired too: every message of the channel is older than the oldest retained
        // one, so that bound is a safe (conservative) predecessor.
        None => oldest_retained(&stream_state(shared, link).await?).saturating_sub(1),
    };
    Ok(ChainTip { expected: 0, prev })
}

/// The channel's recorded tip (its newest sequence ever), if any.
async fn read_tip_record(
    shared: &Shared,
    link: &Link,
    channel: &ChannelName,
) -> Result<Option<u64>, BrokerError> {
    let m = last_for_subject(shared, &link.tips, &shared.subjects.tip(channel)).await?;
    Ok(m.and_then(|m| std::str::from_utf8(&m.payload).ok()?.parse().ok()))
}

/// Answers waiting `head()` calls, one stream-info request per round: each request is sent
/// after every call it answers was made (a joiner reads the head after it subscribed, so a
/// head read before that could claim messages its feed never saw). Ends when nobody waits.
async fn read_heads(shared: Arc<Shared>) {
    loop {
        let waiting = {
            let mut heads = shared.heads.lock();
            if heads.waiting.is_empty() {
                heads.reading = false;
                return;
            }
            std::mem::take(&mut heads.waiting)
        };
        let head = match shared.connected_link() {
            Ok(link) => stream_state(&shared, &link)
                .await
                .map(|state| state.last_sequence),
            Err(e) => Err(e),
        };
        for waiter in waiting {
            let _ = waiter.send(head.clone());
        }
    }
}

async fn stream_state(shared: &Shared, link: &Link) -> Result<stream::State, BrokerError> {
    match tokio::time::timeout(shared.config.request_timeout, link.stream.get_info()).await {
        Ok(Ok(info)) => Ok(info.state),
        Ok(Err(e)) => Err(BrokerError::Unavailable(format!("stream info: {e}"))),
        Err(_) => Err(BrokerError::Unavailable("stream info timed out".into())),
    }
}

async fn last_for_subject(
    shared: &Shared,
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, BrokerError> {
    let got = tokio::time::timeout(
        shared.config.request_timeout,
        stream.direct_get_last_for_subject(subject),
    )
    .await;
    found_or_not(got)
}

/// The first retained message of `subject` at or after sequence `from`.
pub(crate) async fn next_after(
    shared: &Shared,
    link: &Link,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, BrokerError> {
    let got = tokio::time::timeout(
        shared.config.request_timeout,
        link.stream.direct_get_next_for_subject(subject, Some(from)),
    )
    .await;
    found_or_not(got)
}

fn found_or_not(
    got: Result<Result<StreamMessage, stream::DirectGetError>, tokio::time::error::Elapsed>,
) -> Result<Option<StreamMessage>, BrokerError> {
    match got {
        Ok(Ok(m)) => Ok(Some(m)),
        Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Ok(Err(e)) => Err(BrokerError::Unavailable(format!(
            "history read failed: {e}"
        ))),
        Err(_) => Err(BrokerError::Unavailable("history read timed out".into())),
    }
}

/// The sequence that won the race for a channel's next link, from JetStream's refusal ("wrong
/// last sequence: N"); `None` when it cannot be read or is 0 (the channel has nothing retained,
/// so its true predecessor must come from the tip stream).
fn winner_sequence(error: &jetstream::context::PublishError) -> Option<u64> {
    let source = std::error::Error::source(error)?;
    let text = source
        .downcast_ref::<jetstream::Error>()
        .map(ToString::to_string)?;
    let digits = text.strip_prefix("wrong last sequence: ")?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok().filter(|&seq| seq > 0)
}

/// Writes channel tips to the tip stream, fire and forget (a lost write is the limit the crate
/// docs describe: it matters only if the channel then fully expires).
fn write_tips(shared: &Shared, link: &Link, tips: Vec<(ChannelName, u64)>) {
    let tips: Vec<_> = tips
        .into_iter()
        .map(|(channel, seq)| (shared.subjects.tip(&channel), seq))
        .collect();
    let client = link.client.clone();
    // `publish` only queues each message in the client; this task never waits on the server.
    tokio::spawn(async move {
        for (subject, seq) in tips {
            if let Err(error) = client.publish(subject, seq.to_string().into()).await {
                debug!(%error, "tip write not queued");
                return;
            }
        }
    });
}

/// Writes the pending channel tips every [`TIP_FLUSH`] while the broker lives; on an outage
/// they wait (still bounded) for the next connection. Ends when the broker is dropped.
async fn flush_tips(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(TIP_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.pending_tips.lock().is_empty() {
            continue;
        }
        let Ok(link) = shared.connected_link() else {
            continue;
        };
        let tips: Vec<_> = std::mem::take(&mut *shared.pending_tips.lock())
            .into_iter()
            .collect();
        write_tips(&shared, &link, tips);
    }
}

/// Opens a new connection and makes sure both streams exist with the configured settings.
async fn open_link(
    config: &NatsBrokerConfig,
    subjects: &Subjects,
    events: mpsc::Sender<Event>,
    generation: u64,
) -> Result<Link, NatsError> {
    let addrs = config
        .urls
        .iter()
        .map(|u| u.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NatsError::Config {
            key: "urls",
            why: e.to_string(),
        })?;
    // Once connected, this client never reconnects by itself: its reconnect attempt waits
    // forever, so publishes still queued in it when the connection broke are never sent
    // ("ghosts"). The supervisor opens a fresh client instead.
    let established = Arc::new(AtomicBool::new(false));
    let gate = established.clone();
    let mut options = ConnectOptions::new()
        .name("herald")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .ping_interval(config.ping_interval)
        .reconnect_delay_callback(move |_| {
            if gate.load(Ordering::SeqCst) {
                Duration::MAX
            } else {
                Duration::ZERO
            }
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.try_send(event);
            }
        });
    let auth = &config.auth;
    if let Some(path) = &auth.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| NatsError::Config {
                key: "auth.creds_file",
                why: e.to_string(),
            })?;
    } else if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.clone());
    } else if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &auth.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if auth.require_tls {
        options = options.require_tls(true);
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| NatsError::Connect(e.to_string()))?;
    established.store(true, Ordering::SeqCst);

    let js = jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .build(client.clone());
    let storage = match config.storage {
        StorageKind::File => stream::StorageType::File,
        StorageKind::Memory => stream::StorageType::Memory,
    };
    let history = stream::Config {
        name: config.stream.clone(),
        subjects: vec![subjects.stored_all()],
        max_messages_per_subject: config.history.max_messages as i64,
        max_age: config.history.max_age,
        allow_direct: true,
        republish: Some(Republish {
            source: subjects.stored_all(),
            destination: subjects.live_all(),
            headers_only: false,
        }),
        // JetStream refuses a duplicate window longer than max_age.
        duplicate_window: config.duplicate_window.min(config.history.max_age),
        num_replicas: config.replicas,
        storage,
        ..Default::default()
    };
    let tips = stream::Config {
        name: format!("{}_TIPS", config.stream),
        subjects: vec![subjects.tip_all()],
        max_messages_per_subject: 1,
        max_age: config.tip_max_age,
        allow_direct: true,
        num_replicas: config.replicas,
        storage,
        ..Default::default()
    };
    let mut handles = Vec::with_capacity(2);
    for stream_config in [history, tips] {
        let name = stream_config.name.clone();
        js.create_or_update_stream(stream_config)
            .await
            .map_err(|e| NatsError::Stream(format!("{name}: {e}")))?;
        handles.push(
            js.get_stream(&name)
                .await
                .map_err(|e| NatsError::Stream(format!("{name}: {e}")))?,
        );
    }
    let tips = handles
        .pop()
        .ok_or_else(|| NatsError::Stream("tip stream missing".into()))?;
    let stream = handles
        .pop()
        .ok_or_else(|| NatsError::Stream("stream missing".into()))?;
    Ok(Link {
        client,
        js,
        stream,
        tips,
        generation,
    })
}

/// Follows the connection: on a break, marks the broker disconnected, drops the broken client
/// (and whatever it still had queued), and opens fresh ones until one works. Ends when the
/// broker is dropped.
async fn supervise(shared: Weak<Shared>, mut events: mpsc::Receiver<Event>) {
    let mut tick = tokio::time::interval(SUPERVISE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Connected: wait for the break.
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::SlowConsumer(_)) => {
                        if let Some(s) = shared.upgrade() {
                            s.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(event) => debug!(%event, "NATS event"),
                    None => {}
                },
                _ = tick.tick() => {}
            }
            let Some(s) = shared.upgrade() else { return };
            let broken = s.link.borrow().as_ref().is_none_or(|l| !l.is_connected());
            if broken {
                break;
            }
        }
        let (config, subjects, generation) = {
            let Some(s) = shared.upgrade() else { return };
            let generation = s.link.borrow().as_ref().map_or(0, |l| l.generation) + 1;
            s.link.send_replace(None);
            s.state.send_replace(BrokerState::Disconnected);
            s.forget_tips();
            warn!(stream = %s.config.stream, "lost the NATS connection; reconnecting");
            (s.config.clone(), s.subjects.clone(), generation)
        };
        // Disconnected: open fresh connections until one works.
        let mut backoff = RECONNECT_BACKOFF.0;
        loop {
            if shared.strong_count() == 0 {
                return;
            }
            let (tx, rx) = mpsc::channel(EVENT_BUFFER);
            match open_link(&config, &subjects, tx, generation).await {
                Ok(link) => {
                    let Some(s) = shared.upgrade() else { return };
                    events = rx;
                    s.link.send_replace(Some(Arc::new(link)));
                    s.reconnects.fetch_add(1, Ordering::Relaxed);
                    s.state.send_replace(BrokerState::Connected);
                    info!(stream = %config.stream, generation, "reconnected to NATS");
                    break;
                }
                Err(error) => {
                    debug!(%error, "NATS reconnect attempt failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, request: PublishRequest) -> Result<Published, BrokerError> {
        self.publish_inner(request).await
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription, BrokerError> {
        match self.shared.config.live_interest {
            crate::LiveInterest::Wildcard => crate::demux::subscribe(&self.shared, channel).await,
            crate::LiveInterest::PerChannel => crate::live::subscribe(&self.shared, channel).await,
        }
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        self.history_inner(channel, query, Way::Batched(Scope::Channel))
            .await
    }

    async fn head(&self) -> Result<Cursor, BrokerError> {
        // Fail fast while disconnected, as every call does.
        self.shared.connected_link()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut heads = self.shared.heads.lock();
            heads.waiting.push(tx);
            !std::mem::replace(&mut heads.reading, true)
        };
        if start {
            tokio::spawn(read_heads(self.shared.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(BrokerError::Unavailable("head read ended".into())))
            .map(Cursor)
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.shared.state.subscribe()
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}
