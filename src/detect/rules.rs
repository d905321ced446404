//! The rules model (what a rules.yaml means) and its loading and validation.
//!
//! One loader for everybody: the running agent, SIGHUP reloads, `healert-agent validate` and
//! `healert-agent replay` all call [`load_file`] / [`parse_rules`], so what validates is exactly
//! what runs. The YAML text is parsed by [`crate::yaml`]; this module turns the tree into typed
//! rules and reports every problem (not just the first) as a [`Diagnostic`] with line:column.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::detect::yaml::{Entry, Node, Style, Value};

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
    /// `Some("")` (written `subresource: ""`) matches the object itself only: no subresource.
    pub subresource: Option<String>,
    /// One of these subresources; `""` in the list is the object itself
    /// (`subresources: ["", scale]`: the object or its scale, not pods/exec).
    pub subresources: Vec<String>,
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
    /// `suppress:` — this rule's repeat-suppression window (`None`: SUPPRESS_WINDOW applies;
    /// zero: never suppressed).
    pub suppress: Option<Duration>,
    /// `same_act:` — events of this rule for the same entity and actor with another verb less
    /// than this apart are one act (kubectl 1.30+ logs one exec as `get`, then `create`).
    pub same_act: Option<Duration>,
    /// `fixtures:` — example records and what this rule must make of them (`healert-agent test`).
    pub fixtures: Vec<Fixture>,
}

/// One example audit record under a rule's `fixtures:`, and the expected outcome for that rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// The audit record as written (one JSON object, usually a line copied from a real log).
    pub record: String,
    pub expect: Expect,
    /// The expected description of the event (exact), when given.
    pub description: Option<String>,
    /// The expected entity ref (e.g. `component:shop/web`), when given.
    pub entity: Option<String>,
    /// 1-based line of the fixture's entry, and of its `record:` value.
    pub line: usize,
    pub record_line: usize,
}

/// What a fixture expects its rule to do with the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly one event of the rule.
    Event,
    /// No event of the rule.
    NoEvent,
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

/// Keys of the top level, of `config:`, of a rule and of `match:` (for "did you mean").
pub const TOP_KEYS: &[&str] = &["config", "rules"];
pub const CONFIG_KEYS: &[&str] = &["ignore_namespaces"];
pub const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "severity",
    "workflow",
    "ignore_system",
    "match",
    "suppress",
    "same_act",
    "fixtures",
];
/// Keys of one fixture.
pub const FIXTURE_KEYS: &[&str] = &["record", "expect", "description", "entity", "note"];
pub const MATCH_KEYS: &[&str] = &[
    "resource",
    "resources",
    "subresource",
    "subresources",
    "verb",
    "verbs",
    "annotation",
    "namespace_contains",
    "ignore_namespaces",
];
/// Workflows the backend groups events by; another value is allowed with a warning.
pub const WORKFLOWS: &[&str] = &["deploy", "incident", "debug", "rollback", "release"];
/// Tokens of a description template.
pub const TOKENS: &[&str] = &["actor", "resource", "namespace", "name", "verb"];
/// Verbs the API server writes into audit events; another verb never matches, so it warns.
const KNOWN_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
    "bind",
    "escalate",
    "impersonate",
    "approve",
    "sign",
    "use",
];
/// Description used when a rule has none (the backend needs a non-empty description).
pub const DEFAULT_DESCRIPTION: &str = "{verb} on {resource}/{name} (ns:{namespace}) by {actor}";

impl fmt::Display for Diagnostic {
    /// `LINE:COL: error: MESSAGE` then `  hint: ...` on the next line when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{}:{}: {level}: {}", self.line, self.col, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, error } => write!(
                f,
                "cannot read rules file {}: {error} (set RULES_PATH to the rules file, e.g. \
                 RULES_PATH=/etc/healert/rules.yaml)",
                crate::operate::log::sanitize(path, 300)
            ),
            LoadError::Invalid { path, diagnostics } => {
                let errors = diagnostics
                    .iter()
                    .filter(|d| d.level == Level::Error)
                    .count();
                write!(
                    f,
                    "rules file {} is invalid ({errors} error{}):",
                    crate::operate::log::sanitize(path, 300),
                    if errors == 1 { "" } else { "s" }
                )?;
                for d in diagnostics {
                    write!(f, "\n{}:{d}", crate::operate::log::sanitize(path, 300))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Parses and validates the text of a rules file: every error and warning found, not just the
/// first. `Ok` when there is no error (warnings ride along in [`Loaded::warnings`]); `Err` holds
/// all diagnostics (errors and warnings) in line order.
///
/// Decisions users see: a key with no value (`resource:`) is an error — it would otherwise
/// silently widen the rule — except `match:` with nothing under it, which is the "matches every
/// event" warning. `ignore_system` accepts `true`/`false` (also `True`/`TRUE`, and quoted);
/// anything else is an error. Empty `resources: []`/`verbs: []` are errors for the same reason
/// as an empty value.
pub fn parse_rules(src: &[u8]) -> Result<Loaded, Vec<Diagnostic>> {
    let root = match crate::detect::yaml::parse(src) {
        Ok(n) => n,
        Err(e) => {
            return Err(vec![Diagnostic {
                level: Level::Error,
                line: e.line,
                col: e.col,
                message: e.message,
                hint: e.hint,
            }])
        }
    };
    let mut v = Validator {
        diags: Vec::new(),
        errors: 0,
    };
    let rules = v.file(&root);
    let mut diags = v.diags;
    diags.sort_by_key(|d| (d.line, d.col));
    if diags.iter().any(|d| d.level == Level::Error) {
        return Err(diags);
    }
    Ok(Loaded {
        rules,
        warnings: diags,
    })
}

/// Names a value from the file safely inside a message.
fn shown(s: &str) -> String {
    crate::operate::log::sanitize(s, 80)
}

/// Levenshtein distance (rules keys are short; quadratic is fine).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, c), c.len().abs_diff(lower.len()), *c))
        .filter(|(d, _, c)| *d <= 2.max(c.len() / 3))
        // On a tie, prefer the candidate of the same length (`verbz` → `verbs`, not `verb`).
        .min_by_key(|(d, len_diff, _)| (*d, *len_diff))
        .map(|(_, _, c)| c)
}

/// Is `s` a valid rule name (the backend's event type)? Returns what is wrong otherwise.
fn name_problem(s: &str) -> Option<&'static str> {
    let n = s.chars().count();
    if !(3..=50).contains(&n) {
        return Some("must be 3 to 50 characters long");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("may contain only lowercase letters, digits and hyphens");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must start and end with a letter or digit");
    }
    None
}

struct Validator {
    diags: Vec<Diagnostic>,
    /// Errors among `diags`, kept as a count so asking is O(1) per rule.
    errors: usize,
}

impl Validator {
    fn push(
        &mut self,
        level: Level,
        line: usize,
        col: usize,
        message: String,
        hint: Option<String>,
    ) {
        self.errors += usize::from(level == Level::Error);
        self.diags.push(Diagnostic {
            level,
            line,
            col,
            message,
            hint,
        });
    }

    fn error(&mut self, at: (usize, usize), message: String, hint: impl Into<Option<String>>) {
        self.push(Level::Error, at.0, at.1, message, hint.into());
    }

    fn warn(&mut self, at: (usize, usize), message: String, hint: impl Into<Option<String>>) {
        self.push(Level::Warning, at.0, at.1, message, hint.into());
    }

    /// An unknown key: name it, suggest the closest key of this level, or say where it belongs.
    fn unknown_key(&mut self, e: &Entry, level: &str, known: &[&str]) {
        let key = shown(&e.key);
        let hint = if let Some(k) = closest(&e.key, known) {
            format!("did you mean `{k}`?")
        } else if MATCH_KEYS.contains(&e.key.as_str()) && level == "rule" {
            format!("`{key}` is a match condition: indent it under `match:`")
        } else if RULE_KEYS.contains(&e.key.as_str()) && level == "match" {
            format!("`{key}` belongs to the rule: move it out of `match:` (dedent it)")
        } else {
            format!("the keys of {level} are: {}", known.join(", "))
        };
        self.error(
            (e.line, e.col),
            format!("unknown key `{key}` in {level}"),
            Some(hint),
        );
    }

    fn file(&mut self, root: &Node) -> RuleSet {
        let mut set = RuleSet::default();
        let entries = match &root.value {
            Value::Map(m) => m,
            Value::Null => {
                self.error(
                    (1, 1),
                    "the rules file is empty".into(),
                    Some("start with `rules:` followed by a list of rules (see rules.yaml)".into()),
                );
                return set;
            }
            _ => {
                self.error(
                    (root.line, root.col),
                    format!("the file's top level is {}, not a mapping", root.kind()),
                    Some(
                        "a rules file has `config:` (optional) and `rules:` at the top level"
                            .into(),
                    ),
                );
                return set;
            }
        };
        let mut saw_rules = false;
        for e in entries {
            match e.key.as_str() {
                "config" => set.ignore_namespaces = self.config(e),
                "rules" => {
                    saw_rules = true;
                    set.rules = self.rules(e);
                }
                _ => self.unknown_key(e, "the top level", TOP_KEYS),
            }
        }
        // `rule:` already got "did you mean `rules`?"; saying "no rules list" too is noise.
        let rules_typo = entries
            .iter()
            .any(|e| e.key != "rules" && closest(&e.key, TOP_KEYS) == Some("rules"));
        if !saw_rules && !rules_typo {
            self.error(
                (root.line, root.col),
                "the file has no `rules:` list".into(),
                Some("add `rules:` at the top level followed by `- name: ...` entries".into()),
            );
        }
        set
    }

    fn config(&mut self, e: &Entry) -> Vec<String> {
        let Value::Map(entries) = &e.value.value else {
            self.wrong_kind(
                e,
                "a mapping",
                "indent `ignore_namespaces:` under `config:`",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in entries {
            match c.key.as_str() {
                "ignore_namespaces" => out = self.list(c, true).unwrap_or_default(),
                _ => self.unknown_key(c, "`config`", CONFIG_KEYS),
            }
        }
        out
    }

    /// Error for a key whose value has the wrong shape (or none).
    fn wrong_kind(&mut self, e: &Entry, want: &str, hint: &str) {
        let key = shown(&e.key);
        if e.value.value == Value::Null {
            self.error(
                (e.line, e.col),
                format!("`{key}` has no value"),
                Some(format!("give `{key}` a value ({hint}), or delete the line")),
            );
        } else {
            self.error(
                (e.value.line, e.value.col),
                format!("`{key}` must be {want}, not {}", e.value.kind()),
                Some(hint.to_string()),
            );
        }
    }

    /// A single non-empty string value.
    fn string(&mut self, e: &Entry, hint: &str) -> Option<String> {
        match &e.value.value {
            Value::Scalar(s) if s.text.trim().is_empty() => {
                self.error(
                    (e.value.line, e.value.col),
                    format!("`{}` is empty", shown(&e.key)),
                    Some(format!("write a value ({hint}), or delete the line")),
                );
                None
            }
            Value::Scalar(s) => Some(s.text.clone()),
            _ => {
                self.wrong_kind(e, "a single value", hint);
                None
            }
        }
    }

    /// A list of non-empty strings; `may_be_empty` for exclusion lists.
    fn list(&mut self, e: &Entry, may_be_empty: bool) -> Option<Vec<String>> {
        let key = shown(&e.key);
        let Value::Seq(items) = &e.value.value else {
            let single = key.strip_suffix('s').filter(|k| MATCH_KEYS.contains(k));
            let hint = match (single, e.value.as_str()) {
                (Some(k), Some(v)) => {
                    format!("write `{key}: [{}]`, or `{k}: {}`", shown(v), shown(v))
                }
                _ => format!("write `{key}: [a, b]` or one `- item` per line under `{key}:`"),
            };
            self.wrong_kind(e, "a list", &hint);
            return None;
        };
        if items.is_empty() && !may_be_empty {
            self.error(
                (e.value.line, e.value.col),
                format!("`{key}` is an empty list"),
                Some(format!(
                    "list at least one value, or delete `{key}` (an empty condition would match everything)"
                )),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match item.as_str() {
                Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
                _ => {
                    ok = false;
                    self.error(
                        (item.line, item.col),
                        format!(
                            "an item of `{key}` is {}; expected a non-empty string",
                            item.kind()
                        ),
                        Some("write one plain value per item, e.g. `- pods`".into()),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn rules(&mut self, e: &Entry) -> Vec<Rule> {
        let items = match &e.value.value {
            Value::Seq(items) => items,
            _ => {
                self.wrong_kind(e, "a list of rules", "one `- name: ...` entry per rule");
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.warn(
                (e.value.line, e.value.col),
                "`rules` is empty: the agent will detect nothing".into(),
                Some("add a rule, e.g. `- name: kubectl-exec` (see rules.yaml)".into()),
            );
        }
        let mut out: Vec<Rule> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for item in items {
            let Value::Map(fields) = &item.value else {
                self.error(
                    (item.line, item.col),
                    format!("a rule must be a mapping of fields, not {}", item.kind()),
                    Some("start each rule with `- name: my-rule` and indent its other fields under it".into()),
                );
                continue;
            };
            let errors_before = self.error_count();
            let rule = self.rule(item, fields);
            if let Some(name_entry) = fields.iter().find(|f| f.key == "name") {
                if let Some(name) = name_entry.value.as_str() {
                    if let Some(first) = names.get(name) {
                        self.error(
                            (name_entry.value.line, name_entry.value.col),
                            format!("duplicate rule name `{}`", shown(name)),
                            Some(format!(
                                "a rule named `{}` is already defined on line {first}: names are event types and must be unique",
                                shown(name)
                            )),
                        );
                    } else {
                        names.insert(name.to_string(), item.line);
                    }
                }
            }
            if let Some(r) = rule.filter(|_| self.error_count() == errors_before) {
                out.push(r);
            }
        }
        out
    }

    fn error_count(&self) -> usize {
        self.errors
    }

    fn rule(&mut self, item: &Node, fields: &[Entry]) -> Option<Rule> {
        let (mut name, mut description, mut severity, mut workflow) = (None, None, None, None);
        let mut ignore_system = Some(false);
        let mut matcher = None;
        let (mut suppress, mut same_act) = (Some(None), Some(None));
        let mut fixtures = Some(Vec::new());
        for f in fields {
            match f.key.as_str() {
                "suppress" => suppress = self.duration(f).map(Some),
                "same_act" => same_act = self.duration(f).map(Some),
                "fixtures" => fixtures = self.fixtures(f),
                "name" => name = self.rule_name(f),
                "description" => description = self.description(f),
                "severity" => severity = self.severity(f),
                "workflow" => workflow = self.workflow(f),
                "ignore_system" => ignore_system = self.boolean(f),
                "match" => matcher = self.matcher(f),
                _ => self.unknown_key(f, "rule", RULE_KEYS),
            }
        }
        let label = match &name {
            Some(n) => format!("rule `{n}`"),
            None => "this rule".into(),
        };
        let at = (item.line, item.col);
        for (key, present, hint) in [
            (
                "name",
                fields.iter().any(|f| f.key == "name"),
                "e.g. `name: kubectl-exec`",
            ),
            (
                "severity",
                fields.iter().any(|f| f.key == "severity"),
                "high, medium or low",
            ),
            (
                "workflow",
                fields.iter().any(|f| f.key == "workflow"),
                "deploy, incident, debug, rollback or release",
            ),
            (
                "match",
                fields.iter().any(|f| f.key == "match"),
                "e.g. `match:` with `resource: pods` under it",
            ),
        ] {
            if !present {
                self.error(
                    at,
                    format!("{label} has no `{key}`"),
                    Some(format!("add `{key}:` ({hint})")),
                );
            }
        }
        let (description_source, description) = match description {
            Some(d) => d,
            None if fields.iter().any(|f| f.key == "description") => return None,
            None => {
                self.warn(
                    at,
                    format!("{label} has no `description`"),
                    Some(format!("events will read \"{DEFAULT_DESCRIPTION}\"; add `description:` to say more")),
                );
                (
                    DEFAULT_DESCRIPTION.to_string(),
                    parse_template(DEFAULT_DESCRIPTION).ok()?,
                )
            }
        };
        Some(Rule {
            name: name?,
            description_source,
            description,
            severity: severity?,
            workflow: workflow?,
            ignore_system: ignore_system?,
            matcher: matcher?,
            line: item.line,
            suppress: suppress?,
            same_act: same_act?,
            fixtures: fixtures?,
        })
    }

    /// A duration in the environment's grammar (`10s`, `10m`); `0` turns the feature off.
    fn duration(&mut self, f: &Entry) -> Option<Duration> {
        let text = self.string(f, "e.g. `10m`, `30s`, or `0` for never")?;
        match crate::operate::clock::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    (f.value.line, f.value.col),
                    format!("`{}` is not a duration: {why}", shown(&f.key)),
                    Some("write e.g. `10m`, `30s`, `500ms`, or `0` for never".into()),
                );
                None
            }
        }
    }

    /// `fixtures:`: a list of `record:` + `expect:` mappings. The record's JSON is checked by
    /// `healert-agent test`, not here: a broken example must not stop the agent.
    fn fixtures(&mut self, f: &Entry) -> Option<Vec<Fixture>> {
        let hint = "one `- record: '<audit JSON line>'` entry per fixture, with `expect: event` or `expect: no event`";
        let Value::Seq(items) = &f.value.value else {
            self.wrong_kind(f, "a list of fixtures", hint);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.fixture(item, hint) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn fixture(&mut self, item: &Node, hint: &str) -> Option<Fixture> {
        let Value::Map(fields) = &item.value else {
            self.error(
                (item.line, item.col),
                format!("a fixture must be a mapping, not {}", item.kind()),
                Some(hint.into()),
            );
            return None;
        };
        let mut fx = Fixture {
            record: String::new(),
            expect: Expect::Event,
            description: None,
            entity: None,
            line: item.line,
            record_line: item.line,
        };
        let (mut record, mut expect, mut ok) = (false, false, true);
        for e in fields {
            match e.key.as_str() {
                "record" => match self.string(e, "one audit event as JSON, in single quotes") {
                    Some(r) => {
                        fx.record = r;
                        fx.record_line = e.value.line;
                        record = true;
                    }
                    None => ok = false,
                },
                "expect" => match self.string(e, "`event` or `no event`").as_deref() {
                    Some("event") => (fx.expect, expect) = (Expect::Event, true),
                    Some("no event" | "none" | "no_event") => {
                        (fx.expect, expect) = (Expect::NoEvent, true)
                    }
                    Some(other) => {
                        self.error(
                            (e.value.line, e.value.col),
                            format!(
                                "`expect` must be `event` or `no event`, not `{}`",
                                shown(other)
                            ),
                            Some("put the expected text under `description:`".into()),
                        );
                        ok = false;
                    }
                    None => ok = false,
                },
                "description" => match self.string(e, "the event's exact description") {
                    Some(d) => fx.description = Some(d),
                    None => ok = false,
                },
                "entity" => match self.string(e, "e.g. `component:shop/web`") {
                    Some(d) => fx.entity = Some(d),
                    None => ok = false,
                },
                "note" => {}
                _ => {
                    self.unknown_key(e, "a fixture", FIXTURE_KEYS);
                    ok = false;
                }
            }
        }
        for (key, present) in [("record", record), ("expect", expect)] {
            if !present {
                self.error(
                    (item.line, item.col),
                    format!("this fixture has no `{key}`"),
                    Some(hint.into()),
                );
                ok = false;
            }
        }
        if fx.expect == Expect::NoEvent && (fx.description.is_some() || fx.entity.is_some()) {
            self.error(
                (item.line, item.col),
                "a fixture that expects no event cannot name its description or entity".into(),
                Some("remove `description:`/`entity:`, or write `expect: event`".into()),
            );
            ok = false;
        }
        ok.then_some(fx)
    }

    fn rule_name(&mut self, f: &Entry) -> Option<String> {
        let name = self.string(f, "e.g. `kubectl-exec`")?;
        if let Some(problem) = name_problem(&name) {
            self.error(
                (f.value.line, f.value.col),
                format!("rule name `{}` {problem}", shown(&name)),
                Some(
                    "names are event types: 3-50 lowercase letters, digits and hyphens, e.g. `kubectl-exec`"
                        .into(),
                ),
            );
            return None;
        }
        Some(name)
    }

    fn description(&mut self, f: &Entry) -> Option<(String, Template)> {
        let text = self.string(f, "e.g. \"kubectl exec on {resource}/{name} by {actor}\"")?;
        // Column of the text's first character: one more when the value is quoted.
        let quoted = matches!(&f.value.value, Value::Scalar(s) if s.style != Style::Plain);
        let base = f.value.col + usize::from(quoted);
        match parse_template(&text) {
            Ok(t) => Some((text, t)),
            Err(bad) => {
                for (offset, token) in bad {
                    let hint = match closest(&token, TOKENS) {
                        Some(t) => format!("did you mean `{{{t}}}`? The tokens are {{actor}} {{resource}} {{namespace}} {{name}} {{verb}}"),
                        None => "the tokens are {actor} {resource} {namespace} {name} {verb}".into(),
                    };
                    self.error(
                        (f.value.line, base + offset),
                        format!("unknown token `{{{}}}` in description", shown(&token)),
                        Some(hint),
                    );
                }
                None
            }
        }
    }

    fn severity(&mut self, f: &Entry) -> Option<Severity> {
        let s = self.string(f, "high, medium or low")?;
        match s.as_str() {
            "high" => Some(Severity::High),
            "medium" => Some(Severity::Medium),
            "low" => Some(Severity::Low),
            other => {
                let hint = match closest(other, &["high", "medium", "low"]) {
                    Some(k) => format!("did you mean `{k}`? severity is high, medium or low"),
                    None => "severity is high, medium or low".into(),
                };
                self.error(
                    (f.value.line, f.value.col),
                    format!("unknown severity `{}`", shown(other)),
                    Some(hint),
                );
                None
            }
        }
    }

    fn workflow(&mut self, f: &Entry) -> Option<String> {
        let w = self.string(f, "deploy, incident, debug, rollback or release")?;
        if !WORKFLOWS.contains(&w.as_str()) {
            let hint = match closest(&w, WORKFLOWS) {
                Some(k) => format!(
                    "did you mean `{k}`? The known workflows are {}",
                    WORKFLOWS.join(", ")
                ),
                None => format!("the known workflows are {}", WORKFLOWS.join(", ")),
            };
            self.warn(
                (f.value.line, f.value.col),
                format!("unknown workflow `{}` (sent as written)", shown(&w)),
                Some(hint),
            );
        }
        Some(w)
    }

    fn boolean(&mut self, f: &Entry) -> Option<bool> {
        let s = self.string(f, "true or false")?;
        match s.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            other => {
                self.error(
                    (f.value.line, f.value.col),
                    format!("`{}` must be true or false, not `{}`", shown(&f.key), shown(other)),
                    Some("write `true` (skip Kubernetes' own service accounts and controllers) or `false`".into()),
                );
                None
            }
        }
    }

    fn matcher(&mut self, f: &Entry) -> Option<Match> {
        let entries = match &f.value.value {
            Value::Map(m) => m,
            Value::Null => {
                self.warn(
                    (f.line, f.col),
                    "`match` has no condition: this rule matches every event".into(),
                    Some("add a condition under `match:`, e.g. `resource: pods`".into()),
                );
                return Some(Match::default());
            }
            _ => {
                self.wrong_kind(
                    f,
                    "a mapping of conditions",
                    "indent conditions such as `resource: pods` under `match:`",
                );
                return None;
            }
        };
        let mut m = Match::default();
        let mut ok = true;
        for e in entries {
            let good = match e.key.as_str() {
                "resource" => self.string(e, "e.g. `pods`; use `resources:` for a list").map(|v| {
                    self.lowercase_hint(e, &v);
                    m.resource = Some(v)
                }),
                "resources" => self.list(e, false).map(|v| {
                    self.lowercase_hint(e, &v.join(""));
                    m.resources = v
                }),
                "subresource" => match &e.value.value {
                    // `subresource: ""` (quoted): the object itself, not pods/exec, pods/log...
                    Value::Scalar(s) if s.text.is_empty() && s.style != Style::Plain => {
                        m.subresource = Some(String::new());
                        Some(())
                    }
                    _ => self.string(e, "e.g. `exec`, or `\"\"` for the object itself").map(|v| {
                        self.lowercase_hint(e, &v);
                        m.subresource = Some(v)
                    }),
                },
"subresources" => self.subresources(e).map(|v| m.subresources = v),
                "verb" => self.string(e, "e.g. `get`; use `verbs:` for a list").map(|v| {
                    self.verb_hint(e, std::slice::from_ref(&v));
                    m.verb = Some(v)
                }),
                "verbs" => self.list(e, false).map(|v| {
                    self.verb_hint(e, &v);
                    m.verbs = v
                }),
                "annotation" => self.string(e, "e.g. \"policy.admission.k8s.io/bypass=true\"").and_then(|v| {
                    match v.split_once('=') {
                        Some((k, val)) if !k.trim().is_empty() && !val.trim().is_empty() => {
                            m.annotation = Some((k.to_string(), val.to_string()));
                            Some(())
                        }
                        _ => {
                            self.error(
                                (e.value.line, e.value.col),
                                format!("annotation `{}` is not `key=value` with both sides non-empty", shown(&v)),
                                Some("write e.g. annotation: \"policy.admission.k8s.io/bypass=true\"".into()),
                            );
                            None
                        }
                    }
                }),
                "namespace_contains" => self
                    .string(e, "e.g. `production`")
                    .map(|v| m.namespace_contains = Some(v)),
                "ignore_namespaces" => self.list(e, true).map(|v| m.ignore_namespaces = v),
                _ => {
                    self.unknown_key(e, "`match`", MATCH_KEYS);
                    None
                }
            };
            ok &= good.is_some();
        }
        let has = |k: &str| entries.iter().any(|e| e.key == k);
        for (one, many) in [
            ("resource", "resources"),
            ("subresource", "subresources"),
            ("verb", "verbs"),
        ] {
            if has(one) && has(many) {
                self.warn(
                    (f.line, f.col),
                    format!("both `{one}` and `{many}` are set: an event must satisfy both"),
                    Some(format!("keep one: put every value in `{many}`")),
                );
            }
        }
        let conditions = [
            "resource",
            "resources",
            "subresource",
            "subresources",
            "verb",
            "verbs",
            "annotation",
            "namespace_contains",
        ];
        if ok && !conditions.iter().any(|k| has(k)) {
            self.warn(
                (f.line, f.col),
                "`match` has no condition: this rule matches every event".into(),
                Some("add a condition under `match:`, e.g. `resource: pods`".into()),
            );
        }
        ok.then_some(m)
    }

    /// `subresources:`: a list like `resources:`, where a quoted `""` is the object itself.
    fn subresources(&mut self, e: &Entry) -> Option<Vec<String>> {
        if let Value::Seq(items) = &e.value.value {
            let empty_quoted = |n: &Node| matches!(&n.value, Value::Scalar(s) if s.text.is_empty() && s.style != Style::Plain);
            if !items.is_empty() && items.iter().any(empty_quoted) {
                let rest = Entry {
                    value: Node {
                        value: Value::Seq(
                            items.iter().filter(|n| !empty_quoted(n)).cloned().collect(),
                        ),
                        ..e.value.clone()
                    },
                    ..e.clone()
                };
                let mut v = match &rest.value.value {
                    Value::Seq(r) if r.is_empty() => Vec::new(),
                    _ => self.list(&rest, false)?,
                };
                v.insert(0, String::new());
                self.lowercase_hint(e, &v.join(""));
                return Some(v);
            }
        }
        let v = self.list(e, false)?;
        self.lowercase_hint(e, &v.join(""));
        Some(v)
    }

    fn lowercase_hint(&mut self, e: &Entry, v: &str) {
        if v.chars().any(|c| c.is_uppercase()) {
            self.warn(
                (e.value.line, e.value.col),
                format!(
                    "`{}` has uppercase letters; audit events name resources in lowercase",
                    shown(&e.key)
                ),
                Some("write the lowercase plural, e.g. `pods`, `deployments`".into()),
            );
        }
    }

    fn verb_hint(&mut self, e: &Entry, verbs: &[String]) {
        for v in verbs.iter().filter(|v| !KNOWN_VERBS.contains(&v.as_str())) {
            let hint = match closest(v, KNOWN_VERBS) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("audit verbs are {}", KNOWN_VERBS.join(", ")),
            };
            self.warn(
                (e.value.line, e.value.col),
                format!(
                    "`{}` is not a Kubernetes audit verb; it will never match",
                    shown(v)
                ),
                Some(hint),
            );
        }
    }
}

/// Parses a description template. `Err` lists each unknown `{token}` with its character
/// offset. `{word}` (a letter, then letters, digits, `_`) is a token; other braces (`{}`,
/// `{ x }`, `{1}`, JSON) are literal text.
pub fn parse_template(src: &str) -> Result<Template, Vec<(usize, String)>> {
    let mut pieces = Vec::new();
    let mut bad = Vec::new();
    let mut text = String::new();
    let mut rest = src;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let word_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let starts_with_letter = after
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic());
        if !starts_with_letter || after.as_bytes().get(word_len) != Some(&b'}') {
            text.push_str(&rest[..open + 1]);
            offset += rest[..open + 1].chars().count();
            rest = after;
            continue;
        }
        text.push_str(&rest[..open]);
        offset += rest[..open].chars().count();
        let word = &after[..word_len];
        let piece = match word {
            "actor" => Some(Piece::Actor),
            "resource" => Some(Piece::Resource),
            "namespace" => Some(Piece::Namespace),
            "name" => Some(Piece::Name),
            "verb" => Some(Piece::Verb),
            _ => None,
        };
        match piece {
            Some(p) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(p);
            }
            None => bad.push((offset, word.to_string())),
        }
        offset += word_len + 2;
        rest = &after[word_len + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    if bad.is_empty() {
        Ok(Template(pieces))
    } else {
        Err(bad)
    }
}

/// A fixtures file given to `healert-agent test FIXTURES` (fixtures kept beside the rules
/// rather than inside them): `fixtures:` and a list of fixtures, each with a `rule:` naming the
/// rule it tests. Every problem is reported, like a rules file.
pub fn parse_fixture_file(src: &[u8]) -> Result<Vec<(String, Fixture)>, Vec<Diagnostic>> {
    let root = crate::detect::yaml::parse(src).map_err(|e| {
        vec![Diagnostic {
            level: Level::Error,
            line: e.line,
            col: e.col,
            message: e.message,
            hint: e.hint,
        }]
    })?;
    let mut v = Validator {
        diags: Vec::new(),
        errors: 0,
    };
    let hint =
        "`fixtures:` then one `- rule: NAME` entry per fixture, with `record:` and `expect:`";
    let mut out = Vec::new();
    let list = match &root.value {
        Value::Map(m) => m.iter().find(|e| e.key == "fixtures"),
        _ => None,
    };
    match list.map(|e| &e.value.value) {
        Some(Value::Seq(items)) => {
            for item in items {
                let Value::Map(fields) = &item.value else {
                    v.error(
                        (item.line, item.col),
                        format!("a fixture must be a mapping, not {}", item.kind()),
                        Some(hint.into()),
                    );
                    continue;
                };
                let rule = fields
                    .iter()
                    .find(|e| e.key == "rule")
                    .and_then(|e| e.value.as_str());
                let Some(rule) = rule.map(str::to_string) else {
                    v.error(
                        (item.line, item.col),
                        "this fixture has no `rule`".into(),
                        Some(hint.into()),
                    );
                    continue;
                };
                let rest = Node {
                    line: item.line,
                    col: item.col,
                    value: Value::Map(fields.iter().filter(|e| e.key != "rule").cloned().collect()),
                };
                if let Some(f) = v.fixture(&rest, hint) {
                    out.push((rule, f));
                }
            }
        }
        _ => v.error(
            (root.line, root.col),
            "the file has no `fixtures:` list".into(),
            Some(hint.into()),
        ),
    }
    if v.errors > 0 {
        let mut d = v.diags;
        d.sort_by_key(|d| (d.line, d.col));
        return Err(d);
    }
    Ok(out)
}

/// The text of a rules file with its optional block enabled: between the `# >>> optional
/// rules` and `# <<< optional rules` lines, the `# ` in front of each line is deleted (notes
/// starting with `##` stay comments) — exactly what rules.yaml tells a user to do by hand.
/// `None` when the file has no such block.
pub fn with_optional_enabled(src: &str) -> Option<String> {
    let mut out = String::with_capacity(src.len());
    let mut inside = false;
    let mut seen = false;
    for line in src.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("# >>> optional rules") {
            inside = true;
            seen = true;
        } else if t.starts_with("# <<< optional rules") {
            inside = false;
        } else if inside && t.starts_with("# ") && !t.starts_with("##") {
            let indent = line.len() - t.len();
            out.push_str(&line[..indent]);
            out.push_str(&t[2..]);
            continue;
        }
        out.push_str(line);
    }
    seen.then_some(out)
}

/// Reads and validates a rules file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let shown = path.display().to_string();
    // Read at most one byte more than the parser accepts: a wrong path (a huge log) costs
    // 1 MiB of memory, and the parser still reports the size error.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(crate::detect::yaml::MAX_INPUT_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|error| LoadError::Io {
            path: shown.clone(),
            error,
        })?;
    parse_rules(&bytes).map_err(|diagnostics| LoadError::Invalid {
        path: shown,
        diagnostics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_plausible_typo() {
        assert_eq!(closest("verbz", MATCH_KEYS), Some("verbs"));
        assert_eq!(closest("resouce", MATCH_KEYS), Some("resource"));
        assert_eq!(closest("Severity", RULE_KEYS), Some("severity"));
        assert_eq!(
            closest("ignore_namespace", CONFIG_KEYS),
            Some("ignore_namespaces")
        );
        assert_eq!(closest("color", RULE_KEYS), None);
    }

    #[test]
    fn templates_split_into_tokens_and_text() {
        let t = parse_template("exec on {resource}/{name} by {actor} {} {1}").unwrap();
        assert_eq!(
            t.0,
            [
                Piece::Text("exec on ".into()),
                Piece::Resource,
                Piece::Text("/".into()),
                Piece::Name,
                Piece::Text(" by ".into()),
                Piece::Actor,
                Piece::Text(" {} {1}".into()),
            ]
        );
        assert_eq!(
            parse_template("é {user} and {Verb}").unwrap_err(),
            [(2, "user".to_string()), (13, "Verb".to_string())]
        );
    }

    /// Many rules, many errors: validation stays linear and reports all of them, in order.
    #[test]
    fn thousands_of_rules_and_errors() {
        let mut src = String::from("rules:\n");
        for i in 0..5_000 {
            src.push_str(&format!(
                "  - name: rule-{i}\n    severity: high\n    workflow: deploy\n    match:\n      verbz: [get]\n"
            ));
        }
        src.push_str("  - name: rule-7\n    severity: high\n    workflow: deploy\n    match: {}\n");
        let e = parse_rules(src.as_bytes()).unwrap_err();
        assert_eq!(e.len(), 1, "flow mapping is a syntax error: {e:?}");
        let src = src.replace("    match: {}\n", "    match:\n      verb: get\n");
        let d = parse_rules(src.as_bytes()).unwrap_err();
        let errors: Vec<_> = d.iter().filter(|d| d.level == Level::Error).collect();
        assert_eq!(errors.len(), 5_001);
        assert!(errors
            .last()
            .unwrap()
            .message
            .contains("duplicate rule name `rule-7`"));
        assert!(d
            .windows(2)
            .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
    }

    #[test]
    fn names_follow_the_backend_rules() {
        assert_eq!(name_problem("kubectl-exec"), None);
        assert_eq!(name_problem("a1b"), None);
        assert!(name_problem("ab").is_some());
        assert!(name_problem(&"a".repeat(51)).is_some());
        assert_eq!(name_problem(&"a".repeat(50)), None);
        assert!(name_problem("-abc").is_some());
        assert!(name_problem("abc-").is_some());
        assert!(name_problem("ab_c").is_some());
        assert!(name_problem("abC").is_some());
    }

    #[test]
    fn io_and_invalid_errors_display_with_a_fix() {
        let e = load_file(Path::new("/nonexistent/healert/rules.yaml")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/healert/rules.yaml") && s.contains("RULES_PATH"),
            "{s}"
        );
        let Err(diagnostics) = parse_rules(b"rules:\n  - name: x\n") else {
            panic!("invalid file accepted")
        };
        let e = LoadError::Invalid {
            path: "r.yaml".into(),
            diagnostics,
        };
        let s = e.to_string();
        assert!(
            s.contains("r.yaml:2:11: error: rule name `x` must be 3 to 50"),
            "{s}"
        );
    }
}
