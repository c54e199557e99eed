//! The headers Herald's messages carry on NATS, and turning a stored or republished message
//! back into a [`Message`]: shared by publishing, history reads and live feeds.

use async_nats::HeaderMap;
use bytes::Bytes;
use herald_core::{ChannelName, Cursor, Message, Payload};
use tracing::warn;

/// Header carrying the previous sequence of the same channel (0 for its first message): the
/// chain link that makes gaps detectable in stored history (JetStream stores no such link).
pub(crate) const HDR_PREV: &str = "Herald-Prev";
/// W3C trace context of a traced publish; republished with the message to every node, which
/// continues the trace. Absent when the publisher does not trace.
pub(crate) const HDR_TRACEPARENT: &str = "traceparent";
/// Header carrying the publish time in µs since the Unix epoch (the message's `ts`).
pub(crate) const HDR_TS: &str = "Herald-Ts";
/// Republish header: the stream sequence (the cursor).
pub(crate) const HDR_SEQ: &str = "Nats-Sequence";
/// Republish header: the previous sequence on the same subject, as JetStream saw it.
pub(crate) const HDR_LAST_SEQ: &str = "Nats-Last-Sequence";
pub(crate) const HDR_MSG_ID: &str = "Nats-Msg-Id";
pub(crate) const HDR_EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

/// A header parsed as a decimal number.
pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().trim().parse().ok()
}

/// Builds a client-facing message from stored bytes; `None` (logged) for a payload that is not
/// JSON, which only a foreign publisher on our subjects could have put there.
pub(crate) fn to_message(
    channel: &ChannelName,
    seq: u64,
    headers: &HeaderMap,
    payload: Bytes,
    fallback_us: impl FnOnce() -> u64,
) -> Option<Message> {
    let ts = header_u64(headers, HDR_TS).unwrap_or_else(fallback_us);
    match Payload::from_json(payload, usize::MAX) {
        Ok(data) => Some(
            Message::new(channel.clone(), Cursor(seq), ts, data).with_traceparent(
                headers
                    .get(HDR_TRACEPARENT)
                    .map(|v| std::sync::Arc::from(v.as_str())),
            ),
        ),
        Err(error) => {
            warn!(%channel, seq, %error, "skipping a stored message that is not JSON");
            None
        }
    }
}
