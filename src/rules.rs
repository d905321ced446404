//! The rules model (what a rules.yaml means) and its loading and validation.
//!
//! One loader for everybody: the running agent, SIGHUP reloads, `healert-agent validate` and
//! `healert-agent replay` all call [`load_file`] / [`parse_rules`], so what validates is exactly
//! what runs. The YAML text is parsed by [`crate::yaml`]; this module turns the tree into typed
//! rules and reports every problem (not just the first) as a [`Diagnostic`] with line:column.

use std::fmt;
use std::path::Path;

/// How bad a finding is: only errors make a file invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
}

/// One finding of the validator, printed as `PATH:LINE:COL: error: MESSAGE` (+ hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub level: Level,
    /// 1-based line and column.
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// How to fix it, e.g. "did you mean `verbs`?".
    pub hint: Option<String>,
}

/// Severity of a rule's events; the backend accepts exactly these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of a description template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Actor,
    Resource,
    Namespace,
    Name,
    Verb,
}

/// A parsed description template: `"kubectl exec on {resource}/{name} by {actor}"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Piece>);

/// The conditions of a rule; every present condition must hold (an empty one is absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    pub resource: Option<String>,
    pub resources: Vec<String>,
    pub subresource: Option<String>,
    pub verb: Option<String>,
    pub verbs: Vec<String>,
    /// `key=value`, both sides non-empty.
    pub annotation: Option<(String, String)>,
    /// Case-insensitive substring of the event's namespace (stored as written).
    pub namespace_contains: Option<String>,
    /// Exact, case-sensitive namespaces this rule never fires in.
    pub ignore_namespaces: Vec<String>,
}

/// One detection rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// The template as written (for display), and parsed.
    pub description_source: String,
    pub description: Template,
    pub severity: Severity,
    pub workflow: String,
    pub ignore_system: bool,
    pub matcher: Match,
    /// 1-based line of the rule's `- name:` entry in its file.
    pub line: usize,
}

/// Everything a rules file defines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// `config.ignore_namespaces`: exact namespaces excluded from every rule.
    pub ignore_namespaces: Vec<String>,
}

/// A file that loaded: its rules and the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub rules: RuleSet,
    pub warnings: Vec<Diagnostic>,
}

/// Why a rules file did not load.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read (exit 2 in `validate`).
    Io { path: String, error: std::io::Error },
    /// The file was read but is invalid: every error and warning found, in line order.
    Invalid {
        path: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Parses and validates the text of a rules file. Owner: rules loader (issue 2).
pub fn parse_rules(_src: &[u8]) -> Result<Loaded, Vec<Diagnostic>> {
    Err(vec![Diagnostic {
        level: Level::Error,
        line: 1,
        col: 1,
        message: "rules loader not implemented yet".into(),
        hint: None,
    }])
}

/// Reads and validates a rules file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
        path: shown.clone(),
        error,
    })?;
    parse_rules(&bytes).map_err(|diagnostics| LoadError::Invalid {
        path: shown,
        diagnostics,
    })
}
