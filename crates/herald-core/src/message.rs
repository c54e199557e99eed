//! Messages as brokers store them and clients receive them, with their wire encodings.

use std::{
    sync::{Arc, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{BufMut, Bytes, BytesMut};

use crate::{ChannelName, Cursor, Payload};

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One published message. Shared (`Arc<Message>`) by history and every connection it is
/// delivered to; each wire encoding is built at most once, on first use.
pub struct Message {
    /// The channel it was published to.
    pub channel: ChannelName,
    /// Its place in the global order.
    pub cursor: Cursor,
    /// When the broker accepted it, in microseconds since the Unix epoch (clients see ms).
    pub published_us: u64,
    /// The JSON payload.
    pub data: Payload,
    /// `{"channel":..,"id":..,"data":..,"ts":..}`: poll replies and SSE `data:`.
    json: OnceLock<Bytes>,
    /// The same object with `"type":"message"` first: WebSocket text frames.
    ws: OnceLock<Bytes>,
    /// A whole SSE event: `id:`, `event: message`, `data:` and the blank line.
    sse: OnceLock<Bytes>,
    /// W3C `traceparent` of the publish, when it was traced and the broker carried it: the
    /// edge continues that trace when it receives and delivers the message.
    traceparent: Option<Arc<str>>,
}

impl Message {
    /// Builds a message.
    pub fn new(channel: ChannelName, cursor: Cursor, published_us: u64, data: Payload) -> Self {
        Self {
            channel,
            cursor,
            published_us,
            data,
            json: OnceLock::new(),
            ws: OnceLock::new(),
            sse: OnceLock::new(),
            traceparent: None,
        }
    }

    /// The same message carrying the publish's W3C `traceparent` (see [`crate::trace`]).
    pub fn with_traceparent(mut self, traceparent: Option<Arc<str>>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The publish's W3C `traceparent`, when it was traced.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Publish time in milliseconds since the Unix epoch (the `ts` clients see).
    pub fn ts_ms(&self) -> u64 {
        self.published_us / 1000
    }

    /// Bytes this message accounts for in a connection's outbound queue.
    pub fn wire_size(&self) -> usize {
        self.data.len() + self.channel.as_str().len() + 96
    }

    /// The client-facing JSON object.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| self.encode(b"{"))
    }

    /// The WebSocket frame (valid UTF-8 JSON).
    pub fn ws_frame(&self) -> &Bytes {
        self.ws
            .get_or_init(|| self.encode(br#"{"type":"message","#))
    }

    /// The SSE event, ready to write.
    pub fn sse_event(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let json = self.json();
            let mut b = BytesMut::with_capacity(json.len() + 48);
            b.put_slice(b"id: ");
            b.put_slice(self.cursor.to_string().as_bytes());
            b.put_slice(b"\nevent: message\ndata: ");
            b.put_slice(json);
            b.put_slice(b"\n\n");
            b.freeze()
        })
    }

    fn encode(&self, prefix: &[u8]) -> Bytes {
        // Channel names need no JSON escaping: their alphabet has no quote, backslash or
        // control character. The cursor and ts are decimal; data is validated compact JSON.
        let mut b = BytesMut::with_capacity(self.wire_size() + prefix.len());
        b.put_slice(prefix);
        b.put_slice(br#""channel":""#);
        b.put_slice(self.channel.as_str().as_bytes());
        b.put_slice(br#"","id":""#);
        b.put_slice(self.cursor.to_string().as_bytes());
        b.put_slice(br#"","data":"#);
        b.put_slice(self.data.as_bytes());
        b.put_slice(br#","ts":"#);
        b.put_slice(self.ts_ms().to_string().as_bytes());
        b.put_u8(b'}');
        b.freeze()
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("cursor", &self.cursor)
            .field("data", &self.data)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_valid_and_agree() {
        let data = Payload::from_json(&br#"{"t":"x\ny"}"#[..], 100).unwrap();
        let m = Message::new(
            ChannelName::new("chat:1").unwrap(),
            Cursor(42),
            1_700_000_000_123_456,
            data,
        );
        let v: serde_json::Value = serde_json::from_slice(m.json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"channel":"chat:1","id":"42","data":{"t":"x\ny"},"ts":1_700_000_000_123u64})
        );
        let w: serde_json::Value = serde_json::from_slice(m.ws_frame()).unwrap();
        assert_eq!(w["type"], "message");
        assert_eq!(w["data"], v["data"]);
        let sse = std::str::from_utf8(m.sse_event()).unwrap();
        assert!(sse.starts_with("id: 42\nevent: message\ndata: {"));
        assert!(sse.ends_with("}\n\n"));
        assert_eq!(
            sse.matches('\n').count(),
            4,
            "data stays on one line: {sse:?}"
        );
    }
}
