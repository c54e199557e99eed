//! `GET /sse`: Server-Sent Events. Each message is `id: <cursor>`, `event: message`,
//! `data: <message JSON>`; `subscribed`, `gap`, `reconnect` and `error` events say the rest.
//! A `retry:` line sets the browser's reconnect delay and comment lines keep proxies from
//! timing the stream out. `Last-Event-ID` (sent by `EventSource` on reconnect) wins over
//! `since`, so a browser resumes exactly where it left off.

use std::{collections::VecDeque, convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{Protocol, Since};
use tokio::time::{Instant, Interval};

use crate::{
    EdgeError, EdgeInner,
    deliver::{self, Ending},
    direct::DirectSink,
    outbox::Item,
    params,
    session::{Catchup, Session, Step},
};

struct Stream {
    session: Session,
    heartbeat: Interval,
    /// Chunks ready to go out, in order.
    pending: VecDeque<Bytes>,
    /// The catch-up still to send, before any live message.
    catchup: Option<Catchup>,
    steps: Vec<Step>,
    batch: Vec<Item>,
    /// Set once the last chunk (reconnect, error) is queued.
    done: bool,
    /// When the client's token runs out (the stream then ends with a `token_expired` error).
    expires: Option<Instant>,
}

fn event(name: &str, id: Option<&str>, data: &serde_json::Value) -> Bytes {
    let mut b = BytesMut::new();
    if let Some(id) = id {
        b.put_slice(format!("id: {id}\n").as_bytes());
    }
    b.put_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    b.freeze()
}

/// Queues the SSE event of a delivery. A message event's `id:` is the stream's position
/// token after it: with one channel that is the message's own id, and the event was built
/// once for every connection; with several, the shared `event:`/`data:` lines follow this
/// connection's `id:` line.
fn encode(session: &mut Session, step: &Step, out: &mut VecDeque<Bytes>) {
    match step {
        Step::Message(m) => {
            let whole = m.sse_event();
            if session.channel_count() == 1 && !session.is_pinned() {
                out.push_back(whole.clone());
            } else {
                let body = whole.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
                out.push_back(Bytes::from(format!("id: {}\n", session.token())));
                out.push_back(whole.slice(body..));
            }
        }
        Step::Gap(c) => out.push_back(event(
            "gap",
            None,
            &serde_json::json!({"channel": c.as_str()}),
        )),
        Step::Presence(e) => out.push_back(event(e.kind.as_str(), None, &e.body())),
        Step::Unsubscribed(c) => out.push_back(event(
            "unsubscribed",
            None,
            &serde_json::json!({"channels": [c.as_str()], "reason": "server"}),
        )),
        // Subscribed by `next_chunk` once the steps before it are queued.
        Step::Subscribe(_) => {}
    }
}

/// The `subscribed` event: the stream's position token after it, the channels, "now", and
/// the client id; `server` when the operator added the channels.
fn subscribed(session: &mut Session, catchup: &Catchup, server: bool) -> Bytes {
    let names: Vec<&str> = catchup.channels.iter().map(|c| c.as_str()).collect();
    let mut body = serde_json::json!({
        "channels": names, "cursor": catchup.cursor.to_string(),
        "client": &*session.reg.outbox.client.id,
    });
    if server {
        body["server"] = true.into();
    }
    event("subscribed", Some(&session.token()), &body)
}

/// Handles `GET /sse`.
pub(crate) async fn handle(
    edge: Arc<EdgeInner>,
    raw_query: Option<String>,
    headers: HeaderMap,
    kill: tokio_util::sync::CancellationToken,
    ip: Option<std::net::IpAddr>,
    sink: Option<Arc<DirectSink>>,
) -> Result<Response, EdgeError> {
    if edge.is_draining() {
        return Err(EdgeError::Draining);
    }
    let mut query = params::parse(
        raw_query.as_deref(),
        edge.config.max_channels_per_connection,
    )?;
    if query.channels.is_empty() {
        return Err(EdgeError::NoChannels);
    }
    let who = crate::auth::authenticate(&edge, &headers, &query)?;
    let id = edge.config.hooks.is_some().then(crate::identity::client_id);
    let ctx = |hooks: &dyn herald_core::hooks::HookCaller, who: Option<&herald_auth::Principal>| {
        crate::hooks::context(
            hooks,
            id.as_deref().unwrap_or(""),
            "sse",
            ip,
            who,
            Some(&headers),
        )
    };
    let token = crate::auth::token(&headers, &query).ok().flatten();
    let who = crate::hooks::connect(&edge, who, token, &query.channels, ctx).await?;
    crate::hooks::authorize(&edge, who.as_ref(), &query.channels, |h| {
        ctx(h, who.as_ref())
    })
    .await?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or("\u{fffd}").trim();
        if !text.is_empty() {
            query.since = Since::parse(text, &query.channels)?;
        }
    }
    let reg = edge.registry.register_as(
        Protocol::Sse,
        edge.config.outbox_bytes,
        kill,
        who.as_ref(),
        id,
    )?;
    if let Some(sink) = &sink {
        reg.outbox
            .attach(Arc::downgrade(sink), edge.metrics.clone());
    }
    let mut session = Session::new(edge.clone(), reg);
    let catchup = session.subscribe(&query.channels, &query.since).await?;

    let mut pending = VecDeque::new();
    pending.push_back(Bytes::from(format!(
        "retry: {}\n\n",
        edge.config.sse_retry.as_millis()
    )));
    pending.push_back(subscribed(&mut session, &catchup, false));
    let period = edge.config.sse_heartbeat;
    let stream = Stream {
        session,
        heartbeat: tokio::time::interval_at(Instant::now() + period, period),
        pending,
        catchup: Some(catchup),
        steps: Vec::new(),
        batch: Vec::new(),
        done: false,
        expires: crate::auth::deadline(&edge, who.as_ref()),
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, next_chunk));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn next_chunk(mut st: Stream) -> Option<(Result<Bytes, Infallible>, Stream)> {
    loop {
        if let Some(chunk) = st.pending.pop_front() {
            return Some((Ok(chunk), st));
        }
        if st.done {
            return None;
        }
        // The catch-up streams first, a batch at a time as it is read.
        if let Some(mut catchup) = st.catchup.take() {
            if st.session.catch_up(&mut catchup, &mut st.steps).await {
                let Stream {
                    session,
                    steps,
                    pending,
                    ..
                } = &mut st;
                deliver::catch_up(session, Protocol::Sse, steps, |s, step| {
                    encode(s, step, pending)
                });
                st.catchup = Some(catchup);
            }
            continue;
        }
        let outbox = st.session.reg.outbox.clone();
        let expires = st.expires;
        let expiry = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Nothing pending: with one channel (its events the shared encoding), the fan-out
        // may write live messages straight to the socket while this waits (`direct`).
        let parked = outbox.park(|out| st.session.direct_positions(out));
        let next = outbox.next_batch(&mut st.batch);
        let r = tokio::select! {
            r = next => Some(r),
            () = expiry => {
                end(&mut st, Ending::TokenExpired);
                None
            }
            _ = st.heartbeat.tick() => {
                st.pending.push_back(Bytes::from_static(b": heartbeat\n\n"));
                None
            }
        };
        // Whatever woke it, direct writes stop here; the session's position takes in what
        // they wrote (every queued item is newer).
        if parked {
            let session = &mut st.session;
            outbox.unpark(|reached| session.record_positions(reached));
        }
        match r {
            None => {}
            Some(r) => match r {
                Ok(bytes) => {
                    st.session
                        .edge
                        .metrics
                        .outbox_queued_bytes
                        .observe(bytes as f64);
                    let Stream {
                        session,
                        batch,
                        pending,
                        ..
                    } = &mut st;
                    let mut added = Vec::new();
                    deliver::live(session, Protocol::Sse, batch, |s, step| {
                        if let Step::Subscribe(c) = step {
                            added.push(c.clone());
                        }
                        encode(s, step, pending)
                    });
                    if !added.is_empty() {
                        server_subscribe(&mut st, &added).await;
                    }
                }
                Err(closed) => end(&mut st, Ending::of(closed)),
            },
        }
    }
}

/// Adds channels the operator subscribed the user to, from now. A refusal (too many
/// channels, the broker down) is an `error` event naming them; the stream goes on.
async fn server_subscribe(st: &mut Stream, channels: &[herald_core::ChannelName]) {
    match st.session.subscribe(channels, &Since::Now).await {
        Ok(catchup) => {
            let event = subscribed(&mut st.session, &catchup, true);
            st.pending.push_back(event);
            st.catchup = Some(catchup);
        }
        Err(e) => {
            let mut body = e.body();
            body["channels"] = channels.iter().map(|c| c.as_str()).collect();
            st.pending.push_back(event("error", None, &body));
        }
    }
}

/// Queues the event that says why the stream ends; the stream ends after it.
fn end(st: &mut Stream, ending: Ending) {
    st.session.reg.reason = ending.close_reason();
    st.pending
        .push_back(event(ending.kind(), None, &ending.body()));
    st.done = true;
}
