//! `GET /sse` served without hyper's per-connection machinery.
//!
//! An SSE stream is one request that lasts for hours. Served by hyper, every idle stream keeps
//! a whole HTTP/1 connection state: an 8 KiB read buffer, a header write buffer and the
//! dispatcher. Here the accept loop recognises `GET /sse` by peeking at the first bytes, reads
//! the head with a buffer dropped right after parsing, runs the same router (so CORS, disabled
//! transports, auth and every SSE rule are unchanged), writes the response head itself and
//! then copies body chunks straight to the socket with chunked framing. Everything else goes
//! to hyper untouched.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::{BufMut, BytesMut};
use futures_util::FutureExt;
use http::Response;
use http_body_util::BodyExt;
use tokio::{net::TcpStream, time::Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    ConnKill,
    direct::{self, DirectSink},
    limits::{Admission, RATE_LIMITED, SocketSlot, write_refusal},
    rawhttp::{self, Framing},
};

/// Bytes of ready events gathered into one write.
const WRITE_BATCH: usize = 64 << 10;

/// An accepted connection recognised as `GET /sse`.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Its place under the client socket cap, released when the connection ends.
    pub(crate) slot: SocketSlot,
    pub(crate) peer: SocketAddr,
}

/// Serves the connection's one SSE request, then closes it.
pub(crate) async fn serve(
    conn: Conn,
    router: Router,
    kill: CancellationToken,
    max_head: usize,
    deadline: Instant,
    admission: &Admission,
) {
    let Conn {
        mut stream,
        slot,
        peer,
    } = conn;
    let metrics = &*admission.metrics;
    let head =
        match rawhttp::read_head(&mut stream, Vec::with_capacity(1024), max_head, deadline).await {
            // The buffer is dropped here: an idle stream keeps none.
            Ok((buf, end)) => rawhttp::parse_head(&buf[..end]),
            Err((error, _)) => Err(error),
        };
    let (mut request, http10) = match head {
        Ok(head) => (head.request, head.http10),
        Err(error) => {
            rawhttp::refuse_head(&mut stream, error, deadline, metrics).await;
            return;
        }
    };
    let client = match admission.request_client(peer, request.headers()) {
        Ok(client) => client,
        Err(_) => {
            let (status, code, message) = RATE_LIMITED;
            let _ = write_refusal(&mut stream, status, code, message).await;
            return;
        }
    };
    // The socket is shared with the fan-out's direct writes (see `direct`), which hold it
    // weakly: it closes when this function drops it.
    let framing = if http10 {
        direct::Framing::SsePlain
    } else {
        direct::Framing::SseChunked
    };
    let sink = Arc::new(DirectSink::new(stream, framing));
    request.extensions_mut().insert(ConnectInfo(client));
    request.extensions_mut().insert(ConnKill(kill.clone()));
    request.extensions_mut().insert(sink.clone());
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    tokio::select! {
        () = write_response(&sink, response, http10) => {}
        // Stuck writing to a client that stopped reading: drop the connection.
        () = kill.cancelled() => {}
    }
    drop(sink);
    drop(slot);
}

async fn write_response(sink: &DirectSink, response: Response<Body>, http10: bool) {
    let (parts, body) = response.into_parts();
    let exact = http_body::Body::size_hint(&body).exact();
    let chunked = exact.is_none() && !http10;
    // Direct writes frame as the stream does; a response of known length takes none.
    let direct = chunked == (sink.framing() == direct::Framing::SseChunked);
    let mut head = BytesMut::with_capacity(512);
    let framing = match exact {
        Some(len) => Framing::Length(len),
        None if chunked => Framing::Chunked,
        None => Framing::Close,
    };
    rawhttp::put_head(
        &mut head,
        parts.status,
        &parts.headers,
        http10,
        true,
        framing,
    );
    drop(parts);
    if sink.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let mut body = body;
    let mut ignored = [0u8; 64];
    let mut out = BytesMut::new();
    let mut ended = false;
    loop {
        if !out.is_empty() {
            if sink.write_all(&out).await.is_err() {
                return;
            }
            out = BytesMut::new();
        }
        if ended {
            break;
        }
        // Nothing unwritten here: direct writes may go, unless one left its end to send.
        if direct && let Some(rest) = sink.flushed() {
            out.put_slice(&rest);
            continue;
        }
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The client sends nothing after its request: a read returning means it closed
            // the connection (or sent bytes we ignore), so an idle stream notices at once.
            read = sink.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            () = sink.leftover(), if direct => {
                if let Some(rest) = sink.begin_write() {
                    out.put_slice(&rest);
                }
                continue;
            }
        };
        // The socket is this loop's until it has written what it takes now; a direct write's
        // unsent end goes first.
        if let Some(rest) = sink.begin_write() {
            out.put_slice(&rest);
        }
        // Everything already queued goes out in one write: under load, one syscall carries
        // many events (as the WebSocket path batches frames).
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if chunked {
                            out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.put_slice(&data);
                            out.put_slice(b"\r\n");
                        } else {
                            out.put_slice(&data);
                        }
                    }
                }
                Some(Err(_)) => return,
                None => {
                    ended = true;
                    break;
                }
            }
            if out.len() >= WRITE_BATCH {
                break;
            }
            next = body.frame().now_or_never();
        }
    }
    sink.begin_write();
    if chunked {
        let _ = sink.write_all(b"0\r\n\r\n").await;
    }
    let _ = socket2::SockRef::from(sink.stream()).shutdown(std::net::Shutdown::Write);
}
