//! One load generator, several servers: how to subscribe to and publish on Herald and on the
//! peers users compare it with (Nchan, Socket.IO, Pushpin), over their own protocols.
//!
//! Every published payload carries `"hseq":N` (a sequence) and `"hts":MICROS` (send time);
//! receivers find those two numbers wherever the server wrapped the payload (a Herald message
//! object, a raw Nchan frame, a Socket.IO event with the body as an escaped string, an SSE
//! `data:` line), so latency, loss and duplicates are measured the same way for all.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use crate::{client_ws_config, connect_from};

/// Which server is under load.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Target {
    /// Herald: `/ws?channel=`, `/sse?channel=`, publish over gRPC.
    Herald,
    /// Nchan (nginx module): `/sub/<ch>` (WebSocket or EventSource), `POST /pub/<ch>`.
    Nchan,
    /// Socket.IO 4 (node): Engine.IO v4 WebSocket, room from the query, `POST /publish/<room>`.
    Socketio,
    /// Pushpin (GRIP proxy): `/sse/<ch>` through the origin, publish on its HTTP publish port.
    Pushpin,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::Nchan => "nchan",
            Target::Socketio => "socketio",
            Target::Pushpin => "pushpin",
        }
    }
}

/// A subscriber connection, read by [`Sub::next_payloads`].
pub(crate) enum Sub {
    Ws(Box<WebSocketStream<TcpStream>>),
    Sse { stream: TcpStream, buf: Vec<u8> },
}

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

async fn ws_handshake(
    src: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let stream = connect_from(src, addr).await?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(
        OPEN_TIMEOUT,
        tokio_tungstenite::client_async_with_config(url, stream, Some(client_ws_config())),
    )
    .await
    .context("websocket handshake timed out")??;
    Ok(ws)
}

/// Reads text frames until one contains `needle`, answering Engine.IO pings on the way.
async fn ws_wait_for(ws: &mut WebSocketStream<TcpStream>, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no frame with {needle:?}"))?
            .context("closed before ready")??;
        if let Message::Text(t) = msg {
            if t.contains(needle) {
                return Ok(());
            }
            if t.as_str() == "2" {
                ws.send(Message::text("3")).await?;
            }
        }
    }
}

/// Opens an SSE stream with `request` and reads until `ready` appears in the response.
async fn sse_open(
    src: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    ready: &str,
) -> anyhow::Result<Sub> {
    let mut stream = connect_from(src, addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 2048];
    let deadline = Instant::now() + OPEN_TIMEOUT;
    loop {
        if let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            if !seen.starts_with(b"HTTP/1.1 200") && !seen.starts_with(b"HTTP/1.0 200") {
                bail!("sse refused: {}", String::from_utf8_lossy(&seen));
            }
            if String::from_utf8_lossy(&seen[head_end..]).contains(ready) {
                break;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .context("sse not ready in time")??;
        if n == 0 {
            bail!("sse closed early: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    Ok(Sub::Sse {
        stream,
        buf: Vec::new(),
    })
}

/// Subscribes to `channel` on `target` and returns once live delivery is in place (as far as
/// the server tells: Herald's `subscribed`, Socket.IO's namespace connect, Pushpin's first
/// bytes; Nchan subscribes during the handshake).
pub(crate) async fn open(
    target: Target,
    sse: bool,
    src: std::net::IpAddr,
    addr: SocketAddr,
    channel: &str,
) -> anyhow::Result<Sub> {
    match (target, sse) {
        (Target::Herald, false) => {
            let mut ws = ws_handshake(src, addr, &format!("/ws?channel={channel}")).await?;
            ws_wait_for(&mut ws, "\"subscribed\"").await?;
            Ok(Sub::Ws(Box::new(ws)))
        }
        (Target::Herald, true) => {
            sse_open(
                src,
                addr,
                &format!("/sse?channel={channel}"),
                "event: subscribed",
            )
            .await
        }
        (Target::Nchan, false) => Ok(Sub::Ws(Box::new(
            ws_handshake(src, addr, &format!("/sub/{channel}")).await?,
        ))),
        (Target::Nchan, true) => sse_open(src, addr, &format!("/sub/{channel}"), "").await,
        (Target::Socketio, false) => {
            let path = format!("/socket.io/?EIO=4&transport=websocket&room={channel}");
            let mut ws = ws_handshake(src, addr, &path).await?;
            ws_wait_for(&mut ws, "\"sid\"").await?; // Engine.IO open packet
            ws.send(Message::text("40")).await?; // connect to the default namespace
            ws_wait_for(&mut ws, "40").await?;
            Ok(Sub::Ws(Box::new(ws)))
        }
        (Target::Socketio, true) => bail!("Socket.IO has no SSE transport"),
        (Target::Pushpin, true) => sse_open(src, addr, &format!("/sse/{channel}"), ":ok").await,
        (Target::Pushpin, false) => {
            bail!("Pushpin WebSocket-over-HTTP is not driven by this generator")
        }
    }
}

/// The first unsigned number after `key` in `text`, skipping quotes, backslashes and colons.
fn number_after(text: &str, key: &str) -> Option<(u64, usize)> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    if !rest[..start]
        .chars()
        .all(|c| matches!(c, '"' | '\\' | ':' | ' '))
    {
        return None;
    }
    let digits = &rest[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    Some((digits[..end].parse().ok()?, at + start + end))
}

/// Every `(hseq, hts)` pair in `text`, in order.
pub(crate) fn payloads(text: &str, out: &mut Vec<(u64, u64)>) {
    let mut rest = text;
    while let Some((seq, used)) = number_after(rest, "hseq") {
        rest = &rest[used..];
        let Some((ts, used)) = number_after(rest, "hts") else {
            break;
        };
        rest = &rest[used..];
        out.push((seq, ts));
    }
}

impl Sub {
    /// Waits for the next frame or bytes and appends the payloads found. `Ok(false)` when the
    /// connection ended.
    pub(crate) async fn next_payloads(
        &mut self,
        out: &mut Vec<(u64, u64)>,
    ) -> anyhow::Result<bool> {
        match self {
            Sub::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "2" {
                        ws.send(Message::text("3")).await?; // Engine.IO ping
                    } else {
                        payloads(t.as_str(), out);
                    }
                    Ok(true)
                }
                Some(Ok(_)) => Ok(true),
                Some(Err(e)) => Err(e.into()),
                None => Ok(false),
            },
            Sub::Sse { stream, buf } => {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(false);
                }
                buf.extend_from_slice(&chunk[..n]);
                // Only complete events (a blank line ends one): a payload is never split.
                if let Some(end) = buf.windows(2).rposition(|w| w == b"\n\n") {
                    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
                    payloads(&text, out);
                    buf.drain(..end + 2);
                }
                Ok(true)
            }
        }
    }
}

/// Publishes on a peer over a kept-alive HTTP/1.1 connection (Herald uses gRPC instead).
pub(crate) struct HttpPublisher {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    target: Target,
}

impl HttpPublisher {
    pub(crate) fn new(target: Target, addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            target,
        }
    }

    /// Publishes `payload` (a JSON object) on `channel`; returns once the server answered 2xx.
    pub(crate) async fn publish(&mut self, channel: &str, payload: &str) -> anyhow::Result<()> {
        let (path, body) = match self.target {
            Target::Nchan => (format!("/pub/{channel}"), payload.to_owned()),
            Target::Socketio => (format!("/publish/{channel}"), payload.to_owned()),
            Target::Pushpin => {
                let event = format!("event: message\ndata: {payload}\n\n");
                let item = serde_json::json!({"items": [{"channel": channel,
                    "formats": {"http-stream": {"content": event}}}]});
                ("/publish/".to_owned(), item.to_string())
            }
            Target::Herald => bail!("Herald publishes over gRPC"),
        };
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let result = self.exchange(&path, &body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str, body: &str) -> anyhow::Result<()> {
        let stream = self.stream.as_mut().context("no connection")?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if resp.len() >= end + 4 + len {
                    if !(head.starts_with("http/1.1 2") || head.starts_with("http/1.0 2")) {
                        bail!("publish refused: {head}");
                    }
                    if head.contains("connection: close") {
                        self.stream = None;
                    }
                    return Ok(());
                }
            }
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .context("publish answer timed out")??;
            if n == 0 {
                bail!("publisher connection closed");
            }
            resp.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_payloads_in_every_wrapping() {
        let mut out = Vec::new();
        payloads(
            r#"{"type":"message","channel":"c","id":"9","data":{"hseq":3,"hts":17,"p":"x"}}"#,
            &mut out,
        );
        payloads(
            r#"42["msg","{\"hseq\":4,\"hts\":18,\"p\":\"x\"}"]"#,
            &mut out,
        );
        payloads(
            "id: 9\nevent: message\ndata: {\"hseq\":5,\"hts\":19}\n\nid: 10\ndata: {\"hseq\":6,\"hts\":20}",
            &mut out,
        );
        assert_eq!(out, [(3, 17), (4, 18), (5, 19), (6, 20)]);
        out.clear();
        payloads(r#"{"hseq":"x"}"#, &mut out);
        assert!(out.is_empty());
    }
}
