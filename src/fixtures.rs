//! `healert-agent test [--rules PATH] [FIXTURES...]`: runs every rule against its fixtures with
//! the agent's own loader and engine, prints a line per rule and a summary, and exits 1 on any
//! mismatch (2 when a file cannot be read).
//!
//! Fixtures live under each rule (`fixtures:` in the rules file: a record copied from a real
//! log and `expect: event` / `expect: no event`, optionally the exact `description:` and
//! `entity:`), or in FIXTURES files (`fixtures:` with a `rule:` per entry). A fixture judges
//! only its own rule: what other rules make of the record is theirs to pin. Rules kept
//! commented out in the optional block of a rules file (between `# >>> optional rules` and
//! `# <<< optional rules`) are tested too: their fixtures run against the file with that
//! block enabled the way the file tells a user to enable it, so the instructions are tested as
//! well. Each record goes through [`Detector::detect_record`] alone (no suppression window:
//! a fixture is about matching).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::detect::rules::{self, Diagnostic, Expect, Fixture, Level, Rule};
use crate::detect::{Detector, Verdict};
use crate::operate::log::sanitize;
use crate::replay;

/// Arguments of `healert-agent test`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestArgs {
    pub rules: Option<PathBuf>,
    pub fixtures: Vec<PathBuf>,
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Enabled,
    /// Commented out in the optional block.
    Optional,
}

/// A rule, where it comes from, and its fixtures with the file each is written in.
type Row = (String, Origin, Vec<(String, Fixture)>);

/// The result of one fixture: `None` when it passed, else what went wrong.
pub fn check(det: &Detector, rule: &str, fx: &Fixture) -> Option<String> {
    let mut out = Vec::new();
    match det.detect_record(fx.record.as_bytes(), &mut out) {
        Verdict::Malformed(e) => return Some(format!("the record is not an audit event: {e}")),
        Verdict::Event(crate::detect::LineVerdict::Blank) => {
            return Some("the record is empty".into())
        }
        _ => {}
    }
    let mine: Vec<_> = out.iter().filter(|e| e.kind == rule).collect();
    match (fx.expect, mine.as_slice()) {
        (Expect::NoEvent, []) => None,
        (Expect::NoEvent, [e, ..]) => Some(format!(
            "expected no event, got {} ({})",
            mine.len(),
            sanitize(&e.description, 200)
        )),
        (Expect::Event, []) => Some(format!(
            "expected an event, got none{}",
            why_not(det, rule, fx)
        )),
        (Expect::Event, [e]) => {
            let mut bad = Vec::new();
            if let Some(d) = fx.description.as_ref().filter(|d| **d != e.description) {
                bad.push(format!(
                    "description is {:?}, expected {:?}",
                    sanitize(&e.description, 200),
                    sanitize(d, 200)
                ));
            }
            if let Some(x) = fx.entity.as_ref().filter(|x| **x != e.entity_ref) {
                bad.push(format!(
                    "entity is {:?}, expected {:?}",
                    sanitize(&e.entity_ref, 200),
                    sanitize(x, 200)
                ));
            }
            (!bad.is_empty()).then(|| bad.join("; "))
        }
        (Expect::Event, many) => Some(format!("expected one event, got {}", many.len())),
    }
}

/// The engine's own account of why `rule` did not fire (the trace `explain` prints).
fn why_not(det: &Detector, rule: &str, fx: &Fixture) -> String {
    let Ok(traced) = det.trace_record(fx.record.as_bytes()) else {
        return String::new();
    };
    let mut why = Vec::new();
    for (t, _) in &traced {
        if !t.stage_counts {
            why.push(format!(
                "stage {:?} is not evaluated",
                sanitize(&t.stage, 40)
            ));
        } else if let Some((_, ns)) = &t.excluded {
            why.push(format!(
                "namespace {:?} is excluded from every rule",
                sanitize(ns, 80)
            ));
        }
        for r in t.rules.iter().filter(|r| r.name == rule) {
            if r.skipped_actor {
                why.push(format!(
                    "ignore_system skips the internal actor {:?}",
                    sanitize(&t.actor, 80)
                ));
            }
            for (key, want, found, _) in r.conditions.iter().filter(|c| !c.3) {
                why.push(format!(
                    "{key} wants {}, found {:?}",
                    sanitize(want, 120),
                    sanitize(found, 80)
                ));
            }
        }
    }
    if why.is_empty() {
        String::new()
    } else {
        format!(": {}", why.join("; "))
    }
}

/// Rules that would run with no fixture to pin them: `validate` warns about these, in one
/// warning at the first of them (a file written for the Go agent has none at all).
pub fn missing_fixtures(rules: &[Rule]) -> Vec<Diagnostic> {
    let missing: Vec<&Rule> = rules.iter().filter(|r| r.fixtures.is_empty()).collect();
    let Some(first) = missing.first() else {
        return Vec::new();
    };
    let mut names: Vec<String> = missing
        .iter()
        .take(10)
        .map(|r| sanitize(&r.name, 60))
        .collect();
    if missing.len() > 10 {
        names.push(format!("and {} more", missing.len() - 10));
    }
    vec![Diagnostic {
        level: Level::Warning,
        line: first.line,
        col: 1,
        message: format!(
            "{} without a fixture: {}",
            if missing.len() == 1 {
                "1 rule".to_string()
            } else {
                format!("{} rules", missing.len())
            },
            names.join(", ")
        ),
        hint: Some(
            "add `fixtures:` under each rule with a record from a real log (`healert-agent explain --fixture LOG` prints one), then run `healert-agent test`"
                .into(),
        ),
    }]
}

fn load(path: &Path, text: &[u8], what: &str) -> Result<Vec<Rule>, String> {
    rules::parse_rules(text)
        .map(|l| l.rules.rules)
        .map_err(|diags| {
            let mut s = format!("{what} is invalid:");
            for d in diags.iter().filter(|d| d.level == Level::Error).take(20) {
                let _ = write!(s, "\n{}:{d}", sanitize(&path.display().to_string(), 300));
            }
            s
        })
}

pub fn run(args: TestArgs) -> ExitCode {
    let cfg = match replay::check_config("test", false) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = args
        .rules
        .clone()
        .unwrap_or_else(|| cfg.rules_path_or_default());
    let shown = sanitize(&path.display().to_string(), 300);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "test: cannot read rules file {shown}: {e} (pass --rules PATH or set RULES_PATH)"
            );
            return ExitCode::from(2);
        }
    };
    let enabled = match load(&path, &text, "the rules file") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("test: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = cfg.detect_options();
    let det = Detector::new(
        rules::parse_rules(&text)
            .map(|l| l.rules)
            .unwrap_or_default(),
        opts.clone(),
    );
    // Rules of the optional block, run with the block enabled.
    let mut failures = 0usize;
    let mut lines = Vec::new();
    let mut optional: Vec<Rule> = Vec::new();
    let mut det_all = None;
    if let Some(all) = rules::with_optional_enabled(&String::from_utf8_lossy(&text)) {
        match rules::parse_rules(all.as_bytes()) {
            Ok(l) => {
                optional = l
                    .rules
                    .rules
                    .iter()
                    .filter(|r| !enabled.iter().any(|e| e.name == r.name))
                    .cloned()
                    .collect();
                det_all = Some(Detector::new(l.rules, opts.clone()));
            }
            Err(_) => {
                failures += 1;
                let e = load(
                    &path,
                    all.as_bytes(),
                    "the file with its optional block enabled",
                )
                .err()
                .unwrap_or_default();
                lines.push(format!("FAIL  optional block: {e}"));
            }
        }
    }
    let mut table: Vec<Row> = Vec::new();
    for r in &enabled {
        let fx = r
            .fixtures
            .iter()
            .map(|f| (shown.clone(), f.clone()))
            .collect();
        table.push((r.name.clone(), Origin::Enabled, fx));
    }
    for r in &optional {
        let fx = r
            .fixtures
            .iter()
            .map(|f| (shown.clone(), f.clone()))
            .collect();
        table.push((r.name.clone(), Origin::Optional, fx));
    }
    for file in &args.fixtures {
        let fshown = sanitize(&file.display().to_string(), 300);
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("test: cannot read fixtures file {fshown}: {e}");
                return ExitCode::from(2);
            }
        };
        match rules::parse_fixture_file(&bytes) {
            Ok(list) => {
                for (rule, f) in list {
                    match table.iter_mut().find(|(n, _, _)| *n == rule) {
                        Some(row) => row.2.push((fshown.clone(), f)),
                        None => {
                            failures += 1;
                            lines.push(format!(
                                "FAIL  {}  {fshown}:{}: no rule of this name in {shown}",
                                sanitize(&rule, 60),
                                f.line
                            ));
                        }
                    }
                }
            }
            Err(diags) => {
                eprintln!("test: fixtures file {fshown} is invalid:");
                for d in diags {
                    eprintln!("{fshown}:{d}");
                }
                return ExitCode::from(1);
            }
        }
    }
    let width = table.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let (mut passed, mut without) = (0usize, 0usize);
    for (name, origin, fixtures) in &table {
        let d = match origin {
            Origin::Enabled => &det,
            Origin::Optional => match &det_all {
                Some(d) => d,
                None => continue,
            },
        };
        let label = match origin {
            Origin::Enabled => "",
            Origin::Optional => "  (optional, commented out)",
        };
        if fixtures.is_empty() {
            without += 1;
            lines.push(format!("warn  {name:<width$}  no fixture{label}"));
            continue;
        }
        let mut bad = Vec::new();
        for (file, f) in fixtures {
            match check(d, name, f) {
                None => passed += 1,
                Some(why) => bad.push(format!("      {file}:{}: {why}", f.record_line)),
            }
        }
        if bad.is_empty() {
            let n = fixtures.len();
            lines.push(format!(
                "ok    {name:<width$}  {n} fixture{}{label}",
                if n == 1 { "" } else { "s" }
            ));
        } else {
            failures += bad.len();
            lines.push(format!(
                "FAIL  {name:<width$}  {} of {} fixtures{label}",
                bad.len(),
                fixtures.len()
            ));
            lines.extend(bad);
        }
    }
    println!("Rules file: {shown}");
    for l in &lines {
        println!("{l}");
    }
    let total = table.iter().map(|r| r.2.len()).sum::<usize>();
    println!(
        "{}: {} rules, {total} fixtures: {passed} passed, {failures} failed; {without} rule{} without a fixture",
        if failures == 0 { "PASS" } else { "FAIL" },
        table.len(),
        if without == 1 { "" } else { "s" }
    );
    if failures > 0 {
        println!("  every decision on a record: healert-agent explain --rules {shown} FILE");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
