//! Message payloads: validated, compact JSON.

use bytes::Bytes;

/// A message payload: one valid JSON value with no whitespace outside strings.
///
/// Compacting at publish time means the payload can be spliced verbatim into WebSocket frames,
/// poll replies and single-line SSE `data:` fields, and is stored once for every protocol.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPayload {
    /// The payload is larger than the configured limit.
    #[error("data is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Size of the refused payload.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The payload is not one JSON value.
    #[error("data is not valid JSON: {0}")]
    NotJson(String),
}

impl Payload {
    /// Validates `raw` as JSON of at most `limit` bytes and compacts it.
    pub fn from_json(raw: impl Into<Bytes>, limit: usize) -> Result<Self, InvalidPayload> {
        let raw: Bytes = raw.into();
        if raw.len() > limit {
            return Err(InvalidPayload::TooLarge {
                size: raw.len(),
                limit,
            });
        }
        serde_json::from_slice::<Checked>(&raw)
            .map_err(|e| InvalidPayload::NotJson(e.to_string()))?;
        Ok(Self(compact(raw)))
    }

    /// Wraps bytes that a broker stored after they were validated by [`Payload::from_json`].
    ///
    /// Brokers call this for data they read back; it still re-validates in debug builds.
    pub fn from_trusted(raw: Bytes) -> Self {
        debug_assert!(serde_json::from_slice::<Checked>(&raw).is_ok());
        Self(raw)
    }

    /// The compact JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The compact JSON bytes, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the payload is empty (never true for a valid payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({})", String::from_utf8_lossy(&self.0))
    }
}

/// A JSON value read in full but kept nowhere. Unlike `serde::de::IgnoredAny` (which only
/// checks the grammar), numbers must fit an `f64` and strings must decode to Unicode, so no
/// client can be handed a value it cannot represent (`1e400`, a lone surrogate `"\ud800"`).
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Checked, E> {
        if v.is_finite() {
            Ok(Checked)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// Removes whitespace outside strings from valid JSON; returns the input when it has none.
fn compact(raw: Bytes) -> Bytes {
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut in_string = false;
    let mut escaped = false;
    let mut needs = false;
    for &b in raw.iter() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_ws(b) {
            needs = true;
            break;
        }
    }
    if !needs {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len());
    in_string = false;
    escaped = false;
    for &b in raw.iter() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            out.push(b);
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !is_ws(b) {
            out.push(b);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_outside_strings_only() {
        let p = Payload::from_json(&b" { \"a b\" : [1, 2,\n3], \"c\":\"x\\\" y\" }\n"[..], 1000)
            .unwrap();
        assert_eq!(p.as_bytes(), br#"{"a b":[1,2,3],"c":"x\" y"}"#);
    }

    #[test]
    fn keeps_compact_input_as_is() {
        let raw = Bytes::from_static(br#"{"a":1}"#);
        let p = Payload::from_json(raw.clone(), 100).unwrap();
        assert_eq!(p.bytes().as_ptr(), raw.as_ptr());
    }

    #[test]
    fn refuses_non_json_and_oversize() {
        assert!(matches!(
            Payload::from_json(&b"hello"[..], 100),
            Err(InvalidPayload::NotJson(_))
        ));
        assert!(matches!(
            Payload::from_json(&b""[..], 100),
            Err(InvalidPayload::NotJson(_))
        ));
        assert!(matches!(
            Payload::from_json(&b"{} {}"[..], 100),
            Err(InvalidPayload::NotJson(_))
        ));
        // Found by the channel_payload fuzz target: grammatical JSON that clients cannot
        // represent was accepted.
        for bad in [
            &b"1e400"[..],
            b"[-1e309]",
            br#""\ud800""#,
            br#"{"a":"\udc00x"}"#,
        ] {
            assert!(
                matches!(
                    Payload::from_json(bad, 100),
                    Err(InvalidPayload::NotJson(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"1e308"[..],
            b"-0.0",
            br#""\ud83d\ude00""#,
            b"18446744073709551615",
        ] {
            assert!(
                Payload::from_json(good, 100).is_ok(),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        assert_eq!(
            Payload::from_json(&b"\"12345\""[..], 5),
            Err(InvalidPayload::TooLarge { size: 7, limit: 5 })
        );
    }
}
