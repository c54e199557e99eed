//! `herald token`: mints an HS256 client token for development and tests.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// What the token grants and how it is signed.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// Subject (user id), the `sub` claim.
    #[arg(long)]
    sub: String,
    /// Channel pattern the token grants (`chat:*`, `user:{sub}`, `*`); repeat for several.
    #[arg(long = "channel", required = true)]
    channels: Vec<String>,
    /// Channel pattern the token may publish to (where the namespace has `publish = true`);
    /// repeat for several.
    #[arg(long = "publish")]
    publish: Vec<String>,
    /// Lifetime, e.g. 15m, 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// HMAC secret (the node's HERALD_AUTH_HMAC_SECRET; the first one if it lists several).
    #[arg(long, env = "HERALD_AUTH_HMAC_SECRET", hide_env_values = true)]
    secret: String,
    /// `iss` claim.
    #[arg(long, env = "HERALD_AUTH_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long, env = "HERALD_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// `jti` claim: the token's id, which `herald revoke-token` names.
    #[arg(long)]
    jti: Option<String>,
    /// `info` claim: JSON shown in presence and join/leave events (at most 1024 bytes).
    #[arg(long)]
    info: Option<String>,
}

/// Prints the token on stdout.
pub(crate) fn token(a: TokenArgs) -> anyhow::Result<()> {
    let secret = a.secret.split(',').next().unwrap_or("").trim();
    for p in a.channels.iter().chain(&a.publish) {
        herald_auth::ChannelPattern::parse(p, &a.sub)?;
    }
    if a.ttl.is_zero() {
        bail!("--ttl must be more than 0");
    }
    let info = match &a.info {
        None => None,
        Some(text) => {
            let v: serde_json::Value = serde_json::from_str(text).context("--info must be JSON")?;
            if v.to_string().len() > herald_auth::MAX_INFO_BYTES {
                bail!(
                    "--info is more than {} bytes as compact JSON",
                    herald_auth::MAX_INFO_BYTES
                );
            }
            Some(v)
        }
    };
    let now = herald_auth::now_secs();
    let claims = herald_auth::MintClaims {
        sub: a.sub,
        channels: a.channels,
        publish: a.publish,
        iat: now,
        exp: now.saturating_add(a.ttl.as_secs().max(1)),
        nbf: None,
        iss: a.issuer,
        aud: a.audience,
        jti: a.jti,
        info,
    };
    let token = herald_auth::mint_hs256(secret.as_bytes(), &claims)
        .context("signing with --secret / HERALD_AUTH_HMAC_SECRET")?;
    println!("{token}");
    Ok(())
}
