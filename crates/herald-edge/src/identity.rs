//! Who holds a connection: its client id, the token's user, `info`, `jti` and `iat`.

use std::{
    hash::{BuildHasher, Hasher},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
};

use herald_auth::Principal;
use herald_core::TokenRef;
use parking_lot::Mutex;

/// 48 random bits per process: client ids of different nodes and restarts do not collide.
static PROCESS: LazyLock<u64> = LazyLock::new(|| {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() & 0xffff_ffff_ffff
});
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh client id: `<12 hex digits of this process>-<counter>`.
pub(crate) fn client_id() -> Box<str> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:012x}-{n}", *PROCESS).into_boxed_str()
}

/// The identity of one held connection.
pub(crate) struct Client {
    /// Cluster-unique client id.
    pub(crate) id: Box<str>,
    /// The token's `sub` (empty: anonymous).
    pub(crate) user: Arc<str>,
    /// The token's `info` as compact JSON.
    pub(crate) info: Option<Arc<str>>,
    /// When the connection was opened, ms since the Unix epoch.
    pub(crate) since_ms: u64,
    /// `jti` and `iat` of the token it holds now (a WebSocket refresh replaces them).
    token: Mutex<(Option<Box<str>>, Option<u64>)>,
}

impl Client {
    /// A connection of `who` (anonymous when `None`), with client id `id` or a fresh one.
    pub(crate) fn new(who: Option<&Principal>, id: Option<Box<str>>) -> Self {
        Self {
            id: id.unwrap_or_else(client_id),
            user: who.map_or_else(|| Arc::from(""), |p| Arc::from(p.user.as_str())),
            info: who.and_then(|p| p.info.clone()),
            since_ms: herald_core::unix_micros() / 1000,
            token: Mutex::new(token_of(who)),
        }
    }

    /// Records the token a refresh brought.
    pub(crate) fn set_token(&self, who: &Principal) {
        *self.token.lock() = token_of(Some(who));
    }

    /// Runs `f` on the token it holds.
    pub(crate) fn with_token<R>(&self, f: impl FnOnce(TokenRef<'_>) -> R) -> R {
        let t = self.token.lock();
        f(TokenRef {
            user: &self.user,
            jti: t.0.as_deref(),
            issued_at: t.1,
        })
    }
}

fn token_of(who: Option<&Principal>) -> (Option<Box<str>>, Option<u64>) {
    who.map_or((None, None), |p| {
        (p.token_id.as_deref().map(Box::from), p.issued_at)
    })
}

/// A principal as revocations see it.
pub(crate) fn token_ref(p: &Principal) -> TokenRef<'_> {
    TokenRef {
        user: &p.user,
        jti: p.token_id.as_deref(),
        issued_at: p.issued_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_unique_and_short() {
        let a = client_id();
        let b = client_id();
        assert_ne!(a, b);
        assert!(a.len() < 24, "{a}");
        assert_eq!(a.split('-').next().map(str::len), Some(12));
    }
}
