//! Cursors (`since`, `Last-Event-ID`): only canonical decimals are accepted, and an accepted
//! cursor prints back to exactly the input.
#![no_main]

use herald_core::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cursor) = text.parse::<Cursor>()
    {
        assert_eq!(cursor.to_string(), text, "cursor does not round-trip");
    }
});
