//! Fuzz target: one audit log line through the JSON scanner and the audit field extraction
//! (`audit::extract`). Any input must give `Ok` or a `JsonError`, never a panic, a hang or an
//! allocation beyond a small multiple of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = healert_agent::detect::audit::extract(data) {
        // The message is built from untrusted bytes: rendering it must not panic either.
        let _ = e.to_string();
    }
});
