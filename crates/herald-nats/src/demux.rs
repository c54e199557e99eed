//! Live interest as one wildcard subscription per node ([`crate::LiveInterest::Wildcard`]):
//! the node subscribes once to `<prefix>.live.>` and hands each republished message to the
//! subscriptions of its channel (a table lookup; messages of channels without one here are
//! dropped), each checked against its channel's chain exactly as a per-channel subscription is
//! ([`crate::chain::Chain`]). Subscribing a channel is then a table insert, with no NATS round
//! trip and no per-channel state on the servers; in exchange the node receives every message of
//! the stream, whatever its local interest (see docs/scaling.md for when that pays).
//!
//! Guarantees, the same as per channel: a subscription is added to the table only while the
//! wildcard is registered (flushed) on the current connection, under the lock the demultiplexer
//! takes to deliver and to re-register, so every message republished after `subscribe` returns
//! reaches it or is covered by a `Lagged`. After a reconnect the demultiplexer re-subscribes on
//! the new connection and, under that lock, gives every subscription a `Lagged` (their readers
//! repair from history). A slow-consumer report of async-nats does the same through the chain's
//! slow mark.
//!
//! One difference a reader may see: a message stored just before `subscribe` returned can still
//! be on its way over the wildcard when the subscription is added, and is then yielded too (a
//! per-channel subscription registered after the republish never sees it). The trait promises
//! only what follows; the edge already drops what is at or below the head it reads after
//! subscribing.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use herald_core::{BrokerError, ChannelName, LiveEvent, Subscription};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::{
    chain::Chain,
    live::register,
    shared::{Demux, Link, Shared},
};

/// How often the demultiplexer retries registering the wildcard on a connection where that
/// failed.
const REGISTER_RETRY: Duration = Duration::from_millis(250);

/// Adds a subscription of `channel` to the node's table, starting the demultiplexer on first
/// use, and returns once the wildcard is registered on the current connection.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    channel: &ChannelName,
) -> Result<Subscription, BrokerError> {
    let subject = shared.subjects.live(channel);
    let demux = &shared.demux;
    let mut changed = demux.changed.subscribe();
    let deadline = tokio::time::Instant::now() + shared.config.request_timeout;
    loop {
        let link = shared.connected_link()?;
        {
            let mut table = demux.table.lock();
            if !table.started {
                table.started = true;
                tokio::spawn(run(Arc::downgrade(shared), shared.link.subscribe()));
            }
            if table.registered == link.generation {
                let (tx, rx) = mpsc::channel(shared.config.live_buffer.max(1));
                let id = table.next_id;
                table.next_id += 1;
                table.taps.entry(subject.clone()).or_default().push((
                    id,
                    Chain::new(
                        channel.clone(),
                        tx,
                        shared.slow_consumers.load(Ordering::Relaxed),
                    ),
                ));
                let tap = Tap {
                    rx: ReceiverStream::new(rx),
                    shared: Arc::downgrade(shared),
                    subject,
                    id,
                };
                return Ok(Subscription::new(tap));
            }
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(BrokerError::Closed),
            Err(_) => {
                return Err(BrokerError::Unavailable(
                    "live subscription not registered in time".into(),
                ));
            }
        }
    }
}

impl Demux {
    fn set_registered(&self, generation: u64, lag_all: bool) {
        let mut table = self.table.lock();
        table.registered = generation;
        if lag_all {
            for chain in table.taps.values_mut().flatten() {
                chain.1.lagged();
            }
        }
        drop(table);
        self.changed.send_modify(|n| *n += 1);
    }

    fn deliver(&self, msg: async_nats::Message, slow: u64) {
        let mut table = self.table.lock();
        let Some(taps) = table.taps.get_mut(msg.subject.as_str()) else {
            return; // no local interest
        };
        if let [(_, chain)] = taps.as_mut_slice() {
            chain.deliver(msg, slow);
        } else {
            for (_, chain) in taps.iter_mut() {
                chain.deliver(msg.clone(), slow);
            }
        }
    }

    fn remove(&self, subject: &str, id: u64) {
        let mut table = self.table.lock();
        let Some(taps) = table.taps.get_mut(subject) else {
            return;
        };
        taps.retain(|(i, _)| *i != id);
        if taps.is_empty() {
            table.taps.remove(subject);
        }
    }
}

/// The receiving end handed out as a [`Subscription`]; dropping it leaves the table.
struct Tap {
    rx: ReceiverStream<LiveEvent>,
    shared: Weak<Shared>,
    subject: String,
    id: u64,
}

impl Stream for Tap {
    type Item = LiveEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<LiveEvent>> {
        self.rx.poll_next_unpin(cx)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.demux.remove(&self.subject, self.id);
        }
    }
}

/// The demultiplexer: keeps the wildcard registered on the current connection and delivers.
async fn run(shared: Weak<Shared>, mut links: watch::Receiver<Option<Arc<Link>>>) {
    let mut sub: Option<async_nats::Subscriber> = None;
    // Generation of the connection the wildcard is (or was last) registered on.
    let mut generation = 0u64;
    // Whether it was ever registered: then a new registration may follow a loss.
    let mut ever = false;
    let mut retry = tokio::time::interval(REGISTER_RETRY);
    loop {
        if sub.is_none() {
            let Some(s) = shared.upgrade() else { return };
            let current = links.borrow_and_update().clone();
            if let Some(link) = current
                && link.is_connected()
            {
                let subject = s.subjects.live_all();
                match register(&s, &link, &subject).await {
                    Ok(registered) => {
                        // After a loss, everything since may be missing: every table entry
                        // gets a `Lagged` under the same lock that admits new ones.
                        s.demux.set_registered(link.generation, ever);
                        debug!(generation = link.generation, "live wildcard registered");
                        (generation, ever) = (link.generation, true);
                        sub = Some(registered);
                    }
                    Err(error) => debug!(%error, "live wildcard not registered; retrying"),
                }
            }
        }
        tokio::select! {
            biased;
            changed = links.changed() => {
                if changed.is_err() {
                    return; // broker dropped
                }
                let current = links.borrow().clone();
                let moved = current.as_ref().is_none_or(|l| l.generation != generation);
                if moved && sub.is_some() {
                    sub = None; // unsubscribes; registered again on the next connection
                    if let Some(s) = shared.upgrade() {
                        s.demux.set_registered(0, false);
                    }
                }
            }
            msg = next(&mut sub) => match msg {
                Some(msg) => {
                    let Some(s) = shared.upgrade() else { return };
                    let slow = s.slow_consumers.load(Ordering::Relaxed);
                    s.demux.deliver(msg, slow);
                }
                None => {
                    sub = None; // the connection went away; registered again when possible
                    if let Some(s) = shared.upgrade() {
                        s.demux.set_registered(0, false);
                    }
                }
            },
            _ = retry.tick(), if sub.is_none() => {}
        }
        if shared.strong_count() == 0 {
            return;
        }
    }
}

async fn next(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}
