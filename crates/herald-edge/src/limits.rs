//! Per-IP connection rate: a token bucket per client address, checked at accept time so a
//! flood from one address is turned away before any request is parsed.

use std::{collections::HashMap, net::IpAddr};

use parking_lot::Mutex;
use tokio::time::Instant;

/// Most addresses tracked; past it, buckets that have refilled are forgotten first.
const MAX_TRACKED: usize = 65_536;

/// The answer written to a refused connection (it is then closed).
pub(crate) const RATE_LIMITED_RESPONSE: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 101\r\n\r\n\
{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many new connections from your address; retry later\"}}";

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
    fn canned_response_length_is_right() {
        let text = std::str::from_utf8(RATE_LIMITED_RESPONSE).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 101);
        serde_json::from_str::<serde_json::Value>(body).unwrap();
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
