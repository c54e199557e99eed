//! One-channel SSE streams and WebSockets whose live messages the fan-out writes straight to
//! the socket (`herald-edge/src/direct.rs`), under the conditions that make such writes hard: clients with
//! small receive buffers that read slowly (so direct writes would block or go out in part),
//! events larger than those buffers, six publishers at once, heartbeats every 100 ms racing
//! the fan-out, and slow consumers dropped and resuming with `Last-Event-ID`.
//!
//! Every byte is checked: the chunked framing and each event's lines (SSE), each frame
//! (WebSocket: tungstenite refuses a torn one), each payload's own length and content, and per
//! client every message once, in cursor order, with nothing skipped.

use std::time::Duration;

use herald_e2e::{Node, Publisher, channel, metric_value, within};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PUBLISHERS: u64 = 6;
const PER_PUBLISHER: u64 = 60;
const SUBSCRIBERS: usize = 16;

/// The padding of message `n` of publisher `p`: its size and bytes follow from `(p, n)`.
fn pad(p: u64, n: u64) -> String {
    let len = ((p * 7919 + n * 104_729) % 30_000) as usize + 10;
    let c = char::from(b'a' + ((p * 31 + n) % 26) as u8);
    std::iter::repeat_n(c, len).collect()
}

/// A connection to the node's client port with a 4 KiB receive buffer, so a client that
/// pauses pushes back on the server at once.
fn small_buffer_socket(node: &Node) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect_timeout(&node.http.into(), Duration::from_secs(5))
        .expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(socket.into()).expect("tokio socket")
}

/// A strict reader of a chunked SSE response.
struct Stream {
    tcp: TcpStream,
    /// Received body bytes not yet parsed.
    raw: Vec<u8>,
    /// De-chunked body bytes not yet split into events.
    body: Vec<u8>,
    ended: bool,
    slow: bool,
}

impl Stream {
    async fn open(node: &Node, ch: &str, last_id: Option<&str>, slow: bool) -> Stream {
        let mut tcp = small_buffer_socket(node);
        let last = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let req = format!("GET /sse?channel={ch} HTTP/1.1\r\nHost: h\r\n{last}\r\n");
        tcp.write_all(req.as_bytes()).await.expect("request");
        let mut s = Stream {
            tcp,
            raw: Vec::new(),
            body: Vec::new(),
            ended: false,
            slow,
        };
        // The head.
        loop {
            if let Some(end) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(s.raw[..end].to_vec()).expect("utf-8 head");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert!(
                    head.to_ascii_lowercase()
                        .contains("transfer-encoding: chunked"),
                    "{head}"
                );
                s.raw.drain(..end + 4);
                break;
            }
            assert!(s.fill().await, "closed before the head");
        }
        s
    }

    /// Reads more bytes; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut buf = vec![0u8; if self.slow { 700 } else { 64 << 10 }];
        let n = within(
            Duration::from_secs(30),
            "SSE bytes",
            self.tcp.read(&mut buf),
        )
        .await
        .expect("read");
        if self.slow {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Moves whole chunks from `raw` to `body`, checking their framing.
    fn dechunk(&mut self) {
        loop {
            let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line]).expect("chunk size is ASCII");
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
            if self.raw.len() < line + 2 + size + 2 {
                return;
            }
            let data = &self.raw[line + 2..line + 2 + size];
            assert_eq!(
                &self.raw[line + 2 + size..line + 4 + size],
                b"\r\n",
                "chunk not followed by CRLF"
            );
            if size == 0 {
                self.ended = true;
            }
            self.body.extend_from_slice(data);
            self.raw.drain(..line + 4 + size);
        }
    }

    /// The next event's (name, id, data) without comments; None at the end of the stream.
    async fn next(&mut self) -> Option<(String, Option<String>, String)> {
        loop {
            self.dechunk();
            while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.body[..end].to_vec()).expect("utf-8 event");
                self.body.drain(..end + 2);
                let (mut name, mut id, mut data) = ("message".to_owned(), None, None);
                let mut comment = true;
                for line in text.lines() {
                    if line.starts_with(':') {
                        assert_eq!(line, ": heartbeat", "{text}");
                        continue;
                    }
                    comment = false;
                    let (k, v) = line
                        .split_once(": ")
                        .unwrap_or_else(|| panic!("bad line {line:?} in {text:?}"));
                    match k {
                        "event" => name = v.to_owned(),
                        "id" => id = Some(v.to_owned()),
                        "data" => data = Some(v.to_owned()),
                        "retry" => {}
                        _ => panic!("unknown field {k:?} in {text:?}"),
                    }
                }
                if comment || data.is_none() {
                    continue;
                }
                return Some((name, id, data.unwrap_or_default()));
            }
            if self.ended || !self.fill().await {
                assert!(self.body.is_empty(), "stream ended inside an event");
                return None;
            }
        }
    }
}

/// Checks one message (its id, and its payload against `pad`) and appends its cursor; true
/// once `want` are in.
fn take(got: &mut Vec<u64>, v: &Value, want: usize) -> bool {
    let cursor: u64 = v["id"].as_str().expect("id").parse().expect("id");
    let d = &v["data"];
    let (p, n) = (d["p"].as_u64().expect("p"), d["n"].as_u64().expect("n"));
    assert_eq!(d["pad"].as_str(), Some(pad(p, n).as_str()), "payload");
    if let Some(&prev) = got.last() {
        assert!(cursor > prev, "cursor {cursor} after {prev}: out of order");
    }
    got.push(cursor);
    got.len() == want
}

/// A slow client stops reading for a while every 25 messages: the socket fills, direct
/// writes block or go out in part, the outbox takes over, and may overflow.
async fn pause(slow: bool, got: &[u64]) {
    if slow && got.len().is_multiple_of(25) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows `ch` over WebSocket until `want` messages, resuming after every ending; returns
/// the cursors in the order received and how many times it resumed.
async fn follow_ws(node: &Node, ch: String, want: usize, slow: bool) -> (Vec<u64>, usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error, Message};
    let mut got: Vec<u64> = Vec::new();
    let mut resumes = 0;
    loop {
        let tcp = small_buffer_socket(node);
        let (mut ws, _) = tokio_tungstenite::client_async(node.ws_url(), tcp)
            .await
            .expect("handshake");
        let since = got.last().map_or(json!(null), |c| json!(c.to_string()));
        let sub = json!({"op": "subscribe", "channels": [ch], "since": since});
        ws.send(Message::text(sub.to_string()))
            .await
            .expect("subscribe");
        loop {
            let next = within(Duration::from_secs(30), "a frame", ws.next()).await;
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                // The server drops a client that stopped reading without a closing handshake.
                Some(Err(Error::Protocol(
                    tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )))
                | Some(Err(Error::Io(_))) => break,
                Some(Err(e)) => panic!("torn WebSocket stream: {e}"),
            };
            let v: Value = serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"));
            match v["type"].as_str() {
                Some("subscribed") => {}
                Some("message") => {
                    if take(&mut got, &v, want) {
                        return (got, resumes);
                    }
                    pause(slow, &got).await;
                }
                Some("error") => assert_eq!(v["code"], "slow_consumer", "{v}"),
                _ => panic!("unexpected frame {v}"),
            }
        }
        resumes += 1;
        assert!(resumes < 200, "resumed 200 times");
    }
}

/// Follows `ch` over SSE until `want` messages, resuming after every ending; returns the
/// cursors in the order received and how many times the stream was resumed.
async fn follow(node: &Node, ch: String, want: usize, slow: bool) -> (Vec<u64>, usize) {
    let mut got: Vec<u64> = Vec::new();
    let mut last: Option<String> = None;
    let mut resumes = 0;
    while got.len() < want {
        let mut s = Stream::open(node, &ch, last.as_deref(), slow).await;
        while let Some((name, id, data)) = s.next().await {
            match name.as_str() {
                "subscribed" => last = id.or(last),
                "message" => {
                    let v: Value = serde_json::from_str(&data).expect("message JSON");
                    let cursor: u64 = v["id"].as_str().expect("id").parse().expect("id");
                    assert_eq!(id.as_deref(), v["id"].as_str(), "id line = message id");
                    let d = &v["data"];
                    let (p, n) = (d["p"].as_u64().expect("p"), d["n"].as_u64().expect("n"));
                    assert_eq!(d["pad"].as_str(), Some(pad(p, n).as_str()), "payload");
                    if let Some(&prev) = got.last() {
                        assert!(cursor > prev, "cursor {cursor} after {prev}: out of order");
                    }
                    got.push(cursor);
                    last = id;
                    if slow && got.len().is_multiple_of(25) {
                        // Stop reading for a while: the socket fills, direct writes block or
                        // go out in part, the outbox takes over, and may overflow.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    if got.len() == want {
                        return (got, resumes);
                    }
                }
                "error" => {
                    let v: Value = serde_json::from_str(&data).expect("error JSON");
                    assert_eq!(v["code"], "slow_consumer", "{v}");
                    break;
                }
                other => panic!("unexpected event {other}: {data}"),
            }
        }
        resumes += 1;
        assert!(resumes < 200, "resumed 200 times");
    }
    (got, resumes)
}

#[derive(Clone, Copy)]
enum Protocol {
    Sse,
    WebSocket,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_written_sse_streams_stay_whole_exact_and_in_order() {
    fan_out_written_streams_stay_whole_exact_and_in_order(Protocol::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_written_websockets_stay_whole_exact_and_in_order() {
    fan_out_written_streams_stay_whole_exact_and_in_order(Protocol::WebSocket).await;
}

async fn fan_out_written_streams_stay_whole_exact_and_in_order(protocol: Protocol) {
    let node = Node::start(&[
        ("HERALD_HISTORY_SIZE", "5000"),
        ("HERALD_SSE_HEARTBEAT", "100ms"),
        ("HERALD_OUTBOX_BYTES", "262144"),
    ])
    .await;
    let ch = channel("direct");
    let want = (PUBLISHERS * PER_PUBLISHER) as usize;
    let node = std::sync::Arc::new(node);
    let mut followers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (node, ch) = (node.clone(), ch.clone());
        followers.push(tokio::spawn(async move {
            match protocol {
                Protocol::Sse => follow(&node, ch, want, i % 2 == 0).await,
                Protocol::WebSocket => follow_ws(&node, ch, want, i % 2 == 0).await,
            }
        }));
    }
    herald_e2e::eventually(Duration::from_secs(10), "all subscribed", || {
        let node = node.clone();
        async move {
            (metric_value(&node, "herald_subscriptions").await >= SUBSCRIBERS as f64).then_some(())
        }
    })
    .await;

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (node, ch) = (node.clone(), ch.clone());
        publishers.push(tokio::spawn(async move {
            let mut publisher = Publisher::connect(&node).await;
            let mut cursors = Vec::new();
            for n in 0..PER_PUBLISHER {
                let c = publisher
                    .publish(&ch, &json!({"p": p, "n": n, "pad": pad(p, n)}))
                    .await;
                cursors.push(c.parse::<u64>().expect("cursor"));
            }
            cursors
        }));
    }
    let mut published = Vec::new();
    for p in publishers {
        published.extend(p.await.expect("publisher"));
    }
    published.sort_unstable();

    let mut resumes = 0;
    for (i, f) in followers.into_iter().enumerate() {
        let (got, r) = within(Duration::from_secs(120), "a follower", f)
            .await
            .expect("follower");
        assert_eq!(
            got, published,
            "subscriber {i}: every message once, in order"
        );
        resumes += r;
    }
    let direct = metric_value(&node, "herald_direct_writes_total").await;
    let label = match protocol {
        Protocol::Sse => "sse",
        Protocol::WebSocket => "websocket",
    };
    let delivered = metric_value(
        &node,
        &format!("herald_messages_delivered_total{{protocol=\"{label}\"}}"),
    )
    .await;
    eprintln!(
        "direct writes {direct} of {delivered} {label} deliveries; {resumes} resumes after slow-consumer endings"
    );
    assert!(
        direct > 0.0,
        "the fan-out wrote no message itself ({delivered} {label} deliveries)"
    );
}
