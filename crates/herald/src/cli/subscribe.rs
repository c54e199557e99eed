//! `herald subscribe`: a real client over the HTTP port (herald-client) that prints each
//! message as one JSON line, and gaps as `{"type":"gap","channel":...}`.

use std::io::Write;

use clap::Args;
use herald_client::{Event, Protocol, SubscribeOptions, Subscriber};

#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    /// Channels.
    #[arg(required = true)]
    channels: Vec<String>,
    /// websocket, sse, longpoll or poll.
    #[arg(long, default_value = "websocket")]
    protocol: Protocol,
    /// Resume from this position: a message id or cursor for every channel, or a position token
    /// (what the `reconnecting` lines print) [default: from now].
    #[arg(long)]
    since: Option<String>,
    /// Base URL of a node's client port; repeat for failover (used in turn after a drain).
    #[arg(
        long = "url",
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    urls: Vec<String>,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Long-poll wait, seconds (1-60).
    #[arg(long, default_value_t = 25)]
    wait: u32,
    /// Pause between empty interval polls, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: std::time::Duration,
    /// Print subscribed/reconnecting events too (as JSON lines on stderr).
    #[arg(long, short)]
    verbose: bool,
    /// Client token (a JWT, e.g. from `herald token`), for namespaces that require one.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(crate) async fn subscribe(a: SubscribeArgs) -> anyhow::Result<()> {
    let mut opts = SubscribeOptions::new(a.urls, a.protocol, a.channels);
    opts.since = a.since;
    opts.wait_secs = a.wait.clamp(1, 60);
    opts.poll_interval = a.poll_interval;
    opts.token = a.token;
    let mut sub = Subscriber::new(opts);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        if a.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
        let line = match sub.next().await? {
            Event::Message(m) => {
                seen += 1;
                serde_json::to_value(&m)?
            }
            Event::Gap { channel } => serde_json::json!({"type": "gap", "channel": channel}),
            Event::Subscribed { cursor } => {
                if a.verbose {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "subscribed", "cursor": cursor})
                    );
                }
                continue;
            }
            Event::Reconnecting { reason } => {
                if a.verbose {
                    eprintln!(
                        "{}",
                        serde_json::json!({"type": "reconnecting", "reason": reason,
                            "next_url": sub.current_url(), "position": sub.position()})
                    );
                }
                continue;
            }
            Event::Presence {
                kind,
                channel,
                client,
                user,
                info,
            } => serde_json::json!({"type": kind, "channel": channel, "client": client,
                "user": user, "info": info}),
            Event::ServerSubscribed { channels, cursor } => serde_json::json!({
                "type": "subscribed", "channels": channels, "cursor": cursor, "server": true}),
            Event::Unsubscribed { channels, reason } => {
                serde_json::json!({"type": "unsubscribed", "channels": channels, "reason": reason})
            }
            Event::Ended { code, reason } => {
                println!(
                    "{}",
                    serde_json::json!({"type": "ended", "code": code, "reason": reason})
                );
                anyhow::bail!("the server ended the subscription: {code}");
            }
            Event::Error { code, message } => {
                eprintln!(
                    "{}",
                    serde_json::json!({"type": "error", "code": code, "message": message})
                );
                continue;
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}
