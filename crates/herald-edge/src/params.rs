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
    let mut q = ClientQuery::default();
    let mut since_text: Option<String> = None;
    let mut wait_seen = false;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "channel" | "channels" => {
                for name in value.split(',') {
                    if q.channels.len() >= max_channels {
                        return Err(EdgeError::TooManyChannels { max: max_channels });
                    }
                    let c = ChannelName::new(name)?;
                    if !q.channels.contains(&c) {
                        q.channels.push(c);
                    }
                }
            }
            "since" => {
                if since_text.is_some() {
                    return Err(EdgeError::Repeated("since"));
                }
                since_text = Some(value.into_owned());
            }
            "token" => {
                if q.token.is_some() {
                    return Err(EdgeError::Repeated("token"));
                }
                q.token = Some(value.into_owned());
            }
            "wait" => {
                if std::mem::replace(&mut wait_seen, true) {
                    return Err(EdgeError::Repeated("wait"));
                }
                match value.parse::<u64>() {
                    Ok(w) if w <= MAX_WAIT_SECS && !value.starts_with('+') => q.wait = Some(w),
                    _ => return Err(EdgeError::InvalidWait(value.chars().take(32).collect())),
                }
            }
            _ => {}
        }
    }
    if let Some(text) = since_text {
        q.since = Since::parse(&text, &q.channels)?;
    }
    Ok(q)
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
}
