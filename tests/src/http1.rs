//! A bare HTTP/1.1 client on one TCP connection, for tests that need to know which requests
//! share a connection (keep-alive, pipelining, what follows a poll on the same socket).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{TIMEOUT, within};

/// One answer read off the connection.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (showing it) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer body is not JSON ({e}): {} {}",
                self.status_line,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether the server said it closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// A client connection that sends raw requests and reads answers one by one.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = within(TIMEOUT, "connect", TcpStream::connect(addr))
            .await
            .expect("connecting");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("sending");
    }

    /// Sends `GET target` with a `Host` header and `extra` header lines (each ending in CRLF).
    pub async fn get(&mut self, target: &str, extra: &str) {
        let req = format!("GET {target} HTTP/1.1\r\nHost: herald\r\n{extra}\r\n");
        self.send_raw(req.as_bytes()).await;
    }

    /// Sends `GET target` and reads its answer.
    pub async fn request(&mut self, target: &str) -> Answer {
        self.get(target, "").await;
        self.answer().await
    }

    async fn fill(&mut self, what: &str) {
        let mut chunk = [0u8; 4096];
        let n = within(TIMEOUT, what, self.stream.read(&mut chunk))
            .await
            .unwrap_or(0);
        assert!(
            n > 0,
            "the server closed the connection while {what}; read so far: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one answer (`Content-Length` or chunked body); panics if the connection closes
    /// first or nothing comes within [`TIMEOUT`].
    pub async fn answer(&mut self) -> Answer {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            self.fill("reading an answer head").await;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_owned();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = Answer {
            status,
            status_line,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 304 || status == 204 {
            return answer;
        }
        if answer
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line = loop {
                    if let Some(e) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break e;
                    }
                    self.fill("reading a chunk size").await;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.buf[..line]).trim(), 16)
                        .expect("chunk size");
                while self.buf.len() < line + 2 + size + 2 {
                    self.fill("reading a chunk").await;
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line + 2..line + 2 + size]);
                self.buf.drain(..line + 2 + size + 2);
                if size == 0 {
                    return answer;
                }
            }
        }
        let length: usize = answer
            .header("content-length")
            .map(|v| v.parse().expect("content-length"))
            .unwrap_or_else(|| panic!("answer without a length: {answer:?}"));
        while self.buf.len() < length {
            self.fill("reading an answer body").await;
        }
        answer.body = self.buf.drain(..length).collect();
        answer
    }

    /// Waits until the server closes the connection (reads nothing more); panics if it sends
    /// bytes instead or stays open past [`TIMEOUT`].
    pub async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 256];
        let n = within(TIMEOUT, "the server to close", self.stream.read(&mut chunk))
            .await
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "expected the connection closed, got {:?}",
            String::from_utf8_lossy(&chunk[..n])
        );
    }

    /// Hands the socket over (e.g. for a WebSocket handshake on the same connection); panics
    /// if bytes were read but not consumed.
    pub fn into_stream(self) -> TcpStream {
        assert!(self.buf.is_empty(), "unread bytes left on the connection");
        self.stream
    }
}
