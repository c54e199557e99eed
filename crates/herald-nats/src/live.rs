//! Live subscriptions: a core NATS subscription on the channel's republish subject, checked
//! link by link against the channel's chain, moved to each new connection after a break.
//! With [`crate::LiveInterest::Wildcard`], [`subscribe`] hands over to [`crate::demux`]: one
//! subscription for the whole node, the same chain check per channel.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::Message as NatsMessage;
use futures_util::StreamExt;
use herald_core::{BrokerError, ChannelName, LiveEvent, Subscription, unix_micros};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::broker::{HDR_LAST_SEQ, HDR_PREV, HDR_SEQ, Link, Shared, header_u64, to_message};

/// How often a subscription retries re-subscribing on a connection where that failed.
const RESUBSCRIBE_RETRY: Duration = Duration::from_millis(250);

/// Subscribes on the current connection and returns once the server has registered the
/// interest (a flush round trip), so nothing published afterwards can be missed.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    channel: &ChannelName,
) -> Result<Subscription, BrokerError> {
    if shared.config.live_interest == crate::LiveInterest::Wildcard {
        return crate::demux::subscribe(shared, channel).await;
    }
    let link = shared.connected_link()?;
    let subject = shared.subjects.live(channel);
    let sub = register(shared, &link, &subject).await?;
    let (tx, rx) = mpsc::channel(shared.config.live_buffer.max(1));
    let feed = Feed {
        shared: Arc::downgrade(shared),
        links: shared.link.subscribe(),
        subject,
        chain: Chain::new(channel.clone(), tx, shared),
    };
    tokio::spawn(feed.run(link, sub));
    Ok(Subscription::new(ReceiverStream::new(rx)))
}

/// Subscribes to `subject` on `link` and waits until the server has registered it.
pub(crate) async fn register(
    shared: &Shared,
    link: &Link,
    subject: &str,
) -> Result<async_nats::Subscriber, BrokerError> {
    let attempt = async {
        let sub = link
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| e.to_string())?;
        link.client.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(sub)
    };
    match tokio::time::timeout(shared.config.request_timeout, attempt).await {
        Ok(Ok(sub)) => Ok(sub),
        Ok(Err(e)) => Err(BrokerError::Unavailable(format!("subscribe failed: {e}"))),
        Err(_) => Err(BrokerError::Unavailable("subscribe timed out".into())),
    }
}

/// The task behind one [`Subscription`].
struct Feed {
    shared: std::sync::Weak<Shared>,
    /// Connection changes; closed when the broker is dropped (the feed then ends).
    links: tokio::sync::watch::Receiver<Option<Arc<Link>>>,
    subject: String,
    chain: Chain,
}

impl Feed {
    async fn run(mut self, link: Arc<Link>, sub: async_nats::Subscriber) {
        let mut generation = link.generation;
        let mut sub = Some(sub);
        drop(link);
        self.links.mark_unchanged();
        let mut retry = tokio::time::interval(RESUBSCRIBE_RETRY);
        loop {
            tokio::select! {
                biased;
                _ = self.chain.tx.closed() => return,
                changed = self.links.changed() => {
                    if changed.is_err() {
                        return; // broker dropped
                    }
                    let current = self.links.borrow_and_update().clone();
                    match current {
                        Some(link) if link.generation != generation => {
                            drop(sub.take()); // unsubscribe before moving
                            generation = link.generation;
                            sub = self.resubscribe(&link).await;
                        }
                        Some(_) => {}
                        None => sub = None,
                    }
                }
                msg = next(&mut sub) => match msg {
                    Some(msg) => {
                        let slow = self
                            .shared
                            .upgrade()
                            .map_or(0, |s| s.slow_consumers.load(Ordering::Relaxed));
                        self.chain.deliver(msg, slow);
                    }
                    None => sub = None, // connection gone; a new link will follow
                },
                _ = retry.tick(), if sub.is_none() => {
                    let current = self.links.borrow().clone();
                    if let Some(link) = current
                        && link.generation == generation
                        && link.is_connected()
                    {
                        sub = self.resubscribe(&link).await;
                    }
                }
            }
            if self.shared.strong_count() == 0 {
                return;
            }
        }
    }

    /// Subscribes on a new connection; then everything since the last yielded message may be
    /// missing, so the reader is told to repair (`Lagged`).
    async fn resubscribe(&mut self, link: &Link) -> Option<async_nats::Subscriber> {
        let shared = self.shared.upgrade()?;
        match register(&shared, link, &self.subject).await {
            Ok(sub) => {
                debug!(channel = %self.chain.channel, "live subscription moved to a new connection");
                self.chain.lagged();
                Some(sub)
            }
            Err(error) => {
                debug!(channel = %self.chain.channel, %error, "re-subscribe failed; retrying");
                None
            }
        }
    }
}

/// One subscription's side of a channel's chain: yields each republished message whose
/// predecessor is the one yielded before it, and a `Lagged` wherever a link may be missing.
pub(crate) struct Chain {
    pub(crate) channel: ChannelName,
    pub(crate) tx: mpsc::Sender<LiveEvent>,
    /// Cursor of the last message yielded (`None`: nothing yet, or a `Lagged` reset it).
    last: Option<u64>,
    /// A `Lagged` could not be queued (reader slow) and must precede the next message.
    owe_lagged: bool,
    /// The broker's slow-consumer count when `last` was yielded.
    slow_mark: u64,
}

impl Chain {
    pub(crate) fn new(channel: ChannelName, tx: mpsc::Sender<LiveEvent>, shared: &Shared) -> Self {
        Self {
            channel,
            tx,
            last: None,
            owe_lagged: false,
            slow_mark: shared.slow_consumers.load(Ordering::Relaxed),
        }
    }

    /// Everything since the last yielded message may be missing: the reader must repair.
    pub(crate) fn lagged(&mut self) {
        self.last = None;
        self.owe_lagged = true;
        self.flush_lagged();
    }

    fn flush_lagged(&mut self) -> bool {
        if self.owe_lagged {
            match self.tx.try_send(LiveEvent::Lagged) {
                Ok(()) => self.owe_lagged = false,
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Checks `msg` against the chain and yields it (or a `Lagged` before it). `slow` is the
    /// broker's slow-consumer count now.
    pub(crate) fn deliver(&mut self, msg: NatsMessage, slow: u64) {
        let Some(headers) = msg.headers.as_ref() else {
            return;
        };
        let Some(seq) = header_u64(headers, HDR_SEQ) else {
            return;
        };
        // The server's own link (the subject's last sequence when this one was stored) is
        // exact even where a replicated stream let a stale `Herald-Prev` through (see
        // tests/contention.rs); it is 0 only when the channel had nothing retained, and then
        // `Herald-Prev` (from the tip stream) is the link.
        let prev = header_u64(headers, HDR_LAST_SEQ)
            .filter(|&seq| seq > 0)
            .or_else(|| header_u64(headers, HDR_PREV));
        if let Some(last) = self.last {
            if seq <= last {
                return; // already yielded
            }
            if prev != Some(last) || slow != self.slow_mark {
                // A link of the chain never arrived (or async-nats dropped live messages
                // somewhere): let the reader repair from history.
                self.lagged();
            }
        }
        self.slow_mark = slow;
        let Some(message) = to_message(&self.channel, seq, headers, msg.payload, unix_micros)
        else {
            return;
        };
        if !self.flush_lagged() {
            return; // the reader is behind; it will repair after the Lagged
        }
        match self.tx.try_send(LiveEvent::Message(Arc::new(message))) {
            Ok(()) => self.last = Some(seq),
            Err(TrySendError::Full(_)) => self.lagged(),
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

async fn next(sub: &mut Option<async_nats::Subscriber>) -> Option<NatsMessage> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}
