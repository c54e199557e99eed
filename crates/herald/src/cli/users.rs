//! `herald presence`, `disconnect`, `subscribe-user`, `unsubscribe-user`, `revoke-token` and
//! `revoke-user`: presence and the operator's actions on users, cluster-wide. Each prints one
//! JSON object.

use clap::Args;
use herald_proto::v1::{
    DisconnectRequest, PresenceRequest, RevokeTokenRequest, RevokeUserRequest, UserActionResponse,
    UserChannelRequest,
};

use super::{GrpcArgs, status};

#[derive(Debug, Args)]
pub(crate) struct PresenceArgs {
    /// Channel name (its namespace must have `presence = true`).
    channel: String,
    /// Only the number of clients and distinct users.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectionsArgs {
    /// User id (the token's `sub`).
    user: String,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DisconnectArgs {
    /// User id (the token's `sub`).
    user: String,
    /// Tell the clients they may reconnect (default: they must not).
    #[arg(long)]
    reconnect: bool,
    /// Shown to the clients.
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UserChannelArgs {
    /// User id (the token's `sub`).
    user: String,
    /// Channel name.
    channel: String,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeTokenArgs {
    /// The token's `jti`.
    jti: String,
    /// Unix seconds when the revocation lapses (the token's `exp`; default: in 24 hours).
    #[arg(long)]
    until: Option<u64>,
    #[command(flatten)]
    grpc: GrpcArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeUserArgs {
    /// User id (the token's `sub`).
    user: String,
    /// Unix seconds: tokens issued before it are refused (default: now).
    #[arg(long)]
    issued_before: Option<u64>,
    /// Unix seconds when the revocation lapses (default: in 24 hours).
    #[arg(long)]
    until: Option<u64>,
    #[command(flatten)]
    grpc: GrpcArgs,
}

fn print_action(r: UserActionResponse) {
    println!(
        "{}",
        serde_json::json!({"connections": r.connections, "missing_nodes": r.missing_nodes})
    );
}

pub(crate) async fn presence(a: PresenceArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let request = PresenceRequest { channel: a.channel };
    if a.stats {
        let r = client
            .presence_stats(request)
            .await
            .map_err(status)?
            .into_inner();
        println!(
            "{}",
            serde_json::json!({"clients": r.clients, "users": r.users, "missing_nodes": r.missing_nodes})
        );
        return Ok(());
    }
    let r = client.presence(request).await.map_err(status)?.into_inner();
    print_clients(r);
    Ok(())
}

/// Prints `{"clients":[..],"missing_nodes":[..]}`.
fn print_clients(r: herald_proto::v1::PresenceResponse) {
    let clients: Vec<serde_json::Value> = r
        .clients
        .into_iter()
        .map(|c| {
            let info = serde_json::from_str::<serde_json::Value>(&c.info)
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({"client": c.client, "user": c.user, "info": info, "node": c.node,
                "protocol": c.protocol, "since_unix_ms": c.since_unix_ms})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"clients": clients, "missing_nodes": r.missing_nodes})
    );
}

pub(crate) async fn connections(a: ConnectionsArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let r = client
        .connections(herald_proto::v1::ConnectionsRequest { user: a.user })
        .await
        .map_err(status)?
        .into_inner();
    print_clients(r);
    Ok(())
}

pub(crate) async fn disconnect(a: DisconnectArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let r = client
        .disconnect(DisconnectRequest {
            user: a.user,
            reconnect: a.reconnect,
            reason: a.reason,
        })
        .await
        .map_err(status)?;
    print_action(r.into_inner());
    Ok(())
}

pub(crate) async fn subscribe_user(a: UserChannelArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let r = client
        .subscribe(UserChannelRequest {
            user: a.user,
            channel: a.channel,
        })
        .await
        .map_err(status)?;
    print_action(r.into_inner());
    Ok(())
}

pub(crate) async fn unsubscribe_user(a: UserChannelArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let r = client
        .unsubscribe(UserChannelRequest {
            user: a.user,
            channel: a.channel,
        })
        .await
        .map_err(status)?;
    print_action(r.into_inner());
    Ok(())
}

pub(crate) async fn revoke_token(a: RevokeTokenArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let r = client
        .revoke_token(RevokeTokenRequest {
            jti: a.jti,
            until: a.until.unwrap_or(0),
        })
        .await
        .map_err(status)?;
    print_action(r.into_inner());
    Ok(())
}

pub(crate) async fn revoke_user(a: RevokeUserArgs) -> anyhow::Result<()> {
    let mut client = a.grpc.connect().await?;
    let r = client
        .revoke_user(RevokeUserRequest {
            user: a.user,
            issued_before: a.issued_before.unwrap_or(0),
            until: a.until.unwrap_or(0),
        })
        .await
        .map_err(status)?;
    print_action(r.into_inner());
    Ok(())
}
