//! Who may read which channel.
//!
//! - [`Verifier`] checks client JWTs: HS256 against shared secrets, RS256/ES256 (and their
//!   larger siblings) against the public keys of a JWKS document. A token's algorithm must
//!   match a configured key of the same family, so `alg: none` and algorithm confusion (an
//!   HS256 token "signed" with a public key) are refused. `exp` is required; `nbf`, and `iss`
//!   and `aud` when configured, are checked.
//! - [`ChannelPattern`]: the `channels` claim lists names or prefixes (`chat:*`, `*`), with
//!   `{sub}` standing for the token's subject (`user:{sub}`).
//! - [`Policy`]: per-namespace rules (the part of a channel name before the first `:`):
//!   anonymous access and history limits, plus the verifier.

mod pattern;
mod policy;
mod token;

pub use pattern::{ChannelPattern, InvalidPattern};
pub use policy::{Denied, NamespaceRule, Policy, PolicyError};
pub use token::{
    AuthConfig, AuthError, ConfigError, DEFAULT_LEEWAY, MAX_INFO_BYTES, MAX_JTI_BYTES,
    MAX_TOKEN_LEN, MintClaims, Principal, Verifier, mint_hs256, now_secs,
};
