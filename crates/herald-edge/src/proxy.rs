//! Client addresses behind trusted proxies (`HERALD_TRUSTED_PROXIES`).
//!
//! Only a connection whose peer address lies in a trusted network may name another client
//! address, in one header chosen by the operator (`X-Forwarded-For` by default, or RFC 7239
//! `Forwarded`). The header is read from the right: each proxy appends the address it received
//! the request from, so the rightmost entries are written by proxies we trust and the leftmost
//! by whoever sent the request. The client is the first entry, from the right, that is not a
//! trusted proxy; what a client wrote further left is never looked at. A peer outside the
//! trusted networks is the client, whatever its headers say.
//!
//! Only one header is read: reading `Forwarded` when the proxies maintain `X-Forwarded-For`
//! (or the other way round) would take a header the client wrote and no proxy touched.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use http::HeaderMap;

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `fd00::/8`; a bare address is a
/// single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }
}

/// `ip` with every bit past `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        if masked(addr, prefix) != addr {
            return Err(format!(
                "{s:?} has host bits set past /{prefix}: write the network address"
            ));
        }
        Ok(Self { addr, prefix })
    }
}

/// Which header trusted proxies maintain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, Envoy, cloud balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1` (only the `for` parameter is read).
    Forwarded,
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!(
                "unknown forwarded header {other:?}: use x-forwarded-for or forwarded"
            )),
        }
    }
}

impl ForwardedHeader {
    fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The proxies whose forwarding headers are believed. Empty: none, every peer is the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

/// Most forwarding hops examined (from the right) before giving up on a longer chain.
const MAX_HOPS: usize = 32;

impl TrustedProxies {
    /// Parses a comma-separated CIDR list (`10.0.0.0/8, 192.168.1.7`).
    pub fn parse(list: &str, header: ForwardedHeader) -> Result<Self, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(IpNet::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets, header })
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The trusted networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The header that is read.
    pub fn header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client address of a request that came from `peer` with `headers`: `peer` itself
    /// unless it is a trusted proxy; otherwise the rightmost forwarded hop that is not a
    /// trusted proxy (or the leftmost hop when all are trusted). An entry that is not an
    /// address (`unknown`, an obfuscated name) stops the walk at the hop that reported it.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut current = peer.to_canonical();
        if !self.trusts(current) {
            return current;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(self.header.name()) {
            let Ok(text) = value.to_str() else {
                return current;
            };
            hops.extend(text.split(','));
        }
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_hop(hop),
                ForwardedHeader::Forwarded => forwarded_for(hop).and_then(parse_hop),
            };
            let Some(ip) = parsed else {
                return current;
            };
            current = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        current
    }
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.60;proto=http;by=...`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, optionally
/// quoted.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.1.2.3")));
        assert!(
            n.contains(ip("::ffff:10.1.2.3")),
            "v4-mapped v6 counts as v4"
        );
        assert!(!n.contains(ip("11.0.0.1")));
        let h: IpNet = "192.168.1.7".parse().unwrap();
        assert_eq!(h.to_string(), "192.168.1.7/32");
        assert!(h.contains(ip("192.168.1.7")) && !h.contains(ip("192.168.1.8")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "fd00::/129",
            "example.com",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse("10.0.0.0/8, nope", ForwardedHeader::default()).is_err());
        assert!(
            TrustedProxies::parse(" , ", ForwardedHeader::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_send() {
        let p = TrustedProxies::parse("10.0.0.0/8", ForwardedHeader::XForwardedFor).unwrap();
        let h = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(p.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let p = TrustedProxies::parse("10.0.0.0/8, 192.168.0.0/16", ForwardedHeader::XForwardedFor)
            .unwrap();
        // A client-written spoof on the left is ignored.
        let h = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.7, 192.168.3.3"]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // Several header lines are one list, in order.
        let h = headers(
            "x-forwarded-for",
            &["6.6.6.6", "198.51.100.7:5555, 10.9.9.9"],
        );
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // All trusted: the leftmost.
        let h = headers("x-forwarded-for", &["192.168.1.1, 10.2.2.2"]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("192.168.1.1"));
        // No header: the proxy itself.
        assert_eq!(p.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Garbage stops the walk at the hop that reported it.
        let h = headers("x-forwarded-for", &["198.51.100.7, unknown, 10.3.3.3"]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("10.3.3.3"));
        // IPv6, bracketed with a port.
        let h = headers("x-forwarded-for", &["[2001:db8::5]:443"]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("2001:db8::5"));
        // The other header is not read.
        let h = headers("forwarded", &["for=198.51.100.7"]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_header() {
        let p = TrustedProxies::parse("10.0.0.0/8", ForwardedHeader::Forwarded).unwrap();
        let h = headers(
            "forwarded",
            &[r#"for=6.6.6.6;proto=https, For="[2001:db8::7]:4711";by=10.0.0.2"#],
        );
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        let h = headers(
            "forwarded",
            &["for=198.51.100.1, for=_hidden, for=10.1.1.1"],
        );
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("10.1.1.1"));
        let h = headers("x-forwarded-for", &["198.51.100.7"]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        assert_eq!("Forwarded".parse(), Ok(ForwardedHeader::Forwarded));
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
    }
}
