//! `Stats` and `WatchStats`: the cluster's node list as protobuf, and the watch loop.

use std::time::{Duration, Instant};

use herald_core::NodeStats;
use herald_proto::v1::{self, ClusterTotals, StatsResponse, WatchStatsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{DEFAULT_WATCH_INTERVAL_MS, HeraldService, ServerStream, WATCH_INTERVAL_RANGE_MS};

/// How often a watch samples for changes between periodic sends.
const WATCH_SAMPLE: Duration = Duration::from_millis(250);
/// Stats a watch may have queued for a slow client; when full, the loop waits (and samples
/// again once the client reads), so a slow reader only sees fewer, fresher updates.
const WATCH_BUFFER: usize = 2;

fn counts(c: &herald_core::ProtocolCounts) -> v1::ProtocolCounts {
    v1::ProtocolCounts {
        websocket: c.websocket,
        sse: c.sse,
        longpoll: c.longpoll,
        poll: c.poll,
    }
}

/// Builds the answer from every node's stats.
pub(crate) fn response(nodes: Vec<NodeStats>) -> StatsResponse {
    let mut total = herald_core::ProtocolCounts::default();
    let (mut subscriptions, mut channels) = (0u64, 0u64);
    for n in &nodes {
        total.add(&n.connections);
        subscriptions = subscriptions.saturating_add(n.subscriptions);
        channels = channels.saturating_add(n.channels);
    }
    StatsResponse {
        totals: Some(ClusterTotals {
            nodes: nodes.len() as u64,
            connections: Some(counts(&total)),
            subscriptions,
            node_channels: channels,
        }),
        nodes: nodes
            .into_iter()
            .map(|n| v1::NodeStats {
                connections: Some(counts(&n.connections)),
                node_id: n.node_id,
                version: n.version,
                uptime_seconds: n.uptime_secs,
                subscriptions: n.subscriptions,
                channels: n.channels,
                draining: n.draining,
            })
            .collect(),
    }
}

/// The numbers that count as a change (uptime does not).
fn fingerprint(nodes: &[NodeStats]) -> Vec<NodeStats> {
    nodes
        .iter()
        .map(|n| NodeStats {
            uptime_secs: 0,
            ..n.clone()
        })
        .collect()
}

pub(crate) fn watch(
    svc: HeraldService,
    request: Request<WatchStatsRequest>,
) -> Result<Response<ServerStream<StatsResponse>>, Status> {
    let start = Instant::now();
    let checked = svc.config.api_keys.check(request.metadata()).and_then(|()| {
        let ms = request.get_ref().interval_ms;
        let (lo, hi) = WATCH_INTERVAL_RANGE_MS;
        match ms {
            0 => Ok(DEFAULT_WATCH_INTERVAL_MS),
            ms if (lo..=hi).contains(&ms) => Ok(ms),
            ms => Err(Status::invalid_argument(format!(
                "interval_ms must be 0 (default {DEFAULT_WATCH_INTERVAL_MS}) or {lo} to {hi}, got {ms}"
            ))),
        }
    });
    let interval = match checked {
        Ok(ms) => Duration::from_millis(u64::from(ms)),
        Err(s) => {
            let r: Result<(), Status> = Err(s);
            svc.record("WatchStats", start, &r);
            return Err(r.err().unwrap_or_else(|| Status::internal("unreachable")));
        }
    };
    let deadline = crate::grpc_deadline(request.metadata());
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        let mut changes = svc.cluster.changes();
        let mut sample = tokio::time::interval(WATCH_SAMPLE.min(interval));
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Vec<NodeStats>, Instant)> = None;
        let r: Result<(), Status> = loop {
            let nodes = svc.cluster.nodes();
            let print = fingerprint(&nodes);
            let due = last
                .as_ref()
                .is_none_or(|(p, at)| *p != print || at.elapsed() >= interval);
            if due {
                if tx.send(Ok(response(nodes))).await.is_err() {
                    break Err(Status::cancelled("client went away"));
                }
                last = Some((print, Instant::now()));
            }
            tokio::select! {
                _ = sample.tick() => {}
                r = changes.changed() => if r.is_err() {
                    // The cluster is gone (shutting down).
                    break Ok(());
                },
                () = tx.closed() => break Err(Status::cancelled("client went away")),
                () = svc.stop.cancelled() => break Ok(()),
                () = crate::until_deadline(deadline) => {
                    let s = Status::deadline_exceeded("the call's deadline passed");
                    let _ = tx.try_send(Err(s.clone()));
                    break Err(s);
                }
            }
        };
        svc.record("WatchStats", start, &r);
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}
