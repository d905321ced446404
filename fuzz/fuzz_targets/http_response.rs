//! Fuzz target: bytes from the backend through the HTTP/1.1 response reader
//! (`http_client::read_response`) with the agent's default limits; a hostile or broken backend
//! must only ever produce an error.
#![no_main]

use healert_agent::deliver::http_client::{read_response, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = std::io::BufReader::with_capacity(64, data);
    let limits = Limits::default();
    // A keep-alive connection carries several responses: read until the first error.
    for _ in 0..4 {
        if read_response(&mut reader, &limits).is_err() {
            break;
        }
    }
});
