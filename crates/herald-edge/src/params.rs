//! Query-string parsing for `/ws`, `/sse` and `/poll`: repeated `channel` parameters (or
//! comma-separated lists), `since`, and `wait`.

use herald_core::{ChannelName, Since};

use crate::EdgeError;

/// Longest `wait` accepted by long-poll, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// A parsed client query.
#[derive(Debug, Default)]
pub(crate) struct ClientQuery {
    pub(crate) channels: Vec<ChannelName>,
    /// Where to resume: a cursor or a position token, read against `channels`.
    pub(crate) since: Since,
    pub(crate) wait: Option<u64>,
    /// `token`: a client JWT (for clients that cannot set `Authorization`, like EventSource).
    pub(crate) token: Option<String>,
}

/// Parses a raw query string. Unknown parameters are ignored (cache busters and the like);
/// at most `max_channels` channel names are accepted, checked before any is validated.
pub(crate) fn parse(raw: Option<&str>, max_channels: usize) -> Result<ClientQuery, EdgeError> {
    let raw = raw.unwrap_or("");
    let mut parser = Parser {
        q: ClientQuery::default(),
        since_text: None,
        wait_seen: false,
        max_channels,
    };
    if raw.bytes().any(|b| b == b'%' || b == b'+') {
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            parser.pair(&key, &value)?;
        }
    } else {
        // Nothing to decode (the usual query): the pairs `form_urlencoded` would yield, as
        // slices of the query itself.
        for piece in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            parser.pair(key, value)?;
        }
    }
    let Parser {
        mut q, since_text, ..
    } = parser;
    if let Some(text) = since_text {
        q.since = Since::parse(&text, &q.channels)?;
    }
    Ok(q)
}

struct Parser {
    q: ClientQuery,
    since_text: Option<String>,
    wait_seen: bool,
    max_channels: usize,
}

impl Parser {
    /// Takes one decoded `key=value` pair.
    fn pair(&mut self, key: &str, value: &str) -> Result<(), EdgeError> {
        let q = &mut self.q;
        match key {
            "channel" | "channels" => {
                for name in value.split(',') {
                    if q.channels.len() >= self.max_channels {
                        return Err(EdgeError::TooManyChannels {
                            max: self.max_channels,
                        });
                    }
                    let c = ChannelName::new(name)?;
                    if !q.channels.contains(&c) {
                        q.channels.push(c);
                    }
                }
            }
            "since" => {
                if self.since_text.is_some() {
                    return Err(EdgeError::Repeated("since"));
                }
                self.since_text = Some(value.to_owned());
            }
            "token" => {
                if q.token.is_some() {
                    return Err(EdgeError::Repeated("token"));
                }
                q.token = Some(value.to_owned());
            }
            "wait" => {
                if std::mem::replace(&mut self.wait_seen, true) {
                    return Err(EdgeError::Repeated("wait"));
                }
                match value.parse::<u64>() {
                    Ok(w) if w <= MAX_WAIT_SECS && !value.starts_with('+') => q.wait = Some(w),
                    _ => return Err(EdgeError::InvalidWait(value.chars().take(32).collect())),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_comma_separated_channels() {
        let q = parse(Some("channel=a&channel=b,c&since=5&wait=25&_=1"), 10).unwrap();
        let names: Vec<_> = q.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(q.since, Since::All(herald_core::Cursor(5)));
        assert_eq!(q.wait, Some(25));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            "channel=",
            "channel=a%20b",
            "channel=a*",
            "channel=%3E",
            "channel=caf%C3%A9",
            "since=garbage",
            "wait=-1",
            "wait=1000",
            "wait=abc",
            "since=1&since=2",
        ] {
            assert!(parse(Some(bad), 10).is_err(), "{bad}");
        }
        let many = (0..11)
            .map(|i| format!("channel=c{i}"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(matches!(
            parse(Some(&many), 10),
            Err(EdgeError::TooManyChannels { max: 10 })
        ));
    }

    /// The slice path (nothing to decode) and the decoding path read a query the same way.
    #[test]
    fn plain_and_encoded_queries_read_alike() {
        let show = |r: Result<ClientQuery, EdgeError>| format!("{r:?}");
        for (plain, encoded) in [
            (
                "channel=a&&since=5&wait=2&x&_=1",
                "channel=%61&&since=%35&wait=2&x&_=1",
            ),
            (
                "channels=a,b&channel=b&token=t.k",
                "channels=a%2Cb&channel=b&token=t%2Ek",
            ),
            ("=&channel=a=b", "=&channel=a%3Db"),
            ("since=1&since=2", "since=1&since=%32"),
            ("wait=61", "wait=6%31"),
            ("", "%"),
        ] {
            assert_eq!(
                show(parse(Some(plain), 10)),
                show(parse(Some(encoded), 10)),
                "{plain} / {encoded}"
            );
        }
        assert_eq!(
            parse(Some("channel=a+b"), 10).map(|_| ()).ok(),
            None,
            "+ is a space"
        );
    }
}
