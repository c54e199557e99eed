//! Poll benchmarks, against Herald or Nchan with the same client code:
//!
//! - `longpoll-idle`: N held long-polls (`/poll?channel=..&wait=W` on Herald, a plain
//!   long-poll `GET /sub/<ch>` on Nchan) spread over source addresses, each re-issued on the
//!   same keep-alive connection when it is answered; reports server RSS per held request.
//! - `poll-load`: K keep-alive clients polling a quiet channel (Herald `/poll?since=C`, Nchan
//!   interval-poll `/poll/<ch>` with its conditional headers, answered 304), as fast as they
//!   can or at a fixed total rate, for a bounded time; reports polls per second and server CPU
//!   per poll (utime + stime from `/proc/PID/stat`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::Instant,
};

use crate::{connect_from, cpu_seconds, peers::Target, rss_kb};

/// Longest time any one answer may take beyond the wait it was asked for.
const ANSWER_SLACK: Duration = Duration::from_secs(15);
/// Longest time the opening phase of `longpoll-idle` may take.
const OPEN_LIMIT: Duration = Duration::from_secs(300);
/// Largest response accepted (head and body).
const MAX_RESPONSE: usize = 1 << 20;

/// One HTTP/1.1 answer, as much as the benchmarks need of it.
struct Answer {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server asked to close the connection.
    close: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct HttpConn {
    stream: TcpStream,
    /// Bytes read past the previous answer.
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(src: IpAddr, addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(30), connect_from(src, addr))
            .await
            .context("connect timed out")??;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    async fn send(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(request).await?;
        Ok(())
    }

    async fn fill(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
            .await
            .context("answer timed out")??;
        if n == 0 {
            bail!("connection closed by the server");
        }
        if self.buf.len() + n > MAX_RESPONSE {
            bail!("answer larger than {MAX_RESPONSE} bytes");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one answer (`Content-Length` or chunked body).
    async fn answer(&mut self, deadline: Instant) -> anyhow::Result<Answer> {
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill(deadline).await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let close = find("connection").is_some_and(|v| v.contains("close"))
            || status_line.starts_with("HTTP/1.0");
        let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: usize = find("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.buf.drain(..head_end + 4);
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(e) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break e;
                    }
                    self.fill(deadline).await?;
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .with_context(|| format!("bad chunk size {size_text:?}"))?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill(deadline).await?;
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            while self.buf.len() < length {
                self.fill(deadline).await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok(Answer {
            status,
            headers,
            body,
            close,
        })
    }
}

/// The `"cursor"` of a Herald poll reply.
fn herald_cursor(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("cursor")?.as_str().map(str::to_owned)
}

/// Where a poller stands, to ask for what comes next.
#[derive(Default, Clone)]
struct Position {
    /// Herald: the reply's cursor.
    cursor: Option<String>,
    /// Nchan: `Last-Modified` and `Etag` of its last answer.
    modified: Option<String>,
    etag: Option<String>,
}

impl Position {
    fn update(&mut self, target: Target, answer: &Answer) {
        match target {
            Target::Herald => {
                if answer.status == 200
                    && let Some(c) = herald_cursor(&answer.body)
                {
                    self.cursor = Some(c);
                }
            }
            _ => {
                if let Some(m) = answer.header("last-modified") {
                    self.modified = Some(m.to_owned());
                }
                if let Some(e) = answer.header("etag") {
                    self.etag = Some(e.to_owned());
                }
            }
        }
    }
}

/// The request for the next poll. `wait`: seconds a long-poll may be held (Herald only; Nchan
/// holds `/sub/` long-polls until a message comes), `None` for an interval poll.
fn poll_request(
    target: Target,
    addr: SocketAddr,
    channel: &str,
    at: &Position,
    wait: Option<u64>,
) -> anyhow::Result<String> {
    let (path, extra) = match target {
        Target::Herald => {
            let mut path = format!("/poll?channel={channel}");
            if let Some(c) = &at.cursor {
                path.push_str("&since=");
                path.push_str(&encode(c));
            }
            if let Some(w) = wait {
                path.push_str(&format!("&wait={w}"));
            }
            (path, String::new())
        }
        Target::Nchan => {
            let path = match wait {
                Some(_) => format!("/sub/{channel}"),
                None => format!("/poll/{channel}"),
            };
            let mut extra = String::new();
            if let Some(m) = &at.modified {
                extra.push_str(&format!("If-Modified-Since: {m}\r\n"));
            }
            if let Some(e) = &at.etag {
                extra.push_str(&format!("If-None-Match: {e}\r\n"));
            }
            (path, extra)
        }
        other => bail!("{} is not driven by the poll benchmarks", other.name()),
    };
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{extra}\r\n"
    ))
}

/// Percent-encodes a query value (cursors may be position tokens).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `longpoll-idle` settings.
pub(crate) struct HeldPolls {
    pub(crate) target: Target,
    pub(crate) addr: SocketAddr,
    pub(crate) connections: usize,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) pids: Vec<u32>,
    pub(crate) hold: Duration,
    pub(crate) channels: usize,
    /// Herald's `wait`, seconds.
    pub(crate) wait: u64,
}

/// Holds N long-polls and reports the server's RSS per held request.
pub(crate) async fn held(b: HeldPolls) -> anyhow::Result<()> {
    let rss = |pids: &[u32]| pids.iter().copied().map(rss_kb).sum::<u64>();
    let before = rss(&b.pids);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicI64::new(0));
    let reissued = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(b.connections);
    for i in 0..b.connections {
        let src = b.sources[i % b.sources.len()];
        let channel = format!("lpidle-{}", i % b.channels.max(1));
        let (sent, failed, held, reissued, sem) = (
            sent.clone(),
            failed.clone(),
            held.clone(),
            reissued.clone(),
            sem.clone(),
        );
        let mut stop = stop_rx.clone();
        let (target, addr, wait) = (b.target, b.addr, b.wait);
        tasks.push(tokio::spawn(async move {
            // Paces the opening only: given back once the first request is out.
            let mut permit = Some(sem.acquire_owned().await);
            let mut conn = match HttpConn::open(src, addr).await {
                Ok(c) => c,
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("connect failed: {e:#}");
                    }
                    return;
                }
            };
            let mut at = Position::default();
            let mut first = true;
            // Bounded: the loop ends at the stop signal, or after a few failures.
            let mut errors = 0;
            while errors < 3 && !*stop.borrow() {
                let request = match poll_request(target, addr, &channel, &at, Some(wait)) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{e:#}");
                        return;
                    }
                };
                if let Err(e) = conn.send(request.as_bytes()).await {
                    errors += 1;
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("send failed: {e:#}");
                    }
                    continue;
                }
                held.fetch_add(1, Ordering::Relaxed);
                if std::mem::replace(&mut first, false) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    permit.take();
                }
                let deadline = Instant::now() + Duration::from_secs(wait) + ANSWER_SLACK;
                let answer = tokio::select! {
                    a = conn.answer(deadline) => a,
                    _ = stop.changed() => break,
                };
                held.fetch_sub(1, Ordering::Relaxed);
                match answer {
                    Ok(a) => {
                        reissued.fetch_add(1, Ordering::Relaxed);
                        at.update(target, &a);
                        if a.close || a.status >= 400 {
                            if a.status >= 400 && failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!(
                                    "long-poll answered {}: {}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                );
                            }
                            errors += 1;
                            match HttpConn::open(src, addr).await {
                                Ok(c) => conn = c,
                                Err(_) => return,
                            }
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("long-poll failed: {e:#}");
                        }
                        match HttpConn::open(src, addr).await {
                            Ok(c) => conn = c,
                            Err(_) => return,
                        }
                    }
                }
            }
            drop(conn);
        }));
    }
    while sent.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < b.connections as u64
        && started.elapsed() < OPEN_LIMIT
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_time = started.elapsed();
    tokio::time::sleep(b.hold).await;
    let after = rss(&b.pids);
    let holding = held.load(Ordering::Relaxed).max(0) as u64;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / holding.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "longpoll-idle", "target": b.target.name(), "held": holding,
            "requested": b.connections, "failed": failed.load(Ordering::Relaxed),
            "answered_and_reissued": reissued.load(Ordering::Relaxed),
            "wait_seconds": b.wait, "open_seconds": open_time.as_secs_f64(),
            "rss_before_kb": before, "rss_after_kb": after,
            "rss_per_held_poll_bytes": per.round(),
        })
    );
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    Ok(())
}

/// `poll-load` settings.
pub(crate) struct PollLoad {
    pub(crate) target: Target,
    pub(crate) addr: SocketAddr,
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
    /// Polls per second over all clients; 0 = as fast as the server answers.
    pub(crate) rate: u64,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) pids: Vec<u32>,
    /// Time excluded from the measurement at the start.
    pub(crate) warmup: Duration,
}

/// K keep-alive clients polling one quiet channel; server CPU per poll.
pub(crate) async fn load(b: PollLoad) -> anyhow::Result<()> {
    let channel = format!("quiet-{}", crate::now_us());
    if b.target == Target::Nchan {
        // An interval-poll of a channel that has a message and the client's conditional
        // headers for it is Nchan's "nothing new" (304).
        let mut http = crate::peers::HttpPublisher::new(b.target, b.addr);
        http.publish(&channel, "{\"hseq\":0,\"hts\":0}").await?;
    }
    let polls = Arc::new(AtomicU64::new(0));
    let empty = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + b.warmup + b.duration;
    let mut tasks = Vec::new();
    for i in 0..b.clients {
        let (polls, empty, other, failed, reconnects) = (
            polls.clone(),
            empty.clone(),
            other.clone(),
            failed.clone(),
            reconnects.clone(),
        );
        let (target, addr, channel) = (b.target, b.addr, channel.clone());
        let src = b.sources[i % b.sources.len()];
        // Each client's share of the rate, its first poll offset so the load is even.
        let period =
            (b.rate > 0).then(|| Duration::from_secs_f64(b.clients as f64 / b.rate as f64));
        let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(i as f64 / b.clients as f64));
        tasks.push(tokio::spawn(async move {
            let run = async {
                let mut conn = HttpConn::open(src, addr).await?;
                let mut at = Position::default();
                // The first poll finds where the channel stands.
                let request = poll_request(target, addr, &channel, &at, None)?;
                conn.send(request.as_bytes()).await?;
                let a = conn.answer(Instant::now() + ANSWER_SLACK).await?;
                at.update(target, &a);
                let request = poll_request(target, addr, &channel, &at, None)?;
                tokio::time::sleep_until(start + offset).await;
                let mut due = start + offset;
                while Instant::now() < end {
                    if let Some(p) = period {
                        tokio::time::sleep_until(due).await;
                        due += p;
                    }
                    conn.send(request.as_bytes()).await?;
                    let a = conn.answer(Instant::now() + ANSWER_SLACK).await?;
                    polls.fetch_add(1, Ordering::Relaxed);
                    let nothing = match target {
                        Target::Herald => {
                            a.status == 200 && a.body.starts_with(b"{\"messages\":[]")
                        }
                        _ => a.status == 304,
                    };
                    if nothing {
                        empty.fetch_add(1, Ordering::Relaxed);
                    } else {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                    if a.close {
                        // Nchan (nginx) closes a keep-alive connection after 1000 requests
                        // (`keepalive_requests`); a client reconnects, and so do we.
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        conn = HttpConn::open(src, addr).await?;
                    }
                }
                anyhow::Ok(())
            };
            if let Err(e) = run.await
                && failed.fetch_add(1, Ordering::Relaxed) < 3
            {
                eprintln!("poller failed: {e:#}");
            }
        }));
    }
    tokio::time::sleep_until(start + b.warmup).await;
    let (p0, c0) = (
        polls.load(Ordering::Relaxed),
        b.pids.iter().copied().map(cpu_seconds).sum::<f64>(),
    );
    let t0 = Instant::now();
    tokio::time::sleep_until(end).await;
    let (p1, c1) = (
        polls.load(Ordering::Relaxed),
        b.pids.iter().copied().map(cpu_seconds).sum::<f64>(),
    );
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        let _ = tokio::time::timeout(ANSWER_SLACK, t).await;
    }
    let n = p1 - p0;
    let cpu = c1 - c0;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "poll-load", "target": b.target.name(), "clients": b.clients,
            "rate_asked": b.rate, "seconds": secs, "polls": n,
            "polls_per_second": (n as f64 / secs).round(),
            "nothing_new_answers": empty.load(Ordering::Relaxed),
            "other_answers": other.load(Ordering::Relaxed),
            "failed_clients": failed.load(Ordering::Relaxed),
            "reconnects_after_server_close": reconnects.load(Ordering::Relaxed),
            "server_cpu_seconds": cpu,
            "server_cpu_share": cpu / secs,
            "server_cpu_us_per_poll": if n > 0 { cpu * 1e6 / n as f64 } else { 0.0 },
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_resume_where_the_last_answer_left() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let at = Position {
            cursor: Some("5.a:7".into()),
            ..Default::default()
        };
        let r = poll_request(Target::Herald, addr, "c", &at, Some(25)).unwrap();
        assert!(r.starts_with("GET /poll?channel=c&since=5.a%3A7&wait=25 HTTP/1.1\r\n"));
        let at = Position {
            modified: Some("Tue".into()),
            etag: Some("\"1\"".into()),
            ..Default::default()
        };
        let r = poll_request(Target::Nchan, addr, "c", &at, None).unwrap();
        assert!(r.starts_with("GET /poll/c HTTP/1.1\r\n"));
        assert!(r.contains("If-Modified-Since: Tue\r\nIf-None-Match: \"1\"\r\n\r\n"));
    }
}
