//! `GET /ws`: JSON text frames both ways.
//!
//! Client commands: `{"op":"subscribe","channels":[..],"since":"C"}`,
//! `{"op":"unsubscribe","channels":[..]}`, `{"op":"ping"}`, `{"op":"auth","token":"JWT"}`
//! (also to refresh a token before it expires), `{"op":"publish","channel":"c","data":<JSON>,
//! "id":"r1"}` (where the namespace and token allow it: answered `published` with the cursor,
//! or `error`, both carrying the `id`). Server frames carry `"type"`: `message`,
//! `subscribed`, `unsubscribed`, `gap`, `pong`, `authenticated`, `published`, `error`,
//! `reconnect`. A
//! malformed or refused command gets an `error` frame and the connection stays open;
//! oversized frames (1009), command floods (1008), slow consumption (1013), draining (1012)
//! and an expired token (4001) close it.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::FromRequestParts,
    http::request::Parts,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_auth::{AuthError, Principal};
use herald_core::{ChannelName, Cursor, Protocol, Since};
use herald_telemetry::CloseReason;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message as WsMessage, Utf8Bytes,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

use crate::{
    EdgeError, EdgeInner,
    conn::HyperIo,
    deliver::{self, Ending},
    direct::{DirectSink, Framing, WsIo},
    params::ClientQuery,
    registry::Registration,
    session::{Session, Step},
};

/// Close code: a frame exceeded the size limit ("Message Too Big").
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: abuse such as a command flood ("Policy Violation").
const CLOSE_POLICY: u16 = 1008;
/// Commands a connection may send in a burst before the rate applies.
const COMMAND_BURST: f64 = 200.0;
/// Sustained commands per second per connection.
const COMMAND_RATE: f64 = 50.0;

#[derive(Deserialize)]
struct RawCommand {
    op: Option<String>,
    channels: Option<Vec<String>>,
    /// A cursor or position token (string), or per-channel cursors (object).
    since: Option<serde_json::Value>,
    token: Option<String>,
    channel: Option<String>,
    data: Option<Box<serde_json::value::RawValue>>,
    id: Option<serde_json::Value>,
    method: Option<String>,
}

enum Command {
    Subscribe(Vec<ChannelName>, Since),
    Unsubscribe(Vec<ChannelName>),
    Ping,
    Auth(String),
    Publish(crate::publish::Pending),
    /// A publish or RPC that cannot be carried out, answered with its request id.
    Refused(serde_json::Value, crate::publish::Asked, EdgeError),
}

fn parse_command(text: &str, max_channels: usize) -> Result<Command, EdgeError> {
    let bad = |m: String| EdgeError::BadCommand(m);
    let raw: RawCommand = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "command is not a JSON object of the expected shape: {e}"
        ))
    })?;
    let channels = |raw: &mut RawCommand| -> Result<Vec<ChannelName>, EdgeError> {
        let names = raw
            .channels
            .take()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("\"channels\" must be a non-empty list of channel names".into()))?;
        if names.len() > max_channels {
            return Err(EdgeError::TooManyChannels { max: max_channels });
        }
        Ok(names
            .iter()
            .map(|n| ChannelName::new(n))
            .collect::<Result<_, _>>()?)
    };
    let mut raw = raw;
    match raw.op.as_deref() {
        Some("subscribe") => {
            let channels = channels(&mut raw)?;
            let since = parse_since(raw.since.take(), &channels)?;
            Ok(Command::Subscribe(channels, since))
        }
        Some("unsubscribe") => Ok(Command::Unsubscribe(channels(&mut raw)?)),
        Some("ping") => Ok(Command::Ping),
        Some("auth" | "refresh") => match raw.token {
            Some(t) if !t.is_empty() => Ok(Command::Auth(t)),
            _ => Err(bad("\"token\" must be a non-empty string".into())),
        },
        Some("publish") => {
            let id = crate::publish::request_id(raw.id.take())?;
            let checked = (|| {
                let channel = raw
                    .channel
                    .take()
                    .ok_or_else(|| bad("\"channel\" must name the channel to publish to".into()))?;
                let channel = ChannelName::new(&channel)?;
                let data = raw.data.take().ok_or_else(|| {
                    EdgeError::InvalidData("\"data\" is required (any JSON value)".into())
                })?;
                Ok::<_, EdgeError>((channel, data))
            })();
            Ok(match checked {
                Ok((channel, data)) => Command::Publish(crate::publish::Pending {
                    id,
                    what: crate::publish::Request::Publish {
                        channel,
                        data: bytes::Bytes::from(String::from(Box::<str>::from(data))),
                    },
                }),
                Err(e) => Command::Refused(id, crate::publish::Asked::Publish(None), e),
            })
        }
        Some("rpc") => {
            let id = crate::publish::request_id(raw.id.take())?;
            Ok(match crate::publish::method_name(raw.method.take()) {
                Ok(method) => Command::Publish(crate::publish::Pending {
                    id,
                    what: crate::publish::Request::Rpc {
                        method,
                        data: raw.data.take().unwrap_or_else(|| {
                            serde_json::value::RawValue::from_string("null".into())
                                .unwrap_or_default()
                        }),
                    },
                }),
                Err(e) => Command::Refused(id, crate::publish::Asked::Rpc, e),
            })
        }
        Some(other) => Err(bad(format!(
            "unknown op {:?}: expected subscribe, unsubscribe, ping, auth, publish or rpc",
            other.chars().take(32).collect::<String>()
        ))),
        None => Err(bad(
            "missing \"op\": expected subscribe, unsubscribe, ping, auth, publish or rpc".into(),
        )),
    }
}

/// A subscribe command's `since`: absent (from now), a cursor or position token, or an object
/// of per-channel cursors naming only channels of the command.
fn parse_since(
    since: Option<serde_json::Value>,
    channels: &[ChannelName],
) -> Result<Since, EdgeError> {
    let bad = |m: &str| EdgeError::BadCommand(m.into());
    match since {
        None | Some(serde_json::Value::Null) => Ok(Since::Now),
        Some(serde_json::Value::String(text)) => Ok(Since::parse(&text, channels)?),
        Some(serde_json::Value::Object(map)) => {
            let mut each = std::collections::BTreeMap::new();
            for (name, cursor) in map {
                let channel = ChannelName::new(&name)?;
                if !channels.contains(&channel) {
                    return Err(bad(
                        "\"since\" names a channel that \"channels\" does not list",
                    ));
                }
                let text = cursor
                    .as_str()
                    .ok_or_else(|| bad("\"since\" values must be message ids (strings)"))?;
                each.insert(channel, text.parse::<Cursor>()?);
            }
            Ok(Since::Each(each))
        }
        Some(_) => Err(bad(
            "\"since\" must be a cursor, a position token, or an object of per-channel cursors",
        )),
    }
}

/// [`parse_command`] with the properties callers rely on asserted (for the fuzz targets).
pub(crate) fn fuzz_command(text: &str, max: usize) {
    match parse_command(text, max) {
        Ok(Command::Subscribe(channels, _)) | Ok(Command::Unsubscribe(channels)) => {
            assert!(
                !channels.is_empty() && channels.len() <= max,
                "channel bound broken"
            );
            for c in &channels {
                assert!(ChannelName::validate(c.as_str()).is_ok());
            }
        }
        Ok(Command::Auth(token)) => assert!(!token.is_empty()),
        Ok(Command::Publish(p)) => match p.what {
            crate::publish::Request::Publish { channel, data } => {
                assert!(ChannelName::validate(channel.as_str()).is_ok());
                assert!(serde_json::from_slice::<serde_json::Value>(&data).is_ok());
            }
            crate::publish::Request::Rpc { method, data } => {
                assert!(!method.is_empty() && method.len() <= crate::hooks::MAX_METHOD_LEN);
                assert!(serde_json::from_str::<serde_json::Value>(data.get()).is_ok());
            }
        },
        Ok(Command::Ping | Command::Refused(..)) | Err(_) => {}
    }
}

fn frame(v: serde_json::Value) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(v.to_string()))
}

fn error_frame(e: &EdgeError) -> WsMessage {
    let mut body = e.body();
    body["type"] = "error".into();
    frame(body)
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let close = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(WsMessage::Close(Some(close))),
    )
    .await;
}

/// Token bucket against command floods. Its rate is at least twice the client publish rate
/// (publishes and RPCs are commands too), so raising `HERALD_CLIENT_PUBLISH_RATE` does not
/// turn a publisher within it into a flood.
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(publish_rate: u32) -> Self {
        let rate = COMMAND_RATE.max(2.0 * f64::from(publish_rate));
        let burst = COMMAND_BURST.max(2.0 * rate);
        Self {
            tokens: burst,
            at: Instant::now(),
            rate,
            burst,
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The connection's client and how long its grant lasts.
struct Auth {
    who: Option<Principal>,
    deadline: Option<Instant>,
    /// What backend hooks are told about this client (only on a node with hooks).
    hook_ctx: Option<Box<herald_core::hooks::ClientContext>>,
}

/// Serves one upgraded WebSocket until it closes.
pub(crate) async fn run(
    edge: Arc<EdgeInner>,
    mut socket: WebSocket,
    reg: Registration,
    initial: ClientQuery,
    who: Option<Principal>,
    hook_ctx: Option<Box<herald_core::hooks::ClientContext>>,
    sink: Option<Arc<DirectSink>>,
) {
    let mut session = Session::new(edge.clone(), reg);
    let mut auth = Auth {
        deadline: crate::auth::deadline(&edge, who.as_ref()),
        who,
        hook_ctx,
    };
    let reason = serve(
        &edge,
        &mut socket,
        &mut session,
        initial,
        &mut auth,
        sink.as_deref(),
    )
    .await;
    session.reg.reason = reason;
}

async fn serve(
    edge: &Arc<EdgeInner>,
    socket: &mut WebSocket,
    session: &mut Session,
    initial: ClientQuery,
    auth: &mut Auth,
    sink: Option<&DirectSink>,
) -> CloseReason {
    if !initial.channels.is_empty()
        && Box::pin(subscribe(
            socket,
            session,
            &initial.channels,
            &initial.since,
            false,
        ))
        .await
        .is_err()
    {
        return CloseReason::Normal;
    }
    let outbox = session.reg.outbox.clone();
    let period = edge.config.ws_ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    let mut last_heard = Instant::now();
    let mut bucket = Bucket::new(edge.config.client_publish_rate);
    let mut batch = Vec::new();
    let mut publishes = crate::publish::Publishes::new();
    loop {
        let deadline = auth.deadline;
        let expiry = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Nothing pending: the fan-out may write its messages straight to the socket while
        // this waits (`direct`).
        let parked = sink.is_some() && outbox.park(|out| session.direct_positions(out));
        let next = outbox.next_batch(&mut batch);
        let leftover = async {
            match sink {
                Some(sink) => sink.leftover().await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            () = expiry => Woke::Expired,
            r = next => Woke::Batch(r),
            () = leftover => Woke::Leftover,
            answer = std::future::poll_fn(|cx| publishes.poll_answer(cx, edge, auth.who.as_ref(), auth.hook_ctx.as_deref())),
                if publishes.busy() => Woke::Answer(answer),
            incoming = socket.next() => Woke::Incoming(incoming),
            _ = ping.tick() => Woke::Ping,
        };
        // Whatever woke it, direct writes stop here; the session's position takes in what
        // they wrote (every queued item is newer).
        if parked {
            outbox.unpark(|reached| session.record_positions(reached));
        }
        match woke {
            Woke::Expired => return end(socket, Ending::TokenExpired).await,
            // A direct write went out in part: the flush sends the rest.
            Woke::Leftover => {
                let kill = session.reg.kill.clone();
                tokio::select! {
                    flushed = socket.flush() => {
                        if flushed.is_err() {
                            return CloseReason::Normal;
                        }
                    }
                    // The client stopped reading and its queue overflowed: give up.
                    () = kill.cancelled() => return CloseReason::SlowConsumer,
                }
            }
            Woke::Batch(r) => match r {
                Ok(bytes) => {
                    edge.metrics.outbox_queued_bytes.observe(bytes as f64);
                    let kill = session.reg.kill.clone();
                    tokio::select! {
                        written = write_batch(socket, session, &mut batch) => {
                            if written.is_err() {
                                return CloseReason::Normal;
                            }
                        }
                        // The client stopped reading and its queue overflowed: give up.
                        () = kill.cancelled() => return CloseReason::SlowConsumer,
                    }
                }
                Err(closed) => return end(socket, Ending::of(closed)).await,
            },
            Woke::Answer(answer) => {
                if socket
                    .send(frame(crate::publish::answer_frame(answer)))
                    .await
                    .is_err()
                {
                    return CloseReason::Normal;
                }
            }
            Woke::Incoming(incoming) => {
                last_heard = Instant::now();
                let text = match incoming {
                    None | Some(Ok(WsMessage::Close(_))) => return CloseReason::Normal,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        if is_capacity(&e) {
                            close(socket, CLOSE_TOO_BIG, "frame too large").await;
                            return CloseReason::ProtocolError;
                        }
                        return CloseReason::Normal;
                    }
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Binary(_))) => {
                        let e = EdgeError::BadCommand(
                            "binary frames are not supported: send JSON text frames".into(),
                        );
                        if socket.send(error_frame(&e)).await.is_err() {
                            return CloseReason::Normal;
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong: answered by tungstenite
                };
                if !bucket.take() {
                    close(socket, CLOSE_POLICY, "command rate exceeded").await;
                    edge.metrics.refuse("invalid_request");
                    return CloseReason::ProtocolError;
                }
                // Boxed: commands are rare, and their futures (resume reads, token checks) would
                // otherwise stay in every idle connection's state.
                if Box::pin(command(edge, socket, session, auth, &mut publishes, &text))
                    .await
                    .is_err()
                {
                    return CloseReason::Normal;
                }
            }
            Woke::Ping => {
                if last_heard.elapsed() > period * 2 {
                    tracing::debug!("websocket peer silent for two ping periods; closing");
                    return CloseReason::Normal;
                }
                if socket
                    .send(WsMessage::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return CloseReason::Normal;
                }
            }
        }
    }
}

/// What woke a connection's task.
enum Woke {
    Expired,
    Batch(Result<usize, crate::outbox::Closed>),
    Leftover,
    Answer(crate::publish::Answer),
    Incoming(Option<Result<WsMessage, WsError>>),
    Ping,
}

/// Tells the client why the server ends the connection, then closes with the ending's code.
async fn end(socket: &mut WebSocket, ending: Ending) -> CloseReason {
    let mut body = ending.body();
    body["type"] = ending.kind().into();
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame(body))).await;
    let (code, reason) = ending.ws_close();
    close(socket, code, reason).await;
    ending.close_reason()
}

fn is_capacity(e: &WsError) -> bool {
    matches!(e, WsError::Capacity(_))
}

async fn command(
    edge: &Arc<EdgeInner>,
    socket: &mut WebSocket,
    session: &mut Session,
    auth: &mut Auth,
    publishes: &mut crate::publish::Publishes,
    text: &str,
) -> Result<(), WsError> {
    match parse_command(text, edge.config.max_channels_per_connection) {
        Ok(Command::Publish(p)) => {
            let id = p.id.clone();
            let asked = match &p.what {
                crate::publish::Request::Publish { channel, .. } => {
                    crate::publish::Asked::Publish(Some(channel.clone()))
                }
                crate::publish::Request::Rpc { .. } => crate::publish::Asked::Rpc,
            };
            match publishes.push(edge, auth.who.as_ref(), auth.hook_ctx.as_deref(), p) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let body = crate::publish::answer_frame((id, asked, Err(e)));
                    socket.send(frame(body)).await
                }
            }
        }
        Ok(Command::Refused(id, asked, e)) => {
            edge.metrics.refuse(e.refusal());
            if let crate::publish::Asked::Publish(_) = asked {
                edge.metrics
                    .client_publishes
                    .with_label_values(&["websocket", e.code()])
                    .inc();
            }
            socket
                .send(frame(crate::publish::answer_frame((id, asked, Err(e)))))
                .await
        }
        Ok(Command::Subscribe(channels, since)) => {
            let allowed = match crate::auth::check_revoked(edge, auth.who.as_ref()) {
                Ok(()) => {
                    let ctx = auth.hook_ctx.as_deref();
                    crate::hooks::authorize(edge, auth.who.as_ref(), &channels, |_| {
                        ctx.cloned()
                            .unwrap_or_else(|| herald_core::hooks::ClientContext {
                                client: String::new(),
                                remote_addr: None,
                                protocol: "websocket",
                                user: None,
                                headers: Vec::new(),
                                traceparent: None,
                            })
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = allowed {
                edge.metrics.refuse(e.refusal());
                let mut body = e.body();
                body["type"] = "error".into();
                body["channels"] = channels.iter().map(|c| c.as_str()).collect();
                return socket.send(frame(body)).await;
            }
            subscribe(socket, session, &channels, &since, false).await
        }
        Ok(Command::Auth(token)) => authenticate(edge, socket, session, auth, &token).await,
        Ok(Command::Unsubscribe(channels)) => {
            let removed = session.unsubscribe(&channels);
            let names: Vec<&str> = removed.iter().map(|c| c.as_str()).collect();
            socket
                .send(frame(
                    serde_json::json!({"type": "unsubscribed", "channels": names}),
                ))
                .await
        }
        Ok(Command::Ping) => {
            socket
                .send(frame(serde_json::json!({"type": "pong"})))
                .await
        }
        Err(e) => {
            edge.metrics.refuse(e.refusal());
            socket.send(error_frame(&e)).await
        }
    }
}

/// `auth` / `refresh`: verifies the token, keeps the same user, drops subscriptions the new
/// grant no longer covers, and moves the expiry.
async fn authenticate(
    edge: &Arc<EdgeInner>,
    socket: &mut WebSocket,
    session: &mut Session,
    auth: &mut Auth,
    token: &str,
) -> Result<(), WsError> {
    let verified = edge
        .config
        .policy
        .authenticate(Some(token))
        .map_err(EdgeError::Unauthorized)
        .and_then(|who| match (&auth.who, who) {
            (Some(old), Some(new)) if old.user != new.user => {
                Err(EdgeError::Unauthorized(AuthError::OtherUser))
            }
            (_, who) => Ok(who),
        })
        .and_then(|who| crate::auth::check_revoked(edge, who.as_ref()).map(|()| who));
    let who = match verified {
        Ok(who) => who,
        Err(e) => {
            edge.metrics.refuse(e.refusal());
            return socket.send(error_frame(&e)).await;
        }
    };
    let Some(who) = who else {
        // This node does not verify tokens: nothing changes.
        return socket
            .send(frame(
                serde_json::json!({"type": "authenticated", "user": null,
                "expires_at": null, "client": &*session.reg.outbox.client.id}),
            ))
            .await;
    };
    session.reg.outbox.client.set_token(&who);
    let revoked: Vec<ChannelName> = session
        .channels()
        .into_iter()
        .filter(|c| edge.config.policy.authorize(Some(&who), c).is_err())
        .collect();
    auth.deadline = crate::auth::deadline(edge, Some(&who));
    socket
        .feed(frame(
            serde_json::json!({"type": "authenticated", "user": who.user,
            "expires_at": who.expires_at, "client": &*session.reg.outbox.client.id}),
        ))
        .await?;
    auth.who = Some(who);
    if !revoked.is_empty() {
        session.unsubscribe(&revoked);
        let names: Vec<&str> = revoked.iter().map(|c| c.as_str()).collect();
        socket
            .feed(frame(
                serde_json::json!({"type": "unsubscribed", "channels": names,
                "reason": "channel_forbidden"}),
            ))
            .await?;
    }
    socket.flush().await
}

async fn subscribe(
    socket: &mut WebSocket,
    session: &mut Session,
    channels: &[ChannelName],
    since: &Since,
    server: bool,
) -> Result<(), WsError> {
    let mut catchup = match session.subscribe(channels, since).await {
        Ok(c) => c,
        Err(e) => {
            session.edge.metrics.refuse(e.refusal());
            let mut body = e.body();
            body["type"] = "error".into();
            body["channels"] = channels.iter().map(|c| c.as_str()).collect();
            return socket.send(frame(body)).await;
        }
    };
    let names: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let mut body = serde_json::json!({
        "type": "subscribed", "channels": names, "cursor": catchup.cursor.to_string(),
        "client": &*session.reg.outbox.client.id,
    });
    if server {
        body["server"] = true.into();
    }
    socket.send(frame(body)).await?;
    // The catch-up streams: each batch goes out as soon as it is read.
    let mut steps = Vec::new();
    while session.catch_up(&mut catchup, &mut steps).await {
        let mut frames = Vec::with_capacity(steps.len());
        deliver::catch_up(session, Protocol::WebSocket, &mut steps, |_, step| {
            frames.push(encode(step));
        });
        for f in frames {
            socket.feed(f).await?;
        }
        socket.flush().await?;
    }
    Ok(())
}

/// The WebSocket frame of a delivery.
fn encode(step: &Step) -> WsMessage {
    match step {
        // Message frames are built from validated JSON and ASCII names: always UTF-8.
        Step::Message(m) => WsMessage::Text(
            Utf8Bytes::try_from(m.ws_frame().clone())
                .unwrap_or_else(|_| Utf8Bytes::from_static("{}")),
        ),
        Step::Gap(c) => frame(serde_json::json!({"type": "gap", "channel": c.as_str()})),
        Step::Presence(e) => {
            let mut body = e.body();
            body["type"] = e.kind.as_str().into();
            frame(body)
        }
        Step::Unsubscribed(c) => frame(serde_json::json!({
            "type": "unsubscribed", "channels": [c.as_str()], "reason": "server"
        })),
        // Sent by `subscribe` once the frames before it are written.
        Step::Subscribe(_) => frame(serde_json::Value::Null),
    }
}

async fn write_batch(
    socket: &mut WebSocket,
    session: &mut Session,
    batch: &mut Vec<crate::outbox::Item>,
) -> Result<(), WsError> {
    let mut frames = Vec::with_capacity(batch.len());
    let mut added = Vec::new();
    deliver::live(session, Protocol::WebSocket, batch, |_, step| match step {
        Step::Subscribe(c) => added.push(c.clone()),
        step => frames.push(encode(step)),
    });
    for f in frames {
        socket.feed(f).await?;
    }
    socket.flush().await?;
    if !added.is_empty() {
        // The operator added channels (from now): the same answer as a client's subscribe.
        Box::pin(subscribe(socket, session, &added, &Since::Now, true)).await?;
    }
    Ok(())
}

/// The socket under a WebSocket: shared with the fan-out's direct writes when it came in
/// through the accept loop, else hyper's upgraded connection as it is.
pub(crate) enum Io {
    Direct(WsIo),
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Direct(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Io::Hyper(io) => std::pin::Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Direct(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Io::Hyper(io) => std::pin::Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Direct(io) => std::pin::Pin::new(io).poll_flush(cx),
            Io::Hyper(io) => std::pin::Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Direct(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Io::Hyper(io) => std::pin::Pin::new(io).poll_shutdown(cx),
        }
    }
}

pub(crate) type WebSocket = WebSocketStream<Io>;

/// A checked WebSocket handshake request (RFC 6455 4.2.1), or why it is not one.
pub(crate) struct Handshake(Result<(hyper::upgrade::OnUpgrade, http::HeaderValue), String>);

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Handshake(check_handshake(parts)))
    }
}

impl Handshake {
    /// The handshake, or a `not_websocket` error.
    pub(crate) fn accept(self) -> Result<Self, EdgeError> {
        match self.0 {
            Ok(ok) => Ok(Handshake(Ok(ok))),
            Err(why) => Err(EdgeError::NotWebSocket(why)),
        }
    }
}

fn check_handshake(
    parts: &mut Parts,
) -> Result<(hyper::upgrade::OnUpgrade, http::HeaderValue), String> {
    use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
    let has = |name: http::HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if parts.method != http::Method::GET {
        return Err("a WebSocket handshake must be a GET request".into());
    }
    if !has(CONNECTION, "upgrade") {
        return Err("`Connection` header did not include 'upgrade'".into());
    }
    if !has(UPGRADE, "websocket") {
        return Err("`Upgrade` header did not include 'websocket'".into());
    }
    if parts
        .headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err("`Sec-WebSocket-Version` header did not include '13'".into());
    }
    let key = parts
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or("`Sec-WebSocket-Key` header missing")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = http::HeaderValue::from_str(&accept).map_err(|e| e.to_string())?;
    let on = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or("the connection cannot be upgraded")?;
    Ok((on, accept))
}

/// Answers the handshake (101) and serves the connection once upgraded; `reg` was admitted
/// by the caller.
pub(crate) fn upgrade(
    edge: Arc<EdgeInner>,
    handshake: Handshake,
    reg: Registration,
    initial: ClientQuery,
    who: Option<Principal>,
    hook_ctx: Option<Box<herald_core::hooks::ClientContext>>,
) -> Response {
    let Handshake(Ok((on_upgrade, accept))) = handshake else {
        return EdgeError::NotWebSocket("not a WebSocket handshake".into()).into_response();
    };
    let c = &edge.config;
    let config = WebSocketConfig::default()
        .read_buffer_size(c.ws_read_buffer)
        .write_buffer_size(c.ws_write_buffer)
        .max_write_buffer_size(c.outbox_bytes.max(c.ws_write_buffer * 2))
        .max_message_size(Some(c.max_client_frame))
        .max_frame_size(Some(c.max_client_frame));
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        // From the accept loop, the socket is taken back from hyper so the fan-out can write
        // to it (`direct`); hyper's buffered bytes are the first the WebSocket reads.
        let (io, sink) = match upgraded.downcast::<HyperIo>() {
            Ok(parts) => {
                let (unread, counted) = parts.io.into_inner().into_parts();
                let (stream, slot) = counted.into_parts();
                let mut prefix = parts.read_buf.to_vec();
                prefix.extend_from_slice(&unread);
                let sink = Arc::new(DirectSink::new(stream, Framing::WebSocket));
                reg.outbox
                    .attach(Arc::downgrade(&sink), edge.metrics.clone());
                let io = WsIo::new(sink.clone(), Bytes::from(prefix), slot);
                (Io::Direct(io), Some(sink))
            }
            Err(upgraded) => (Io::Hyper(TokioIo::new(upgraded)), None),
        };
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        run(edge, socket, reg, initial, who, hook_ctx, sink).await;
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_or_explain() {
        assert!(matches!(
            parse_command(r#"{"op":"ping"}"#, 10),
            Ok(Command::Ping)
        ));
        assert!(matches!(
            parse_command(r#"{"op":"subscribe","channels":["a","b"],"since":"12"}"#, 10),
            Ok(Command::Subscribe(c, Since::All(Cursor(12)))) if c.len() == 2
        ));
        for (bad, needle) in [
            ("not json", "not a JSON object"),
            (r#"{"op":"jump"}"#, "unknown op"),
            (r#"{"channels":["a"]}"#, "missing \"op\""),
            (r#"{"op":"subscribe"}"#, "non-empty list"),
            (r#"{"op":"subscribe","channels":[]}"#, "non-empty list"),
            (
                r#"{"op":"subscribe","channels":["a b"]}"#,
                "invalid channel",
            ),
            (
                r#"{"op":"subscribe","channels":["a"],"since":"x"}"#,
                "invalid cursor",
            ),
            (r#"{"op":"subscribe","channels":"a"}"#, "expected shape"),
            (
                r#"{"op":"subscribe","channels":["a"],"since":{"b":"1"}}"#,
                "does not list",
            ),
            (
                r#"{"op":"subscribe","channels":["a"],"since":{"a":1}}"#,
                "must be message ids",
            ),
            (
                r#"{"op":"subscribe","channels":["a"],"since":{"a":"x"}}"#,
                "invalid cursor",
            ),
            (
                r#"{"op":"subscribe","channels":["a"],"since":[1]}"#,
                "per-channel",
            ),
        ] {
            let e = parse_command(bad, 10)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
