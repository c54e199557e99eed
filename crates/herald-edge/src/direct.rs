//! Direct writes: the fan-out writes a live SSE event straight to an idle stream's socket.
//!
//! A delivery through the outbox wakes the connection's task, which takes the item, checks it
//! against the session's position, encodes it and writes it: one task wake-up and poll per
//! connection per message. When a stream has nothing queued and nothing unwritten, that work
//! is a non-blocking write of bytes built once for every connection (the event, in its chunk
//! framing), so the fan-out does it itself, under the outbox's lock.
//!
//! Two parties share the socket, and never write at once:
//! - the stream's writer (`rawsse`) writes what the SSE body yields; it marks the socket
//!   `flushed` only once it holds nothing unwritten, and clears the mark (under the gate) before
//!   it writes again;
//! - the fan-out writes only while the mark is set, the stream's task is parked waiting for
//!   the outbox with nothing pending (see `Outbox::next_batch_parked`), and the outbox is empty.
//!
//! A write that would block leaves the message to the outbox, as before. A write that goes
//! out in part keeps the rest in the gate as `leftover` and clears the mark: the writer sends
//! the rest before anything else, so the bytes on the socket stay whole events, in order.

use std::io::{self, IoSlice};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::{net::TcpStream, sync::Notify};

/// A stream's socket, shared by its writer and the fan-out.
pub(crate) struct DirectSink {
    stream: TcpStream,
    /// HTTP/1.1 chunked framing (else HTTP/1.0: the body is the bytes as they are).
    chunked: bool,
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
    pub(crate) fn new(stream: TcpStream, chunked: bool) -> Self {
        Self {
            stream,
            chunked,
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

    /// Whether the body must be sent in chunked framing.
    pub(crate) fn chunked(&self) -> bool {
        self.chunked
    }

    /// Writes `event` now if the writer is idle and the socket takes it without blocking.
    pub(crate) fn try_send(&self, event: &Bytes) -> Sent {
        let mut gate = self.gate.lock();
        if !gate.flushed {
            return Sent::No;
        }
        let mut head = [0u8; 18];
        let head_len = if self.chunked {
            chunk_head(event.len(), &mut head)
        } else {
            0
        };
        let tail: &[u8] = if self.chunked { b"\r\n" } else { b"" };
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
    fn chunk_heads_are_lowercase_hex() {
        for len in [0usize, 1, 15, 16, 255, 4096, 65_535, 1 << 20] {
            let mut out = [0u8; 18];
            let n = chunk_head(len, &mut out);
            assert_eq!(&out[..n], format!("{len:x}\r\n").as_bytes(), "{len}");
        }
    }
}
