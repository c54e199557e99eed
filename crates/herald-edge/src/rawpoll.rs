//! `GET /poll` served without hyper's per-connection machinery, on keep-alive connections.
//!
//! A held long-poll is a request that waits up to a minute for nothing, thousands at a time.
//! Served by hyper, each keeps a whole HTTP/1 connection state (an 8 KiB read buffer, the
//! dispatcher, the request) while it waits; an interval poll pays hyper's per-request work.
//! Here, as for `/sse` (see `rawsse`), the accept loop recognises `GET /poll` by its first
//! bytes; each head is read with a buffer dropped right after parsing and goes through what
//! the router runs for `/poll` (`PollEndpoint`: the disabled-transport check, the same CORS
//! layer, the same handler with its auth, limits and poll rules), without the routing; the
//! response is written with `Content-Length` in one write. A request without `Origin` gets the
//! headers the CORS layer adds to such a request, read off the layer once at start-up, without
//! the layer's per-request work.
//!
//! The connection stays open between requests (HTTP/1.1 keep-alive), holding no buffer while
//! idle. The next request is read here too: another `GET /poll` is served the same way;
//! anything else (an `OPTIONS` preflight, a WebSocket upgrade, a request with a body) is
//! handed to hyper with the bytes already read put back in front ([`Rewind`]), so hyper
//! serves it and the rest of the connection as if it had had it from the start.
//!
//! While a poll is held the socket is watched: a client that closes ends the request at once
//! (its live-feed registration and poll-client count go with it). An idle connection closes
//! after the header timeout, or when the node stops accepting; a request answered while the
//! node stops accepting carries `Connection: close`.

use axum::{body::Body, extract::ConnectInfo};
use bytes::{BufMut, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    ConnKill,
    conn::{ConnCtx, serve_hyper},
    limits::{Counted, RATE_LIMITED, refusal_response},
    rawhttp::{self, Framing, HeadError, Kind, Rewind},
    rawsse::Conn,
};

/// Largest body copied next to its head for a single write; larger ones go in a second write.
const INLINE_BODY: usize = 16 << 10;

/// Serves `GET /poll` requests on `conn` (its first request is one) until the client closes,
/// the connection idles past the header timeout, the node stops, or a request of another
/// kind hands the connection to hyper.
pub(crate) async fn serve(
    conn: Conn,
    ctx: &std::sync::Arc<ConnCtx>,
    kill: CancellationToken,
    first_deadline: Instant,
) {
    let Conn {
        mut stream,
        slot,
        peer,
    } = conn;
    let metrics = &*ctx.admission.metrics;
    // Bytes of the next request read with the previous head (a pipelining client).
    let mut pending: Vec<u8> = Vec::new();
    let mut deadline = first_deadline;
    let mut first = true;
    loop {
        if !first {
            if pending.is_empty() {
                // Idle between requests, holding no buffer: until the next request starts,
                // the idle limit (the header timeout, as for hyper's keep-alive), or the stop.
                let idle = tokio::time::timeout(ctx.head_timeout, stream.readable());
                tokio::select! {
                    biased;
                    ready = idle => {
                        if !matches!(ready, Ok(Ok(()))) {
                            return;
                        }
                    }
                    () = ctx.stop.cancelled() => return,
                }
            }
            deadline = Instant::now() + ctx.head_timeout;
        }
        first = false;
        let buf = std::mem::take(&mut pending);
        let (buf, end) = match rawhttp::read_head(&mut stream, buf, ctx.max_head, deadline).await {
            Ok(read) => read,
            Err((HeadError::TooLarge, buf)) if rawhttp::classify(&buf) == Some(Kind::Other) => {
                // Not a poll: hyper answers it as it would any oversized head.
                let io = Rewind::new(buf, Counted::new(stream, slot));
                return Box::pin(serve_hyper(io, peer, ctx, kill)).await;
            }
            Err((error, _)) => {
                return rawhttp::refuse_head(&mut stream, error, deadline, metrics).await;
            }
        };
        let head = match rawhttp::classify(&buf) {
            Some(Kind::Poll) => rawhttp::parse_head(&buf[..end]),
            _ => Err(HeadError::HasBody),
        };
        let head = match head {
            Ok(head) => head,
            // Another kind of request, or one with a body: hyper serves it and whatever
            // follows on the connection.
            Err(HeadError::HasBody) => {
                let io = Rewind::new(buf, Counted::new(stream, slot));
                return Box::pin(serve_hyper(io, peer, ctx, kill)).await;
            }
            Err(error) => {
                return rawhttp::refuse_head(&mut stream, error, deadline, metrics).await;
            }
        };
        if end < buf.len() {
            pending = buf[end..].to_vec();
        }
        // The head's buffer is dropped here: a held poll keeps none.
        drop(buf);
        let rawhttp::Head {
            mut request,
            http10,
            close,
        } = head;
        let response = match ctx.admission.request_client(peer, request.headers()) {
            Ok(client) => {
                request.extensions_mut().insert(ConnectInfo(client));
                request.extensions_mut().insert(ConnKill(kill.clone()));
                let call = ctx.poll.call(request);
                tokio::select! {
                    // The answer first: an interval poll is usually ready at once, and then
                    // the socket is not even looked at.
                    biased;
                    response = call => response,
                    // The client closed while its poll was held: dropping the request ends
                    // it (registration, live-feed interest, poll-client count).
                    () = closed(&stream) => return,
                    () = kill.cancelled() => return,
                }
            }
            // From a trusted proxy: refuse this client's request and keep the connection,
            // which carries other clients too.
            Err(_) => {
                let (status, code, message) = RATE_LIMITED;
                refusal_response(status, code, message)
            }
        };
        let close = close || ctx.stop.is_cancelled();
        let written = tokio::select! {
            biased;
            ok = write_response(&mut stream, response, http10, close) => ok,
            // Stuck writing to a client that stopped reading: drop the connection.
            () = kill.cancelled() => false,
        };
        if !written || close {
            let _ = tokio::time::timeout(ctx.head_timeout, stream.shutdown()).await;
            return;
        }
    }
}

/// Returns once the client closed its side (or the socket failed). Bytes sent meanwhile (a
/// pipelined request) are left for the next head; watching stops then, as hyper does.
async fn closed(stream: &TcpStream) {
    let mut probe = [0u8; 1];
    match stream.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Writes a whole response with `Content-Length` (poll replies and errors are complete
/// bodies); false when the client is gone.
async fn write_response(
    stream: &mut TcpStream,
    response: Response<Body>,
    http10: bool,
    close: bool,
) -> bool {
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return false;
    };
    let inline = body.len() <= INLINE_BODY;
    let mut out = BytesMut::with_capacity(320 + if inline { body.len() } else { 0 });
    let length = Framing::Length(body.len() as u64);
    rawhttp::put_head(
        &mut out,
        parts.status,
        &parts.headers,
        http10,
        close,
        length,
    );
    drop(parts);
    if inline {
        out.put_slice(&body);
        stream.write_all(&out).await.is_ok()
    } else {
        stream.write_all(&out).await.is_ok() && stream.write_all(&body).await.is_ok()
    }
}
