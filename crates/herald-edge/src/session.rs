//! A client's subscriptions and resume logic, shared by every held protocol.
//!
//! To subscribe, the session first joins the hub (live feed in place, its messages queuing in
//! the outbox), then reads history after the client's cursor and merges the channels in
//! cursor order. From then on it admits a live message only if it is newer than the last one
//! delivered on that channel, so the history/live overlap yields no duplicate and no loss.

use std::{collections::HashMap, sync::Arc};

use futures_util::future::join_all;
use herald_core::{BrokerError, ChannelName, Cursor, HistoryQuery, Message, unix_micros};

use crate::{EdgeError, EdgeInner, registry::Registration};

/// What a subscribe produced, to be written to the client before any live message.
pub(crate) struct Catchup {
    /// Channels newly subscribed, in request order.
    pub(crate) channels: Vec<ChannelName>,
    /// The resume point: the client's cursor, or the head for "from now".
    pub(crate) cursor: Cursor,
    /// Channels whose history could not cover the resume (tell the client first).
    pub(crate) gaps: Vec<ChannelName>,
    /// Retained messages after the cursor, all channels merged in cursor order.
    pub(crate) messages: Vec<Arc<Message>>,
}

/// One held connection's subscriptions.
pub(crate) struct Session {
    pub(crate) edge: Arc<EdgeInner>,
    pub(crate) reg: Registration,
    /// Subscribed channels and the cursor of the last message delivered on each.
    channels: HashMap<ChannelName, Cursor>,
}

impl Session {
    pub(crate) fn new(edge: Arc<EdgeInner>, reg: Registration) -> Self {
        Self {
            edge,
            reg,
            channels: HashMap::new(),
        }
    }

    /// Subscribes to `channels` (those not already subscribed), resuming after `since` or
    /// from now. `limit` bounds the merged catch-up (`None`: everything retained).
    pub(crate) async fn subscribe(
        &mut self,
        requested: &[ChannelName],
        since: Option<Cursor>,
        limit: Option<usize>,
    ) -> Result<Catchup, EdgeError> {
        let mut fresh: Vec<ChannelName> = Vec::new();
        for c in requested {
            if !self.channels.contains_key(c) && !fresh.contains(c) {
                fresh.push(c.clone());
            }
        }
        let max = self.edge.config.max_channels_per_connection;
        if self.channels.len() + fresh.len() > max {
            self.edge.metrics.refuse("too_many_channels");
            return Err(EdgeError::TooManyChannels { max });
        }

        let hub = &self.edge.hub;
        let (id, outbox) = (self.reg.id, &self.reg.outbox);
        let joined = join_all(fresh.iter().map(|c| hub.join(c, id, outbox))).await;
        if let Some(Err(e)) = joined.iter().find(|r| r.is_err()) {
            let e = e.clone();
            for c in &fresh {
                hub.leave(c, id);
            }
            return Err(EdgeError::Broker(e));
        }

        let broker = &self.edge.broker;
        let Some(since) = since else {
            let head = broker
                .head()
                .await
                .inspect_err(|_| self.leave_all(&fresh))?;
            for c in &fresh {
                self.channels.insert(c.clone(), head);
            }
            return Ok(Catchup {
                channels: fresh,
                cursor: head,
                gaps: vec![],
                messages: vec![],
            });
        };

        let per_channel = limit.unwrap_or(self.edge.config.catchup_limit);
        let Merged {
            messages,
            gaps,
            lasts,
        } = match read_merged(&self.edge, &fresh, since, per_channel, limit).await {
            Ok(m) => m,
            Err(e) => {
                self.leave_all(&fresh);
                return Err(EdgeError::Broker(e));
            }
        };
        for (c, last) in fresh.iter().zip(lasts) {
            self.channels.insert(c.clone(), last);
        }
        Ok(Catchup {
            channels: fresh,
            cursor: since,
            gaps,
            messages,
        })
    }

    fn leave_all(&self, channels: &[ChannelName]) {
        for c in channels {
            self.edge.hub.leave(c, self.reg.id);
        }
    }

    /// Unsubscribes; returns the channels that were subscribed.
    pub(crate) fn unsubscribe(&mut self, channels: &[ChannelName]) -> Vec<ChannelName> {
        let mut removed = Vec::new();
        for c in channels {
            if self.channels.remove(c).is_some() {
                self.edge.hub.leave(c, self.reg.id);
                removed.push(c.clone());
            }
        }
        removed
    }

    /// Whether a live message should go to the client (subscribed and newer than the last
    /// delivered on its channel); records it as delivered if so.
    pub(crate) fn admit(&mut self, m: &Message) -> bool {
        match self.channels.get_mut(&m.channel) {
            Some(last) if m.cursor > *last => {
                *last = m.cursor;
                true
            }
            _ => false,
        }
    }

    /// The subscribed channels.
    pub(crate) fn channels(&self) -> Vec<ChannelName> {
        self.channels.keys().cloned().collect()
    }

    /// Whether `c` is subscribed.
    pub(crate) fn is_subscribed(&self, c: &ChannelName) -> bool {
        self.channels.contains_key(c)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for c in self.channels.keys() {
            self.edge.hub.leave(c, self.reg.id);
        }
    }
}

/// Retained messages of several channels after a cursor, merged in cursor order.
pub(crate) struct Merged {
    /// The messages, in cursor order.
    pub(crate) messages: Vec<Arc<Message>>,
    /// Channels whose history could not cover the cursor.
    pub(crate) gaps: Vec<ChannelName>,
    /// Per requested channel (same order): the cursor up to which the merge covers it. After
    /// a gap nothing is known about `since` (it may even be a cursor this broker never
    /// issued), so only the retained messages bound it.
    pub(crate) lasts: Vec<Cursor>,
}

/// Reads the history of `channels` after `since` (at most `per_channel` each) and merges it;
/// with `total`, keeps the first `total` of the merge. The one place resumes and polls read
/// history, so both get the same consistent cut.
pub(crate) async fn read_merged(
    edge: &EdgeInner,
    channels: &[ChannelName],
    since: Cursor,
    per_channel: usize,
    total: Option<usize>,
) -> Result<Merged, BrokerError> {
    let broker = &edge.broker;
    // Channels are read one by one, so a message stored on an already-read channel while a
    // later one is read could sort before messages returned here. Bounding the merge by the
    // head read *before* the reads makes it a consistent cut: everything up to the bound is
    // in the pages; anything after it comes live or with the next poll.
    let bound = if channels.len() > 1 {
        Some(broker.head().await?)
    } else {
        None
    };
    let query = HistoryQuery {
        after: since,
        limit: per_channel,
    };
    edge.metrics.history_reads.inc_by(channels.len() as u64);
    let pages = join_all(channels.iter().map(|c| broker.history(c, query))).await;
    let mut merged = Merged {
        messages: Vec::new(),
        gaps: Vec::new(),
        lasts: Vec::with_capacity(channels.len()),
    };
    for (c, page) in channels.iter().zip(pages) {
        let mut page = page?;
        // The namespace may offer less history than the broker keeps: older messages
        // count as missed, and the client is told so with a gap.
        let rule = edge.config.policy.rule(c);
        if let Some(ttl) = rule.history_ttl {
            let floor = unix_micros().saturating_sub(ttl.as_micros() as u64);
            let before = page.messages.len();
            page.messages.retain(|m| m.published_us >= floor);
            page.gap |= page.messages.len() < before;
        }
        if let Some(size) = rule.history_size
            && page.messages.len() > size
        {
            page.messages.drain(..page.messages.len() - size);
            page.gap = true;
        }
        if page.gap {
            merged.gaps.push(c.clone());
        }
        if let Some(bound) = bound {
            page.messages.retain(|m| m.cursor <= bound);
        }
        let floor = if page.gap { Cursor::ZERO } else { since };
        merged
            .lasts
            .push(page.messages.last().map_or(floor, |m| m.cursor));
        merged.messages.extend(page.messages);
    }
    merged.messages.sort_by_key(|m| m.cursor);
    if let Some(total) = total
        && merged.messages.len() > total
    {
        // A prefix complete for every channel: the first `total` of the merge are the true
        // first `total`, as each channel gave up to `per_channel >= total`.
        merged.messages.truncate(total);
        let cut = merged.messages.last().map_or(since, |m| m.cursor);
        for last in &mut merged.lasts {
            *last = (*last).min(cut);
        }
    }
    Ok(merged)
}
