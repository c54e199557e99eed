//! Cursors and position tokens (`since`, `Last-Event-ID`): only canonical forms are accepted,
//! and whatever is accepted prints back to exactly the input.
#![no_main]

use herald_core::{ChannelName, Cursor, Since, position};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = text.parse::<Cursor>() {
        assert_eq!(cursor.to_string(), text, "cursor does not round-trip");
    }
    let channels: Vec<ChannelName> = ["a", "b", "c:1"]
        .iter()
        .filter_map(|n| ChannelName::new(n).ok())
        .collect();
    match Since::parse(text, &channels) {
        Ok(Since::All(cursor)) => assert_eq!(cursor.to_string(), text, "cursor form"),
        Ok(Since::Each(map)) => {
            assert_eq!(map.len(), channels.len(), "a position for every channel");
            assert_eq!(position::encode(&map), text, "token does not round-trip");
        }
        Ok(Since::Now) => panic!("a since text parsed as from now"),
        Err(_) => {}
    }
});
