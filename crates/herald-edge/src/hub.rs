//! Local interest: one broker subscription per channel that has subscribers on this node,
//! fanned out to each subscriber's [`Outbox`].
//!
//! A channel's subscription starts with its first local subscriber and is dropped a short
//! linger after its last one leaves, so polling clients (which come and go per request) do
//! not make the node subscribe and unsubscribe at every poll. Fan-out never waits: a full
//! outbox closes itself (slow consumer). When the broker says it may have dropped messages
//! (`Lagged`, a reconnect), the hub repairs from history once for all local subscribers.

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_core::{
    Broker, BrokerError, ChannelName, Cursor, HistoryQuery, LiveEvent, Message, Protocol,
    Subscription,
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

/// The node's table of channels with local interest.
pub(crate) struct Hub {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    /// How long a channel keeps its broker subscription after its last local subscriber.
    linger: Duration,
    /// Most messages read per history call when repairing a feed.
    repair_batch: usize,
    slots: Mutex<HashMap<ChannelName, Arc<Slot>>>,
}

struct Slot {
    channel: ChannelName,
    members: Mutex<Members>,
    /// Pending until the broker subscription is in place, then Live (or Failed).
    ready: watch::Sender<Readiness>,
    /// Woken when the last member leaves, so the pump starts its linger.
    emptied: Notify,
}

#[derive(Default)]
struct Members {
    /// Connection id to its outbox.
    conns: HashMap<u64, Arc<Outbox>>,
    /// Set once the slot left the table; a joiner must create a new one.
    retired: bool,
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

    /// [`Slot::fan_out`] for a message whose publish was traced, when this node exports
    /// traces: a `herald.edge.receive` span continuing the publish's trace, and in it one
    /// `herald.deliver` span per protocol with subscribers here (never one per connection),
    /// covering the hand-off to those connections' outbound queues.
    fn fan_out_traced(&self, message: &Arc<Message>, traceparent: &str) {
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
        let members = self.members.lock();
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
    ) -> Self {
        Self {
            broker,
            metrics,
            linger,
            repair_batch,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a connection to a channel's local subscribers and waits until the broker feed
    /// is live: once this returns, nothing published to the channel can be missed.
    pub(crate) async fn join(
        self: &Arc<Self>,
        channel: &ChannelName,
        conn: u64,
        outbox: &Arc<Outbox>,
    ) -> Result<(), BrokerError> {
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
                    });
                    slots.insert(channel.clone(), slot.clone());
                    self.metrics.channels.set(slots.len() as i64);
                    tokio::spawn(pump(self.clone(), slot.clone()));
                    slot
                }
            };
            if slot
                .members
                .lock()
                .conns
                .insert(conn, outbox.clone())
                .is_none()
            {
                self.metrics.subscriptions.inc();
            }
            slot
        };
        let mut ready = slot.ready.subscribe();
        let state = ready
            .wait_for(|r| !matches!(r, Readiness::Pending))
            .await
            .map(|r| r.clone())
            .unwrap_or(Readiness::Failed(BrokerError::Closed));
        match state {
            Readiness::Live => Ok(()),
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
                self.metrics.subscriptions.dec();
                if members.conns.is_empty() {
                    slot.emptied.notify_one();
                }
            }
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
    /// subscribers about a gap when history no longer covers it or cannot be read.
    async fn repair(&self, slot: &Slot, last: &mut Option<Cursor>) {
        let Some(mut after) = *last else {
            slot.fan_out(&Item::Gap(slot.channel.clone()));
            return;
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
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, channel = %slot.channel, "could not repair a live feed");
                    slot.fan_out(&Item::Gap(slot.channel.clone()));
                    return;
                }
            }
        }
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
    // Where a repair starts if the feed lags before its first message.
    let mut last: Option<Cursor> = hub.broker.head().await.ok();
    slot.ready.send_replace(Readiness::Live);
    let mut idle_deadline: Option<Instant> = None;
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
                                slot.fan_out_traced(&m, tp)
                            }
                            _ => slot.fan_out(&Item::Message(m)),
                        }
                    }
                }
                Some(LiveEvent::Lagged) => hub.repair(&slot, &mut last).await,
                None => match resubscribe(&hub, &slot).await {
                    Some(new) => {
                        sub = new;
                        hub.repair(&slot, &mut last).await;
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
    use herald_core::{MemoryBroker, MemoryBrokerConfig, Payload, PublishRequest};

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
        hub.join(&ch, 1, &outbox).await.unwrap();
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
                    Item::Gap(_) => panic!("history still had everything: no gap"),
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
        hub.join(&ch, 1, &outbox).await.unwrap();
        assert_eq!((hub.channel_count(), broker.live_subscriptions()), (1, 1));
        hub.leave(&ch, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hub.channel_count(), 1, "still lingering");
        // A join during the linger reuses the subscription.
        hub.join(&ch, 2, &outbox).await.unwrap();
        hub.leave(&ch, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(broker.live_subscriptions(), 0, "broker interest dropped");
    }
}
