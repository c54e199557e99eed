//! Per-IP connection rate: a token bucket per client address, checked at accept time so a
//! flood from one address is turned away before any request is parsed.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use http::StatusCode;
use parking_lot::Mutex;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    time::Instant,
};

/// Most addresses tracked; past it, buckets that have refilled are forgotten first.
const MAX_TRACKED: usize = 65_536;

/// The HTTP answer to a connection refused before a request reached the router: a JSON
/// error, `Connection: close`.
fn refusal(status: StatusCode, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let retry = if status == StatusCode::TOO_MANY_REQUESTS {
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

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// New connections per second per IP, with a burst of twice the rate.
pub(crate) struct ConnRate {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl ConnRate {
    /// `None` when `per_sec` is 0 (no limit).
    pub(crate) fn new(per_sec: u32) -> Option<Self> {
        (per_sec > 0).then(|| Self {
            rate: f64::from(per_sec),
            burst: f64::from(per_sec) * 2.0,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `ip` may open one more connection now.
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
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
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
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
        assert!(ConnRate::new(0).is_none());
    }
}
