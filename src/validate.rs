//! `healert-agent validate [PATH]`: loads a rules file through the agent's own loader
//! ([`crate::rules::load_file`]) and prints what it found, so what validates is exactly what
//! the running agent would run. [`report`] renders that text; the agent prints the same text
//! when it refuses to start on an invalid file.
//!
//! Output: a header with the path, one line per rule (name, severity, workflow, line), the
//! ignored namespaces, every diagnostic as `PATH:LINE:COL: error: MESSAGE` plus a `  hint:`
//! line, and a summary (`OK: ...` / `INVALID: ...`). Exit 0 valid (warnings allowed), 1 invalid,
//! 2 unreadable.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::detect::rules::{self, Diagnostic, Level, LoadError, Loaded};
use crate::operate::log::sanitize;

/// Where the rules path came from; the "cannot read" hint depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Given on the command line.
    Argument,
    /// From `$RULES_PATH`.
    RulesPath,
    /// Neither: the default `./rules.yaml`.
    Default,
}

/// PATH argument, else `RULES_PATH` (when set and non-empty), else `./rules.yaml`.
pub fn resolve(arg: Option<PathBuf>, cfg: &Config) -> (PathBuf, Origin) {
    if let Some(p) = arg {
        return (p, Origin::Argument);
    }
    match &cfg.rules_path {
        Some(p) => (p.clone(), Origin::RulesPath),
        None => (cfg.rules_path_or_default(), Origin::Default),
    }
}

pub fn run(path: Option<PathBuf>) -> ExitCode {
    // Only RULES_PATH matters here, and it cannot be invalid: other variables' errors are
    // for the commands that use them.
    let (cfg, _) = Config::load();
    let (path, origin) = resolve(path, &cfg);
    let result = rules::load_file(&path);
    // A listing goes to stdout; a failure to stderr, like a compiler's diagnostics.
    let text = report(&path, origin, &result);
    if result.is_ok() {
        print!("{text}");
    } else {
        eprint!("{text}");
    }
    ExitCode::from(exit_code(&result))
}

/// 0 valid (warnings allowed), 1 invalid, 2 unreadable.
pub fn exit_code(result: &Result<Loaded, LoadError>) -> u8 {
    match result {
        Ok(_) => 0,
        Err(LoadError::Invalid { .. }) => 1,
        Err(LoadError::Io { .. }) => 2,
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The full human-readable result of loading `path`: the listing when valid, every diagnostic,
/// and a one-line summary. Used by `validate` and by the agent when it refuses to start.
pub fn report(path: &Path, origin: Origin, result: &Result<Loaded, LoadError>) -> String {
    let shown = sanitize(&path.display().to_string(), 300);
    let mut out = format!("Rules file: {shown}\n");
    match result {
        Err(LoadError::Io { error, .. }) => {
            let hint = match origin {
                Origin::Argument => "check the path given to `healert-agent validate PATH`".to_string(),
                Origin::RulesPath => format!(
                    "RULES_PATH is set to `{shown}`: point it at your rules file, e.g. \
                     RULES_PATH=/etc/healert/rules.yaml"
                ),
                Origin::Default => "RULES_PATH is not set, so ./rules.yaml was tried: set \
                     RULES_PATH=/path/to/rules.yaml (or pass the path: `healert-agent validate PATH`)"
                    .to_string(),
            };
            let _ = writeln!(out, "{shown}: error: cannot read the rules file: {error}");
            let _ = writeln!(out, "  hint: {hint}");
            out.push_str("UNREADABLE: no rules loaded\n");
        }
        Err(LoadError::Invalid { diagnostics, .. }) => {
            diagnostics_into(&mut out, &shown, diagnostics);
            let errors = diagnostics
                .iter()
                .filter(|d| d.level == Level::Error)
                .count();
            let _ = writeln!(
                out,
                "INVALID: {}, {}",
                plural(errors, "error"),
                plural(diagnostics.len() - errors, "warning")
            );
        }
        Ok(loaded) => {
            let rules = &loaded.rules.rules;
            // Enabled rules without a fixture: warned here, not by the loader (the agent
            // need not log it at every start).
            let mut warnings = loaded.warnings.clone();
            warnings.extend(crate::fixtures::missing_fixtures(rules));
            warnings.sort_by_key(|d| (d.line, d.col));
            let _ = writeln!(out, "Rules ({}):", rules.len());
            let width = rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
            for r in rules {
                let _ = writeln!(
                    out,
                    "  {:<width$}  severity={:<6}  workflow={:<9}  line {}",
                    r.name,
                    r.severity.as_str(),
                    sanitize(&r.workflow, 40),
                    r.line
                );
            }
            let ns = &loaded.rules.ignore_namespaces;
            let listed: Vec<String> = ns.iter().map(|n| sanitize(n, 80)).collect();
            if ns.is_empty() {
                out.push_str("Ignored namespaces: none\n");
            } else {
                let _ = writeln!(
                    out,
                    "Ignored namespaces ({}): {}",
                    ns.len(),
                    listed.join(", ")
                );
            }
            diagnostics_into(&mut out, &shown, &warnings);
            let _ = writeln!(
                out,
                "OK: {}, {}, {}",
                plural(rules.len(), "rule"),
                plural(ns.len(), "ignored namespace"),
                plural(warnings.len(), "warning")
            );
        }
    }
    out
}

/// Most diagnostics printed one by one; a hostile or badly broken file (thousands of errors)
/// gets a count for the rest instead of megabytes of output.
pub const MAX_SHOWN_DIAGNOSTICS: usize = 100;

fn diagnostics_into(out: &mut String, shown_path: &str, diags: &[Diagnostic]) {
    for d in diags.iter().take(MAX_SHOWN_DIAGNOSTICS) {
        // Diagnostic's Display is `LINE:COL: level: message` + `\n  hint: ...`.
        let _ = writeln!(out, "{shown_path}:{d}");
    }
    if diags.len() > MAX_SHOWN_DIAGNOSTICS {
        let _ = writeln!(
            out,
            "{shown_path}: ... and {} more (fix the first ones and run validate again)",
            diags.len() - MAX_SHOWN_DIAGNOSTICS
        );
    }
}
