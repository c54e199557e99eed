//! A client for Herald's client protocol v1 (docs/protocol.md): subscribe to channels over
//! WebSocket, SSE, long-poll or interval poll and read [`Event`]s.
//!
//! The [`Subscriber`] keeps its position in every channel (the last message id it delivered
//! on each, or where it subscribed). When a node tells it to go (drain), or the connection
//! breaks, it moves to the next base URL (round robin) and resumes every channel from its
//! position, so nothing is lost and nothing repeats, whatever the moment of the break.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use herald_core::{ChannelName, Cursor, Since};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

/// Which protocol to subscribe with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `GET /ws`.
    WebSocket,
    /// `GET /sse`.
    Sse,
    /// `GET /poll?wait=N`.
    LongPoll,
    /// `GET /poll` repeatedly.
    Poll,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "websocket" | "ws" => Ok(Self::WebSocket),
            "sse" => Ok(Self::Sse),
            "longpoll" => Ok(Self::LongPoll),
            "poll" => Ok(Self::Poll),
            other => Err(format!(
                "unknown protocol {other:?}: use websocket, sse, longpoll or poll"
            )),
        }
    }
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its channel.
    pub channel: String,
    /// Its cursor.
    pub id: String,
    /// The published JSON value.
    pub data: serde_json::Value,
    /// Publish time, Unix milliseconds.
    pub ts: u64,
}

/// What a subscriber reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Live delivery is in place (WebSocket, SSE); `cursor` is "now" on that node.
    Subscribed {
        /// The node's current cursor.
        cursor: Option<String>,
    },
    /// A message.
    Message(Message),
    /// Messages of `channel` after the resume point were evicted before delivery.
    Gap {
        /// The channel concerned.
        channel: String,
    },
    /// The connection ended (the node is draining, or it broke); the subscriber resumes on
    /// the next URL at its next read.
    Reconnecting {
        /// Why (`draining`, `closed`, an error).
        reason: String,
    },
    /// A client joined or left a channel (namespaces with join/leave events; not stored,
    /// not replayed on resume).
    Presence {
        /// `join` or `leave`.
        kind: String,
        /// The channel.
        channel: String,
        /// The client id.
        client: String,
        /// The user (empty: anonymous).
        user: String,
        /// The token's `info` claim, `null` without one.
        info: serde_json::Value,
    },
    /// The operator subscribed this user to channels (from now); they are resumed on
    /// reconnects like the others.
    ServerSubscribed {
        /// The channels added.
        channels: Vec<String>,
        /// The node's current cursor.
        cursor: Option<String>,
    },
    /// Channels were removed by the server (`reason`: `server` for the operator,
    /// `channel_forbidden` after a refresh); they are not resubscribed.
    Unsubscribed {
        /// The channels removed.
        channels: Vec<String>,
        /// Why.
        reason: String,
    },
    /// The operator disconnected this user and said not to reconnect, or the token was
    /// revoked (`code`: `disconnected`, `token_revoked`). The subscription has ended: the
    /// next read returns [`ClientError::Ended`]. (A disconnect that allows reconnecting shows
    /// as [`Event::Reconnecting`] with reason `disconnected`.)
    Ended {
        /// `disconnected` or `token_revoked`.
        code: String,
        /// The operator's words, if any.
        reason: String,
    },
    /// The server reported an error that does not end the subscription.
    Error {
        /// Machine-readable code.
        code: String,
        /// Human-readable message.
        message: String,
    },
}

/// Errors that end a read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request (4xx): retrying will not help.
    #[error("refused ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Network or protocol failure (reconnection is attempted only when enabled).
    #[error("{0}")]
    Transport(String),
    /// The server ended the subscription for good ([`Event::Ended`] said why).
    #[error("ended by the server: {0}")]
    Ended(String),
}

/// How to subscribe.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Base URLs of nodes (`http://host:8080`); the first is used first.
    pub urls: Vec<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// Channels.
    pub channels: Vec<String>,
    /// Resume after this cursor; `None`: from now.
    pub since: Option<String>,
    /// Long-poll `wait` in seconds (1-60).
    pub wait_secs: u32,
    /// Pause between interval polls that returned nothing.
    pub poll_interval: Duration,
    /// Reconnect (with resume) after a drain or a broken connection instead of failing.
    pub reconnect: bool,
    /// A client token (sent as `?token=`), for namespaces that require one.
    pub token: Option<String>,
}

impl SubscribeOptions {
    /// Options with the defaults: long-poll wait 25 s, poll every second, reconnect on.
    pub fn new(urls: Vec<String>, protocol: Protocol, channels: Vec<String>) -> Self {
        Self {
            urls,
            protocol,
            channels,
            since: None,
            wait_secs: 25,
            poll_interval: Duration::from_secs(1),
            token: None,
            reconnect: true,
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Conn {
    None,
    Ws(Box<Ws>),
    Sse {
        body: Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin>,
        buf: Vec<u8>,
    },
    Poll,
}

/// A subscription that survives drains and reconnects (see the crate docs).
pub struct Subscriber {
    opts: SubscribeOptions,
    http: reqwest::Client,
    conn: Conn,
    /// Index into `opts.urls` of the node in use.
    url: usize,
    /// The channels, validated (positions are kept for these).
    channels: Vec<ChannelName>,
    /// Where a reconnect resumes each channel: the last delivered message's id on it, or the
    /// cursor it was subscribed at. Empty until the first `subscribed` (or poll reply).
    positions: BTreeMap<ChannelName, Cursor>,
    /// The last SSE `id:` seen (the stream's position token), for an SSE reconnect.
    sse_id: Option<String>,
    queue: VecDeque<Event>,
    /// Consecutive failed connection attempts (for backoff).
    failures: u32,
    /// Set once the server ended the subscription for good.
    ended: Option<String>,
}

impl Subscriber {
    /// A subscriber; nothing is connected until the first [`Subscriber::next`].
    pub fn new(opts: SubscribeOptions) -> Self {
        let channels: Vec<ChannelName> = opts
            .channels
            .iter()
            .filter_map(|c| ChannelName::new(c).ok())
            .collect();
        let positions = match opts.since.as_deref().map(|s| Since::parse(s, &channels)) {
            Some(Ok(Since::All(c))) => channels.iter().map(|ch| (ch.clone(), c)).collect(),
            Some(Ok(Since::Each(map))) => map,
            _ => BTreeMap::new(),
        };
        Self {
            channels,
            positions,
            sse_id: None,
            opts,
            http: reqwest::Client::new(),
            conn: Conn::None,
            url: 0,
            queue: VecDeque::new(),
            failures: 0,
            ended: None,
        }
    }

    /// Where a resume would start, as a position token for all the channels (a plain cursor
    /// when they all stand at one): what `--since` takes. `None` before the first
    /// subscription when no `since` was given.
    pub fn position(&self) -> Option<String> {
        (self.positions.len() == self.channels.len() && !self.channels.is_empty())
            .then(|| herald_core::position::encode(&self.positions))
    }

    /// The base URL in use.
    pub fn current_url(&self) -> &str {
        self.opts.urls.get(self.url).map_or("", String::as_str)
    }

    fn base(&self) -> String {
        self.current_url().trim_end_matches('/').to_owned()
    }

    fn query(&self, wait: Option<u32>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for c in &self.opts.channels {
            q.append_pair("channel", c);
        }
        let since = match (&self.sse_id, self.opts.protocol) {
            // The stream's own last id is exactly its position.
            (Some(id), Protocol::Sse) => Some(id.clone()),
            _ => self.position().or_else(|| self.opts.since.clone()),
        };
        if let Some(c) = since {
            q.append_pair("since", &c);
        }
        if let Some(w) = wait {
            q.append_pair("wait", &w.to_string());
        }
        if let Some(t) = &self.opts.token {
            q.append_pair("token", t);
        }
        q.finish()
    }

    /// Moves to the next URL and, if reconnecting is on, says so as an event.
    fn lost(&mut self, reason: String) -> Result<Event, ClientError> {
        self.conn = Conn::None;
        if !self.opts.reconnect {
            return Err(ClientError::Transport(reason));
        }
        if !self.opts.urls.is_empty() {
            self.url = (self.url + 1) % self.opts.urls.len();
        }
        Ok(Event::Reconnecting { reason })
    }

    fn deliver(&mut self, event: Event) -> Event {
        match &event {
            Event::ServerSubscribed { channels, cursor } => {
                let at = cursor.as_deref().and_then(|c| c.parse::<Cursor>().ok());
                for c in channels {
                    if let Ok(name) = ChannelName::new(c)
                        && !self.channels.contains(&name)
                    {
                        self.channels.push(name.clone());
                        self.opts.channels.push(c.clone());
                        if let Some(at) = at {
                            self.positions.insert(name, at);
                        }
                    }
                }
            }
            Event::Unsubscribed { channels, .. } => {
                self.channels
                    .retain(|c| !channels.iter().any(|x| x == c.as_str()));
                self.opts.channels.retain(|c| !channels.contains(c));
                self.positions
                    .retain(|c, _| !channels.iter().any(|x| x == c.as_str()));
                // The stream's last id covered the old set: resume from positions instead.
                self.sse_id = None;
            }
            Event::Ended { code, .. } => {
                self.ended = Some(code.clone());
                self.conn = Conn::None;
            }
            Event::Message(m) => {
                if let (Ok(c), Ok(id)) = (ChannelName::new(&m.channel), m.id.parse::<Cursor>()) {
                    self.positions.insert(c, id);
                }
            }
            Event::Subscribed { cursor: Some(c) } => {
                // Channels subscribed from now stand at the node's cursor; resumed ones keep
                // their position until their first message.
                if let Ok(at) = c.parse::<Cursor>() {
                    for ch in &self.channels {
                        self.positions.entry(ch.clone()).or_insert(at);
                    }
                }
            }
            _ => {}
        }
        event
    }

    /// The next event. Reconnects (after an `Event::Reconnecting`) when enabled.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(code) = &self.ended {
                return Err(ClientError::Ended(code.clone()));
            }
            if let Some(e) = self.queue.pop_front() {
                return Ok(self.deliver(e));
            }
            if matches!(self.conn, Conn::None) {
                if self.failures > 0 {
                    let ms = 100u64 << self.failures.min(5);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                match self.connect().await {
                    Ok(()) => self.failures = 0,
                    Err(ClientError::Transport(e)) if self.opts.reconnect => {
                        self.failures += 1;
                        return self.lost(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            match self.read().await {
                Ok(Some(e)) => return Ok(self.deliver(e)),
                Ok(None) => continue,
                Err(ClientError::Transport(e)) => return self.lost(e),
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        let base = self.base();
        match self.opts.protocol {
            Protocol::WebSocket => {
                let url = format!("{}/ws?{}", base.replacen("http", "ws", 1), self.query(None));
                let (ws, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .map_err(|e| match e {
                        tungstenite::Error::Http(r) => ClientError::Refused {
                            status: r.status().as_u16(),
                            body: String::from_utf8_lossy(r.body().as_deref().unwrap_or(&[]))
                                .into_owned(),
                        },
                        e => ClientError::Transport(e.to_string()),
                    })
                    .map_err(|e| match e {
                        // A draining or full node: go elsewhere.
                        ClientError::Refused { status: 503, body } => {
                            ClientError::Transport(format!("503: {body}"))
                        }
                        e => e,
                    })?;
                self.conn = Conn::Ws(Box::new(ws));
            }
            Protocol::Sse => {
                let url = format!("{base}/sse?{}", self.query(None));
                let resp = self.get(&url).await?;
                self.conn = Conn::Sse {
                    body: Box::new(resp.bytes_stream()),
                    buf: Vec::new(),
                };
            }
            Protocol::LongPoll | Protocol::Poll => self.conn = Conn::Poll,
        }
        Ok(())
    }

    async fn get(&self, url: &str) -> Result<reqwest::Response, ClientError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 503 {
            let body = resp.text().await.unwrap_or_default();
            return Err(ClientError::Transport(format!("503: {body}")));
        }
        if status >= 400 {
            let body = resp.text().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let code = v["error"]["code"].as_str().unwrap_or("");
            if status == 409 && code == "disconnected" && v["error"]["reconnect"] == true {
                return Err(ClientError::Transport("disconnected".into()));
            }
            return Err(ClientError::Refused { status, body });
        }
        Ok(resp)
    }

    /// Reads from the connection; `Ok(None)` when events were queued (or nothing yet).
    async fn read(&mut self) -> Result<Option<Event>, ClientError> {
        match &mut self.conn {
            Conn::None => Ok(None),
            Conn::Ws(ws) => loop {
                let Some(frame) = ws.next().await else {
                    return Err(ClientError::Transport("connection closed".into()));
                };
                match frame.map_err(|e| ClientError::Transport(e.to_string()))? {
                    tungstenite::Message::Text(t) => {
                        let v: serde_json::Value = serde_json::from_str(t.as_str())
                            .map_err(|e| ClientError::Transport(format!("bad frame: {e}")))?;
                        match v["type"].as_str().unwrap_or("") {
                            "message" => {
                                let m: Message = serde_json::from_value(v).map_err(|e| {
                                    ClientError::Transport(format!("bad message: {e}"))
                                })?;
                                return Ok(Some(Event::Message(m)));
                            }
                            "subscribed" if v["server"] == true => {
                                return Ok(Some(Event::ServerSubscribed {
                                    channels: strings(&v["channels"]),
                                    cursor: v["cursor"].as_str().map(str::to_owned),
                                }));
                            }
                            "subscribed" => {
                                return Ok(Some(Event::Subscribed {
                                    cursor: v["cursor"].as_str().map(str::to_owned),
                                }));
                            }
                            "join" | "leave" | "unsubscribed" | "disconnect" => {
                                match server_event(v["type"].as_str().unwrap_or(""), &v) {
                                    Ok(e) => return Ok(e),
                                    Err(e) => {
                                        let _ = SinkExt::close(ws).await;
                                        return Err(e);
                                    }
                                }
                            }
                            "error" if v["code"] == "token_revoked" => {
                                return Ok(Some(ended("token_revoked", &v)));
                            }
                            "gap" => {
                                return Ok(Some(Event::Gap {
                                    channel: v["channel"].as_str().unwrap_or("").to_owned(),
                                }));
                            }
                            "reconnect" => {
                                let reason = v["reason"].as_str().unwrap_or("reconnect");
                                let _ = SinkExt::close(ws).await;
                                return Err(ClientError::Transport(reason.to_owned()));
                            }
                            "error" => {
                                return Ok(Some(Event::Error {
                                    code: v["code"].as_str().unwrap_or("").to_owned(),
                                    message: v["message"].as_str().unwrap_or("").to_owned(),
                                }));
                            }
                            _ => continue,
                        }
                    }
                    tungstenite::Message::Ping(p) => {
                        let _ = ws.send(tungstenite::Message::Pong(p)).await;
                    }
                    tungstenite::Message::Close(c) => {
                        let reason = c.map_or_else(
                            || "closed".to_owned(),
                            |c| format!("closed {}", u16::from(c.code)),
                        );
                        return Err(ClientError::Transport(reason));
                    }
                    _ => continue,
                }
            },
            Conn::Sse { body, buf } => loop {
                if let Some(end) = find_event_end(buf) {
                    let block: Vec<u8> = buf.drain(..end.1).collect();
                    let text = String::from_utf8_lossy(&block[..end.0]).replace('\r', "");
                    let (event, id) = parse_sse(&text)?;
                    if let Some(id) = id {
                        self.sse_id = Some(id);
                    }
                    if let Some(e) = event {
                        return Ok(Some(e));
                    }
                    continue;
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                    None => return Err(ClientError::Transport("stream ended".into())),
                }
            },
            Conn::Poll => self.poll_once().await,
        }
    }

    async fn poll_once(&mut self) -> Result<Option<Event>, ClientError> {
        let long = self.opts.protocol == Protocol::LongPoll;
        let wait = long.then_some(self.opts.wait_secs.clamp(1, 60));
        let url = format!("{}/poll?{}", self.base(), self.query(wait));
        let started = tokio::time::Instant::now();
        let resp = self.get(&url).await?;
        #[derive(Deserialize)]
        struct Reply {
            messages: Vec<Message>,
            cursor: String,
            #[serde(default)]
            gaps: Vec<String>,
            #[serde(default)]
            gap: bool,
        }
        let reply: Reply = resp
            .json()
            .await
            .map_err(|e| ClientError::Transport(format!("bad poll reply: {e}")))?;
        let first = self.position().is_none();
        for c in &reply.gaps {
            self.queue.push_back(Event::Gap { channel: c.clone() });
        }
        if reply.gap && reply.gaps.is_empty() {
            self.queue.push_back(Event::Gap {
                channel: String::new(),
            });
        }
        let empty = reply.messages.is_empty();
        for m in reply.messages {
            self.queue.push_back(Event::Message(m));
        }
        match Since::parse(&reply.cursor, &self.channels) {
            Ok(Since::All(at)) => {
                for ch in &self.channels {
                    self.positions.insert(ch.clone(), at);
                }
            }
            Ok(Since::Each(map)) => self.positions = map,
            _ => return Err(ClientError::Transport("bad poll cursor".into())),
        }
        if first {
            self.queue.push_front(Event::Subscribed {
                cursor: Some(reply.cursor),
            });
        }
        if empty && reply.gaps.is_empty() {
            if long {
                // A held poll answered empty long before its wait: the node is draining
                // (it answers held polls at once); go to the next node.
                if let Some(w) = wait
                    && started.elapsed() < Duration::from_secs(u64::from(w)) / 2
                    && self.opts.urls.len() > 1
                {
                    return Err(ClientError::Transport("draining".into()));
                }
            } else {
                tokio::time::sleep(self.opts.poll_interval).await;
            }
        }
        Ok(None)
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ended(code: &str, v: &serde_json::Value) -> Event {
    Event::Ended {
        code: code.to_owned(),
        reason: v["reason"].as_str().unwrap_or("").to_owned(),
    }
}

/// Join/leave, a server-side unsubscribe, or a disconnect, as WebSocket frames and SSE
/// events both carry them. A disconnect that allows reconnecting is a transport loss (the
/// subscriber reconnects and resumes).
fn server_event(kind: &str, v: &serde_json::Value) -> Result<Option<Event>, ClientError> {
    let text = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    Ok(Some(match kind {
        "join" | "leave" => Event::Presence {
            kind: kind.to_owned(),
            channel: text("channel"),
            client: text("client"),
            user: text("user"),
            info: v["info"].clone(),
        },
        "unsubscribed" => Event::Unsubscribed {
            channels: strings(&v["channels"]),
            reason: text("reason"),
        },
        "disconnect" if v["reconnect"] == true => {
            return Err(ClientError::Transport("disconnected".into()));
        }
        "disconnect" => ended("disconnected", v),
        _ => return Ok(None),
    }))
}

/// End of the first complete SSE event in `buf`: (end of its text, end including the blank
/// line).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
    }
    None
}

/// One SSE event block: what it tells, and its `id:` (the stream's position after it).
fn parse_sse(block: &str) -> Result<(Option<Event>, Option<String>), ClientError> {
    let (mut event, mut data, mut id) = ("message", String::new(), None);
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.strip_prefix(' ').unwrap_or(v).to_owned());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim_start();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() && event == "message" {
        return Ok((None, id)); // comment / retry-only block
    }
    let v: serde_json::Value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
    let event = match event {
        "message" => Event::Message(
            serde_json::from_value(v)
                .map_err(|e| ClientError::Transport(format!("bad SSE message: {e}")))?,
        ),
        "subscribed" if v["server"] == true => Event::ServerSubscribed {
            channels: strings(&v["channels"]),
            cursor: v["cursor"].as_str().map(str::to_owned),
        },
        "subscribed" => Event::Subscribed {
            cursor: v["cursor"].as_str().map(str::to_owned),
        },
        "gap" => Event::Gap {
            channel: v["channel"].as_str().unwrap_or("").to_owned(),
        },
        "join" | "leave" | "unsubscribed" | "disconnect" => {
            return Ok((server_event(event, &v)?, id));
        }
        "reconnect" => {
            return Err(ClientError::Transport(
                v["reason"].as_str().unwrap_or("reconnect").to_owned(),
            ));
        }
        "error" if v["code"] == "token_revoked" => ended("token_revoked", &v),
        "error" => {
            let code = v["code"].as_str().unwrap_or("").to_owned();
            return Err(ClientError::Transport(format!(
                "{code}: {}",
                v["message"].as_str().unwrap_or("")
            )));
        }
        _ => return Ok((None, id)),
    };
    Ok((Some(event), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse() {
        let (e, id) = parse_sse(
            "id: 3_x_0.2\nevent: message\ndata: {\"channel\":\"a\",\"id\":\"5\",\"data\":1,\"ts\":2}",
        )
        .unwrap();
        assert!(matches!(e, Some(Event::Message(m)) if m.id == "5"));
        assert_eq!(id.as_deref(), Some("3_x_0.2"));
        assert_eq!(parse_sse(": heartbeat").unwrap(), (None, None));
        assert_eq!(parse_sse("retry: 2000").unwrap(), (None, None));
        assert!(parse_sse("event: reconnect\ndata: {\"reason\":\"draining\"}").is_err());
        let (e, _) = parse_sse(
            "event: join\ndata: {\"channel\":\"room:1\",\"client\":\"c1\",\"user\":\"ann\",\"info\":{\"n\":1}}",
        )
        .unwrap();
        assert!(
            matches!(&e, Some(Event::Presence { kind, user, info, .. })
                if kind == "join" && user == "ann" && info["n"] == 1),
            "{e:?}"
        );
        assert!(parse_sse("event: disconnect\ndata: {\"reconnect\":true}").is_err());
        assert!(matches!(
            parse_sse("event: disconnect\ndata: {\"reconnect\":false,\"reason\":\"x\"}").unwrap().0,
            Some(Event::Ended { code, reason }) if code == "disconnected" && reason == "x"
        ));
        assert_eq!(find_event_end(b"a\n\nb"), Some((1, 3)));
    }
}
