//! A connection's outbound queue: bounded in bytes, filled by the hub's fan-out without
//! blocking, drained by the connection's writer.
//!
//! When full, the queue closes itself with [`Closed::SlowConsumer`]: the hub never waits for a
//! slow client, and the client resumes from its last cursor without loss.

use std::{collections::VecDeque, sync::Arc};

use herald_core::{ChannelName, Message, PresenceEvent, Protocol};

use crate::identity::Client;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Something the hub hands a connection.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A live message.
    Message(Arc<Message>),
    /// The node could not repair its live feed of this channel: the client may have missed
    /// messages and must be told.
    Gap(ChannelName),
    /// A client joined or left a channel (ephemeral: no cursor, not in history).
    Presence(Arc<PresenceEvent>),
    /// The operator subscribed this connection's user to a channel (from now).
    Subscribe(ChannelName),
    /// The operator removed this connection's user from a channel.
    Unsubscribe(ChannelName),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Message(m) => m.wire_size(),
            Item::Gap(c) | Item::Subscribe(c) | Item::Unsubscribe(c) => c.as_str().len() + 32,
            Item::Presence(e) => {
                e.channel.len()
                    + e.client.len()
                    + e.user.len()
                    + e.info.as_deref().map_or(0, str::len)
                    + 64
            }
        }
    }
}

/// Why an outbox stopped accepting items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The queue overflowed its byte bound.
    SlowConsumer,
    /// The node asked this connection to leave (drain).
    Drain,
    /// The operator disconnected the connection's user.
    Disconnected {
        /// Whether the client may reconnect.
        reconnect: bool,
        /// The operator's words.
        reason: Arc<str>,
    },
    /// The connection's token (or user) was revoked.
    Revoked,
}

/// Bounded, multi-producer, single-consumer queue of [`Item`]s.
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// Most bytes of items held at once.
    limit: usize,
    /// The protocol of the connection it feeds: traced fan-out makes one delivery span per
    /// protocol, not per connection.
    pub(crate) protocol: Protocol,
    /// Who holds the connection (presence, user actions, revocations).
    pub(crate) client: Client,
}

struct State {
    items: VecDeque<Item>,
    bytes: usize,
    closed: Option<Closed>,
    /// When it closed: a connection still open long after is stuck and gets reaped.
    closed_at: Option<tokio::time::Instant>,
}

impl Outbox {
    #[cfg(test)]
    pub(crate) fn new(limit: usize, protocol: Protocol) -> Self {
        Self::for_client(limit, protocol, Client::new(None, None))
    }

    /// An empty outbox of `client`'s connection.
    pub(crate) fn for_client(limit: usize, protocol: Protocol, client: Client) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: None,
                closed_at: None,
            }),
            notify: Notify::new(),
            limit,
            protocol,
            client,
        }
    }

    /// Queues an item without waiting. Returns false when the outbox is closed, including
    /// when this item made it overflow (then the queue is cleared and closed).
    pub(crate) fn push(&self, item: Item) -> bool {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return false;
        }
        let size = item.size();
        if s.bytes + size > self.limit {
            s.closed = Some(Closed::SlowConsumer);
            s.closed_at = Some(tokio::time::Instant::now());
            s.items = VecDeque::new();
            s.bytes = 0;
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.bytes += size;
        s.items.push_back(item);
        let was_empty = s.items.len() == 1;
        drop(s);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Closes the outbox for `reason` (if not closed already) and wakes the writer.
    pub(crate) fn close(&self, reason: Closed) {
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.closed = Some(reason);
            s.closed_at = Some(tokio::time::Instant::now());
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Why the outbox is closed, if it is.
    pub(crate) fn closed(&self) -> Option<Closed> {
        self.state.lock().closed.clone()
    }

    /// Whether the outbox closed more than `grace` ago.
    pub(crate) fn closed_longer_than(&self, grace: std::time::Duration) -> bool {
        self.state
            .lock()
            .closed_at
            .is_some_and(|t| t.elapsed() > grace)
    }

    /// Waits for items, then moves all of them into `out` and returns how many bytes they
    /// held (the queue depth the writer found). Returns the close reason instead once closed
    /// (queued items are then dropped: the client resumes from its cursor).
    pub(crate) async fn next_batch(&self, out: &mut Vec<Item>) -> Result<usize, Closed> {
        loop {
            {
                let mut s = self.state.lock();
                if let Some(reason) = &s.closed {
                    return Err(reason.clone());
                }
                if !s.items.is_empty() {
                    out.extend(s.items.drain(..));
                    let bytes = std::mem::take(&mut s.bytes);
                    if s.items.capacity() > 64 {
                        s.items.shrink_to(16);
                    }
                    return Ok(bytes);
                }
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{Cursor, Payload};

    fn msg(n: u64) -> Item {
        let data = Payload::from_json(format!("\"{}\"", "x".repeat(100)), 1000).unwrap();
        Item::Message(Arc::new(Message::new(
            ChannelName::new("c").unwrap(),
            Cursor(n),
            0,
            data,
        )))
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let o = Outbox::new(1000, Protocol::WebSocket);
        let mut pushed = 0;
        while o.push(msg(pushed)) {
            pushed += 1;
        }
        assert!(pushed > 0 && pushed < 10);
        assert_eq!(o.closed(), Some(Closed::SlowConsumer));
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out).await, Err(Closed::SlowConsumer));
    }

    #[tokio::test]
    async fn batches_in_order_and_wakes_writer() {
        let o = Arc::new(Outbox::new(1 << 20, Protocol::WebSocket));
        let writer = {
            let o = o.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 3 {
                    o.next_batch(&mut got).await.unwrap();
                }
                got
            })
        };
        for n in 1..=3 {
            tokio::task::yield_now().await;
            assert!(o.push(msg(n)));
        }
        let got = writer.await.unwrap();
        let cursors: Vec<_> = got
            .iter()
            .map(|i| match i {
                Item::Message(m) => m.cursor.0,
                _ => 0,
            })
            .collect();
        assert_eq!(cursors, [1, 2, 3]);
    }
}
