//! Channel patterns of the `channels` claim.

use std::fmt;

use herald_core::ChannelName;

/// Most characters of a pattern (a channel name plus a trailing `*`).
const MAX_PATTERN_LEN: usize = herald_core::MAX_CHANNEL_LEN + 1;

/// A channel name, or a prefix followed by `*` (`chat:*`, or `*` for every channel).
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    text: String,
    prefix: bool,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid channel pattern {pattern:?}: {why}")]
pub struct InvalidPattern {
    /// The pattern (cut to 64 characters).
    pub pattern: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl ChannelPattern {
    /// Parses `text`, replacing `{sub}` with `sub` first. `*` may only end a pattern.
    pub fn parse(text: &str, sub: &str) -> Result<Self, InvalidPattern> {
        let invalid = |why| InvalidPattern {
            pattern: text.chars().take(64).collect(),
            why,
        };
        let expanded = if text.contains("{sub}") {
            if sub.is_empty() {
                return Err(invalid("uses {sub} but the token has no sub"));
            }
            if ChannelName::validate(sub).is_err() {
                return Err(invalid(
                    "uses {sub} but the sub is not a valid channel name",
                ));
            }
            text.replace("{sub}", sub)
        } else {
            text.to_owned()
        };
        if expanded.len() > MAX_PATTERN_LEN {
            return Err(invalid("longer than a channel name"));
        }
        let (body, prefix) = match expanded.strip_suffix('*') {
            Some(body) => (body, true),
            None => (expanded.as_str(), false),
        };
        if body.contains('*') {
            return Err(invalid("* may only end a pattern"));
        }
        if prefix && body.is_empty() {
            return Ok(Self {
                text: String::new(),
                prefix: true,
            });
        }
        if ChannelName::validate(body).is_err() {
            return Err(invalid(
                "not a channel name (A-Z a-z 0-9 _ - : @ . =) with an optional trailing *",
            ));
        }
        Ok(Self {
            text: body.to_owned(),
            prefix,
        })
    }

    /// Whether `channel` is covered by this pattern.
    pub fn matches(&self, channel: &ChannelName) -> bool {
        if self.prefix {
            channel.as_str().starts_with(&self.text)
        } else {
            channel.as_str() == self.text
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelPattern({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn exact_prefix_and_all() {
        let exact = ChannelPattern::parse("news", "").unwrap();
        assert!(exact.matches(&ch("news")));
        assert!(!exact.matches(&ch("news2")));
        let prefix = ChannelPattern::parse("chat:*", "").unwrap();
        assert!(prefix.matches(&ch("chat:room1")));
        assert!(prefix.matches(&ch("chat:")));
        assert!(!prefix.matches(&ch("chat")));
        assert!(!prefix.matches(&ch("chatter:x")));
        let all = ChannelPattern::parse("*", "").unwrap();
        assert!(all.matches(&ch("anything")));
        assert_eq!(prefix.to_string(), "chat:*");
    }

    #[test]
    fn sub_is_substituted() {
        let p = ChannelPattern::parse("user:{sub}", "u1").unwrap();
        assert!(p.matches(&ch("user:u1")));
        assert!(!p.matches(&ch("user:u2")));
        assert!(ChannelPattern::parse("user:{sub}", "").is_err());
        // A subject that is not channel-safe cannot widen the grant.
        assert!(ChannelPattern::parse("user:{sub}", "a*").is_err());
        assert!(ChannelPattern::parse("user:{sub}", "a b").is_err());
    }

    #[test]
    fn refuses_bad_patterns() {
        for bad in ["", "a*b", "**", "a b", "caf\u{e9}", ">", &"x".repeat(300)] {
            assert!(ChannelPattern::parse(bad, "").is_err(), "{bad:?}");
        }
    }
}
