//! Where the edge asks the application's backend (docs/hooks.md): the connect hook before a
//! WebSocket, SSE stream or poll is accepted, the subscribe hook for channels whose
//! namespace has `subscribe_hook = true`, the publish hook for client publishes where the
//! namespace has `publish_hook = true`, and RPCs. The calls themselves (transport, timeout,
//! bound on calls in flight, metrics) are the [`HookCaller`]'s; this module decides when to
//! call and turns answers into the edge's outcomes. A backend that does not answer refuses
//! the client with the hook error's code; it never lets the client through.

use std::net::IpAddr;

use axum::http::HeaderMap;
use futures_util::future::join_all;
use herald_auth::Principal;
use herald_core::{
    ChannelName,
    hooks::{ClientContext, ConnectAnswer, ConnectCall, Decision, HookCaller, SubscribeCall},
};

use crate::{EdgeError, EdgeInner};

/// Longest RPC method name.
pub(crate) const MAX_METHOD_LEN: usize = 64;

/// What the backend is told about a client: its id, address, protocol, user, the client
/// headers the operator forwards, and the trace context.
pub(crate) fn context(
    hooks: &dyn HookCaller,
    client: &str,
    protocol: &'static str,
    ip: Option<IpAddr>,
    who: Option<&Principal>,
    headers: Option<&HeaderMap>,
) -> ClientContext {
    let headers_in = headers;
    let headers = headers
        .map(|h| {
            h.iter()
                .filter(|(name, _)| hooks.forwards(name.as_str()))
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    // Herald's own span when tracing is on, else the client's `traceparent` (a browser or an
    // app's own instrumentation), so the backend's trace joins the client's.
    let traceparent = herald_core::trace::current_traceparent()
        .map(|t| t.to_string())
        .or_else(|| {
            headers_in
                .and_then(|h| h.get("traceparent"))
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 256)
                .map(str::to_owned)
        });
    ClientContext {
        client: client.to_owned(),
        remote_addr: ip,
        protocol,
        user: who.map(|p| p.user.clone()).filter(|u| !u.is_empty()),
        headers,
        traceparent,
    }
}

/// The connect hook, where it is on: `who` (from the token, if any) as the backend amends
/// it, or the backend's refusal. Without the hook, `who` unchanged.
pub(crate) async fn connect(
    edge: &EdgeInner,
    who: Option<Principal>,
    token: Option<&str>,
    channels: &[ChannelName],
    ctx: impl FnOnce(&dyn HookCaller, Option<&Principal>) -> ClientContext,
) -> Result<Option<Principal>, EdgeError> {
    let Some(hooks) = edge
        .config
        .hooks
        .as_deref()
        .filter(|_| edge.config.connect_hook)
    else {
        return Ok(who);
    };
    let call = ConnectCall {
        ctx: ctx(hooks, who.as_ref()),
        token: token.map(str::to_owned),
        channels: channels.iter().map(|c| c.as_str().to_owned()).collect(),
    };
    match hooks.connect(call).await? {
        ConnectAnswer::Refuse(r) => Err(EdgeError::AppRefused(r)),
        ConnectAnswer::Allow { user, info } => {
            let info = match info {
                None => None,
                Some(v) => {
                    let text = v.to_string();
                    if text.len() > herald_auth::MAX_INFO_BYTES {
                        return Err(herald_core::hooks::HookError::BadAnswer(format!(
                            "info is {} bytes as JSON, more than {}",
                            text.len(),
                            herald_auth::MAX_INFO_BYTES
                        ))
                        .into());
                    }
                    Some(text.into())
                }
            };
            if user.is_none() && info.is_none() {
                return Ok(who);
            }
            // The backend names the user: a token's grants stay (they were checked against
            // its signature), the identity is the backend's. Without a token, the client
            // holds no grants: what it may read and publish is what anonymous access and the
            // subscribe and publish hooks allow.
            let mut p = who.unwrap_or_else(|| Principal {
                user: String::new(),
                channels: Vec::new(),
                publish: Vec::new(),
                expires_at: u64::MAX,
                token_id: None,
                issued_at: None,
                info: None,
            });
            if let Some(user) = user {
                if user.len() > 256 {
                    return Err(herald_core::hooks::HookError::BadAnswer(
                        "user longer than 256 bytes".into(),
                    )
                    .into());
                }
                p.user = user;
            }
            if info.is_some() {
                p.info = info;
            }
            Ok(Some(p))
        }
    }
}

/// Checks that `who` may read every one of `channels`: the namespace rules and the token,
/// then the subscribe hook for channels whose namespace has one (asked in parallel; the
/// first refusal or failure refuses the whole request).
pub(crate) async fn authorize(
    edge: &EdgeInner,
    who: Option<&Principal>,
    channels: &[ChannelName],
    ctx: impl FnOnce(&dyn HookCaller) -> ClientContext,
) -> Result<(), EdgeError> {
    crate::auth::authorize(edge, who, channels)?;
    let hooked: Vec<&ChannelName> = channels
        .iter()
        .filter(|c| edge.config.policy.rule(c).subscribe_hook)
        .collect();
    if hooked.is_empty() {
        return Ok(());
    }
    let Some(hooks) = edge.config.hooks.as_deref() else {
        // Refused at start-up; kept safe anyway.
        return Err(herald_core::hooks::HookError::Unavailable("no hook target".into()).into());
    };
    let ctx = ctx(hooks);
    let answers = join_all(hooked.iter().map(|c| {
        hooks.subscribe(SubscribeCall {
            ctx: ctx.clone(),
            channel: c.as_str().to_owned(),
        })
    }))
    .await;
    for answer in answers {
        match answer? {
            Decision::Allow => {}
            Decision::Refuse(r) => return Err(EdgeError::AppRefused(r)),
        }
    }
    Ok(())
}
