//! `herald publish` (one message, or JSON lines from stdin over `PublishStream`) and
//! `herald broadcast`.

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use herald_proto::v1::{
    BroadcastRequest, PublishRequest, PublishStreamRequest, broadcast_result,
    publish_stream_response::Outcome,
};
use tokio::io::AsyncBufReadExt;

use super::{GrpcArgs, status};

/// Lines read ahead of the server's answers in bulk mode.
const STDIN_AHEAD: usize = 1024;

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Channel name.
    channel: String,
    /// JSON data, e.g. '{"text":"hi"}'; `-` reads one JSON value per line from stdin.
    data: String,
    #[command(flatten)]
    grpc: GrpcArgs,
    /// Idempotency key: a retry with the same key is not stored twice (stdin mode: used as
    /// a prefix, `<key>/<line number>`).
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BroadcastArgs {
    /// A channel (repeat for several).
    #[arg(long = "channel", required = true)]
    channels: Vec<String>,
    /// JSON data.
    data: String,
    #[command(flatten)]
    grpc: GrpcArgs,
    /// Idempotency key (each channel uses `<key>/<channel>`).
    #[arg(long)]
    idempotency_key: Option<String>,
}

pub(crate) async fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    if a.data == "-" {
        return publish_stdin(client, a.channel, a.idempotency_key).await;
    }
    let reply = client
        .publish(PublishRequest {
            channel: a.channel,
            data: Bytes::from(a.data),
            idempotency_key: a.idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({"cursor": reply.cursor, "duplicate": reply.duplicate})
    );
    Ok(())
}

/// Streams stdin lines; prints one JSON line per failed line to stderr and a summary.
async fn publish_stdin(
    mut client: super::Client,
    channel: String,
    key: Option<String>,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(STDIN_AHEAD);
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut sequence = 0u64;
        while let Some(line) = lines.next_line().await.context("reading stdin")? {
            if line.trim().is_empty() {
                continue;
            }
            sequence += 1;
            let req = PublishStreamRequest {
                sequence,
                channel: channel.clone(),
                data: Bytes::from(line),
                idempotency_key: key
                    .as_ref()
                    .map(|k| format!("{k}/{sequence}"))
                    .unwrap_or_default(),
            };
            if tx.send(req).await.is_err() {
                break;
            }
        }
        Ok::<u64, anyhow::Error>(sequence)
    });
    let mut results = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status)?
        .into_inner();
    let (mut ok, mut failed, mut last) = (0u64, 0u64, None);
    while let Some(r) = results.message().await.map_err(status)? {
        match r.outcome {
            Some(Outcome::Cursor(c)) => {
                ok += 1;
                last = Some(c);
            }
            Some(Outcome::Error(e)) => {
                failed += 1;
                eprintln!(
                    "{}",
                    serde_json::json!({"line": r.sequence, "code": e.code, "error": e.message})
                );
            }
            None => failed += 1,
        }
    }
    let lines = reader.await.context("stdin reader")??;
    println!(
        "{}",
        serde_json::json!({"published": ok, "failed": failed, "lines": lines, "last_cursor": last})
    );
    if failed > 0 || ok != lines {
        anyhow::bail!("{} of {lines} lines were not published", lines - ok);
    }
    Ok(())
}

pub(crate) async fn broadcast(a: BroadcastArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let reply = client
        .broadcast(BroadcastRequest {
            channels: a.channels,
            data: Bytes::from(a.data),
            idempotency_key: a.idempotency_key.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut failed = 0;
    for r in reply.results {
        let line = match r.outcome {
            Some(broadcast_result::Outcome::Cursor(c)) => {
                serde_json::json!({"channel": r.channel, "cursor": c, "duplicate": r.duplicate})
            }
            Some(broadcast_result::Outcome::Error(e)) => {
                failed += 1;
                serde_json::json!({"channel": r.channel, "error": e})
            }
            None => serde_json::json!({"channel": r.channel}),
        };
        println!("{line}");
    }
    if failed > 0 {
        anyhow::bail!("{failed} channel(s) failed");
    }
    Ok(())
}
