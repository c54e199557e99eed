//! HTTP/1.1 on the bare socket, shared by the requests served outside hyper (`rawsse`,
//! `rawpoll`): recognising a request by its first bytes, reading and parsing a head with a
//! buffer that does not outlive it, writing a response head, and giving hyper a connection
//! whose first bytes were already read ([`Rewind`]).

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use axum::body::Body;
use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Version, header};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};

use crate::limits::write_refusal;

/// Most headers accepted in a request head.
const MAX_HEADERS: usize = 64;
/// First read of a request head (grows up to the head limit).
const HEAD_READ: usize = 1024;

/// What a request line starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET /sse`.
    Sse,
    /// `GET /poll`.
    Poll,
    /// Anything else (hyper serves it).
    Other,
}

/// Request-line prefixes served on the bare socket.
const PREFIXES: [(&[u8], Kind); 4] = [
    (b"GET /sse?", Kind::Sse),
    (b"GET /sse ", Kind::Sse),
    (b"GET /poll?", Kind::Poll),
    (b"GET /poll ", Kind::Poll),
];
/// Bytes needed to tell every prefix apart.
const SNIFF_LEN: usize = 10;

/// The kind of request `seen` (the first bytes of a request) starts, or `None` while too few
/// bytes arrived to tell.
pub(crate) fn classify(seen: &[u8]) -> Option<Kind> {
    let mut open = false;
    for (prefix, kind) in PREFIXES {
        if seen.len() >= prefix.len() {
            if seen.starts_with(prefix) {
                return Some(kind);
            }
        } else if prefix.starts_with(seen) {
            open = true;
        }
    }
    if open { None } else { Some(Kind::Other) }
}

/// What the first bytes of a connection say.
pub(crate) enum Sniff {
    /// A request served on the bare socket.
    Raw(Kind),
    /// Anything else: hyper serves it.
    Other,
    /// Closed, or nothing useful before the header deadline.
    Gone,
}

/// Tells what the connection's first request is, waiting (until `deadline`) for enough bytes
/// to tell. Peeks only: nothing is consumed.
pub(crate) async fn sniff(stream: &TcpStream, deadline: Instant) -> Sniff {
    tokio::time::timeout_at(deadline, sniff_inner(stream))
        .await
        .unwrap_or(Sniff::Gone)
}

async fn sniff_inner(stream: &TcpStream) -> Sniff {
    let mut buf = [0u8; SNIFF_LEN];
    let mut pause = Duration::from_millis(5);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Sniff::Gone,
            Ok(n) => n,
        };
        match classify(&buf[..n]) {
            Some(Kind::Other) => return Sniff::Other,
            Some(kind) => return Sniff::Raw(kind),
            None => {}
        }
        // A partial request line: wait for more (peek returns at once while bytes are
        // pending, so back off; a slow client pays with its own header time).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// How a head could not be read or served here.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client went away or stalled past the deadline.
    Gone,
    /// Over the size limit.
    TooLarge,
    /// Not a valid HTTP/1 request head.
    Malformed,
    /// A valid head announcing a body (not served on the bare socket).
    HasBody,
}

/// Reads until `buf` holds a whole request head (bytes already in `buf` count); returns the
/// buffer and where the head ends. Bytes after the head (a pipelined request) stay in it.
pub(crate) async fn read_head(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    max: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, usize), (HeadError, Vec<u8>)> {
    let mut searched = 0;
    loop {
        if let Some(end) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((buf, searched + end + 4));
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() >= max {
            return Err((HeadError::TooLarge, buf));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(HEAD_READ.min(max - buf.len()).max(1));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err((HeadError::Gone, buf)),
            Ok(Ok(_)) => {}
        }
    }
}

/// A parsed request head.
pub(crate) struct Head {
    pub(crate) request: Request<Body>,
    pub(crate) http10: bool,
    /// The client asked to close after this request (`Connection: close`, or HTTP/1.0
    /// without `keep-alive`).
    pub(crate) close: bool,
}

/// Parses a request head (`bytes` ends with the blank line).
pub(crate) fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        _ => return Err(HeadError::Malformed),
    }
    let http10 = parsed.version == Some(0);
    let mut request = Request::new(Body::empty());
    *request.method_mut() = parsed
        .method
        .unwrap_or("GET")
        .parse()
        .map_err(|_| HeadError::Malformed)?;
    *request.uri_mut() = parsed
        .path
        .unwrap_or("/")
        .parse()
        .map_err(|_| HeadError::Malformed)?;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let (mut close, mut keep_alive, mut body) = (http10, false, false);
    let map = request.headers_mut();
    map.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name =
            header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed)?;
        if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if (name == header::CONTENT_LENGTH && h.value != b"0")
            || name == header::TRANSFER_ENCODING
        {
            body = true;
        }
        map.append(name, value);
    }
    if body {
        return Err(HeadError::HasBody);
    }
    if http10 && keep_alive {
        close = false;
    }
    Ok(Head {
        request,
        http10,
        close,
    })
}

/// Answers a head that cannot be served (431 or 400, JSON, then closed), counting it; a
/// client that went away after sending part of a head counts as a header timeout once the
/// deadline passed.
pub(crate) async fn refuse_head(
    stream: &mut TcpStream,
    error: HeadError,
    deadline: Instant,
    metrics: &herald_telemetry::Metrics,
) {
    let (status, code, message) = match error {
        HeadError::Gone => {
            if Instant::now() >= deadline {
                metrics.refuse("header_timeout");
            }
            return;
        }
        HeadError::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_head_too_large",
            "request head too large",
        ),
        HeadError::Malformed | HeadError::HasBody => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "malformed HTTP request",
        ),
    };
    metrics.refuse(code);
    let _ = write_refusal(stream, status, code, message).await;
}

/// How a response body is framed on the wire.
pub(crate) enum Framing {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0 streams).
    Close,
}

/// Appends a response head to `out`: status line, `headers` (minus hop-by-hop ones), `Date`,
/// framing and `Connection: close` when `close`.
pub(crate) fn put_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    http10: bool,
    close: bool,
    framing: Framing,
) {
    out.put_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close => {}
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    } else if http10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

/// The current HTTP date, formatted at most once a second per thread.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.put_slice(d.1.as_bytes());
    });
}

/// An I/O stream whose first bytes were already read: they are read again first. Lets hyper
/// serve a connection after a request on it was recognised (and its head read) here.
pub(crate) struct Rewind<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }

    /// The bytes not read again yet, and the stream.
    pub(crate) fn into_parts(mut self) -> (Vec<u8>, T) {
        self.prefix.drain(..self.at);
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines() {
        assert_eq!(classify(b"GET /poll?channel=a"), Some(Kind::Poll));
        assert_eq!(classify(b"GET /poll HTTP/1.1"), Some(Kind::Poll));
        assert_eq!(classify(b"GET /sse?c"), Some(Kind::Sse));
        assert_eq!(classify(b"GET /pol"), None);
        assert_eq!(classify(b"GET /s"), None);
        assert_eq!(classify(b"GET /polling"), Some(Kind::Other));
        assert_eq!(classify(b"OPTIONS /poll?"), Some(Kind::Other));
        assert_eq!(classify(b"GET /ws"), Some(Kind::Other));
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn parses_keep_alive_and_refuses_bodies() {
        let h = parse_head(b"GET /poll?channel=a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(!h.close && !h.http10);
        assert_eq!(h.request.uri().query(), Some("channel=a"));
        let h = parse_head(b"GET /poll HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").unwrap();
        assert!(h.close);
        let h = parse_head(b"GET /poll HTTP/1.0\r\n\r\n").unwrap();
        assert!(h.close && h.http10);
        let h = parse_head(b"GET /poll HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!h.close);
        assert!(matches!(
            parse_head(b"GET /poll HTTP/1.1\r\nContent-Length: 3\r\n\r\n"),
            Err(HeadError::HasBody)
        ));
        assert!(matches!(
            parse_head(b"GET /poll HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
    }

    #[test]
    fn heads_carry_framing_and_close() {
        let mut out = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        put_head(
            &mut out,
            StatusCode::OK,
            &headers,
            false,
            true,
            Framing::Length(12),
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: "));
        assert!(
            text.ends_with("content-length: 12\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("99"));
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let inner: &[u8] = b" world";
        let mut r = Rewind::new(b"hello".to_vec(), inner);
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
