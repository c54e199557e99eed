//! Limits applied before a request reaches the router.
//!
//! - Per-IP connection rate: a token bucket per client address. For a direct client it is
//!   checked at accept time, so a flood from one address is turned away before any request is
//!   parsed. For a connection from a trusted proxy (`HERALD_TRUSTED_PROXIES`) the client is
//!   only known once the request head is read, so each request it carries is checked then,
//!   against the forwarded client address.
//! - Open client sockets: the client port may hold at most `EdgeConfig::max_client_sockets`
//!   sockets at once (derived from the process's descriptor limit), so the descriptors left
//!   keep the admin port, gRPC and NATS working. A socket over the cap is answered 503
//!   `too_many_connections` at once and closed.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    time::Instant,
};

/// Most addresses tracked; past it, buckets that have refilled are forgotten first.
const MAX_TRACKED: usize = 65_536;

/// The HTTP answer to a connection refused before a request reached the router: a JSON
/// error, `Connection: close`.
fn refusal(status: StatusCode, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let retry =
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            "retry-after: 1\r\n"
        } else {
            ""
        };
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// Writes [`refusal`] (bounded to one second) and closes the write side.
pub(crate) async fn write_refusal(
    stream: &mut (impl AsyncWrite + Unpin),
    status: StatusCode,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    let bytes = refusal(status, code, message);
    tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

/// The same JSON error as a response, for requests refused inside an HTTP connection (a
/// trusted proxy's connection stays open for its other clients).
pub(crate) fn refusal_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Logs a warning at most once per [`Throttled::EVERY`], with how many times it happened.
pub(crate) struct Throttled {
    /// Events since the last line.
    pending: AtomicU64,
    /// When the last line was written (ms since `origin`), or `u64::MAX` before the first.
    last_ms: AtomicU64,
    origin: std::time::Instant,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Self {
        Self {
            pending: AtomicU64::new(0),
            last_ms: AtomicU64::new(u64::MAX),
            origin: std::time::Instant::now(),
        }
    }

    /// Counts one event; returns how many to report when a line is due now.
    pub(crate) fn hit(&self) -> Option<u64> {
        let pending = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.origin.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.pending.fetch_sub(pending, Ordering::Relaxed);
            return Some(pending);
        }
        None
    }
}

/// Open sockets on the client port, against a cap.
pub(crate) struct SocketGate {
    open: AtomicUsize,
    max: usize,
    /// Sockets over the cap still being answered 503 (each holds a descriptor for at most a
    /// second); past [`SocketGate::MAX_REFUSING`] they are closed without an answer.
    refusing: AtomicUsize,
    pub(crate) full: Throttled,
}

impl SocketGate {
    /// Most over-cap sockets answered at once.
    pub(crate) const MAX_REFUSING: usize = 32;

    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            refusing: AtomicUsize::new(0),
            full: Throttled::new(),
        })
    }

    /// A slot for one more socket, or `None` at the cap.
    pub(crate) fn try_open(self: &Arc<Self>) -> Option<SocketSlot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SocketSlot(self.clone()))
    }

    /// Sockets open right now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Whether one more over-cap socket may be answered (the guard ends the answer).
    pub(crate) fn start_refusal(self: &Arc<Self>) -> Option<RefusalSlot> {
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= Self::MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RefusalSlot(self.clone()))
    }
}

/// One open client socket; released when dropped.
pub(crate) struct SocketSlot(Arc<SocketGate>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One over-cap socket being answered; released when dropped.
pub(crate) struct RefusalSlot(Arc<SocketGate>);

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client socket that holds its [`SocketSlot`]: handed to hyper, it stays counted for as
/// long as the socket lives, including after a WebSocket upgrade moves it to another task.
pub(crate) struct Counted {
    stream: TcpStream,
    _slot: SocketSlot,
}

impl Counted {
    pub(crate) fn new(stream: TcpStream, slot: SocketSlot) -> Self {
        Self {
            stream,
            _slot: slot,
        }
    }

    /// The socket and its place under the cap.
    pub(crate) fn into_parts(self) -> (TcpStream, SocketSlot) {
        (self.stream, self._slot)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Who a request is from, and whether its client may connect now.
pub(crate) struct Admission {
    pub(crate) rate: Option<ConnRate>,
    pub(crate) proxies: Arc<crate::TrustedProxies>,
    pub(crate) metrics: Arc<herald_telemetry::Metrics>,
}

impl Admission {
    /// At accept time: whether a direct (untrusted) peer may open one more connection. A
    /// trusted proxy is not checked here: its clients are checked per request, once known.
    pub(crate) fn admit_peer(&self, peer: IpAddr) -> bool {
        match &self.rate {
            Some(rate) if !self.proxies.trusts(peer) => {
                if rate.admit(peer) {
                    return true;
                }
                self.metrics.refuse("rate_limited");
                tracing::debug!(client = %peer, "new connection over the per-IP rate: 429");
                false
            }
            _ => true,
        }
    }

    /// Once a request head is read: the client's address (the forwarded one when `peer` is a
    /// trusted proxy), or `Err` when that client is over the per-IP rate (counted).
    pub(crate) fn request_client(
        &self,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
    ) -> Result<std::net::SocketAddr, IpAddr> {
        if !self.proxies.trusts(peer.ip()) {
            return Ok(peer);
        }
        let ip = self.proxies.client(peer.ip(), headers);
        if let Some(rate) = &self.rate
            && !rate.admit(ip)
        {
            self.metrics.refuse("rate_limited");
            tracing::debug!(client = %ip, proxy = %peer.ip(), "request over the per-IP rate: 429");
            return Err(ip);
        }
        Ok(if ip == peer.ip().to_canonical() {
            peer
        } else {
            std::net::SocketAddr::new(ip, 0)
        })
    }
}

/// The answer to a client over the per-IP connection rate.
pub(crate) const RATE_LIMITED: (StatusCode, &str, &str) = (
    StatusCode::TOO_MANY_REQUESTS,
    "rate_limited",
    "too many new connections from your address; retry later",
);

/// The answer to a socket over the node's connection limit.
pub(crate) const TOO_MANY_CONNECTIONS: (StatusCode, &str, &str) = (
    StatusCode::SERVICE_UNAVAILABLE,
    "too_many_connections",
    "this node holds as many connections as it can; retry, or connect to another node",
);

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// New connections per second per IP, with a burst of twice the rate.
pub(crate) struct ConnRate<K = IpAddr> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: std::hash::Hash + Eq> ConnRate<K> {
    /// `None` when `per_sec` is 0 (no limit).
    pub(crate) fn new(per_sec: u32) -> Option<Self> {
        (per_sec > 0).then(|| Self {
            rate: f64::from(per_sec),
            burst: f64::from(per_sec) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `ip` may open one more connection now (or whichever key this limits: one
    /// more publish of a user).
    pub(crate) fn admit(&self, ip: K) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_TRACKED {
                buckets.clear();
            }
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_well_formed_http() {
        let bytes = refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 1\r\n"));
        let busy = String::from_utf8(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "full",
        ))
        .unwrap();
        assert!(
            busy.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
                && busy.contains("retry-after: 1\r\n")
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
    }

    #[test]
    fn socket_gate_counts_and_caps() {
        let gate = SocketGate::new(2);
        let a = gate.try_open().unwrap();
        let b = gate.try_open().unwrap();
        assert!(gate.try_open().is_none(), "the cap holds");
        assert_eq!(gate.open(), 2);
        drop(a);
        let c = gate.try_open().expect("a closed socket frees its slot");
        drop((b, c));
        assert_eq!(gate.open(), 0);
        let refusing: Vec<_> = (0..SocketGate::MAX_REFUSING)
            .map(|_| gate.start_refusal().unwrap())
            .collect();
        assert!(gate.start_refusal().is_none());
        drop(refusing);
        assert!(gate.start_refusal().is_some());
    }

    #[test]
    fn throttled_reports_once_then_counts() {
        let t = Throttled::new();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        assert_eq!(t.pending.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let r = ConnRate::new(5).unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert_eq!((0..20).filter(|_| r.admit(ip)).count(), 10);
        assert!(r.admit(other), "another address has its own bucket");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| r.admit(ip)).count(), 5);
        assert!(ConnRate::<IpAddr>::new(0).is_none());
    }
}
