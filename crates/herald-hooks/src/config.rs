//! Where the hooks go and how they are bounded: [`HookTarget`], [`HookConfig`] and their
//! validation errors.

use std::{fmt, time::Duration};

/// Default per-call timeout (connect, body and answer included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default bound on calls in flight per node.
pub const DEFAULT_MAX_CONCURRENT: usize = 256;

/// Default allow-list of client request headers copied into hook calls: what a backend needs
/// to recognise a browser session (`cookie`, `authorization`) and where it comes from
/// (`origin`, `user-agent`). Every other header is never forwarded.
pub const DEFAULT_FORWARD_HEADERS: [&str; 4] = ["authorization", "cookie", "origin", "user-agent"];

/// Largest answer body (HTTP) or message (gRPC) accepted from the backend; larger is a
/// [`crate::HookError::BadAnswer`].
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where the application's backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookTarget {
    /// HTTP/JSON: the base URL; each hook is `POST {base}/{hook}` (e.g. `http://app:3000/herald`
    /// → `http://app:3000/herald/connect`).
    Http(http::Uri),
    /// gRPC (`herald.proxy.v1.HeraldProxy`): `grpc://host:port` is kept as `http://host:port`,
    /// the form tonic dials (plaintext HTTP/2).
    Grpc(http::Uri),
}

impl HookTarget {
    /// Parses `http://...` or `https://...` (HTTP/JSON hooks) or `grpc://host:port` (gRPC hooks).
    ///
    /// `https` parses, but [`crate::Hooks::new`] refuses it: this build has no TLS client (put a
    /// TLS-terminating sidecar next to Herald, see docs/hooks.md).
    pub fn parse(s: &str) -> Result<Self, HookConfigError> {
        let bad = |why: &str| HookConfigError::InvalidTarget(format!("{s:?}: {why}"));
        let uri: http::Uri = s.trim().parse().map_err(|e| bad(&format!("{e}")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host (expected http://host:port/path or grpc://host:port)"))?
            .clone();
        if uri.query().is_some() {
            return Err(bad(
                "a query string is not allowed (hook paths are appended)",
            ));
        }
        match uri.scheme_str() {
            Some("http" | "https") => Ok(Self::Http(uri)),
            Some("grpc") => {
                if !matches!(uri.path(), "" | "/") {
                    return Err(bad("a gRPC target has no path"));
                }
                if authority.port_u16().is_none() {
                    return Err(bad("a gRPC target needs a port (grpc://host:port)"));
                }
                let uri = http::Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query("/")
                    .build()
                    .map_err(|e| bad(&format!("{e}")))?;
                Ok(Self::Grpc(uri))
            }
            _ => Err(bad("the scheme must be http, https or grpc")),
        }
    }

    /// `"http"` or `"grpc"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Grpc(_) => "grpc",
        }
    }
}

impl fmt::Display for HookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(uri) => write!(f, "{uri}"),
            Self::Grpc(uri) => match uri.authority() {
                Some(a) => write!(f, "grpc://{a}"),
                None => write!(f, "{uri}"),
            },
        }
    }
}

/// How Herald calls the backend.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Where the backend listens.
    pub target: HookTarget,
    /// Per call, from the first byte sent to the last byte of the answer read; past it the call
    /// is abandoned as [`crate::HookError::Timeout`] (never retried).
    pub timeout: Duration,
    /// Calls in flight per node. One more fails at once with
    /// [`crate::HookError::Overloaded`]: a slow backend must not pile up waiting clients.
    pub max_concurrent: usize,
    /// Lower-case names of the client request headers copied into calls (an allow-list; every
    /// other header is never forwarded). The caller filters with [`HookConfig::forwards`];
    /// [`crate::Hooks`] filters again.
    pub forward_headers: Vec<String>,
}

impl HookConfig {
    /// `target` with every default ([`DEFAULT_TIMEOUT`], [`DEFAULT_MAX_CONCURRENT`],
    /// [`DEFAULT_FORWARD_HEADERS`]).
    pub fn new(target: HookTarget) -> Self {
        Self {
            target,
            timeout: DEFAULT_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            forward_headers: DEFAULT_FORWARD_HEADERS.map(String::from).to_vec(),
        }
    }

    /// Whether the client request header `header_name` (any case) is copied into calls.
    pub fn forwards(&self, header_name: &str) -> bool {
        self.forward_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(header_name))
    }

    /// Checks every field (done by [`crate::Hooks::new`]).
    pub fn validate(&self) -> Result<(), HookConfigError> {
        if let HookTarget::Http(uri) = &self.target
            && uri.scheme_str() == Some("https")
        {
            return Err(HookConfigError::TlsUnsupported(uri.to_string()));
        }
        if self.timeout.is_zero() {
            return Err(HookConfigError::ZeroTimeout);
        }
        if self.max_concurrent == 0 || self.max_concurrent > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(HookConfigError::MaxConcurrent(self.max_concurrent));
        }
        for h in &self.forward_headers {
            let ok =
                http::HeaderName::from_bytes(h.as_bytes()).is_ok_and(|n| n.as_str() == h.as_str());
            if !ok {
                return Err(HookConfigError::InvalidHeaderName(h.clone()));
            }
        }
        Ok(())
    }
}

/// A hook configuration Herald cannot use; each message names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookConfigError {
    /// The target is not `http://`, `https://` or `grpc://host:port`.
    #[error("invalid hook target {0}")]
    InvalidTarget(String),
    /// `https://`: this build of Herald has no TLS client for hooks.
    #[error(
        "hook target {0}: https is not supported (no TLS client in this build); call the backend over plain http on a private network or through a TLS-terminating sidecar"
    )]
    TlsUnsupported(String),
    /// A zero timeout would refuse every call.
    #[error("hook timeout must be greater than zero")]
    ZeroTimeout,
    /// `max_concurrent` is 0 or beyond what a semaphore holds.
    #[error("hook max_concurrent must be between 1 and {max}, got {0}", max = tokio::sync::Semaphore::MAX_PERMITS)]
    MaxConcurrent(usize),
    /// A forwarded header name is not a valid lower-case HTTP header name.
    #[error("hook forward_headers: {0:?} is not a lower-case HTTP header name")]
    InvalidHeaderName(String),
    /// gRPC hooks need a Tokio runtime when created (the channel's worker task).
    #[error("gRPC hooks must be created inside a Tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built.
    #[error("building the hook HTTP client failed: {0}")]
    Client(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_scheme() {
        let t = HookTarget::parse("http://app:3000/herald").unwrap();
        assert_eq!(
            t,
            HookTarget::Http("http://app:3000/herald".parse().unwrap())
        );
        assert!(matches!(
            HookTarget::parse("https://app/h"),
            Ok(HookTarget::Http(_))
        ));
        let g = HookTarget::parse("grpc://app:50052").unwrap();
        assert_eq!(g, HookTarget::Grpc("http://app:50052/".parse().unwrap()));
        assert_eq!(g.to_string(), "grpc://app:50052");
        for bad in [
            "",
            "app:3000",
            "ftp://app/",
            "grpc://app",
            "grpc://app:1/x",
            "http://app/?a=1",
        ] {
            assert!(HookTarget::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn https_zero_timeout_and_bad_headers_are_refused() {
        let https = HookConfig::new(HookTarget::parse("https://app/h").unwrap());
        assert!(matches!(
            https.validate(),
            Err(HookConfigError::TlsUnsupported(_))
        ));
        let mut c = HookConfig::new(HookTarget::parse("http://app/h").unwrap());
        assert_eq!(c.validate(), Ok(()));
        c.forward_headers.push("X-Upper".into());
        assert!(matches!(
            c.validate(),
            Err(HookConfigError::InvalidHeaderName(_))
        ));
        c.forward_headers.pop();
        c.max_concurrent = 0;
        assert_eq!(c.validate(), Err(HookConfigError::MaxConcurrent(0)));
        c.max_concurrent = 1;
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(HookConfigError::ZeroTimeout));
    }

    #[test]
    fn forwards_only_the_allow_list_in_any_case() {
        let c = HookConfig::new(HookTarget::parse("http://app/h").unwrap());
        assert!(c.forwards("cookie"));
        assert!(c.forwards("User-Agent"));
        assert!(!c.forwards("x-api-key"));
        assert!(!c.forwards("host"));
    }
}
