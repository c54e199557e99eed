//! `GET /poll`: interval polling (no `wait`: answers at once) and long-polling (`wait=1..60`:
//! held until at least one message arrives or `wait` runs out). Stateless: the reply's
//! `cursor` is all a client needs for its next poll, on any node.
//!
//! Reply: `{"messages":[..],"cursor":"C","gap":false,"gaps":[]}`.
//!
//! A poll "connection" (the `herald_connections` gauge for `poll` and `longpoll`) is a
//! distinct client (remote IP and channel set) seen within the last `poll_client_window`,
//! including requests in flight.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, BytesMut};
use herald_auth::Principal;
use herald_core::{ChannelName, Cursor, Message, Protocol, Since, unix_micros};
use herald_telemetry::{CloseReason, Metrics};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{
    EdgeError, EdgeInner,
    outbox::{Closed, Item},
    params,
    session::Session,
};

/// Most distinct poll clients tracked for the connection gauge; past it, new ones are not
/// counted (the gauge saturates instead of memory growing).
const MAX_TRACKED_POLL_CLIENTS: usize = 200_000;

/// Recently active poll clients, for the connection gauges.
pub(crate) struct PollClients {
    window: Duration,
    clients: Mutex<HashMap<u64, Seen>>,
}

struct Seen {
    protocol: Protocol,
    last: Instant,
    in_flight: u32,
}

impl PollClients {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn key(ip: Option<IpAddr>, channels: &[ChannelName], protocol: Protocol) -> u64 {
        let mut names: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (ip, names, protocol).hash(&mut h);
        h.finish()
    }

    fn begin(&self, key: u64, protocol: Protocol, metrics: &Metrics) {
        let mut clients = self.clients.lock();
        if let Some(seen) = clients.get_mut(&key) {
            seen.in_flight += 1;
            seen.last = Instant::now();
        } else if clients.len() < MAX_TRACKED_POLL_CLIENTS {
            clients.insert(
                key,
                Seen {
                    protocol,
                    last: Instant::now(),
                    in_flight: 1,
                },
            );
            metrics
                .connections
                .with_label_values(&[protocol.as_str()])
                .inc();
            metrics
                .connections_opened
                .with_label_values(&[protocol.as_str()])
                .inc();
        }
    }

    fn end(&self, key: u64) {
        if let Some(seen) = self.clients.lock().get_mut(&key) {
            seen.in_flight = seen.in_flight.saturating_sub(1);
            seen.last = Instant::now();
        }
    }

    /// Forgets clients idle for longer than the window (run periodically).
    pub(crate) fn prune(&self, metrics: &Metrics) {
        let now = Instant::now();
        self.clients.lock().retain(|_, seen| {
            let keep = seen.in_flight > 0 || now.duration_since(seen.last) < self.window;
            if !keep {
                let p = seen.protocol.as_str();
                metrics.connections.with_label_values(&[p]).dec();
                metrics
                    .connections_closed
                    .with_label_values(&[p, CloseReason::Normal.as_str()])
                    .inc();
            }
            keep
        });
    }
}

/// Ends a tracked poll request when dropped (also when the client goes away mid-wait).
struct InFlight<'a> {
    clients: &'a PollClients,
    key: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.clients.end(self.key);
    }
}

struct Reply {
    messages: Vec<Arc<Message>>,
    /// Where each channel stands after `messages`; the reply's `cursor` is its text form.
    positions: BTreeMap<ChannelName, Cursor>,
    gaps: Vec<ChannelName>,
}

impl Reply {
    /// Nothing new: every channel at `at`.
    fn empty(channels: &[ChannelName], at: Cursor) -> Reply {
        Reply {
            messages: vec![],
            positions: channels.iter().map(|c| (c.clone(), at)).collect(),
            gaps: vec![],
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        self.respond(false)
    }
}

impl Reply {
    /// The reply's JSON; `draining`: the node is leaving, so the client should poll another
    /// node next (`"reconnect":"draining"`, as the WebSocket and SSE `reconnect` say).
    fn respond(self, draining: bool) -> Response {
        let size: usize = self.messages.iter().map(|m| m.json().len() + 1).sum();
        let cursor = herald_core::position::encode(&self.positions);
        let names: usize = self.gaps.iter().map(|c| c.as_str().len() + 3).sum();
        let mut b = BytesMut::with_capacity(size + cursor.len() + names + 64);
        b.put_slice(b"{\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            b.put_slice(m.json());
        }
        // Written directly (no `serde_json::Value` per reply), members in the order a JSON
        // object of them prints.
        b.put_slice(b"],\"cursor\":");
        put_json_str(&mut b, &cursor);
        b.put_slice(if self.gaps.is_empty() {
            b",\"gap\":false,\"gaps\":["
        } else {
            b",\"gap\":true,\"gaps\":["
        });
        for (i, c) in self.gaps.iter().enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            put_json_str(&mut b, c.as_str());
        }
        b.put_slice(if draining {
            b"],\"reconnect\":\"draining\"}"
        } else {
            b"]}"
        });
        let mut resp = Response::new(axum::body::Body::from(b.freeze()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Appends `s` as a JSON string.
fn put_json_str(b: &mut BytesMut, s: &str) {
    // Cursors and channel names need no escaping; anything else goes through serde_json.
    if s.bytes()
        .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        b.put_u8(b'"');
        b.put_slice(s.as_bytes());
        b.put_u8(b'"');
    } else {
        let _ = serde_json::to_writer(b.writer(), s);
    }
}

/// A poll request checked and ready to be answered: what it needs while it is held, and
/// nothing of the request's text.
pub(crate) struct Prepared {
    channels: Vec<ChannelName>,
    since: Since,
    /// Seconds to hold (0: answer at once).
    wait: u64,
    protocol: Protocol,
    /// The client's key in the poll-client tracking.
    key: u64,
    /// Who asks (a held long-poll counts as one of their connections).
    who: Option<Principal>,
}

/// Parses and authorizes `GET /poll`; the query and headers are not needed after this.
pub(crate) fn prepare(
    edge: &EdgeInner,
    ip: Option<IpAddr>,
    raw_query: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Result<Prepared, EdgeError> {
    let q = params::parse(raw_query, edge.config.max_channels_per_connection)?;
    if q.channels.is_empty() {
        return Err(EdgeError::NoChannels);
    }
    let who = crate::auth::authenticate(edge, headers, &q)?;
    crate::auth::authorize(edge, who.as_ref(), &q.channels)?;
    // A draining node answers at once, so held polls move to other nodes; a held poll ends
    // by the time the client's token does.
    let mut wait = if edge.is_draining() {
        0
    } else {
        q.wait.unwrap_or(0)
    };
    if let Some(who) = &who {
        let left = who
            .expires_at
            .saturating_add(edge.config.policy.leeway().as_secs())
            .saturating_sub(herald_auth::now_secs());
        wait = wait.min(left);
    }
    let protocol = if q.wait.unwrap_or(0) > 0 {
        Protocol::LongPoll
    } else {
        Protocol::Poll
    };
    let key = PollClients::key(ip, &q.channels, protocol);
    Ok(Prepared {
        channels: q.channels,
        since: q.since,
        wait,
        protocol,
        key,
        who,
    })
}

/// The backend hooks of a prepared poll (on a node with hooks): the connect hook (each poll
/// request is a connect: it carries no session) and the subscribe hook of its channels.
pub(crate) async fn ask_hooks(
    edge: &EdgeInner,
    mut p: Prepared,
    ip: Option<IpAddr>,
    raw_query: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Result<Prepared, EdgeError> {
    let token = crate::auth::request_token(headers, raw_query)
        .ok()
        .flatten();
    let protocol = p.protocol.as_str();
    let ctx = |hooks: &dyn herald_core::hooks::HookCaller, who: Option<&Principal>| {
        crate::hooks::context(hooks, "", protocol, ip, who, Some(headers))
    };
    p.who = crate::hooks::connect(edge, p.who.take(), token.as_deref(), &p.channels, ctx).await?;
    let who = p.who.as_ref();
    crate::hooks::authorize(edge, who, &p.channels, |h| ctx(h, who)).await?;
    Ok(p)
}

/// Answers a prepared `GET /poll`: at once, or held until a message or the wait runs out.
pub(crate) async fn handle(edge: Arc<EdgeInner>, p: Prepared) -> Result<Response, EdgeError> {
    let Prepared {
        channels,
        since,
        wait,
        protocol,
        key,
        who,
    } = p;
    edge.poll_clients.begin(key, protocol, &edge.metrics);
    let _in_flight = InFlight {
        clients: &edge.poll_clients,
        key,
    };

    let reply = if wait == 0 {
        interval(&edge, &channels, &since).await?
    } else {
        long(
            &edge,
            &channels,
            &since,
            Duration::from_secs(wait),
            who.as_ref(),
        )
        .await?
    };
    let now = unix_micros();
    for m in &reply.messages {
        edge.metrics.delivered(protocol, m.published_us, now);
    }
    if !reply.gaps.is_empty() {
        edge.metrics
            .gaps
            .with_label_values(&[protocol.as_str()])
            .inc();
    }
    Ok(reply.respond(edge.is_draining()))
}

async fn interval(
    edge: &EdgeInner,
    channels: &[ChannelName],
    since: &Since,
) -> Result<Reply, EdgeError> {
    let broker = &edge.broker;
    if *since == Since::Now {
        return Ok(Reply::empty(channels, broker.head().await?));
    }
    let reply = read_history(edge, channels, since).await?;
    if reply.gaps.is_empty() || !reply.messages.is_empty() {
        return Ok(reply);
    }
    // A gap and nothing retained: the client has been told; move its cursor to now, or it
    // would hear about the same gap at every poll. The head is read *before* history, so
    // nothing published in between can be skipped.
    let head = broker.head().await?;
    let again = read_history(edge, channels, since).await?;
    if !again.messages.is_empty() {
        return Ok(again);
    }
    Ok(Reply {
        gaps: reply.gaps,
        ..Reply::empty(channels, head)
    })
}

/// Every retained message of `channels` after their positions, merged in cursor order, at
/// most `poll_max_messages`, and where that leaves each channel.
async fn read_history(
    edge: &EdgeInner,
    channels: &[ChannelName],
    since: &Since,
) -> Result<Reply, EdgeError> {
    let limit = edge.config.poll_max_messages;
    let merged = crate::session::read_merged(edge, channels, since, limit).await?;
    Ok(Reply {
        messages: merged.messages,
        positions: merged.positions,
        gaps: merged.gaps,
    })
}

/// A long-poll: joins the live feeds first, then answers from history if it has anything
/// new, else waits for the first live message (or `wait`).
async fn long(
    edge: &Arc<EdgeInner>,
    channels: &[ChannelName],
    since: &Since,
    wait: Duration,
    who: Option<&Principal>,
) -> Result<Reply, EdgeError> {
    let reg = edge.registry.register(
        Protocol::LongPoll,
        edge.config.outbox_bytes,
        Default::default(),
        who,
    )?;
    let mut session = Session::new(edge.clone(), reg);
    // Live first: anything stored after the read below then reaches the outbox.
    session.join_live(channels, Cursor::ZERO).await?;
    let first = interval(edge, channels, since).await?;
    if !first.messages.is_empty() || !first.gaps.is_empty() {
        return Ok(first);
    }
    session.stand_at(&first.positions);
    let outbox = session.reg.outbox.clone();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            r = outbox.next_batch(&mut batch) => {
                match r {
                    Err(Closed::Disconnected { reconnect, reason }) => {
                        return Err(EdgeError::Disconnected { reconnect, reason });
                    }
                    Err(Closed::Revoked) => return Err(EdgeError::TokenRevoked),
                    // Drained or overflowed: answer now; the cursor loses nothing.
                    Err(_) => return Ok(first),
                    Ok(_) => {}
                }
                let mut messages = Vec::new();
                let mut lost = false;
                for item in batch.drain(..) {
                    match item {
                        Item::Message(m) => {
                            if session.admit(&m) {
                                messages.push(m);
                            }
                        }
                        Item::Gap(_) => lost = true,
                        // Join/leave and server-side subscriptions are for held streams.
                        Item::Presence(_) | Item::Subscribe(_) | Item::Unsubscribe(_) => {}
                    }
                }
                if lost || (channels.len() > 1 && !messages.is_empty()) {
                    // Live feeds of different channels are not ordered with each other, and
                    // a repaired feed may have lost messages: history gives the consistent
                    // cut (and reports a gap only if one really exists).
                    drop(session);
                    let at = Since::Each(first.positions);
                    return interval(edge, channels, &at).await;
                }
                if !messages.is_empty() {
                    messages.truncate(edge.config.poll_max_messages);
                    let mut positions = first.positions;
                    if let Some(last) = messages.last() {
                        positions.insert(last.channel.clone(), last.cursor);
                    }
                    return Ok(Reply { messages, positions, gaps: vec![] });
                }
            }
            () = &mut deadline => return Ok(first),
        }
    }
}
