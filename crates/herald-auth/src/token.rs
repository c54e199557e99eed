//! JWT verification and development-token minting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
};
use serde::{Deserialize, Serialize};

use crate::ChannelPattern;

/// Longest token accepted, in bytes: bounds the work an attacker can ask for.
pub const MAX_TOKEN_LEN: usize = 8 << 10;
/// Default clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// Shortest HMAC secret accepted (RFC 7518 asks for at least the hash size).
const MIN_SECRET_LEN: usize = 32;
/// Most patterns in one token's `channels` claim.
const MAX_PATTERNS: usize = 1000;

/// Where keys come from and which registered claims to check.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256/384/512 shared secrets (each at least 32 bytes). Several allow rotation.
    pub hmac_secrets: Vec<Vec<u8>>,
    /// A JWKS document (JSON text) with RSA, EC (P-256, P-384) or Ed25519 public keys.
    pub jwks: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No key at all.
    #[error("no key configured: give an HMAC secret or a JWKS file")]
    NoKeys,
    /// An HMAC secret is too short.
    #[error(
        "an HMAC secret of {0} bytes is too short: use at least 32 (e.g. `openssl rand -hex 32`)"
    )]
    WeakSecret(usize),
    /// The JWKS document could not be used.
    #[error("JWKS: {0}")]
    Jwks(String),
}

/// Why a token was refused. The message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a JWT, an unsupported or refused algorithm (`none`), or a malformed claim.
    #[error("invalid token: {0}")]
    Malformed(String),
    /// No configured key accepts this token's algorithm (and `kid`).
    #[error("invalid token: no key for its algorithm {0}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("invalid token: bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("invalid token: wrong issuer")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("invalid token: wrong audience")]
    WrongAudience,
    /// A refreshed token names another subject than the connection's.
    #[error("refreshed token is for another user")]
    OtherUser,
}

impl AuthError {
    /// Machine-readable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            _ => "token_invalid",
        }
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub` (empty when absent).
    pub user: String,
    /// Channels the client may subscribe to.
    pub channels: Vec<ChannelPattern>,
    /// `publish`: channels the client may publish to (where the namespace allows client
    /// publishes).
    pub publish: Vec<ChannelPattern>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// `jti`: the token's id, for revocation.
    pub token_id: Option<String>,
    /// `iat`, seconds since the Unix epoch.
    pub issued_at: Option<u64>,
    /// `info`: any JSON value, as compact JSON text, shown in presence and join/leave.
    pub info: Option<std::sync::Arc<str>>,
}

/// Most bytes of the `info` claim, as compact JSON.
pub const MAX_INFO_BYTES: usize = 1024;
/// Most bytes of `jti`.
pub const MAX_JTI_BYTES: usize = 128;

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies client tokens against the configured keys.
pub struct Verifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|k| (k.alg, k.kid.clone())).collect();
        f.debug_struct("Verifier")
            .field("keys", &algs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Algorithm, String> {
    let declared = jwk.common.key_algorithm;
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(a)) => match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            other => return Err(format!("RSA key declared for {other:?}")),
        },
        (AlgorithmParameters::EllipticCurve(ec), declared) => {
            let alg = match &ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                other => return Err(format!("unsupported curve {other:?}")),
            };
            match declared {
                None => alg,
                Some(KeyAlgorithm::ES256) if alg == Algorithm::ES256 => alg,
                Some(KeyAlgorithm::ES384) if alg == Algorithm::ES384 => alg,
                Some(other) => return Err(format!("EC key declared for {other:?}")),
            }
        }
        (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => {
            Algorithm::EdDSA
        }
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err(
                "symmetric (oct) keys are not accepted in a JWKS: configure HMAC secrets instead"
                    .into(),
            );
        }
        (_, Some(other)) => return Err(format!("key declared for {other:?}")),
    };
    Ok(alg)
}

impl Verifier {
    /// Builds a verifier; every key is checked now, so a bad file fails at start-up.
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for secret in &config.hmac_secrets {
            if secret.len() < MIN_SECRET_LEN {
                return Err(ConfigError::WeakSecret(secret.len()));
            }
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                keys.push(Key {
                    kid: None,
                    alg,
                    key: DecodingKey::from_secret(secret),
                });
            }
        }
        if let Some(text) = &config.jwks {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| ConfigError::Jwks(format!("not a JWKS document: {e}")))?;
            if set.keys.is_empty() {
                return Err(ConfigError::Jwks("the key set is empty".into()));
            }
            for jwk in &set.keys {
                let kid = jwk.common.key_id.clone();
                let alg = jwk_algorithm(jwk).map_err(|e| {
                    ConfigError::Jwks(format!("key {:?}: {e}", kid.as_deref().unwrap_or("")))
                })?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    ConfigError::Jwks(format!("key {:?}: {e}", kid.as_deref().unwrap_or("")))
                })?;
                keys.push(Key { kid, alg, key });
            }
        }
        if keys.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        Ok(Self {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
        })
    }

    /// The clock skew allowed on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Checks `token` and returns who it names and what it grants.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            AuthError::Malformed(
                "not a JWT with a supported alg (HS256/384/512, RS*, PS*, ES256/384, EdDSA; `none` is refused)"
                    .into(),
            )
        })?;
        let by_alg = self.keys.iter().filter(|k| k.alg == header.alg);
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) => {
                by_alg.filter(|k| k.kid.as_ref() == Some(kid)).collect()
            }
            _ => by_alg.collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::UnknownKey(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = AuthError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return principal(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => continue,
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                        ErrorKind::InvalidAudience => AuthError::WrongAudience,
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                            AuthError::WrongAudience
                        }
                        ErrorKind::MissingRequiredClaim(c) => {
                            AuthError::Malformed(format!("the {c} claim is required"))
                        }
                        ErrorKind::Json(e) => AuthError::Malformed(format!("claims: {e}")),
                        _ => AuthError::Malformed("cannot be decoded".into()),
                    };
                    return Err(last);
                }
            }
        }
        Err(last)
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let Some(expires_at) = claims.exp else {
        return Err(AuthError::Malformed("the exp claim is required".into()));
    };
    let user = claims.sub.unwrap_or_default();
    if user.len() > 256 {
        return Err(AuthError::Malformed("sub longer than 256 bytes".into()));
    }
    if claims.channels.len() > MAX_PATTERNS || claims.publish.len() > MAX_PATTERNS {
        return Err(AuthError::Malformed(format!(
            "more than {MAX_PATTERNS} channel patterns"
        )));
    }
    let publish = claims
        .publish
        .iter()
        .map(|p| ChannelPattern::parse(p, &user))
        .collect::<Result<_, _>>()
        .map_err(|e| AuthError::Malformed(format!("publish: {e}")))?;
    let channels = claims
        .channels
        .iter()
        .map(|p| ChannelPattern::parse(p, &user))
        .collect::<Result<_, _>>()
        .map_err(|e| AuthError::Malformed(e.to_string()))?;
    if claims.jti.as_ref().is_some_and(|j| j.len() > MAX_JTI_BYTES) {
        return Err(AuthError::Malformed(format!(
            "jti longer than {MAX_JTI_BYTES} bytes"
        )));
    }
    let info = match claims.info {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let text = v.to_string();
            if text.len() > MAX_INFO_BYTES {
                return Err(AuthError::Malformed(format!(
                    "info claim is {} bytes as JSON, more than {MAX_INFO_BYTES}",
                    text.len()
                )));
            }
            Some(text.into())
        }
    };
    Ok(Principal {
        user,
        channels,
        publish,
        expires_at,
        token_id: claims.jti,
        issued_at: claims.iat,
        info,
    })
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims of a token minted by [`mint_hs256`].
#[derive(Debug, Clone, Serialize)]
pub struct MintClaims {
    /// Subject (user id).
    pub sub: String,
    /// Channel patterns granted.
    pub channels: Vec<String>,
    /// Channel patterns the client may publish to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Token id (for `RevokeToken`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Connection info shown in presence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// Signs `claims` with HS256 (development tokens: `herald token`).
pub fn mint_hs256(secret: &[u8], claims: &MintClaims) -> Result<String, ConfigError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::WeakSecret(secret.len()));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| ConfigError::Jwks(format!("signing failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp_offset: i64) -> MintClaims {
        let now = now_secs();
        MintClaims {
            sub: "u1".into(),
            channels: vec!["chat:*".into(), "user:{sub}".into()],
            publish: Vec::new(),
            iat: now,
            exp: now.saturating_add_signed(exp_offset),
            nbf: None,
            iss: None,
            aud: None,
            jti: None,
            info: None,
        }
    }

    fn hs() -> Verifier {
        Verifier::new(&AuthConfig {
            hmac_secrets: vec![SECRET.to_vec()],
            leeway: DEFAULT_LEEWAY,
            ..Default::default()
        })
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        // Unpadded URL-safe base64, enough for hand-made tokens in tests.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn valid_token_grants_its_patterns() {
        let t = mint_hs256(SECRET, &claims(3600)).unwrap();
        let p = hs().verify(&t).unwrap();
        assert_eq!(p.user, "u1");
        assert_eq!(p.channels.len(), 2);
        assert_eq!(p.channels[1].to_string(), "user:u1");
    }

    #[test]
    fn refusals() {
        let v = hs();
        let expired = mint_hs256(SECRET, &claims(-3600)).unwrap();
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let mut c = claims(3600);
        c.nbf = Some(now_secs() + 3600);
        let early = mint_hs256(SECRET, &c).unwrap();
        assert_eq!(v.verify(&early), Err(AuthError::NotYetValid));
        let other = mint_hs256(b"another-secret-another-secret-xx", &claims(3600)).unwrap();
        assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Malformed(_))));
        assert!(matches!(v.verify(""), Err(AuthError::Malformed(_))));
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(v.verify(&huge), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(format!(
            r#"{{"sub":"u1","exp":{},"channels":["*"]}}"#,
            now_secs() + 60
        )
        .as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(
                matches!(hs().verify(&token), Err(AuthError::Malformed(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn exp_is_required_and_claims_checked() {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64(br#"{"sub":"u1","channels":["*"]}"#);
        let msg = format!("{header}.{body}");
        let sig = {
            let key = EncodingKey::from_secret(SECRET);
            jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap()
        };
        let t = format!("{msg}.{sig}");
        assert_eq!(
            hs().verify(&t),
            Err(AuthError::Malformed("the exp claim is required".into()))
        );
        let mut c = claims(3600);
        c.channels = vec!["a*b".into()];
        let t = mint_hs256(SECRET, &c).unwrap();
        assert!(matches!(hs().verify(&t), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn issuer_and_audience() {
        let v = Verifier::new(&AuthConfig {
            hmac_secrets: vec![SECRET.to_vec()],
            issuer: Some("https://auth.example".into()),
            audience: Some("herald".into()),
            leeway: DEFAULT_LEEWAY,
            ..Default::default()
        })
        .unwrap();
        let mut c = claims(3600);
        // Both missing: either refusal (the library checks required claims in no fixed order).
        let both = v.verify(&mint_hs256(SECRET, &c).unwrap());
        assert!(
            matches!(both, Err(AuthError::WrongIssuer | AuthError::WrongAudience)),
            "{both:?}"
        );
        c.aud = Some("herald".into());
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c).unwrap()),
            Err(AuthError::WrongIssuer),
            "iss missing"
        );
        c.aud = None;
        c.iss = Some("https://auth.example".into());
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c).unwrap()),
            Err(AuthError::WrongAudience),
            "aud missing"
        );
        c.iss = Some("https://evil.example".into());
        c.aud = Some("herald".into());
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c).unwrap()),
            Err(AuthError::WrongIssuer)
        );
        c.iss = Some("https://auth.example".into());
        c.aud = Some("other".into());
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &c).unwrap()),
            Err(AuthError::WrongAudience)
        );
        c.aud = Some("herald".into());
        assert!(v.verify(&mint_hs256(SECRET, &c).unwrap()).is_ok());
    }

    #[test]
    fn config_errors() {
        assert!(matches!(
            Verifier::new(&AuthConfig::default()),
            Err(ConfigError::NoKeys)
        ));
        assert!(matches!(
            Verifier::new(&AuthConfig {
                hmac_secrets: vec![b"short".to_vec()],
                ..Default::default()
            }),
            Err(ConfigError::WeakSecret(5))
        ));
        for bad in [
            "{",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#,
        ] {
            assert!(
                matches!(
                    Verifier::new(&AuthConfig {
                        jwks: Some(bad.into()),
                        ..Default::default()
                    }),
                    Err(ConfigError::Jwks(_))
                ),
                "{bad}"
            );
        }
    }

    fn jwks_verifier(with_secret: bool) -> Verifier {
        Verifier::new(&AuthConfig {
            hmac_secrets: if with_secret {
                vec![SECRET.to_vec()]
            } else {
                vec![]
            },
            jwks: Some(include_str!("../testdata/jwks.json").into()),
            leeway: DEFAULT_LEEWAY,
            ..Default::default()
        })
        .unwrap()
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, c: &MintClaims) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&h, c, key).unwrap()
    }

    #[test]
    fn rs256_and_es256_from_jwks() {
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.pem")).unwrap();
        let ec = EncodingKey::from_ec_pem(include_bytes!("../testdata/ec.pem")).unwrap();
        let v = jwks_verifier(false);
        let c = claims(3600);
        for t in [
            sign(Algorithm::RS256, Some("rsa-1"), &rsa, &c),
            sign(Algorithm::RS256, None, &rsa, &c),
            sign(Algorithm::ES256, Some("ec-1"), &ec, &c),
            sign(Algorithm::ES256, None, &ec, &c),
        ] {
            assert_eq!(v.verify(&t).unwrap().user, "u1");
        }
        // The wrong kid: the key it names is of another family.
        let t = sign(Algorithm::RS256, Some("ec-1"), &rsa, &c);
        assert!(matches!(v.verify(&t), Err(AuthError::UnknownKey(_))));
        // Expired RS256.
        let t = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims(-3600));
        assert_eq!(v.verify(&t), Err(AuthError::Expired));
        // HS256 when only public keys are configured.
        let t = mint_hs256(SECRET, &c).unwrap();
        assert!(matches!(v.verify(&t), Err(AuthError::UnknownKey(_))));
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // An attacker signs HS256 with the (public) RSA key as the HMAC secret.
        for public in [
            &include_bytes!("../testdata/rsa.pub.pem")[..],
            &include_bytes!("../testdata/ec.pub.pem")[..],
            include_str!("../testdata/jwks.json").as_bytes(),
        ] {
            let key = EncodingKey::from_secret(public);
            let c = claims(3600);
            for kid in [None, Some("rsa-1"), Some("ec-1")] {
                let t = sign(Algorithm::HS256, kid, &key, &c);
                assert!(jwks_verifier(false).verify(&t).is_err());
                let with_secret = jwks_verifier(true).verify(&t);
                if kid.is_none() {
                    assert_eq!(with_secret, Err(AuthError::BadSignature));
                } else {
                    assert!(matches!(with_secret, Err(AuthError::UnknownKey(_))));
                }
            }
        }
        // RS256 header over an HMAC signature.
        let hs = mint_hs256(SECRET, &claims(3600)).unwrap();
        let mut parts = hs.splitn(2, '.');
        let _ = parts.next();
        let forged = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","kid":"rsa-1"}"#),
            parts.next().unwrap()
        );
        assert!(jwks_verifier(true).verify(&forged).is_err());
    }
}
