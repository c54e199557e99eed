//! One subscription's view of a channel's chain ([`Chain`]): the gap check every live feed
//! applies, whether it has its own NATS subscription (`live`) or shares the node's wildcard
//! (`demux`).

use std::sync::Arc;

use async_nats::Message as NatsMessage;
use herald_core::{ChannelName, LiveEvent, unix_micros};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::wire::{HDR_LAST_SEQ, HDR_PREV, HDR_SEQ, header_u64, to_message};

/// One subscription's side of a channel's chain: yields each republished message whose
/// predecessor is the one yielded before it, and a `Lagged` wherever a link may be missing.
pub(crate) struct Chain {
    pub(crate) channel: ChannelName,
    pub(crate) tx: mpsc::Sender<LiveEvent>,
    /// Cursor of the last message yielded (`None`: nothing yet, or a `Lagged` reset it).
    last: Option<u64>,
    /// A `Lagged` could not be queued (reader slow) and must precede the next message.
    owe_lagged: bool,
    /// The broker's slow-consumer count when `last` was yielded.
    slow_mark: u64,
}

impl Chain {
    /// A chain that has yielded nothing yet; `slow_mark` is the broker's slow-consumer count
    /// now.
    pub(crate) fn new(channel: ChannelName, tx: mpsc::Sender<LiveEvent>, slow_mark: u64) -> Self {
        Self {
            channel,
            tx,
            last: None,
            owe_lagged: false,
            slow_mark,
        }
    }

    /// Everything since the last yielded message may be missing: the reader must repair.
    pub(crate) fn lagged(&mut self) {
        self.last = None;
        self.owe_lagged = true;
        self.flush_lagged();
    }

    fn flush_lagged(&mut self) -> bool {
        if self.owe_lagged {
            match self.tx.try_send(LiveEvent::Lagged) {
                Ok(()) => self.owe_lagged = false,
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Checks `msg` against the chain and yields it (or a `Lagged` before it). `slow` is the
    /// broker's slow-consumer count now.
    pub(crate) fn deliver(&mut self, msg: NatsMessage, slow: u64) {
        let Some(headers) = msg.headers.as_ref() else {
            return;
        };
        let Some(seq) = header_u64(headers, HDR_SEQ) else {
            return;
        };
        // The server's own link (the subject's last sequence when this one was stored) is
        // exact even where a replicated stream let a stale `Herald-Prev` through (see
        // tests/contention.rs); it is 0 only when the channel had nothing retained, and then
        // `Herald-Prev` (from the tip stream) is the link.
        let prev = header_u64(headers, HDR_LAST_SEQ)
            .filter(|&seq| seq > 0)
            .or_else(|| header_u64(headers, HDR_PREV));
        if let Some(last) = self.last {
            if seq <= last {
                return; // already yielded
            }
            if prev != Some(last) || slow != self.slow_mark {
                // A link of the chain never arrived (or async-nats dropped live messages
                // somewhere): let the reader repair from history.
                self.lagged();
            }
        }
        self.slow_mark = slow;
        let Some(message) = to_message(&self.channel, seq, headers, msg.payload, unix_micros)
        else {
            return;
        };
        if !self.flush_lagged() {
            return; // the reader is behind; it will repair after the Lagged
        }
        match self.tx.try_send(LiveEvent::Message(Arc::new(message))) {
            Ok(()) => self.last = Some(seq),
            Err(TrySendError::Full(_)) => self.lagged(),
            Err(TrySendError::Closed(_)) => {}
        }
    }
}
