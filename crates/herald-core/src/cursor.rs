//! Cursors: the position of a message in the broker's single global order.

use std::fmt;

/// A position in the broker's global message order (with JetStream, the stream sequence).
///
/// Clients see it as an opaque string (`"id"` of a message, `since` of a resume). Cursors are
/// totally ordered across all channels, so one cursor resumes a whole set of channels.
/// [`Cursor::ZERO`] means "before everything".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Cursor(pub u64);

/// A `since` / `Last-Event-ID` value that is not a cursor this server issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: expected the \"id\" of a message or a cursor this server returned")]
pub struct InvalidCursor(pub String);

impl Cursor {
    /// Before every message.
    pub const ZERO: Cursor = Cursor(0);

    /// The raw sequence number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

impl std::str::FromStr for Cursor {
    type Err = InvalidCursor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only canonical decimal: no sign, no leading zeros (except "0"), at most 20 digits.
        let canonical = !s.is_empty()
            && s.len() <= 20
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        match s.parse::<u64>() {
            Ok(n) if canonical => Ok(Cursor(n)),
            _ => Err(InvalidCursor(s.chars().take(64).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for n in [0, 1, 42, u64::MAX] {
            assert_eq!(Cursor(n).to_string().parse::<Cursor>(), Ok(Cursor(n)));
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "garbage",
            "-1",
            "+1",
            "01",
            "1.0",
            " 1",
            "18446744073709551616",
            "0x10",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }
}
