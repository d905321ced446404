//! Fuzz target: the configuration value parsers (`config::parse_duration`, `parse_size`,
//! `BackendUrl::parse`) and `log::sanitize` on arbitrary text. It compiles against the skeleton,
//! so it also proves the fuzzing toolchain works before the other targets' APIs are merged.
#![no_main]

use healert_agent::config;
use healert_agent::deliver::http_client::BackendUrl;
use healert_agent::operate::log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = config::parse_duration(&s);
    let _ = config::parse_size(&s);
    if let Ok(u) = BackendUrl::parse(&s) {
        // What parses must print back to something that parses to the same URL.
        let again = BackendUrl::parse(&u.to_string());
        assert_eq!(again.as_ref(), Ok(&u), "round trip of {s:?}");
    }
    let clean = log::sanitize(&s, 200);
    assert!(!clean.chars().any(|c| c.is_control()), "control character left in {clean:?}");
});
