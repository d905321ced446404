//! Fuzz target: a rules file through the YAML subset parser and the rules loader
//! (`yaml::parse`, `rules::parse_rules`), and every diagnostic rendered.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = healert_agent::detect::yaml::parse(data);
    match healert_agent::detect::rules::parse_rules(data) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = format!("{w:?}");
            }
        }
        Err(diags) => {
            for d in &diags {
                // Positions are 1-based and inside the input.
                assert!(d.line >= 1 && d.col >= 1, "diagnostic at {}:{}", d.line, d.col);
            }
        }
    }
});
