//! A connection's outbound queue: bounded in bytes, filled by the hub's fan-out without
//! blocking, drained by the connection's writer.
//!
//! When full, the queue closes itself with [`Closed::SlowConsumer`]: the hub never waits for a
//! slow client, and the client resumes from its last cursor without loss.

use std::{
    collections::VecDeque,
    sync::{Arc, Weak},
};

use herald_core::{ChannelName, Cursor, Message, PresenceEvent, Protocol};
use herald_telemetry::Metrics;

use crate::{
    direct::{DirectSink, Sent},
    identity::Client,
};
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
    /// The socket the fan-out may write to directly (SSE streams served by `rawsse`).
    direct: Option<Box<Direct>>,
}

/// A connection the fan-out may write to (see [`crate::direct`]).
struct Direct {
    sink: Weak<DirectSink>,
    protocol: Protocol,
    metrics: Arc<Metrics>,
    /// Set while the connection's task waits for items with nothing pending.
    parked: bool,
    /// While parked: each channel whose messages the fan-out may write, with its position,
    /// sorted by channel. Kept between parkings to reuse its allocation.
    positions: Vec<(ChannelName, Cursor)>,
    /// Whether a direct write moved a position since the task last looked.
    moved: bool,
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
                direct: None,
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
        self.push_with(item, true)
    }

    /// [`Self::push`]; with `direct` false, never written to the socket by the caller.
    pub(crate) fn push_with(&self, item: Item, direct: bool) -> bool {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return false;
        }
        if direct
            && s.items.is_empty()
            && let (Item::Message(m), Some(direct)) = (&item, &mut s.direct)
            && direct.send(m)
        {
            return true;
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

    /// Lets the fan-out write this connection's live messages to `sink` while its task is
    /// parked (see [`Self::next_batch_parked`]).
    pub(crate) fn attach(&self, sink: Weak<DirectSink>, metrics: Arc<Metrics>) {
        self.state.lock().direct = Some(Box::new(Direct {
            sink,
            protocol: self.protocol,
            metrics,
            parked: false,
            positions: Vec::new(),
            moved: false,
        }));
    }

    /// Lets the fan-out write live messages straight to the attached socket until
    /// [`Self::unpark`], if nothing is pending: `fill` lists the channels it may write (each
    /// with its position, sorted by channel) and returns false when there are none. Returns
    /// whether the task is now parked; the caller then waits with [`Self::next_batch`] and
    /// must call [`Self::unpark`] once it stops waiting, whatever woke it.
    pub(crate) fn park(&self, fill: impl FnOnce(&mut Vec<(ChannelName, Cursor)>) -> bool) -> bool {
        let mut s = self.state.lock();
        let s = &mut *s;
        if !s.items.is_empty() || s.closed.is_some() {
            return false;
        }
        let Some(direct) = s.direct.as_mut() else {
            return false;
        };
        direct.positions.clear();
        direct.parked = fill(&mut direct.positions);
        debug_assert!(direct.positions.is_sorted_by(|a, b| a.0 < b.0));
        direct.parked
    }

    /// Ends direct writes (the task is no longer parked). When they moved a position since
    /// the last call, hands `record` every parked channel's position: the connection's
    /// positions are now at least these.
    pub(crate) fn unpark(&self, record: impl FnOnce(&[(ChannelName, Cursor)])) {
        let mut s = self.state.lock();
        let Some(direct) = s.direct.as_mut() else {
            return;
        };
        direct.parked = false;
        if std::mem::take(&mut direct.moved) {
            record(&direct.positions);
        }
    }

    /// Waits for items, then moves all of them into `out` and returns how many bytes they
    /// held (the queue depth the writer found). Returns the close reason instead once closed
    /// (queued items are then dropped: the client resumes from its cursor).
    pub(crate) async fn next_batch(&self, out: &mut Vec<Item>) -> Result<usize, Closed> {
        loop {
            {
                let mut s = self.state.lock();
                let s = &mut *s;
                if s.closed.is_some() || !s.items.is_empty() {
                    // The task runs again: no direct write until it parks anew.
                    if let Some(direct) = s.direct.as_mut() {
                        direct.parked = false;
                    }
                }
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

impl Direct {
    /// Writes `m` to the socket if the task is parked on its channel; true when the message
    /// needs nothing more from the outbox (written, or at or before the position).
    fn send(&mut self, m: &Arc<Message>) -> bool {
        if !self.parked {
            return false;
        }
        let Ok(i) = self.positions.binary_search_by(|(c, _)| c.cmp(&m.channel)) else {
            return false;
        };
        let position = &mut self.positions[i].1;
        if m.cursor <= *position {
            // The session would drop it: already delivered.
            return true;
        }
        let Some(sink) = self.sink.upgrade() else {
            return false;
        };
        if sink.try_send(m) == Sent::No {
            return false;
        }
        *position = m.cursor;
        self.moved = true;
        self.metrics.direct_writes.inc();
        self.metrics
            .delivered(self.protocol, m.published_us, herald_core::unix_micros());
        true
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

    /// The contract the fan-out and a parked task keep: a message of a parked channel after
    /// its position is written to the socket (whole, framed) and moves that channel's position,
    /// which `unpark` reports; one at or before the position is dropped; another channel's,
    /// or any while the writer is busy or once the task stopped waiting, is queued.
    #[tokio::test]
    async fn parked_pushes_write_to_the_socket_and_move_the_position() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let sink = Arc::new(DirectSink::new(server, crate::direct::Framing::WebSocket));
        let metrics = Arc::new(Metrics::new("t", "0").unwrap());
        let o = Arc::new(Outbox::new(1 << 20, Protocol::WebSocket));
        o.attach(Arc::downgrade(&sink), metrics.clone());
        assert_eq!(sink.flushed(), None, "the writer holds nothing");

        let name = |s: &str| ChannelName::new(s).unwrap();
        let on = |c: &str, n: u64| {
            let data = Payload::from_json(format!("\"{}\"", "x".repeat(100)), 1000).unwrap();
            Item::Message(Arc::new(Message::new(name(c), Cursor(n), 0, data)))
        };
        let parked = o.park(|out| {
            out.extend([(name("a"), Cursor(9)), (name("c"), Cursor(4))]);
            true
        });
        assert!(parked);
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let r = o.next_batch(&mut out).await;
                (r.is_ok(), out.len())
            })
        };
        assert!(o.push(on("c", 3)), "at or before the position: dropped");
        assert!(o.push(on("c", 5)), "after it: written");
        assert!(o.state.lock().items.is_empty(), "nothing queued");
        let Item::Message(m5) = on("c", 5) else {
            unreachable!()
        };
        let frame = m5.ws_frame();
        assert!((126..65_536).contains(&frame.len()));
        let mut got = vec![0u8; 4 + frame.len()];
        client.read_exact(&mut got).await.unwrap();
        let len = (frame.len() as u16).to_be_bytes();
        assert_eq!(got[..4], [0x81, 126, len[0], len[1]], "a final text frame");
        assert_eq!(&got[4..], &frame[..]);
        assert_eq!(metrics.direct_writes.get(), 1);
        assert!(
            o.push(on("c", 5)),
            "the same again: dropped, the position moved"
        );
        assert!(o.push(on("a", 9)), "the other channel's position holds");
        assert!(o.push(on("a", 10)), "and moves on its own");
        client.read_exact(&mut got[..4]).await.unwrap();
        assert_eq!(metrics.direct_writes.get(), 2);

        // A channel that is not parked is queued and wakes the task.
        assert!(o.push(on("b", 1)));
        assert_eq!(waiter.await.unwrap(), (true, 1));
        let mut reached = Vec::new();
        o.unpark(|r| reached = r.to_vec());
        assert_eq!(
            reached,
            [(name("a"), Cursor(10)), (name("c"), Cursor(5))],
            "the task learns where direct writes left each channel"
        );
        o.unpark(|_| panic!("nothing moved since"));
        // Not parked any more: queued even though the writer is idle.
        assert!(o.push(on("c", 6)));
        assert_eq!(o.state.lock().items.len(), 1);
        assert_eq!(metrics.direct_writes.get(), 2);

        // Parked again, with the writer holding the socket: queued.
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out).await.map(|_| out.len()), Ok(1));
        assert!(o.park(|out| {
            out.push((name("c"), Cursor(6)));
            true
        }));
        assert_eq!(sink.begin_write(), None);
        assert!(o.push(on("c", 7)));
        assert_eq!(o.state.lock().items.len(), 1);
        assert_eq!(metrics.direct_writes.get(), 2);
        assert!(
            !o.park(|_| true),
            "nothing is written directly while items wait"
        );
    }
}
