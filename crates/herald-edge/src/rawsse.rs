//! `GET /sse` served without hyper's per-connection machinery.
//!
//! An SSE stream is one request that lasts for hours. Served by hyper, every idle stream keeps
//! a whole HTTP/1 connection state: an 8 KiB read buffer, a header write buffer and the
//! dispatcher. Here the accept loop recognises `GET /sse` by peeking at the first bytes, reads
//! the head with a buffer dropped right after parsing, runs the same router (so CORS, disabled
//! transports, auth and every SSE rule are unchanged), writes the response head itself and
//! then copies body chunks straight to the socket with chunked framing. Everything else goes
//! to hyper untouched.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::{BufMut, BytesMut};
use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    ConnKill,
    limits::{Admission, RATE_LIMITED, SocketSlot, write_refusal},
};

/// What a request line must start with to be served here.
const PREFIXES: [&[u8]; 2] = [b"GET /sse?", b"GET /sse "];
/// Most headers accepted in a request head.
const MAX_HEADERS: usize = 64;
/// Bytes of ready events gathered into one write.
const WRITE_BATCH: usize = 64 << 10;

/// What the first bytes of a connection say.
pub(crate) enum Sniff {
    /// `GET /sse`: served here.
    Sse,
    /// Anything else: hyper serves it.
    Other,
    /// Closed, or nothing useful before the header deadline.
    Gone,
}

/// Tells whether the connection's first request is `GET /sse`, waiting (until `deadline`) for
/// enough bytes to tell.
pub(crate) async fn sniff(stream: &TcpStream, deadline: Instant) -> Sniff {
    tokio::time::timeout_at(deadline, sniff_inner(stream))
        .await
        .unwrap_or(Sniff::Gone)
}

async fn sniff_inner(stream: &TcpStream) -> Sniff {
    let need = PREFIXES[0].len();
    let mut buf = [0u8; 9];
    let mut pause = Duration::from_millis(5);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Sniff::Gone,
            Ok(n) => n,
        };
        let seen = &buf[..n];
        if !PREFIXES.iter().any(|p| p.starts_with(seen)) {
            return Sniff::Other;
        }
        if n >= need {
            return Sniff::Sse;
        }
        // A partial request line: wait for more (peek returns at once while bytes are
        // pending, so back off; a slow client pays with its own header time).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// How the head could not be read.
enum HeadError {
    /// The client went away or stalled past the deadline.
    Gone,
    /// Over the size limit.
    TooLarge,
    /// Not a valid HTTP/1 request head.
    Malformed,
}

/// Reads and parses the request head; the buffer is dropped before returning.
async fn read_head(
    stream: &mut TcpStream,
    max: usize,
    deadline: Instant,
) -> Result<(Request<Body>, bool), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; 1024];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(HeadError::Gone),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        _ => return Err(HeadError::Malformed),
    }
    let http10 = parsed.version == Some(0);
    let mut builder = Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"))
        .version(if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        // A GET with a body is not something an SSE client sends; refuse rather than guess.
        let body = (name == "content-length" && h.value != b"0") || name == "transfer-encoding";
        if body {
            return Err(HeadError::Malformed);
        }
        builder = builder.header(h.name, h.value);
    }
    let request = builder
        .body(Body::empty())
        .map_err(|_| HeadError::Malformed)?;
    Ok((request, http10))
}

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
    let (mut request, http10) = match read_head(&mut stream, max_head, deadline).await {
        Ok(r) => r,
        Err(HeadError::Gone) => {
            if Instant::now() >= deadline {
                metrics.refuse("header_timeout");
            }
            return;
        }
        Err(HeadError::TooLarge) => {
            metrics.refuse("request_head_too_large");
            let _ = write_refusal(
                &mut stream,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_head_too_large",
                "request head too large",
            )
            .await;
            return;
        }
        Err(HeadError::Malformed) => {
            metrics.refuse("invalid_request");
            let _ = write_refusal(
                &mut stream,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "malformed HTTP request",
            )
            .await;
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
    request.extensions_mut().insert(ConnectInfo(client));
    request.extensions_mut().insert(ConnKill(kill.clone()));
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    tokio::select! {
        () = write_response(&mut stream, response, http10) => {}
        // Stuck writing to a client that stopped reading: drop the connection.
        () = kill.cancelled() => {}
    }
    drop(stream);
    drop(slot);
}

async fn write_response(stream: &mut TcpStream, response: Response<Body>, http10: bool) {
    let (parts, body) = response.into_parts();
    let exact = http_body::Body::size_hint(&body).exact();
    let chunked = exact.is_none() && !http10;
    let mut head = BytesMut::with_capacity(512);
    head.put_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.put_slice(parts.status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.put_slice(b"\r\n");
    let mut headers = parts.headers;
    headers.remove(header::CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    match exact {
        Some(len) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        None if chunked => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        None => {}
    }
    for (name, value) in &headers {
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"\r\n");
    drop(headers);
    if stream.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let mut body = body;
    let mut sink = [0u8; 64];
    let mut out = BytesMut::new();
    let mut ended = false;
    while !ended {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The client sends nothing after its request: a read returning means it closed
            // the connection (or sent bytes we ignore), so an idle stream notices at once.
            read = stream.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
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
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out = BytesMut::new();
        }
    }
    if chunked {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let _ = stream.shutdown().await;
}
