//! The embedded broker: one node, no external process, everything in this process's memory.
//!
//! One mutex orders every publish, so cursors are strictly increasing and each channel's
//! subscribers see messages in cursor order. Cursors are `max(previous + 1, now in µs)`, so
//! they keep increasing across restarts of the process and a cursor issued before a restart is
//! recognised as older than anything this instance retains (a gap, honestly reported).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Weak},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    Broker, BrokerError, BrokerState, ChannelName, Cursor, HistoryLimits, HistoryPage,
    HistoryQuery, LiveEvent, Message, PublishRequest, Published, Subscription, unix_micros,
};

/// Settings of the memory broker.
#[derive(Debug, Clone)]
pub struct MemoryBrokerConfig {
    /// What each channel retains.
    pub history: HistoryLimits,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// Most idempotency keys remembered at once; the oldest are forgotten first.
    pub max_dedup_keys: usize,
    /// Most channel records kept (including empty ones that only remember what they evicted).
    /// Past it, empty records are dropped and their eviction marks fold into one global mark,
    /// which can only make gap reports more conservative, never miss one.
    pub max_channels: usize,
    /// Per-subscription buffer, in messages (at least 2). A subscriber that falls this far
    /// behind gets [`LiveEvent::Lagged`] and repairs from history.
    pub live_buffer: usize,
}

impl MemoryBrokerConfig {
    /// Default idempotency window (matches JetStream's default duplicate window).
    pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);
    /// Default bound on remembered idempotency keys.
    pub const DEFAULT_MAX_DEDUP_KEYS: usize = 100_000;
    /// Default bound on channel records.
    pub const DEFAULT_MAX_CHANNELS: usize = 1_000_000;
    /// Default per-subscription live buffer.
    pub const DEFAULT_LIVE_BUFFER: usize = 1024;
}

impl Default for MemoryBrokerConfig {
    fn default() -> Self {
        Self {
            history: HistoryLimits::default(),
            dedup_window: Self::DEFAULT_DEDUP_WINDOW,
            max_dedup_keys: Self::DEFAULT_MAX_DEDUP_KEYS,
            max_channels: Self::DEFAULT_MAX_CHANNELS,
            live_buffer: Self::DEFAULT_LIVE_BUFFER,
        }
    }
}

/// The embedded, single-node broker. Cheap to clone (shared).
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: MemoryBrokerConfig,
    state: Mutex<State>,
    /// Always `Connected`: there is nothing to lose contact with.
    status: watch::Sender<BrokerState>,
}

struct State {
    /// Cursor of the newest message (or the start mark before the first).
    last: u64,
    /// The cursor when this instance started; older non-zero cursors predate its memory.
    epoch: u64,
    /// Highest cursor evicted from any channel record that has since been dropped.
    forgotten_through: u64,
    channels: HashMap<ChannelName, Chan>,
    dedup: HashMap<String, u64>,
    /// Idempotency keys in insertion order with their expiry (µs), for pruning.
    dedup_order: VecDeque<(u64, String)>,
}

#[derive(Default)]
struct Chan {
    /// Retained messages, oldest first (cursor order).
    history: VecDeque<Arc<Message>>,
    /// Highest cursor evicted from this channel: a resume from below it has a gap.
    evicted_through: u64,
    /// Live subscribers of this channel.
    subs: Vec<LiveSub>,
}

struct LiveSub {
    tx: mpsc::Sender<LiveEvent>,
}

impl LiveSub {
    /// Offers a message; returns false when the subscriber is gone.
    ///
    /// The last free slot is kept for [`LiveEvent::Lagged`]: when only one is left, `Lagged`
    /// takes it. So a full queue always ends with a `Lagged`, which covers every message
    /// dropped while it is full, even if nothing is published afterwards. (The broker lock
    /// makes this the only producer, so the capacity check cannot race.)
    fn offer(&mut self, msg: &Arc<Message>) -> bool {
        let event = match self.tx.capacity() {
            0 => return !self.tx.is_closed(),
            1 => LiveEvent::Lagged,
            _ => LiveEvent::Message(msg.clone()),
        };
        !matches!(
            self.tx.try_send(event),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }
}

impl Chan {
    fn evict_expired(&mut self, cutoff_us: u64) {
        while let Some(front) = self.history.front() {
            if front.published_us >= cutoff_us {
                break;
            }
            self.evicted_through = front.cursor.0;
            self.history.pop_front();
        }
    }
}

impl MemoryBroker {
    /// Creates a broker. Must be called inside a tokio runtime: a background task evicts
    /// expired history and prunes idle channel records; it stops when the broker is dropped.
    pub fn new(config: MemoryBrokerConfig) -> Self {
        let now = unix_micros();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                last: now,
                epoch: now,
                forgotten_through: 0,
                channels: HashMap::new(),
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
            }),
            status: watch::Sender::new(BrokerState::Connected),
            config,
        });
        let period = (inner.config.history.max_age / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(sweep(Arc::downgrade(&inner), period));
        Self { inner }
    }

    /// Number of live subscriptions still open (for tests and metrics).
    pub fn live_subscriptions(&self) -> usize {
        let mut state = self.inner.state.lock();
        state
            .channels
            .values_mut()
            .map(|c| {
                c.subs.retain(|s| !s.tx.is_closed());
                c.subs.len()
            })
            .sum()
    }

    fn age_cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.inner.config.history.max_age.as_micros() as u64)
    }
}

async fn sweep(inner: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = unix_micros();
        let cutoff = now.saturating_sub(inner.config.history.max_age.as_micros() as u64);
        let max_channels = inner.config.max_channels;
        let mut state = inner.state.lock();
        let mut forgotten = state.forgotten_through;
        let mut excess = state.channels.len().saturating_sub(max_channels);
        state.channels.retain(|_, chan| {
            chan.evict_expired(cutoff);
            chan.subs.retain(|s| !s.tx.is_closed());
            if excess > 0 && chan.history.is_empty() && chan.subs.is_empty() {
                excess -= 1;
                forgotten = forgotten.max(chan.evicted_through);
                return false;
            }
            // A record that never evicted anything and holds nothing carries no information.
            !(chan.history.is_empty() && chan.subs.is_empty() && chan.evicted_through == 0)
        });
        state.forgotten_through = forgotten;
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, request: PublishRequest) -> Result<Published, BrokerError> {
        let config = &self.inner.config;
        let now = unix_micros();
        let mut guard = self.inner.state.lock();
        let state = &mut *guard;

        if let Some(key) = &request.idempotency_key {
            while let Some((expires, _)) = state.dedup_order.front() {
                if *expires > now && state.dedup_order.len() < config.max_dedup_keys {
                    break;
                }
                if let Some((_, k)) = state.dedup_order.pop_front() {
                    state.dedup.remove(&k);
                }
            }
            if let Some(&cursor) = state.dedup.get(key) {
                return Ok(Published {
                    cursor: Cursor(cursor),
                    duplicate: true,
                });
            }
        }

        let seq = now.max(state.last + 1);
        state.last = seq;
        let msg = Arc::new(
            Message::new(request.channel.clone(), Cursor(seq), now, request.data)
                .with_traceparent(crate::trace::current_traceparent()),
        );
        let cutoff = self.age_cutoff(now);
        let chan = state.channels.entry(request.channel).or_default();
        chan.evict_expired(cutoff);
        chan.history.push_back(msg.clone());
        while chan.history.len() > config.history.max_messages.max(1) {
            if let Some(old) = chan.history.pop_front() {
                chan.evicted_through = old.cursor.0;
            }
        }
        chan.subs.retain_mut(|s| s.offer(&msg));

        if let Some(key) = request.idempotency_key {
            let expires = now + config.dedup_window.as_micros() as u64;
            state.dedup.insert(key.clone(), seq);
            state.dedup_order.push_back((expires, key));
        }
        Ok(Published {
            cursor: Cursor(seq),
            duplicate: false,
        })
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription, BrokerError> {
        let (tx, rx) = mpsc::channel(self.inner.config.live_buffer.max(2));
        let mut state = self.inner.state.lock();
        state
            .channels
            .entry(channel.clone())
            .or_default()
            .subs
            .push(LiveSub { tx });
        Ok(Subscription::new(ReceiverStream::new(rx)))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let cutoff = self.age_cutoff(unix_micros());
        let mut state = self.inner.state.lock();
        let after = query.after.0;
        let ahead = after > state.last;
        let before_epoch = after != 0 && after < state.epoch;
        let forgotten = state.forgotten_through;
        let Some(chan) = state.channels.get_mut(channel) else {
            return Ok(HistoryPage {
                messages: Vec::new(),
                gap: ahead || before_epoch || after < forgotten,
            });
        };
        chan.evict_expired(cutoff);
        let start = chan.history.partition_point(|m| m.cursor.0 <= after);
        let messages = chan
            .history
            .range(start..)
            .take(query.limit)
            .cloned()
            .collect();
        Ok(HistoryPage {
            messages,
            gap: ahead || before_epoch || after < chan.evicted_through,
        })
    }

    async fn head(&self) -> Result<Cursor, BrokerError> {
        Ok(Cursor(self.inner.state.lock().last))
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.inner.status.subscribe()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(history: HistoryLimits) -> MemoryBroker {
        MemoryBroker::new(MemoryBrokerConfig {
            history,
            ..Default::default()
        })
    }

    crate::broker_conformance_tests!(|limits| async move { broker(limits) });

    #[tokio::test]
    async fn dropped_subscriptions_release_interest() {
        let b = broker(HistoryLimits::default());
        let ch = ChannelName::new("a").unwrap();
        let s1 = b.subscribe(&ch).await.unwrap();
        let _s2 = b.subscribe(&ch).await.unwrap();
        assert_eq!(b.live_subscriptions(), 2);
        drop(s1);
        assert_eq!(b.live_subscriptions(), 1);
    }

    #[tokio::test]
    async fn cursor_from_before_a_restart_is_a_gap() {
        let old = broker(HistoryLimits::default());
        let ch = ChannelName::new("a").unwrap();
        let req = |n: u32| PublishRequest {
            channel: ch.clone(),
            data: crate::Payload::from_json(n.to_string(), 100).unwrap(),
            idempotency_key: None,
        };
        let c = old.publish(req(1)).await.unwrap().cursor;
        drop(old);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let new = broker(HistoryLimits::default());
        let page = new
            .history(
                &ch,
                HistoryQuery {
                    after: c,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert!(
            page.gap,
            "a restarted memory broker cannot vouch for what followed {c:?}"
        );
        let c2 = new.publish(req(2)).await.unwrap().cursor;
        assert!(c2 > c, "cursors keep increasing across restarts");
    }

    #[tokio::test]
    async fn slow_subscriber_gets_lagged_then_continues() {
        let b = MemoryBroker::new(MemoryBrokerConfig {
            live_buffer: 3,
            ..Default::default()
        });
        let ch = ChannelName::new("a").unwrap();
        let mut sub = b.subscribe(&ch).await.unwrap();
        let publish = |n: u32| {
            let data = crate::Payload::from_json(n.to_string(), 100).unwrap();
            b.publish(PublishRequest {
                channel: ch.clone(),
                data,
                idempotency_key: None,
            })
        };
        for n in 0..5 {
            publish(n).await.unwrap();
        }
        // Two messages fit; the last slot holds Lagged, even with nothing published after.
        for expected in [b"0", b"1"] {
            match sub.next().await {
                Some(LiveEvent::Message(m)) => assert_eq!(m.data.as_bytes(), expected),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(sub.next().await, Some(LiveEvent::Lagged)));
        publish(9).await.unwrap();
        match sub.next().await {
            Some(LiveEvent::Message(m)) => assert_eq!(m.data.as_bytes(), b"9"),
            other => panic!("{other:?}"),
        }
    }
}
