//! Channel names: the one place that decides what a valid name is.

use std::{fmt, sync::Arc};

/// Longest accepted channel name, in bytes (all valid names are ASCII).
pub const MAX_CHANNEL_LEN: usize = 255;

/// A validated channel name: 1-255 characters of `[A-Za-z0-9_\-:@.=]`.
///
/// The alphabet excludes NATS wildcards (`*`, `>`), whitespace and every control character, so
/// a name can be embedded in a subject without escaping tricks. Cloning is cheap (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused; the message is meant for the client that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannel {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name is {0} bytes long; the limit is 255")]
    TooLong(usize),
    /// The name holds a character outside the allowed alphabet.
    #[error("channel name contains {0:?}; allowed characters are A-Z a-z 0-9 and _ - : @ . =")]
    BadChar(char),
}

/// Whether `b` may appear in a channel name.
pub(crate) const fn is_channel_byte(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b':' | b'@' | b'.' | b'=')
}

impl ChannelName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidChannel> {
        Self::validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// Checks `name` without allocating.
    pub fn validate(name: &str) -> Result<(), InvalidChannel> {
        if name.is_empty() {
            return Err(InvalidChannel::Empty);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !c.is_ascii() || !is_channel_byte(*c as u8))
        {
            return Err(InvalidChannel::BadChar(c));
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(InvalidChannel::TooLong(name.len()));
        }
        Ok(())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = InvalidChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Derived `Eq`, `Ord` and `Hash` are those of the name, so maps keyed by channel can be
/// searched by `&str`.
impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        for ok in [
            "news",
            "chat:1",
            "a.b",
            "user@example.com",
            "k=v",
            "A-Z_09",
            &"x".repeat(255),
        ] {
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(ChannelName::new(""), Err(InvalidChannel::Empty));
        assert_eq!(
            ChannelName::new(&"x".repeat(256)),
            Err(InvalidChannel::TooLong(256))
        );
        for (bad, c) in [
            ("a b", ' '),
            ("a*", '*'),
            ("a.>", '>'),
            ("caf\u{e9}", '\u{e9}'),
            ("a/b", '/'),
            ("a\nb", '\n'),
            ("a\0", '\0'),
            ("$JS", '$'),
        ] {
            assert_eq!(
                ChannelName::new(bad),
                Err(InvalidChannel::BadChar(c)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = ChannelName::new("a b").unwrap_err().to_string();
        assert!(e.contains("' '") && e.contains("allowed characters"), "{e}");
    }
}
