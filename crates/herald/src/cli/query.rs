//! `herald history`, `channels`, `stats [--watch]` and `drain`.

use std::fmt::Write as _;

use clap::Args;
use herald_proto::v1::{
    ChannelsRequest, DrainNodeRequest, HistoryRequest, ProtocolCounts, StatsRequest, StatsResponse,
    WatchStatsRequest,
};

use super::{GrpcArgs, status};

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Channel name.
    channel: String,
    /// Only messages after this cursor (default: everything retained).
    #[arg(long)]
    since: Option<String>,
    /// Most messages (1-10000; 0: the default page of 100).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ChannelsArgs {
    /// Glob over names: `*` any run, `?` one character (e.g. 'chat:*').
    pattern: Option<String>,
    /// Most channels (1-1000).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Keep printing: every interval and whenever the numbers change.
    #[arg(long)]
    watch: bool,
    /// Interval for --watch, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    /// Print JSON (one object per update) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DrainArgs {
    /// Node id (as shown by `herald stats`).
    node: String,
    /// Connections told to reconnect per second (default: the node's HERALD_DRAIN_RATE).
    #[arg(long)]
    rate: Option<u32>,
    #[command(flatten)]
    grpc: GrpcArgs,
}

pub(crate) async fn history(a: HistoryArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let reply = client
        .history(HistoryRequest {
            channel: a.channel.clone(),
            since: a.since.unwrap_or_default(),
            limit: a.limit,
        })
        .await
        .map_err(status)?
        .into_inner();
    if reply.gap {
        println!(
            "{}",
            serde_json::json!({"type": "gap", "channel": a.channel})
        );
    }
    for m in reply.messages {
        let data: serde_json::Value = serde_json::from_slice(&m.data)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&m.data).into()));
        println!(
            "{}",
            serde_json::json!({"channel": a.channel, "id": m.cursor, "data": data, "ts": m.ts})
        );
    }
    println!(
        "{}",
        serde_json::json!({"type": "cursor", "cursor": reply.cursor})
    );
    Ok(())
}

pub(crate) async fn channels(a: ChannelsArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let reply = client
        .channels(ChannelsRequest {
            pattern: a.pattern.unwrap_or_default(),
            limit: a.limit,
        })
        .await
        .map_err(status)?
        .into_inner();
    if a.json {
        let channels: Vec<_> = reply
            .channels
            .iter()
            .map(|c| serde_json::json!({"channel": c.channel, "subscribers": c.subscribers}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"channels": channels, "truncated": reply.truncated,
                "missing_nodes": reply.missing_nodes})
        );
        return Ok(());
    }
    let width = reply
        .channels
        .iter()
        .map(|c| c.channel.len())
        .max()
        .unwrap_or(0)
        .max("CHANNEL".len());
    println!("{:<width$}  SUBSCRIBERS", "CHANNEL");
    for c in &reply.channels {
        println!("{:<width$}  {}", c.channel, c.subscribers);
    }
    if reply.truncated {
        println!("(more channels match; raise --limit or narrow the pattern)");
    }
    if !reply.missing_nodes.is_empty() {
        println!(
            "(not counted: nodes {} did not answer)",
            reply.missing_nodes.join(", ")
        );
    }
    Ok(())
}

fn counts_json(c: &Option<ProtocolCounts>) -> serde_json::Value {
    let c = c.unwrap_or_default();
    serde_json::json!({"websocket": c.websocket, "sse": c.sse, "longpoll": c.longpoll, "poll": c.poll})
}

fn stats_json(s: &StatsResponse) -> serde_json::Value {
    let nodes: Vec<_> = s
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({"node_id": n.node_id, "version": n.version,
                "uptime_seconds": n.uptime_seconds, "connections": counts_json(&n.connections),
                "subscriptions": n.subscriptions, "channels": n.channels, "draining": n.draining})
        })
        .collect();
    let t = s.totals.unwrap_or_default();
    serde_json::json!({"nodes": nodes, "totals": {"nodes": t.nodes,
        "connections": counts_json(&t.connections), "subscriptions": t.subscriptions,
        "node_channels": t.node_channels}})
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The readable table of `herald stats`.
pub(crate) fn stats_table(s: &StatsResponse) -> String {
    let width = s
        .nodes
        .iter()
        .map(|n| n.node_id.len())
        .max()
        .unwrap_or(0)
        .max("TOTAL".len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:<8} {:>8} {:>9} {:>7} {:>8} {:>7} {:>6} {:>8}  STATE",
        "NODE", "VERSION", "UPTIME", "WEBSOCKET", "SSE", "LONGPOLL", "POLL", "SUBS", "CHANNELS"
    );
    for n in &s.nodes {
        let c = n.connections.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<width$}  {:<8} {:>8} {:>9} {:>7} {:>8} {:>7} {:>6} {:>8}  {}",
            n.node_id,
            n.version,
            uptime(n.uptime_seconds),
            c.websocket,
            c.sse,
            c.longpoll,
            c.poll,
            n.subscriptions,
            n.channels,
            if n.draining { "draining" } else { "serving" }
        );
    }
    let t = s.totals.unwrap_or_default();
    let c = t.connections.unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<width$}  {:<8} {:>8} {:>9} {:>7} {:>8} {:>7} {:>6} {:>8}  {} node(s)",
        "TOTAL",
        "",
        "",
        c.websocket,
        c.sse,
        c.longpoll,
        c.poll,
        t.subscriptions,
        t.node_channels,
        t.nodes
    );
    out
}

pub(crate) async fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let print = |s: &StatsResponse| {
        if a.json {
            println!("{}", stats_json(s));
        } else {
            print!("{}", stats_table(s));
        }
    };
    if !a.watch {
        let reply = client
            .stats(StatsRequest {})
            .await
            .map_err(status)?
            .into_inner();
        print(&reply);
        return Ok(());
    }
    let mut updates = client
        .watch_stats(WatchStatsRequest {
            interval_ms: a.interval.as_millis().min(u128::from(u32::MAX)) as u32,
        })
        .await
        .map_err(status)?
        .into_inner();
    while let Some(s) = updates.message().await.map_err(status)? {
        if !a.json {
            println!();
        }
        print(&s);
    }
    Ok(())
}

pub(crate) async fn drain(a: DrainArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let reply = client
        .drain_node(DrainNodeRequest {
            node_id: a.node.clone(),
            rate: a.rate.unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({"node": a.node, "draining": true, "connections": reply.connections})
    );
    Ok(())
}
