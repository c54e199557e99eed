//! Client authorization at the edge: where tokens come from, origin checks, and when a
//! connection's grant runs out. The rules themselves live in `herald_auth::Policy`.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use herald_auth::{AuthError, Principal};
use herald_core::ChannelName;
use tokio::time::Instant;

use crate::{EdgeError, EdgeInner, params::ClientQuery};

/// The client's token: `Authorization: Bearer <token>`, else `?token=`.
pub(crate) fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a ClientQuery,
) -> Result<Option<&'a str>, EdgeError> {
    Ok(bearer(headers)?.or(query.token.as_deref()))
}

/// The token of a request that has no channel query (`POST /publish`): the `Authorization`
/// header, else `token` in the raw query string.
pub(crate) fn request_token(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, EdgeError> {
    if let Some(t) = bearer(headers)? {
        return Ok(Some(t.to_owned()));
    }
    Ok(query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .filter(|t| !t.is_empty())
    }))
}

/// `Authorization: Bearer <token>`, if the header is there.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, EdgeError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or("");
        let mut parts = text.splitn(2, ' ');
        return match (parts.next(), parts.next()) {
            (Some(scheme), Some(t))
                if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() =>
            {
                Ok(Some(t.trim()))
            }
            _ => Err(AuthError::Malformed(
                "the Authorization header must be `Bearer <token>`".into(),
            )
            .into()),
        };
    }
    Ok(None)
}

/// Verifies the request's token, if any.
pub(crate) fn authenticate(
    edge: &EdgeInner,
    headers: &HeaderMap,
    query: &ClientQuery,
) -> Result<Option<Principal>, EdgeError> {
    let token = token(headers, query)?;
    let who = edge.config.policy.authenticate(token)?;
    check_revoked(edge, who.as_ref())?;
    Ok(who)
}

/// Refuses a revoked token (by its `jti`, or its user and `iat`).
pub(crate) fn check_revoked(edge: &EdgeInner, who: Option<&Principal>) -> Result<(), EdgeError> {
    match who {
        Some(p)
            if edge
                .revocations
                .is_revoked(crate::identity::token_ref(p), herald_auth::now_secs()) =>
        {
            Err(EdgeError::TokenRevoked)
        }
        _ => Ok(()),
    }
}

/// Checks that `who` may read every one of `channels`.
pub(crate) fn authorize(
    edge: &EdgeInner,
    who: Option<&Principal>,
    channels: &[ChannelName],
) -> Result<(), EdgeError> {
    for c in channels {
        edge.config.policy.authorize(who, c)?;
    }
    Ok(())
}

/// Refuses a browser WebSocket from an origin not on the allow-list.
pub(crate) fn check_origin(edge: &EdgeInner, headers: &HeaderMap) -> Result<(), EdgeError> {
    let allowed = &edge.config.ws_origins;
    if allowed.iter().any(|o| o == "*") {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(EdgeError::OriginForbidden(
            origin.chars().take(128).collect(),
        ))
    }
}

/// When `who`'s grant ends (its `exp` plus the allowed skew); `None` for anonymous clients.
pub(crate) fn deadline(edge: &EdgeInner, who: Option<&Principal>) -> Option<Instant> {
    let who = who?;
    let now = herald_auth::now_secs();
    let left = who
        .expires_at
        .saturating_add(edge.config.policy.leeway().as_secs())
        .saturating_sub(now);
    // Far-future expiries are capped so the timer arithmetic cannot overflow.
    Some(Instant::now() + Duration::from_secs(left.min(10 * 365 * 24 * 3600)))
}
