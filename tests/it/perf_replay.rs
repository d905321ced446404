//! `healert-agent replay` against the generator's independent oracle (tests/it/gen.rs): a
//! realistic log with every kind of friction, near misses, ignored namespaces, bodies, a long
//! line and the odd lines must yield exactly the expected events, in log order, and a summary
//! line that adds up. Also the 16 MiB boundary: a line just under MAX_LINE_BYTES is read whole,
//! one over it in streaming mode, and the lines after both are still read.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::gen::{self, GenOptions};
use crate::support;

/// The repository's rules.yaml: its 5 enabled rules are the ones `gen.rs`'s oracle knows.
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules.yaml");

/// Runs `replay` over `input` on stdin; returns (events as JSON values, stderr).
fn replay(input: &[u8]) -> (Vec<serde_json::Value>, String) {
    let mut child = Command::new(support::bin())
        // The oracle is every match: no suppression window (nor a rule's own `suppress:`).
        .args(["replay", "--no-suppress", "--rules", RULES, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let events = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap_or_else(|e| panic!("stdout line: {e}")))
        .collect();
    (events, stderr)
}

fn summary_field(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.starts_with("summary "))?;
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)?
        .1
        .parse()
        .ok()
}

fn key(e: &serde_json::Value) -> [String; 7] {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    [
        s("type"),
        s("timestamp"),
        s("entity_ref"),
        s("actor"),
        s("severity"),
        s("workflow"),
        s("description"),
    ]
}

#[test]
fn replay_matches_the_generator_oracle() {
    let mut log = Vec::new();
    let g = gen::generate(
        &GenOptions {
            lines: 30_000,
            seed: 42,
            match_fraction: 0.03,
            human_system_ns_fraction: 0.2,
            ..GenOptions::default()
        },
        &mut log,
    )
    .unwrap();
    let (events, stderr) = replay(&log);
    let got: Vec<_> = events.iter().map(key).collect();
    let want: Vec<_> = g
        .expected
        .iter()
        .map(|e| {
            [
                e.rule.to_string(),
                e.timestamp.clone(),
                e.entity_ref.clone(),
                e.actor.clone(),
                e.severity.to_string(),
                e.workflow.to_string(),
                e.description.clone(),
            ]
        })
        .collect();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a, b, "event {i} differs");
    }
    assert_eq!(got.len(), want.len(), "event count");
    assert_eq!(summary_field(&stderr, "lines"), Some(30_000), "{stderr}");
    assert_eq!(summary_field(&stderr, "bytes"), Some(g.bytes));
    assert_eq!(summary_field(&stderr, "events"), Some(g.expected_events));
    assert_eq!(summary_field(&stderr, "malformed"), Some(0));
}

#[test]
fn odd_lines_are_counted_and_skipped() {
    let mut log = Vec::new();
    for l in gen::odd_lines() {
        log.extend_from_slice(&l);
    }
    let tail = gen::long_line_with(2000, "2025-06-01T12:00:00.000009Z");
    log.extend_from_slice(&tail);
    let (events, stderr) = replay(&log);
    let types: Vec<_> = events.iter().map(|e| key(e)[0].clone()).collect();
    // The two valid odd lines (emergency-access) and the trailing exec line (kubectl-exec)
    // survive everything before them.
    assert_eq!(
        types,
        ["emergency-access", "emergency-access", "kubectl-exec"],
        "{stderr}"
    );
    assert_eq!(events[0]["actor"], "jürgen & zoë");
    // Not JSON, truncated, [1,2,3], null, trailing data, a raw NUL (gen::odd_lines); a lone
    // surrogate is valid JSON (U+FFFD), and 100 000 levels deep in a field no rule reads is
    // recovered (issue 14). An object with none of an audit event's or a cloud envelope's
    // members (`{"a":1e999999,...}`) matches no input format (issue 15). The rest are blank,
    // skipped stages or evaluated.
    assert_eq!(summary_field(&stderr, "malformed"), Some(6), "{stderr}");
    assert_eq!(
        ["lines", "blank", "skipped_stages", "evaluated", "recovered"]
            .map(|k| summary_field(&stderr, k)),
        [Some(18), Some(2), Some(1), Some(8), Some(1)],
        "{stderr}"
    );
    assert!(
        stderr.contains("not evaluated: malformed 6, unknown_format 1"),
        "{stderr}"
    );
}

/// Issue 14: a line over MAX_LINE_BYTES is evaluated in streaming mode (its memory is measured by
/// the benchmark); its neighbours are read whole.
#[test]
fn lines_around_max_line_bytes() {
    let cap = 16 << 20; // MAX_LINE_BYTES default
    let mut log = Vec::new();
    log.extend_from_slice(&gen::long_line_with(
        cap - 64,
        "2025-06-01T12:00:00.000011Z",
    ));
    log.extend_from_slice(&gen::long_line_with(
        cap + 4096,
        "2025-06-01T12:00:00.000012Z",
    ));
    log.extend_from_slice(&gen::long_line_with(1500, "2025-06-01T12:00:00.000013Z"));
    let (events, stderr) = replay(&log);
    let stamps: Vec<_> = events.iter().map(|e| key(e)[1].clone()).collect();
    assert_eq!(
        stamps,
        [
            "2025-06-01T12:00:00.000011Z",
            "2025-06-01T12:00:00.000012Z",
            "2025-06-01T12:00:00.000013Z"
        ],
        "every line evaluated, the over-long one as it streamed: {stderr}"
    );
    assert!(stderr.contains(" oversized=1 streamed=1 "), "{stderr}");
}
