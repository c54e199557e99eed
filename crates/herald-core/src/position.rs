//! Resume positions: where a client stands in each of its channels, and the compact text form
//! (a *position token*) that resumes all of them at once.
//!
//! Herald orders messages per channel, not per connection: live feeds of different channels
//! reach a connection independently, so the last `id` seen on a connection says nothing exact
//! about its other channels. A client's position is therefore one cursor per channel: "every
//! message of this channel up to here was delivered". A position token writes such a set as
//!
//! ```text
//! token = base [ "_" hash *( "_" entry ) ]
//! base  = cursor                       ; decimal, canonical (the lowest position)
//! hash  = base36(fnv1a32(names))       ; the sorted, distinct channel names joined by "\n"
//! entry = base36(index) "." base36(delta)
//! ```
//!
//! Channel `i` of the sorted names stands at `base + delta` when an entry names it, else at
//! `base`. So a token whose channels all stand at one cursor is that plain cursor (a
//! one-channel token is the channel's last `id`), and the token grows only by the channels
//! that moved ahead of the slowest. The hash ties a token with entries to its channel set:
//! resuming another set with it is refused rather than misapplied.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{ChannelName, Cursor, InvalidCursor};

/// Longest position token accepted (100 channels with large deltas fit easily).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Where a resume starts, as a client asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Since {
    /// No position: start from now.
    #[default]
    Now,
    /// The same cursor for every channel (a message `id`, a poll `cursor`, `0`).
    All(Cursor),
    /// One cursor per channel; channels not listed start from now.
    Each(BTreeMap<ChannelName, Cursor>),
}

impl Since {
    /// Where `channel` resumes from (`None`: from now).
    pub fn of(&self, channel: &ChannelName) -> Option<Cursor> {
        match self {
            Since::Now => None,
            Since::All(c) => Some(*c),
            Since::Each(map) => map.get(channel).copied(),
        }
    }

    /// Parses a `since` / `Last-Event-ID` value for a request on `channels`: a cursor or a
    /// position token.
    pub fn parse(text: &str, channels: &[ChannelName]) -> Result<Since, InvalidCursor> {
        let bad = || InvalidCursor(text.chars().take(64).collect());
        if text.len() > MAX_TOKEN_LEN {
            return Err(bad());
        }
        let mut parts = text.split('_');
        let base: Cursor = parts
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad())?;
        let Some(hash) = parts.next() else {
            return Ok(Since::All(base));
        };
        let names = sorted_names(channels);
        if hash != set_hash(names.iter().copied()) {
            return Err(InvalidCursor(format!(
                "{}: a position token of another channel set",
                text.chars().take(48).collect::<String>()
            )));
        }
        let mut map: BTreeMap<ChannelName, Cursor> =
            names.iter().map(|c| ((*c).clone(), base)).collect();
        let mut previous: Option<usize> = None;
        let mut entries = 0;
        for entry in parts {
            let (index, delta) = entry.split_once('.').ok_or_else(bad)?;
            let index = usize::try_from(parse36(index).ok_or_else(bad)?).map_err(|_| bad())?;
            let delta = parse36(delta).filter(|d| *d > 0).ok_or_else(bad)?;
            if previous.is_some_and(|p| index <= p) || index >= names.len() {
                return Err(bad());
            }
            previous = Some(index);
            let at = base.0.checked_add(delta).ok_or_else(bad)?;
            map.insert(names[index].clone(), Cursor(at));
            entries += 1;
        }
        // Canonical only: at least one entry, and at least one channel at the base (the base is
        // the lowest position), so every accepted token is exactly what `encode` writes.
        if entries == 0 || entries == names.len() {
            return Err(bad());
        }
        Ok(Since::Each(map))
    }
}

/// The text form of a set of per-channel positions (see the module docs). An empty set is
/// `"0"`.
pub fn encode(positions: &BTreeMap<ChannelName, Cursor>) -> String {
    encode_with(positions, None)
}

/// [`encode`] with the channel set's hash given ([`set_hash`]), for a caller that encodes
/// the same set many times (an SSE stream, at every event).
pub fn encode_with(positions: &BTreeMap<ChannelName, Cursor>, hash: Option<&str>) -> String {
    let base = positions.values().min().copied().unwrap_or(Cursor::ZERO);
    let mut out = String::with_capacity(24 + positions.len() * 8);
    let _ = write!(out, "{}", base.0);
    if positions.values().all(|c| *c == base) {
        return out;
    }
    out.push('_');
    match hash {
        Some(h) => out.push_str(h),
        None => out.push_str(&set_hash(positions.keys())),
    }
    for (index, cursor) in positions.values().enumerate() {
        if *cursor > base {
            out.push('_');
            push36(&mut out, index as u64);
            out.push('.');
            push36(&mut out, cursor.0 - base.0);
        }
    }
    out
}

/// The hash part of a token for a set of channels given in sorted order.
pub fn set_hash<'a>(names: impl Iterator<Item = &'a ChannelName>) -> String {
    base36(u64::from(fnv(names)))
}

fn sorted_names(channels: &[ChannelName]) -> Vec<&ChannelName> {
    let mut names: Vec<&ChannelName> = channels.iter().collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// FNV-1a (32 bits) of the names joined by `\n`.
fn fnv<'a>(names: impl Iterator<Item = &'a ChannelName>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for (i, name) in names.enumerate() {
        if i > 0 {
            h = (h ^ u32::from(b'\n')).wrapping_mul(0x0100_0193);
        }
        for b in name.as_str().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Appends `n` in lowercase base 36.
fn push36(out: &mut String, mut n: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

fn base36(n: u64) -> String {
    let mut s = String::with_capacity(13);
    push36(&mut s, n);
    s
}

/// Canonical lowercase base 36 (no leading zeros, at most 13 digits).
fn parse36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(n: &str) -> ChannelName {
        ChannelName::new(n).unwrap()
    }

    fn positions(p: &[(&str, u64)]) -> BTreeMap<ChannelName, Cursor> {
        p.iter().map(|(n, c)| (ch(n), Cursor(*c))).collect()
    }

    #[test]
    fn uniform_positions_are_a_plain_cursor() {
        assert_eq!(encode(&positions(&[("a", 42)])), "42");
        assert_eq!(encode(&positions(&[("a", 7), ("b", 7)])), "7");
        assert_eq!(encode(&BTreeMap::new()), "0");
        assert_eq!(
            Since::parse("42", &[ch("a"), ch("b")]),
            Ok(Since::All(Cursor(42)))
        );
    }

    #[test]
    fn tokens_round_trip_for_their_channel_set() {
        let p = positions(&[
            ("news", 100),
            ("chat:1", 1_000_037),
            ("z.z", 100),
            ("b", 136),
        ]);
        let token = encode(&p);
        assert!(token.starts_with("100_"), "{token}");
        let channels: Vec<ChannelName> = ["z.z", "news", "b", "chat:1"].map(ch).to_vec();
        assert_eq!(Since::parse(&token, &channels), Ok(Since::Each(p.clone())));
        // Repeated names in the request do not change the set.
        let mut doubled = channels.clone();
        doubled.push(ch("news"));
        assert_eq!(Since::parse(&token, &doubled), Ok(Since::Each(p)));
    }

    #[test]
    fn the_documented_example_encodes_as_shown() {
        // docs/protocol.md: channel a one message ahead of b.
        let p = positions(&[("a", 1_795_467_571_318_347), ("b", 1_795_467_571_318_000)]);
        assert_eq!(encode(&p), "1795467571318000_bch440_0.9n");
    }

    /// The same vectors are checked against herald.js (clients/js/test/resume.test.cjs):
    /// both codecs must agree byte for byte.
    #[test]
    fn shared_vectors_with_the_browser_sdk() {
        let many: Vec<(String, u64)> = (0..38)
            .map(|i| {
                let at = match i {
                    1 => 6,
                    3 => 900,
                    10 => 12,
                    37 => 77,
                    _ => 5,
                };
                (format!("c{i}"), at)
            })
            .collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let vectors: Vec<(Vec<(&str, u64)>, &str)> = vec![
            (vec![("a", 42)], "42"),
            (vec![("a", 7), ("b", 7)], "7"),
            (
                vec![
                    ("news", 100),
                    ("chat:1", 1_000_037),
                    ("z.z", 100),
                    ("b", 136),
                ],
                "100_1csmpu7_0.10_1.lfk1",
            ),
            (vec![("a", 1), ("b", 2)], "1_bch440_1.1"),
            (
                vec![("x", 18_446_744_073_709_551_000), ("y", u64::MAX)],
                "18446744073709551000_1lb1mdm_1.h3",
            ),
            (
                vec![
                    ("A", 9_007_199_254_740_993),
                    ("a", 9_007_199_254_740_991),
                    ("_", 9_007_199_254_740_992),
                    ("Z", 9_007_199_254_740_991),
                ],
                "9007199254740991_zu4hi_0.2_2.1",
            ),
            (
                vec![
                    ("news", 1_795_467_571_318_000),
                    ("chat:1", 1_795_467_571_318_347),
                ],
                "1795467571318000_1cpk52r_0.9n",
            ),
            (many, "5_142n7my_1.1_2.7_n.ov_v.20"),
            (
                vec![
                    ("a.b", 0),
                    ("a-b", 3),
                    ("a=b", 0),
                    ("a@b", 1),
                    ("a_b", 2),
                    ("A:b", 0),
                ],
                "0_1507l52_1.3_4.1_5.2",
            ),
        ];
        for (p, token) in vectors {
            let p = positions(&p);
            assert_eq!(encode(&p), token);
            let set: Vec<ChannelName> = p.keys().cloned().collect();
            let expected = if p.values().all(|c| Some(c) == p.values().next()) {
                Since::All(*p.values().next().unwrap())
            } else {
                Since::Each(p.clone())
            };
            assert_eq!(Since::parse(token, &set), Ok(expected), "{token}");
        }
    }

    #[test]
    fn a_token_of_another_set_is_refused() {
        let token = encode(&positions(&[("a", 1), ("b", 2)]));
        let e = Since::parse(&token, &[ch("a"), ch("c")]).unwrap_err();
        assert!(e.to_string().contains("another channel set"), "{e}");
        assert!(Since::parse(&token, &[ch("a")]).is_err());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let set = [ch("a"), ch("b")];
        let good = encode(&positions(&[("a", 1), ("b", 2)]));
        let hash = good.split('_').nth(1).unwrap().to_owned();
        for bad in [
            String::new(),
            "x".into(),
            "01".into(),
            format!("1_{hash}"),
            format!("1_{hash}_"),
            format!("1_{hash}_1"),
            format!("1_{hash}_1.0"),
            format!("1_{hash}_2.1"),
            format!("1_{hash}_1.1_1.2"),
            format!("1_{hash}_1.1_0.1"),
            format!("1_{hash}_0.1_1.1"),
            format!("1_{hash}_1.A"),
            format!("1_{hash}_01.1"),
            format!("18446744073709551615_{hash}_1.1"),
            format!("1_{hash}_1.zzzzzzzzzzzzzz"),
            "1".repeat(5000),
        ] {
            assert!(Since::parse(&bad, &set).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base36_is_canonical() {
        for n in [0, 1, 35, 36, 1_000_000, u64::MAX] {
            assert_eq!(parse36(&base36(n)), Some(n));
        }
        assert_eq!(base36(35), "z");
        assert_eq!(parse36("00"), None);
    }
}
