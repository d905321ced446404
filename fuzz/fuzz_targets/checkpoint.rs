//! Fuzz target: the checkpoint file reader (`checkpoint::parse`): a truncated, corrupted or
//! foreign file must be rejected with a `CheckpointError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = healert_agent::checkpoint::parse(data) {
        let _ = e.to_string();
    }
});
