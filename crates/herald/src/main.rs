//! The `herald` binary: `herald serve` runs a node; the other subcommands drive one (publish,
//! broadcast, history, channels, stats, subscribe, drain, token).

mod admin;
mod cli;
mod config;
mod descriptors;
mod pending;
mod serve;

use clap::{Parser, Subcommand};

use crate::config::Settings;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Herald: a real-time push server (WebSocket, SSE, long-poll, polling) that scales out.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<Settings>),
    /// Publish JSON to a channel; prints the cursor. With `-` as JSON, publishes every line
    /// of stdin (one JSON value per line) over one stream.
    Publish(cli::publish::PublishArgs),
    /// Publish one JSON value to several channels.
    Broadcast(cli::publish::BroadcastArgs),
    /// Print a channel's retained messages as JSON lines.
    History(cli::query::HistoryArgs),
    /// List channels with subscribers, cluster-wide.
    Channels(cli::query::ChannelsArgs),
    /// Show per-node and cluster connection counts.
    Stats(cli::query::StatsArgs),
    /// Ask a node to drain its clients (they reconnect elsewhere); the node keeps running.
    Drain(cli::query::DrainArgs),
    /// Subscribe over the HTTP port and print each message as one JSON line.
    Subscribe(cli::subscribe::SubscribeArgs),
    /// Mint an HS256 client token (development): herald token --sub u1 --channel 'chat:*'.
    Token(cli::token::TokenArgs),
    /// List a channel's clients (or count them with --stats), cluster-wide.
    Presence(cli::users::PresenceArgs),
    /// List every connection of a user (WebSocket, SSE, held long-polls), cluster-wide.
    Connections(cli::users::ConnectionsArgs),
    /// End every connection of a user on every node.
    Disconnect(cli::users::DisconnectArgs),
    /// Add a channel (from now) to every WebSocket and SSE connection of a user.
    SubscribeUser(cli::users::UserChannelArgs),
    /// Remove a channel from every WebSocket and SSE connection of a user.
    #[command(alias = "unsubscribe")]
    UnsubscribeUser(cli::users::UserChannelArgs),
    /// Refuse a token (by its jti) on every node and end connections holding it.
    RevokeToken(cli::users::RevokeTokenArgs),
    /// Refuse a user's tokens issued before a time on every node and end their connections.
    RevokeUser(cli::users::RevokeUserArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(settings) => serve::serve(*settings).await,
            Command::Publish(a) => cli::publish::publish(a).await,
            Command::Broadcast(a) => cli::publish::broadcast(a).await,
            Command::History(a) => cli::query::history(a).await,
            Command::Channels(a) => cli::query::channels(a).await,
            Command::Stats(a) => cli::query::stats(a).await,
            Command::Drain(a) => cli::query::drain(a).await,
            Command::Subscribe(a) => cli::subscribe::subscribe(a).await,
            Command::Token(a) => cli::token::token(a),
            Command::Presence(a) => cli::users::presence(a).await,
            Command::Connections(a) => cli::users::connections(a).await,
            Command::Disconnect(a) => cli::users::disconnect(a).await,
            Command::SubscribeUser(a) => cli::users::subscribe_user(a).await,
            Command::UnsubscribeUser(a) => cli::users::unsubscribe_user(a).await,
            Command::RevokeToken(a) => cli::users::revoke_token(a).await,
            Command::RevokeUser(a) => cli::users::revoke_user(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
