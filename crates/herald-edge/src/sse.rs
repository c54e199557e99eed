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
use herald_core::{Cursor, Protocol, unix_micros};
use herald_telemetry::CloseReason;
use tokio::time::{Instant, Interval};

use crate::{
    EdgeError, EdgeInner,
    outbox::{Closed, Item},
    params,
    session::{Catchup, Session},
};

struct Stream {
    session: Session,
    heartbeat: Interval,
    /// Chunks ready to go out, in order.
    pending: VecDeque<Bytes>,
    batch: Vec<Item>,
    /// Set once the last chunk (reconnect, error) is queued.
    done: bool,
    /// When the client's token runs out (the stream then ends with a `token_expired` error).
    expires: Option<Instant>,
}

fn event(name: &str, id: Option<Cursor>, data: &serde_json::Value) -> Bytes {
    let mut b = BytesMut::new();
    if let Some(id) = id {
        b.put_slice(format!("id: {id}\n").as_bytes());
    }
    b.put_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    b.freeze()
}

/// Handles `GET /sse`.
pub(crate) async fn handle(
    edge: Arc<EdgeInner>,
    raw_query: Option<String>,
    headers: HeaderMap,
    kill: tokio_util::sync::CancellationToken,
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
    crate::auth::authorize(&edge, who.as_ref(), &query.channels)?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or("\u{fffd}").trim();
        if !text.is_empty() {
            query.since = Some(text.parse()?);
        }
    }
    let reg = edge
        .registry
        .register(Protocol::Sse, edge.config.outbox_bytes, kill)
        .ok_or(EdgeError::TooManyConnections)?;
    let mut session = Session::new(edge.clone(), reg);
    let catchup = session
        .subscribe(&query.channels, query.since, None)
        .await?;

    let mut pending = VecDeque::new();
    pending.push_back(Bytes::from(format!(
        "retry: {}\n\n",
        edge.config.sse_retry.as_millis()
    )));
    pending.extend(catchup_chunks(&edge, &catchup));
    let period = edge.config.sse_heartbeat;
    let stream = Stream {
        session,
        heartbeat: tokio::time::interval_at(Instant::now() + period, period),
        pending,
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

fn catchup_chunks(edge: &EdgeInner, c: &Catchup) -> Vec<Bytes> {
    let names: Vec<&str> = c.channels.iter().map(|c| c.as_str()).collect();
    let mut out = vec![event(
        "subscribed",
        Some(c.cursor),
        &serde_json::json!({"channels": names, "cursor": c.cursor.to_string()}),
    )];
    for gap in &c.gaps {
        edge.metrics
            .gaps
            .with_label_values(&[Protocol::Sse.as_str()])
            .inc();
        out.push(event(
            "gap",
            None,
            &serde_json::json!({"channel": gap.as_str()}),
        ));
    }
    let now = unix_micros();
    for m in &c.messages {
        out.push(m.sse_event().clone());
        edge.metrics.delivered(Protocol::Sse, m.published_us, now);
    }
    out
}

async fn next_chunk(mut st: Stream) -> Option<(Result<Bytes, Infallible>, Stream)> {
    loop {
        if let Some(chunk) = st.pending.pop_front() {
            return Some((Ok(chunk), st));
        }
        if st.done {
            return None;
        }
        let outbox = st.session.reg.outbox.clone();
        let expires = st.expires;
        let expiry = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = outbox.next_batch(&mut st.batch) => match r {
                Ok(bytes) => {
                    st.session.edge.metrics.outbox_queued_bytes.observe(bytes as f64);
                    fill(&mut st)
                }
                Err(Closed::SlowConsumer) => {
                    st.session.reg.reason = CloseReason::SlowConsumer;
                    st.pending.push_back(event("error", None, &serde_json::json!({
                        "code": "slow_consumer",
                        "message": "outbound queue full: reconnect and resume from your last id"
                    })));
                    st.done = true;
                }
                Err(Closed::Drain) => {
                    st.session.reg.reason = CloseReason::Drain;
                    st.pending.push_back(event("reconnect", None, &serde_json::json!({"reason": "draining"})));
                    st.done = true;
                }
            },
            () = expiry => {
                st.pending.push_back(event("error", None, &serde_json::json!({
                    "code": "token_expired",
                    "message": "token expired: reconnect with a fresh token and your last id"
                })));
                st.done = true;
            }
            _ = st.heartbeat.tick() => st.pending.push_back(Bytes::from_static(b": heartbeat\n\n")),
        }
    }
}

fn fill(st: &mut Stream) {
    let now = unix_micros();
    let metrics = st.session.edge.metrics.clone();
    crate::outbox::sort_batch(&mut st.batch);
    for item in st.batch.drain(..) {
        match item {
            Item::Message(m) => {
                if st.session.admit(&m) {
                    st.pending.push_back(m.sse_event().clone());
                    metrics.delivered(Protocol::Sse, m.published_us, now);
                }
            }
            Item::Gap(c) => {
                if st.session.is_subscribed(&c) {
                    metrics
                        .gaps
                        .with_label_values(&[Protocol::Sse.as_str()])
                        .inc();
                    st.pending.push_back(event(
                        "gap",
                        None,
                        &serde_json::json!({"channel": c.as_str()}),
                    ));
                }
            }
        }
    }
}
