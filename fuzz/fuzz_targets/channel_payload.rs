//! Channel names and message payloads. An accepted name re-validates and stays within the
//! alphabet and length; an accepted payload is one JSON value equal to the input's, and
//! compacting it again changes nothing.
#![no_main]

use herald_core::{ChannelName, MAX_CHANNEL_LEN, Payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(name) = ChannelName::new(text)
    {
        assert_eq!(name.as_str(), text);
        assert!(name.as_str().len() <= MAX_CHANNEL_LEN);
        assert!(!name.as_str().contains(['*', '>', ' ']));
    }
    if let Ok(payload) = Payload::from_json(data.to_vec(), 1 << 16) {
        let original: serde_json::Value = serde_json::from_slice(data).expect("accepted => JSON");
        let compact: serde_json::Value =
            serde_json::from_slice(payload.as_bytes()).expect("compacted payload is JSON");
        assert_eq!(original, compact, "compacting changed the value");
        let again = Payload::from_json(payload.bytes().clone(), 1 << 16).expect("re-validates");
        assert_eq!(
            again.as_bytes(),
            payload.as_bytes(),
            "compacting is not idempotent"
        );
    }
});
