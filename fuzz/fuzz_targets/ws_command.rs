//! WebSocket client commands: any text is answered (Ok or an error), never a panic; an accepted
//! command respects the channel limit and holds only valid names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server refuses non-UTF-8 text frames before parsing (tungstenite checks UTF-8).
    if let Ok(text) = std::str::from_utf8(data) {
        herald_edge::fuzzing::ws_command(text, 8);
    }
});
