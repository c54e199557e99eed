//! Channel name → NATS subject mapping: every channel becomes exactly one subject token, so a
//! name can never act as a wildcard, span tokens, or collide with another name.

use herald_core::ChannelName;

/// What replaces `.` in a token: printable, legal in a subject token, and outside the channel
/// alphabet (`[A-Za-z0-9_\-:@.=]`), so the mapping stays injective.
const DOT_REPLACEMENT: char = '~';

/// Encodes a channel name as a single subject token.
///
/// Channel names are 1-255 chars of `[A-Za-z0-9_\-:@.=]`. The only character of that alphabet
/// with a meaning in subjects is `.` (the token separator); it becomes `~`, which no channel
/// name contains, so two names map to the same token only if they are equal. The result is
/// never empty and never holds `.`, `*`, `>` or whitespace.
pub fn channel_token(channel: &ChannelName) -> String {
    channel
        .as_str()
        .chars()
        .map(|c| if c == '.' { DOT_REPLACEMENT } else { c })
        .collect()
}

/// Decodes a token made by [`channel_token`]; `None` when it is not one.
pub fn token_channel(token: &str) -> Option<ChannelName> {
    ChannelName::new(&token.replace(DOT_REPLACEMENT, "."))
        .ok()
        .filter(|c| channel_token(c) == token)
}

/// The subjects one broker instance uses, derived from its configured prefix.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Where a channel's messages are stored (captured by the stream).
    pub(crate) fn stored(&self, channel: &ChannelName) -> String {
        format!("{}.ch.{}", self.prefix, channel_token(channel))
    }

    /// Where the stream republishes a channel's stored messages (core NATS, live feed).
    pub(crate) fn live(&self, channel: &ChannelName) -> String {
        format!("{}.live.{}", self.prefix, channel_token(channel))
    }

    /// Where a channel's chain tip (its newest sequence ever) is recorded.
    pub(crate) fn tip(&self, channel: &ChannelName) -> String {
        format!("{}.tip.{}", self.prefix, channel_token(channel))
    }

    /// The stream's subject filter.
    pub(crate) fn stored_all(&self) -> String {
        format!("{}.ch.>", self.prefix)
    }

    /// The republish destination pattern.
    pub(crate) fn live_all(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// The tip stream's subject filter.
    pub(crate) fn tip_all(&self) -> String {
        format!("{}.tip.>", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    const HOSTILE: &[&str] = &[
        "a", "a.b", "a~b", "a..b", ".a", "a.", ".", "..", "...", "a.b.c", "a:b", "a=b", "a@b",
        "a-b", "a_b", "A.B", "ab", "a.b.", ".a.b", "a...b", "=", "@", ":", "-", "_",
    ];

    #[test]
    fn tokens_are_single_non_wildcard_non_empty() {
        for name in HOSTILE.iter().filter(|n| ChannelName::new(n).is_ok()) {
            let t = channel_token(&ch(name));
            assert!(!t.is_empty(), "{name}");
            assert!(
                !t.contains(['.', '*', '>', ' ', '\t', '\r', '\n']),
                "{name} -> {t}"
            );
            assert_eq!(token_channel(&t), Some(ch(name)), "round trip of {name}");
        }
    }

    #[test]
    fn mapping_is_injective() {
        // Exhaustive over every name of up to three characters from a representative alphabet
        // (all separators, letters of both cases, a digit).
        let alphabet: Vec<char> = "aA0_-:@.=".chars().collect();
        let mut names = vec![String::new()];
        let mut seen: HashMap<String, String> = HashMap::new();
        for _ in 0..3 {
            let mut next = Vec::new();
            for n in &names {
                for c in &alphabet {
                    let name = format!("{n}{c}");
                    let t = channel_token(&ch(&name));
                    if let Some(prev) = seen.insert(t.clone(), name.clone()) {
                        panic!("{prev:?} and {name:?} both map to {t:?}");
                    }
                    next.push(name);
                }
            }
            names = next;
        }
        assert_eq!(seen.len(), 9 + 81 + 729);
    }

    #[test]
    fn longest_name_maps_to_one_token() {
        let name = ".".repeat(255);
        let t = channel_token(&ch(&name));
        assert_eq!(t.len(), 255);
        assert_eq!(
            Subjects::new("herald")
                .stored(&ch(&name))
                .split('.')
                .count(),
            3
        );
    }

    #[test]
    fn foreign_tokens_do_not_decode() {
        assert_eq!(token_channel(""), None);
        assert_eq!(token_channel("a*"), None);
        assert_eq!(
            token_channel("a.b"),
            None,
            "a raw dot is never produced by the encoding"
        );
    }

    #[test]
    fn subjects_nest_under_the_prefix() {
        let s = Subjects::new("hx");
        assert_eq!(s.stored(&ch("a.b")), "hx.ch.a~b");
        assert_eq!(s.live(&ch("a.b")), "hx.live.a~b");
        assert_eq!(s.tip(&ch("a.b")), "hx.tip.a~b");
        assert_eq!(
            (s.stored_all(), s.live_all(), s.tip_all()),
            ("hx.ch.>".into(), "hx.live.>".into(), "hx.tip.>".into())
        );
    }
}
