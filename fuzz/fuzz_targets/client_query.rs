//! `/sse` and `/poll` query strings: any bytes (percent-decoding included) give Ok or an
//! error; an accepted query has at most the limit of unique, valid channels and a bounded wait.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // hyper hands the router a URI that is valid UTF-8 (ASCII); lossy keeps every input useful.
    let raw = String::from_utf8_lossy(data);
    herald_edge::fuzzing::client_query(&raw, 8);
});
