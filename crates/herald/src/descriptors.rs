//! Limits from the OS: the process's file-descriptor limit decides how many client sockets a
//! node may hold, so that accepting clients can never take the descriptors the admin port
//! (health probes, metrics), gRPC, NATS and files need.

use anyhow::bail;

/// Reserve when `HERALD_FD_RESERVE` is not set: this share of the limit...
const RESERVE_SHARE: u64 = 20;
/// ...but at least this many...
const MIN_RESERVE: u64 = 64;
/// ...and at most this many.
const MAX_RESERVE: u64 = 2048;
/// Fewest client sockets a node will run with.
const MIN_CLIENT_SOCKETS: u64 = 16;

/// What was found and chosen at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The soft limit before start-up.
    pub(crate) soft_before: u64,
    /// The soft limit now (raised to the hard limit when it was lower).
    pub(crate) limit: u64,
    /// Descriptors kept for everything but client sockets.
    pub(crate) reserve: u64,
    /// Client sockets the node may hold open at once.
    pub(crate) client_sockets: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and splits it.
pub(crate) fn raise_and_split(reserve: Option<u64>) -> anyhow::Result<Budget> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let soft_before = before.current.unwrap_or(u64::MAX);
    let mut limit = soft_before;
    if before.current.is_some() && before.current != before.maximum {
        let raised = rustix::process::Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = before.maximum.unwrap_or(u64::MAX),
            Err(e) => tracing::warn!(
                error = %e, soft = soft_before, hard = ?before.maximum,
                "could not raise the descriptor limit to the hard limit; using the soft one"
            ),
        }
    }
    split(soft_before, limit, reserve)
}

/// Splits `limit` into the reserve and client sockets.
pub(crate) fn split(soft_before: u64, limit: u64, reserve: Option<u64>) -> anyhow::Result<Budget> {
    let reserve =
        reserve.unwrap_or_else(|| (limit / RESERVE_SHARE).clamp(MIN_RESERVE, MAX_RESERVE));
    let client_sockets = limit.saturating_sub(reserve);
    if client_sockets < MIN_CLIENT_SOCKETS {
        bail!(
            "the file-descriptor limit ({limit}, RLIMIT_NOFILE) leaves {client_sockets} client \
             connections after a reserve of {reserve} for the admin port, gRPC, NATS and files: \
             raise the limit (ulimit -n, LimitNOFILE=, the container runtime's nofile) or lower \
             HERALD_FD_RESERVE"
        );
    }
    Ok(Budget {
        soft_before,
        limit,
        reserve,
        client_sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_scales_within_bounds() {
        let b = split(1024, 20_000, None).unwrap();
        assert_eq!((b.reserve, b.client_sockets), (1000, 19_000));
        let b = split(300, 300, None).unwrap();
        assert_eq!((b.reserve, b.client_sockets), (64, 236));
        let b = split(1024, 1 << 20, None).unwrap();
        assert_eq!((b.reserve, b.client_sockets), (2048, (1 << 20) - 2048));
        let b = split(u64::MAX, u64::MAX, None).unwrap();
        assert_eq!(b.reserve, 2048);
        let b = split(300, 300, Some(100)).unwrap();
        assert_eq!(b.client_sockets, 200);
        let e = split(70, 70, None).unwrap_err().to_string();
        assert!(
            e.contains("RLIMIT_NOFILE") && e.contains("HERALD_FD_RESERVE"),
            "{e}"
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let b = raise_and_split(None).unwrap();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, now.maximum);
        assert_eq!(Some(b.limit), now.current.or(Some(u64::MAX)));
    }
}
