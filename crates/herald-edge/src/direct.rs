//! Direct writes: the fan-out writes a live message straight to an idle connection's socket.
//!
//! A delivery through the outbox wakes the connection's task, which takes the item, checks it
//! against the session's position, encodes it and writes it: one task wake-up and poll per
//! connection per message. When a connection has nothing queued and nothing unwritten, that
//! work is a non-blocking write of bytes built once for every connection (the SSE event in its
//! chunk framing, or the WebSocket text frame), so the fan-out does it itself, under the
//! outbox's lock.
//!
//! Two parties share the socket, and never write at once:
//! - the connection's writer (`rawsse`'s loop, or tungstenite through [`WsIo`]) marks the
//!   socket `flushed` only once it holds nothing unwritten, and clears the mark (under the
//!   gate) before it writes again;
//! - the fan-out writes only while the mark is set, the connection's task is parked waiting
//!   for the outbox with nothing pending (see `Outbox::park`), and the outbox is
//!   empty.
//!
//! A write that would block leaves the message to the outbox, as before. A write that goes
//! out in part keeps the rest in the gate as `leftover` and clears the mark: the writer sends
//! the rest before anything else, so the bytes on the socket stay whole events and frames, in
//! order.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use herald_core::Message;
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};

use crate::limits::SocketSlot;

/// How the bytes of a message are framed on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// An SSE event in an HTTP/1.1 chunk.
    SseChunked,
    /// An SSE event as it is (HTTP/1.0: the body ends with the connection).
    SsePlain,
    /// A WebSocket text frame from the server (unmasked).
    WebSocket,
}

/// A stream's socket, shared by its writer and the fan-out.
pub(crate) struct DirectSink {
    stream: TcpStream,
    framing: Framing,
    gate: Mutex<Gate>,
    /// Wakes the writer when a direct write left bytes behind.
    leftover_ready: Notify,
}

struct Gate {
    /// The writer holds nothing unwritten: the fan-out may write.
    flushed: bool,
    /// The unwritten end of a direct write, sent by the writer before anything else.
    leftover: Option<Bytes>,
}

/// What a direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Nothing was written: queue the message as usual.
    No,
    /// The whole event went out, or its start did and the writer sends the rest.
    Yes,
}

impl DirectSink {
    pub(crate) fn new(stream: TcpStream, framing: Framing) -> Self {
        Self {
            stream,
            framing,
            gate: Mutex::new(Gate {
                flushed: false,
                leftover: None,
            }),
            leftover_ready: Notify::new(),
        }
    }

    /// The socket, for the writer's own reads and writes.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// How messages are framed on this socket.
    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// Writes `m` now if the writer is idle and the socket takes it without blocking.
    pub(crate) fn try_send(&self, m: &Message) -> Sent {
        let mut gate = self.gate.lock();
        if !gate.flushed {
            return Sent::No;
        }
        let mut head = [0u8; 18];
        let (event, head_len, tail): (&Bytes, usize, &[u8]) = match self.framing {
            Framing::SseChunked => {
                let e = m.sse_event();
                (e, chunk_head(e.len(), &mut head), b"\r\n")
            }
            Framing::SsePlain => (m.sse_event(), 0, b""),
            Framing::WebSocket => {
                let f = m.ws_frame();
                (f, ws_head(f.len(), &mut head), b"")
            }
        };
        let parts = [
            IoSlice::new(&head[..head_len]),
            IoSlice::new(event),
            IoSlice::new(tail),
        ];
        let total = head_len + event.len() + tail.len();
        match self.stream.try_write_vectored(&parts) {
            Ok(n) if n == total => Sent::Yes,
            Ok(n) => {
                let mut rest = Vec::with_capacity(total - n);
                for part in parts {
                    rest.extend_from_slice(&part);
                }
                gate.leftover = Some(Bytes::from(rest).slice(n..));
                gate.flushed = false;
                drop(gate);
                self.leftover_ready.notify_one();
                Sent::Yes
            }
            // Would block, or the socket failed: the writer finds out on its own.
            Err(_) => Sent::No,
        }
    }

    /// The writer is about to write: no direct write may start until [`Self::flushed`]. Returns
    /// the unwritten end of a direct write, which must go out first.
    pub(crate) fn begin_write(&self) -> Option<Bytes> {
        let mut gate = self.gate.lock();
        gate.flushed = false;
        gate.leftover.take()
    }

    /// The writer has written everything it held. Returns bytes a direct write left behind in
    /// the meantime, if any (then the socket stays the writer's).
    pub(crate) fn flushed(&self) -> Option<Bytes> {
        let mut gate = self.gate.lock();
        match gate.leftover.take() {
            Some(rest) => Some(rest),
            None => {
                gate.flushed = true;
                None
            }
        }
    }

    /// Waits until a direct write leaves bytes for the writer.
    pub(crate) async fn leftover(&self) {
        self.leftover_ready.notified().await;
    }

    /// Writes all of `buf` as the socket's writer.
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the client sends (nothing, after its request): `Ok(0)` once it closed.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
    }
}

/// Writes the header of an unmasked, final WebSocket text frame of `len` bytes into `out`;
/// returns its length.
fn ws_head(len: usize, out: &mut [u8; 18]) -> usize {
    out[0] = 0x81;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A WebSocket connection's socket as tungstenite reads and writes it: every write passes the
/// gate (a direct write's unsent end first), and a completed flush, which tungstenite makes
/// only once its own buffer is written out, marks the socket idle for the fan-out.
pub(crate) struct WsIo {
    sink: Arc<DirectSink>,
    /// Bytes the client sent after its handshake, read before the socket.
    prefix: Bytes,
    /// The connection's place under the client socket cap.
    _slot: SocketSlot,
}

impl WsIo {
    pub(crate) fn new(sink: Arc<DirectSink>, prefix: Bytes, slot: SocketSlot) -> Self {
        Self {
            sink,
            prefix,
            _slot: slot,
        }
    }

    /// Writes what a direct write left unsent, under the gate; Ready once nothing is left.
    fn poll_leftover(&self, gate: &mut Gate, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = gate.leftover.as_mut() {
            match self.sink.stream.try_write(rest) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if n == rest.len() => gate.leftover = None,
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.sink.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.sink.stream.poll_read_ready(cx))?;
            match this.sink.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut gate = this.sink.gate.lock();
        gate.flushed = false;
        ready!(this.poll_leftover(&mut gate, cx))?;
        loop {
            match this.sink.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(this.sink.stream.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut gate = this.sink.gate.lock();
        ready!(this.poll_leftover(&mut gate, cx))?;
        gate.flushed = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut gate = this.sink.gate.lock();
        gate.flushed = false;
        ready!(this.poll_leftover(&mut gate, cx))?;
        let _ = socket2::SockRef::from(&this.sink.stream).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// Writes the chunk-size line of a chunk of `len` bytes into `out`; returns its length.
fn chunk_head(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.max(1).leading_zeros()).div_ceil(4) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_heads_take_the_shortest_length_form() {
        for (len, want) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = [0u8; 18];
            let n = ws_head(len, &mut out);
            assert_eq!(out[..n], want[..], "{len}");
        }
    }

    #[test]
    fn chunk_heads_are_lowercase_hex() {
        for len in [0usize, 1, 15, 16, 255, 4096, 65_535, 1 << 20] {
            let mut out = [0u8; 18];
            let n = chunk_head(len, &mut out);
            assert_eq!(&out[..n], format!("{len:x}\r\n").as_bytes(), "{len}");
        }
    }
}
