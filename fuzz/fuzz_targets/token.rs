//! Client tokens: any input is refused or verified, never a panic; a verified token's grant is
//! made of valid patterns. Keys: an HMAC secret and the test JWKS (RSA, P-256), so inputs can
//! reach every verification path.
#![no_main]

use std::sync::LazyLock;

use herald_auth::{AuthConfig, Verifier};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(&AuthConfig {
        hmac_secrets: vec![b"fuzz-secret-0123456789abcdef-0123".to_vec()],
        jwks: Some(include_str!("../../crates/herald-auth/testdata/jwks.json").into()),
        issuer: Some("https://auth.fuzz".into()),
        audience: None,
        leeway: herald_auth::DEFAULT_LEEWAY,
    })
    .expect("fuzz verifier")
});

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(principal) = VERIFIER.verify(text)
    {
        assert!(principal.expires_at > 0);
        for p in &principal.channels {
            herald_auth::ChannelPattern::parse(&p.to_string(), "").expect("grant re-parses");
        }
    }
});
