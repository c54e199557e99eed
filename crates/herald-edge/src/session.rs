//! A client's subscriptions, its position in each channel, and the catch-up that brings a
//! resume up to the live feed. Shared by every held protocol.
//!
//! A position is one cursor per channel: every message of the channel up to it has been
//! delivered (or the client said it had it). Live feeds of different channels reach a
//! connection independently, so only per-channel positions resume exactly; see
//! [`herald_core::position`] for their text form.
//!
//! To subscribe, the session first joins the hub (live feed in place, its messages queuing in
//! the outbox), then streams the catch-up: from the channel's recent messages in memory when
//! they cover the position, else from broker history read page by page up to a head read
//! after joining, all channels merged in cursor order. From then on it admits a live message
//! only if it is after its channel's position, so the overlap of catch-up and live feed yields
//! no duplicate and no loss.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use futures_util::future::join_all;
use herald_core::{
    BrokerError, ChannelName, Cursor, HistoryPage, HistoryQuery, Message, PresenceEvent,
    PresenceKind, Protocol, Since, unix_micros,
};

use crate::{EdgeError, EdgeInner, hub::Resume, registry::Registration};

/// Messages read per broker history call during a catch-up.
const CATCHUP_PAGE: usize = 500;
/// Catch-up steps handed to a transport at once (it writes them in one go).
const CATCHUP_BATCH: usize = 256;

/// One thing a catch-up tells the client.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Messages of this channel after the client's position were lost.
    Gap(ChannelName),
    /// A retained message.
    Message(Arc<Message>),
    /// A client joined or left a subscribed channel (ephemeral).
    Presence(Arc<PresenceEvent>),
    /// The operator removed this channel (already left).
    Unsubscribed(ChannelName),
    /// The operator added this channel: the transport subscribes it from now.
    Subscribe(ChannelName),
}

/// A subscribe in progress: `subscribed` goes out first, then every [`Session::catch_up`]
/// batch, then the live feed.
pub(crate) struct Catchup {
    /// Channels newly subscribed, in request order.
    pub(crate) channels: Vec<ChannelName>,
    /// "Now" for the channels subscribed without a position (the head read after joining);
    /// without such channels, the lowest resume position.
    pub(crate) cursor: Cursor,
    /// Per channel, what is still to send.
    sources: Vec<Source>,
    /// When set, no broker read goes past it (a consistent cut for the merge).
    bound: Option<Cursor>,
}

struct Source {
    channel: ChannelName,
    /// Steps read and not yet sent, in cursor order.
    queue: VecDeque<Step>,
    /// Where the next broker read starts; `None` once nothing is left to read.
    next: Option<Cursor>,
    /// Whether a read has been made (namespace limits apply to the first page).
    started: bool,
    /// Once everything is sent, the channel stands at least here.
    through: Cursor,
}

impl Source {
    fn front_key(&self) -> Option<Cursor> {
        self.queue.front().map(|s| match s {
            Step::Gap(_) | Step::Presence(_) | Step::Unsubscribed(_) | Step::Subscribe(_) => {
                Cursor::ZERO
            }
            Step::Message(m) => m.cursor,
        })
    }
}

/// One held connection's subscriptions.
pub(crate) struct Session {
    pub(crate) edge: Arc<EdgeInner>,
    pub(crate) reg: Registration,
    /// Subscribed channels and the position of each.
    positions: BTreeMap<ChannelName, Cursor>,
    /// The channel set's hash in position tokens, computed once per change of the set
    /// (an SSE stream with several channels encodes a token at every event).
    set_hash: Option<Box<str>>,
    /// Set once the operator changed an SSE stream's channels: its `id:` tokens keep naming
    /// the set of its URL, so a plain `EventSource` reconnect (which resends the last id with
    /// the same URL) still resumes. Never allocated otherwise.
    pinned: Option<Box<Pinned>>,
}

/// The channel set an SSE stream's tokens keep naming after a server-side change.
struct Pinned {
    channels: Vec<ChannelName>,
    hash: Box<str>,
    /// Positions of pinned channels the operator removed, as they stood then.
    frozen: BTreeMap<ChannelName, Cursor>,
}

impl Session {
    pub(crate) fn new(edge: Arc<EdgeInner>, reg: Registration) -> Self {
        Self {
            edge,
            reg,
            positions: BTreeMap::new(),
            set_hash: None,
            pinned: None,
        }
    }

    /// Subscribes to `requested` (those not already subscribed), each from its position in
    /// `since` or from now. Returns once the live feeds are in place and the first page of
    /// every channel that needs the broker has been read (so gaps are known before any message).
    pub(crate) async fn subscribe(
        &mut self,
        requested: &[ChannelName],
        since: &Since,
    ) -> Result<Catchup, EdgeError> {
        let mut fresh: Vec<ChannelName> = Vec::new();
        for c in requested {
            if !self.positions.contains_key(c) && !fresh.contains(c) {
                fresh.push(c.clone());
            }
        }
        let max = self.edge.config.max_channels_per_connection;
        if self.positions.len() + fresh.len() > max {
            return Err(EdgeError::TooManyChannels { max });
        }

        let hub = &self.edge.hub;
        let (id, outbox) = (self.reg.id, &self.reg.outbox);
        let joined = join_all(fresh.iter().map(|c| hub.join(c, id, outbox, since.of(c)))).await;
        let mut resumes = Vec::with_capacity(fresh.len());
        for r in joined {
            match r {
                Ok(r) => resumes.push(r),
                Err(e) => {
                    self.leave_all(&fresh);
                    return Err(EdgeError::Broker(e));
                }
            }
        }

        // The head bounds broker reads and is "now" for channels without a position; read
        // after joining, so everything after it comes through the live feeds.
        let needs_head = fresh
            .iter()
            .zip(&resumes)
            .any(|(c, r)| since.of(c).is_none() || matches!(r, Resume::Uncovered));
        let head = if needs_head {
            match self.edge.broker.head().await {
                Ok(h) => Some(h),
                Err(e) => {
                    self.leave_all(&fresh);
                    return Err(EdgeError::Broker(e));
                }
            }
        } else {
            None
        };

        let mut sources = Vec::new();
        let mut lowest: Option<Cursor> = None;
        for (c, resume) in fresh.iter().zip(resumes) {
            let position = match (since.of(c), head) {
                (Some(p), _) => p,
                (None, Some(h)) => h,
                (None, None) => Cursor::ZERO, // unreachable: no position means a head read
            };
            lowest = Some(lowest.map_or(position, |l| l.min(position)));
            self.positions.insert(c.clone(), position);
            self.set_hash = None;
            match (since.of(c), resume) {
                (None, _) => {}
                (Some(_), Resume::Covered { messages, through }) => {
                    let page = HistoryPage {
                        messages,
                        gap: false,
                    };
                    let mut queue = VecDeque::new();
                    self.admit_page(c, page, &mut queue);
                    sources.push(Source {
                        channel: c.clone(),
                        queue,
                        next: None,
                        started: true,
                        through,
                    });
                }
                (Some(p), Resume::Uncovered) => sources.push(Source {
                    channel: c.clone(),
                    queue: VecDeque::new(),
                    next: Some(p),
                    started: false,
                    through: head.unwrap_or(p).max(p),
                }),
            }
        }
        let mut catchup = Catchup {
            channels: fresh,
            cursor: head.or(lowest).unwrap_or(Cursor::ZERO),
            sources,
            bound: head,
        };
        // Read every first page now: a gap goes out before any message.
        let first: Vec<usize> = (0..catchup.sources.len()).collect();
        if let Err(e) = self.read_pages(&mut catchup, &first).await {
            let channels = catchup.channels.clone();
            self.leave_all(&channels);
            for c in &channels {
                self.positions.remove(c);
            }
            self.set_hash = None;
            return Err(EdgeError::Broker(e));
        }
        // After a gap the client's old position means nothing (it may be one the broker
        // never issued): the channel stands no further than the head until messages follow.
        if let Some(head) = head {
            for s in &mut catchup.sources {
                if matches!(s.queue.front(), Some(Step::Gap(_))) {
                    s.through = head;
                    if let Some(p) = self.positions.get_mut(&s.channel) {
                        *p = (*p).min(head);
                    }
                }
            }
        }
        self.announce(PresenceKind::Join, &catchup.channels);
        Ok(catchup)
    }

    /// Tells the channels' subscribers (on every node) that this client joined or left, for
    /// channels whose namespace has join/leave events. Held streams only: a long-poll is a
    /// request, not a member.
    fn announce(&self, kind: PresenceKind, channels: &[ChannelName]) {
        if !matches!(self.reg.protocol, Protocol::WebSocket | Protocol::Sse) {
            return;
        }
        let policy = &self.edge.config.policy;
        for c in channels {
            if policy.rule(c).join_leave {
                let who = &self.reg.outbox.client;
                self.edge.announce(PresenceEvent {
                    kind,
                    channel: c.as_str().to_owned(),
                    client: who.id.to_string(),
                    user: who.user.to_string(),
                    info: who.info.as_deref().map(str::to_owned),
                    node: self.edge.config.node_id.clone(),
                });
            }
        }
    }

    /// Moves the next catch-up steps into `out` (merged in cursor order, at most a batch);
    /// the transport records each as it writes it ([`crate::deliver::catch_up`]). Returns
    /// false, with nothing added, once the catch-up is complete: every channel then stands at
    /// least where the catch-up covered it (raised only now, after every step was handed
    /// out, so no position ever claims a message not yet written). A broker failure mid-way
    /// ends the unfinished channels with a gap (the client is told, never short-changed in
    /// silence).
    pub(crate) async fn catch_up(&mut self, c: &mut Catchup, out: &mut Vec<Step>) -> bool {
        loop {
            let empty: Vec<usize> = c
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.queue.is_empty() && s.next.is_some())
                .map(|(i, _)| i)
                .collect();
            if !empty.is_empty() && self.read_pages(c, &empty).await.is_err() {
                for i in empty {
                    let s = &mut c.sources[i];
                    s.next = None;
                    s.queue.push_back(Step::Gap(s.channel.clone()));
                }
            }
            // Every source still reading has something queued: the smallest front is next.
            let next = c
                .sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.front_key().map(|k| (k, i)))
                .min()
                .map(|(_, i)| i);
            let Some(i) = next else {
                if !out.is_empty() {
                    return true;
                }
                for s in &c.sources {
                    if let Some(p) = self.positions.get_mut(&s.channel) {
                        *p = (*p).max(s.through);
                    }
                }
                c.sources.clear();
                return false;
            };
            if let Some(step) = c.sources[i].queue.pop_front() {
                out.push(step);
            }
            if out.len() >= CATCHUP_BATCH {
                return true;
            }
        }
    }

    /// Reads the next page of each source in `which`, concurrently.
    async fn read_pages(&self, c: &mut Catchup, which: &[usize]) -> Result<(), BrokerError> {
        let broker = &self.edge.broker;
        let reads: Vec<_> = which
            .iter()
            .filter_map(|&i| {
                let s = &c.sources[i];
                let after = s.next?;
                // Channels with a namespace history size are read whole (it is small):
                // only their newest messages may be served.
                let whole = self.edge.config.policy.rule(&s.channel).history_size;
                let limit = if whole.is_some() && !s.started {
                    usize::MAX
                } else {
                    CATCHUP_PAGE
                };
                Some((i, after, limit))
            })
            .collect();
        self.edge.metrics.history_reads.inc_by(reads.len() as u64);
        let pages = join_all(reads.iter().map(|&(i, after, limit)| {
            broker.history(&c.sources[i].channel, HistoryQuery { after, limit })
        }))
        .await;
        for (&(i, _, limit), page) in reads.iter().zip(pages) {
            let mut page = page?;
            let s = &mut c.sources[i];
            let full = page.messages.len() >= limit;
            let mut past_bound = false;
            if let Some(bound) = c.bound {
                let before = page.messages.len();
                page.messages.retain(|m| m.cursor <= bound);
                past_bound = page.messages.len() < before;
            }
            s.next = match page.messages.last() {
                Some(m) if full && !past_bound => Some(m.cursor),
                _ => None,
            };
            if !s.started {
                s.started = true;
                let channel = s.channel.clone();
                self.admit_page(&channel, page, &mut s.queue);
            } else {
                // A hole met mid-read (evicted meanwhile) is reported where it is.
                if page.gap {
                    s.queue.push_back(Step::Gap(s.channel.clone()));
                }
                s.queue.extend(page.messages.into_iter().map(Step::Message));
            }
        }
        Ok(())
    }

    /// Queues a channel's first page after its namespace limits: messages older than the
    /// namespace's history age, or beyond its history size, count as lost (a gap).
    fn admit_page(&self, c: &ChannelName, mut page: HistoryPage, queue: &mut VecDeque<Step>) {
        apply_rule(&self.edge, c, &mut page);
        if page.gap {
            queue.push_back(Step::Gap(c.clone()));
        }
        queue.extend(page.messages.into_iter().map(Step::Message));
    }

    /// Joins the live feeds of `channels` standing at `at`, without a catch-up (long-poll:
    /// it reads history itself).
    pub(crate) async fn join_live(
        &mut self,
        channels: &[ChannelName],
        at: Cursor,
    ) -> Result<(), EdgeError> {
        let hub = &self.edge.hub;
        let (id, outbox) = (self.reg.id, &self.reg.outbox);
        let joined = join_all(channels.iter().map(|c| hub.join(c, id, outbox, None))).await;
        if let Some(Err(e)) = joined.into_iter().find(|r| r.is_err()) {
            self.leave_all(channels);
            return Err(EdgeError::Broker(e));
        }
        for c in channels {
            self.positions.insert(c.clone(), at);
        }
        self.set_hash = None;
        Ok(())
    }

    fn leave_all(&self, channels: &[ChannelName]) {
        for c in channels {
            self.edge.hub.leave(c, self.reg.id);
        }
    }

    /// Unsubscribes; returns the channels that were subscribed.
    pub(crate) fn unsubscribe(&mut self, channels: &[ChannelName]) -> Vec<ChannelName> {
        let mut removed = Vec::new();
        for c in channels {
            if let Some(at) = self.positions.remove(c) {
                self.edge.hub.leave(c, self.reg.id);
                removed.push(c.clone());
                if let Some(pin) = &mut self.pinned
                    && pin.channels.contains(c)
                {
                    pin.frozen.insert(c.clone(), at);
                }
            }
        }
        self.set_hash = None;
        self.announce(PresenceKind::Leave, &removed);
        removed
    }

    /// Whether a live message should go to the client (subscribed and after its channel's
    /// position); moves the position if so.
    pub(crate) fn admit(&mut self, m: &Message) -> bool {
        match self.positions.get_mut(&m.channel) {
            Some(p) if m.cursor > *p => {
                *p = m.cursor;
                true
            }
            _ => false,
        }
    }

    /// Records a catch-up message as delivered.
    pub(crate) fn record(&mut self, m: &Message) {
        self.reach(&m.channel, m.cursor);
    }

    /// Moves `channel`'s position to `at` unless it is already there or past it.
    fn reach(&mut self, channel: &ChannelName, at: Cursor) {
        if let Some(p) = self.positions.get_mut(channel) {
            *p = (*p).max(at);
        }
    }

    /// Sets the positions of subscribed channels (a long-poll after its history read).
    pub(crate) fn stand_at(&mut self, positions: &BTreeMap<ChannelName, Cursor>) {
        for (c, at) in positions {
            if let Some(p) = self.positions.get_mut(c) {
                *p = *at;
            }
        }
    }

    /// Keeps the position tokens naming the current channel set from now on (see
    /// [`Session::pinned`]); done before the first server-side change of an SSE stream.
    pub(crate) fn pin_token_set(&mut self) {
        if self.pinned.is_none() {
            let channels: Vec<ChannelName> = self.positions.keys().cloned().collect();
            let hash = herald_core::position::set_hash(channels.iter()).into();
            self.pinned = Some(Box::new(Pinned {
                channels,
                hash,
                frozen: BTreeMap::new(),
            }));
        }
    }

    /// Whether tokens name a pinned set rather than the subscribed one.
    pub(crate) fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// The connection's position in all its channels, as a position token (an SSE `id:`).
    pub(crate) fn token(&mut self) -> String {
        if let Some(pin) = &self.pinned {
            let at: BTreeMap<ChannelName, Cursor> = pin
                .channels
                .iter()
                .map(|c| {
                    let p = self.positions.get(c).or_else(|| pin.frozen.get(c));
                    (c.clone(), p.copied().unwrap_or(Cursor::ZERO))
                })
                .collect();
            return herald_core::position::encode_with(&at, Some(&pin.hash));
        }
        let positions = &self.positions;
        let hash = self
            .set_hash
            .get_or_insert_with(|| herald_core::position::set_hash(positions.keys()).into());
        herald_core::position::encode_with(&self.positions, Some(hash))
    }

    /// Lists in `out` the channels whose live messages the fan-out may write straight to
    /// this connection's socket, each with its position, sorted by channel; false when none.
    /// A WebSocket's message frames are the same for every connection: all its channels. An
    /// SSE event's `id:` is the message's own only for a stream of one channel that is not
    /// pinned to a channel set.
    pub(crate) fn direct_positions(&self, out: &mut Vec<(ChannelName, Cursor)>) -> bool {
        let shared = match self.reg.protocol {
            Protocol::WebSocket => true,
            Protocol::Sse => self.positions.len() == 1 && !self.is_pinned(),
            _ => false,
        };
        if shared {
            out.extend(self.positions.iter().map(|(c, p)| (c.clone(), *p)));
        }
        !out.is_empty()
    }

    /// Records the positions direct writes reached (see [`Session::direct_positions`]).
    pub(crate) fn record_positions(&mut self, reached: &[(ChannelName, Cursor)]) {
        for (c, at) in reached {
            self.reach(c, *at);
        }
    }

    /// How many channels are subscribed.
    pub(crate) fn channel_count(&self) -> usize {
        self.positions.len()
    }

    /// The subscribed channels.
    pub(crate) fn channels(&self) -> Vec<ChannelName> {
        self.positions.keys().cloned().collect()
    }

    /// Whether `c` is subscribed.
    pub(crate) fn is_subscribed(&self, c: &ChannelName) -> bool {
        self.positions.contains_key(c)
    }

    /// [`Session::is_subscribed`] by name.
    pub(crate) fn is_subscribed_name(&self, c: &str) -> bool {
        self.positions.contains_key(c)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for c in self.positions.keys() {
            self.edge.hub.leave(c, self.reg.id);
        }
        let channels: Vec<ChannelName> = self.positions.keys().cloned().collect();
        self.announce(PresenceKind::Leave, &channels);
    }
}

/// Applies a channel's namespace history limits to a page read from its first message on.
fn apply_rule(edge: &EdgeInner, c: &ChannelName, page: &mut HistoryPage) {
    let rule = edge.config.policy.rule(c);
    if let Some(ttl) = rule.history_ttl {
        let floor = unix_micros().saturating_sub(ttl.as_micros() as u64);
        let before = page.messages.len();
        page.messages.retain(|m| m.published_us >= floor);
        page.gap |= page.messages.len() < before;
    }
    if let Some(size) = rule.history_size
        && page.messages.len() > size
    {
        page.messages.drain(..page.messages.len() - size);
        page.gap = true;
    }
}

/// Retained messages of several channels after their positions, merged in cursor order.
pub(crate) struct Merged {
    /// The messages, in cursor order.
    pub(crate) messages: Vec<Arc<Message>>,
    /// Channels whose history could not cover the position.
    pub(crate) gaps: Vec<ChannelName>,
    /// Where each channel stands after `messages`: a consistent cut (every message up to it
    /// is in `messages`, or lost and named in `gaps`), or the channel's own position when it
    /// was ahead. The poll reply's `cursor` is its text form.
    pub(crate) positions: BTreeMap<ChannelName, Cursor>,
}

/// Reads the history of `channels` after their positions in `since` (at most `limit`
/// messages in all) and merges it into a consistent cut. The one place polls read history.
pub(crate) async fn read_merged(
    edge: &EdgeInner,
    channels: &[ChannelName],
    since: &Since,
    limit: usize,
) -> Result<Merged, BrokerError> {
    let broker = &edge.broker;
    let position = |c: &ChannelName| since.of(c).unwrap_or(Cursor::ZERO);
    // One channel whose recent messages cover the position: no broker read at all.
    if let [c] = channels
        && let Some(p) = since.of(c)
        && let Some((messages, _)) = edge.hub.recent(c, p)
    {
        let mut page = HistoryPage {
            messages,
            gap: false,
        };
        apply_rule(edge, c, &mut page);
        page.messages.truncate(limit);
        let at = page.messages.last().map_or(p, |m| m.cursor);
        return Ok(Merged {
            gaps: if page.gap { vec![c.clone()] } else { vec![] },
            messages: page.messages,
            positions: BTreeMap::from([(c.clone(), at)]),
        });
    }
    // Channels are read one by one, so a message stored on an already-read channel while a
    // later one is read could sort before messages returned here. Bounding the merge by the
    // head read *before* the reads makes it a consistent cut: everything up to the bound is
    // in the pages; anything after it comes with the next poll.
    let bound = if channels.len() > 1 {
        Some(broker.head().await?)
    } else {
        None
    };
    edge.metrics.history_reads.inc_by(channels.len() as u64);
    let pages = join_all(channels.iter().map(|c| {
        broker.history(
            c,
            HistoryQuery {
                after: position(c),
                limit,
            },
        )
    }))
    .await;
    let mut messages = Vec::new();
    let mut gaps = Vec::new();
    for (c, page) in channels.iter().zip(pages) {
        let mut page = page?;
        apply_rule(edge, c, &mut page);
        if page.gap {
            gaps.push(c.clone());
        }
        if let Some(bound) = bound {
            page.messages.retain(|m| m.cursor <= bound);
        }
        messages.extend(page.messages);
    }
    messages.sort_by_key(|m| m.cursor);
    let mut cut = bound;
    if messages.len() > limit {
        // A prefix complete for every channel: the first `limit` of the merge are the true
        // first `limit`, as each channel gave up to `limit`.
        messages.truncate(limit);
        cut = messages.last().map(|m| m.cursor);
    }
    let positions = channels
        .iter()
        .map(|c| {
            // After a gap the old position means nothing (it may never have been issued).
            let from = if gaps.contains(c) {
                Cursor::ZERO
            } else {
                position(c)
            };
            // Without a cut there is one channel: it stands at its last message.
            let at = match cut {
                Some(cut) => cut.max(from),
                None => messages.last().map_or(from, |m| m.cursor),
            };
            (c.clone(), at)
        })
        .collect();
    Ok(Merged {
        messages,
        gaps,
        positions,
    })
}
