//! Live subscriptions: a core NATS subscription on the channel's republish subject, checked
//! link by link against the channel's chain, moved to each new connection after a break.
//! With [`crate::LiveInterest::Wildcard`] the broker subscribes through `demux` instead: one
//! subscription for the whole node, the same chain check per channel.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use async_nats::Message as NatsMessage;
use futures_util::StreamExt;
use herald_core::{BrokerError, ChannelName, Subscription};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::{
    chain::Chain,
    shared::{Link, Shared},
};

/// How often a subscription retries re-subscribing on a connection where that failed.
const RESUBSCRIBE_RETRY: Duration = Duration::from_millis(250);

/// Subscribes on the current connection and returns once the server has registered the
/// interest (a flush round trip), so nothing published afterwards can be missed.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    channel: &ChannelName,
) -> Result<Subscription, BrokerError> {
    let link = shared.connected_link()?;
    let subject = shared.subjects.live(channel);
    let sub = register(shared, &link, &subject).await?;
    let (tx, rx) = mpsc::channel(shared.config.live_buffer.max(1));
    let feed = Feed {
        shared: Arc::downgrade(shared),
        links: shared.link.subscribe(),
        subject,
        chain: Chain::new(
            channel.clone(),
            tx,
            shared.slow_consumers.load(Ordering::Relaxed),
        ),
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

async fn next(sub: &mut Option<async_nats::Subscriber>) -> Option<NatsMessage> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}
