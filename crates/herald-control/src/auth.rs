//! API keys: `authorization: Bearer <key>` on every `herald.v1` call when keys are configured.
//! Health and reflection stay open (they are separate services).

use tonic::{Status, metadata::MetadataMap};

/// The accepted API keys. Empty: every caller is accepted.
#[derive(Clone, Default)]
pub struct ApiKeys {
    /// Each key's bytes.
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// Accepts any of `keys` (blank entries are ignored).
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|k| k.trim().as_bytes().to_vec())
                .filter(|k| !k.is_empty())
                .collect(),
        }
    }

    /// True when no key is configured (the API is open).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a call's metadata: `UNAUTHENTICATED` when keys are configured and the call does
    /// not carry one of them. Every key is compared in constant time (no early exit on the
    /// first differing byte or the first matching key).
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "missing API key: send metadata `authorization: Bearer <key>`",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization: expected `Bearer <key>`")
            })?;
        let mut ok = 0u8;
        for key in &self.keys {
            ok |= u8::from(constant_time_eq(given.as_bytes(), key));
        }
        if ok == 1 {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid API key"))
        }
    }
}

/// Compares in time that depends only on the lengths, not on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = v {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn keys_are_checked() {
        let keys = ApiKeys::new(["k1".to_owned(), "second".to_owned(), " ".to_owned()]);
        assert_eq!(keys.len(), 2);
        assert!(keys.check(&md(Some("Bearer k1"))).is_ok());
        assert!(keys.check(&md(Some("Bearer second"))).is_ok());
        for bad in [
            None,
            Some("Bearer k2"),
            Some("k1"),
            Some("Bearer k1x"),
            Some("Bearer "),
        ] {
            let e = keys.check(&md(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(ApiKeys::default().check(&md(None)).is_ok());
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
