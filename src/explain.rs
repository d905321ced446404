//! `healert-agent explain [--rules PATH] [--line N] [--json] [--fixture] FILE|-`: what the
//! engine saw and decided for each audit record, so a rule that does not fire can be diagnosed
//! from this output alone.
//!
//! Per audit event (a line, or each item of an `EventList`): the stage and whether it counts,
//! the actor and its class, the namespace exclusion that stopped every rule (if any), then for
//! every rule whether `ignore_system` skipped it, each condition with what the rule wants, the
//! value found in the record and pass/fail, and the payload that would be sent — or why none,
//! including what the suppression window would do with it. The decisions come from the engine's
//! own evaluation with a [`Trace`] ([`Detector::trace_record`]): no second implementation.
//! The input is read exactly as `replay` reads it ([`crate::replay::Input`]).
//!
//! Text on a pipe, colour on a terminal (stdout), one JSON object per audit event with
//! `--json`; `--fixture` prints each record as a fixture to paste under a rule's `fixtures:`.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::deliver::suppress::{Clock, Decision, Suppressor};
use crate::detect::engine::{Exclusion, Trace};
use crate::detect::json::write_str;
use crate::detect::{Detector, FrictionEvent};
use crate::operate::log::sanitize;
use crate::replay::{self, Input};
use crate::source::{Next, Source};

/// Arguments of `healert-agent explain`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExplainArgs {
    pub rules: Option<PathBuf>,
    /// Only record N (1-based: the line number of an NDJSON log).
    pub line: Option<u64>,
    pub json: bool,
    pub fixture: bool,
    /// A path, or "-" for stdin.
    pub input: String,
}

/// Terminal colours, or none.
struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn ok(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn bad(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

pub fn run(args: ExplainArgs) -> ExitCode {
    let cfg = match replay::check_config("explain", false) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let det = match replay::load_detector("explain", args.rules.clone(), &cfg) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let (reader, _) = match replay::open_input("explain", &args.input) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut input = match Input::open_format(reader, cfg.max_line_bytes, cfg.audit_format) {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "explain: reading {} failed: {e}",
                sanitize(&args.input, 400)
            );
            return ExitCode::from(2);
        }
    };
    let style = Style {
        on: !args.json && io::stdout().is_terminal(),
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut sup = Suppressor::new(cfg.suppress_window, Clock::EventTime);
    let mut n = 0u64;
    let mut found = false;
    loop {
        let (start, end, bytes) = match input.next() {
            Next::Record(r) => (r.start, r.end, Some(r.bytes.to_vec())),
            Next::Skipped { start, end, .. } => (start, end, None),
            Next::Idle => continue,
            Next::End => break,
        };
        n += 1;
        let shown = args.line.map_or(true, |l| l == n);
        let text = match &bytes {
            None => explain_oversized(n, start, end, args.json, &style),
            Some(b) => explain_record(&det, &mut sup, n, start, end, b, &args, &style, shown),
        };
        if shown {
            found = true;
            if out.write_all(text.as_bytes()).is_err() {
                return ExitCode::SUCCESS;
            }
        }
        if args.line.is_some_and(|l| n >= l) {
            break;
        }
    }
    if let Some(e) = input.take_error() {
        eprintln!(
            "explain: reading {} failed: {e}",
            sanitize(&args.input, 400)
        );
        return ExitCode::from(2);
    }
    if args.line.is_none() {
        // The input is over: what `replay` would still send for the windows left open.
        let mut tail = String::new();
        while let Some((key, summary)) = sup.due(true, sup.now_ms()) {
            if args.json {
                let _ = writeln!(tail, "{{\"end_of_input_summary\":{}}}", summary.to_json());
            } else {
                let _ = writeln!(
                    tail,
                    "end of input: a suppression window closes with repeats: summary {}",
                    sanitize(&summary.to_json(), 4000)
                );
            }
            sup.summary_done(&key);
        }
        let _ = out.write_all(tail.as_bytes());
    }
    let _ = out.flush();
    if let Some(l) = args.line.filter(|_| !found) {
        eprintln!("explain: the input has {n} records; there is no record {l}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn explain_oversized(n: u64, start: u64, end: u64, json: bool, style: &Style) -> String {
    if json {
        format!("{{\"record\":{n},\"start\":{start},\"end\":{end},\"skipped\":\"longer than MAX_LINE_BYTES: not read\"}}\n")
    } else {
        format!(
            "{} (bytes {start}..{end}): {}\n\n",
            style.bold(&format!("record {n}")),
            style.bad("longer than MAX_LINE_BYTES: skipped unread, nothing evaluated")
        )
    }
}

/// What the suppression window does with `ev` (applied at once, in input order).
fn suppression(
    sup: &mut Suppressor,
    ev: &FrictionEvent,
    summaries: &mut Vec<FrictionEvent>,
) -> Decision {
    sup.observe(ev);
    let now = sup.now_ms();
    while let Some((key, s)) = sup.due(false, now) {
        summaries.push(s);
        sup.summary_done(&key);
    }
    let d = sup.decide(ev, now);
    sup.apply(ev, d);
    d
}

fn decision_text(d: Decision, sup: &Suppressor, ev: &FrictionEvent) -> &'static str {
    match d {
        Decision::Send if sup.window_of(ev).is_zero() => {
            "sent (no suppression window for this rule)"
        }
        Decision::Send => "sent at once (first of its rule, entity and actor in the window)",
        Decision::Repeat => "suppressed: a repeat within the window, counted into its summary",
        Decision::SameAct => {
            "suppressed: the same act as the previous event (same_act), not counted"
        }
    }
}

fn decision_key(d: Decision) -> &'static str {
    match d {
        Decision::Send => "sent",
        Decision::Repeat => "repeat",
        Decision::SameAct => "same_act",
    }
}

#[allow(clippy::too_many_arguments)]
fn explain_record(
    det: &Detector,
    sup: &mut Suppressor,
    n: u64,
    start: u64,
    end: u64,
    bytes: &[u8],
    args: &ExplainArgs,
    style: &Style,
    shown: bool,
) -> String {
    let mut o = String::new();
    let traced = match det.trace_record(bytes) {
        Ok(t) => t,
        Err(e) => {
            if args.json {
                o.push_str(&format!(
                    "{{\"record\":{n},\"start\":{start},\"end\":{end},\"malformed\":"
                ));
                write_str(&mut o, &e.to_string());
                o.push_str("}\n");
            } else {
                let _ = writeln!(
                    o,
                    "{} (bytes {start}..{end}): {}\n",
                    style.bold(&format!("record {n}")),
                    style.bad(&format!("not an audit event: {e}; nothing evaluated"))
                );
            }
            return o;
        }
    };
    if traced.is_empty() && !args.json {
        let _ = writeln!(
            o,
            "{} (bytes {start}..{end}): blank\n",
            style.bold(&format!("record {n}"))
        );
        return o;
    }
    for (item, (t, events)) in traced.iter().enumerate() {
        let mut summaries = Vec::new();
        let decisions: Vec<Decision> = events
            .iter()
            .map(|e| suppression(sup, e, &mut summaries))
            .collect();
        if !shown {
            continue;
        }
        if args.json {
            json_item(
                &mut o,
                n,
                start,
                end,
                item,
                traced.len(),
                t,
                events,
                &decisions,
                &summaries,
            );
        } else {
            text_item(
                &mut o,
                n,
                start,
                end,
                item,
                traced.len(),
                t,
                events,
                &decisions,
                &summaries,
                sup,
                style,
            );
        }
        if args.fixture {
            fixture(&mut o, bytes, traced.len(), t, events, args.json);
        }
    }
    o
}

#[allow(clippy::too_many_arguments)]
fn text_item(
    o: &mut String,
    n: u64,
    start: u64,
    end: u64,
    item: usize,
    items: usize,
    t: &Trace,
    events: &[FrictionEvent],
    decisions: &[Decision],
    summaries: &[FrictionEvent],
    sup: &Suppressor,
    st: &Style,
) {
    let s = |v: &str| sanitize(v, 4000);
    let head = if items > 1 {
        format!("record {n}, item {}", item + 1)
    } else {
        format!("record {n}")
    };
    let id = if t.audit_id.is_empty() {
        String::new()
    } else {
        format!(" auditID {}", s(&t.audit_id))
    };
    let _ = writeln!(o, "{} (bytes {start}..{end}){id}", st.bold(&head));
    if let Some(m) = &t.malformed {
        let _ = writeln!(
            o,
            "  {}\n",
            st.bad(&format!("not an audit event: {}", s(m)))
        );
        return;
    }
    let stage = if t.stage.is_empty() {
        "(none)".to_string()
    } else {
        s(&t.stage)
    };
    if !t.stage_counts {
        let _ = writeln!(
            o,
            "  stage      {stage}  {}\n  no event: only ResponseComplete records are evaluated\n",
            st.bad("✗")
        );
        return;
    }
    let _ = writeln!(o, "  stage      {stage}  {}", st.ok("✓"));
    let class = t.actor_class.map_or("", |c| c.as_str());
    let actor = if t.actor.is_empty() {
        "(none)".to_string()
    } else {
        s(&t.actor)
    };
    let _ = writeln!(o, "  actor      {actor} ({class})");
    if let Some((why, ns)) = &t.excluded {
        let by = match why {
            Exclusion::Config => "config.ignore_namespaces of the rules file",
            Exclusion::OwnNamespace => "the agent's own namespace (K8S_NAMESPACE)",
        };
        let _ = writeln!(
            o,
            "  namespace  {}  {}\n  no event: the namespace is excluded from every rule by {by}\n",
            s(ns),
            st.bad("excluded")
        );
        return;
    }
    for r in &t.rules {
        let verdict = if r.skipped_actor {
            st.dim("skipped: ignore_system and an internal actor")
        } else if r.matched {
            st.ok("MATCH")
        } else {
            st.bad("no match")
        };
        let _ = writeln!(
            o,
            "  rule {} (line {})  {verdict}",
            st.bold(&s(&r.name)),
            r.line
        );
        for (key, want, found, pass) in &r.conditions {
            let mark = if *pass { st.ok("✓") } else { st.bad("✗") };
            let found = if found.is_empty() {
                "(absent)".to_string()
            } else {
                format!("{:?}", s(found))
            };
            let _ = writeln!(o, "    {mark} {key:<18} wants {}, found {found}", s(want));
        }
    }
    if events.is_empty() {
        let _ = writeln!(o, "  no event: no rule matched");
    }
    for (e, d) in events.iter().zip(decisions) {
        let _ = writeln!(
            o,
            "  event {}: {}",
            st.bold(&s(&e.kind)),
            decision_text(*d, sup, e)
        );
        let _ = writeln!(o, "    {}", s(&e.to_json()));
    }
    for sm in summaries {
        let _ = writeln!(
            o,
            "  summary sent before it (a window closed): {}",
            sm.to_json()
        );
    }
    o.push('\n');
}

#[allow(clippy::too_many_arguments)]
fn json_item(
    o: &mut String,
    n: u64,
    start: u64,
    end: u64,
    item: usize,
    items: usize,
    t: &Trace,
    events: &[FrictionEvent],
    decisions: &[Decision],
    summaries: &[FrictionEvent],
) {
    let _ = write!(o, "{{\"record\":{n},\"start\":{start},\"end\":{end}");
    if items > 1 {
        let _ = write!(o, ",\"item\":{}", item + 1);
    }
    o.push_str(",\"audit_id\":");
    write_str(o, &t.audit_id);
    if let Some(m) = &t.malformed {
        o.push_str(",\"malformed\":");
        write_str(o, m);
        o.push_str("}\n");
        return;
    }
    o.push_str(",\"stage\":");
    write_str(o, &t.stage);
    let _ = write!(o, ",\"evaluated\":{}", t.stage_counts);
    o.push_str(",\"actor\":");
    write_str(o, &t.actor);
    o.push_str(",\"actor_class\":");
    match t.actor_class {
        Some(c) => write_str(o, c.as_str()),
        None => o.push_str("null"),
    }
    o.push_str(",\"excluded\":");
    match &t.excluded {
        None => o.push_str("null"),
        Some((why, ns)) => {
            o.push_str("{\"by\":");
            write_str(
                o,
                match why {
                    Exclusion::Config => "config.ignore_namespaces",
                    Exclusion::OwnNamespace => "K8S_NAMESPACE",
                },
            );
            o.push_str(",\"namespace\":");
            write_str(o, ns);
            o.push('}');
        }
    }
    o.push_str(",\"rules\":[");
    for (i, r) in t.rules.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        write_str(o, &r.name);
        let _ = write!(
            o,
            ",\"line\":{},\"skipped_actor\":{},\"matched\":{},\"conditions\":[",
            r.line, r.skipped_actor, r.matched
        );
        for (j, (key, want, found, pass)) in r.conditions.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            o.push_str("{\"key\":");
            write_str(o, key);
            o.push_str(",\"want\":");
            write_str(o, want);
            o.push_str(",\"found\":");
            write_str(o, found);
            let _ = write!(o, ",\"pass\":{pass}}}");
        }
        o.push_str("]}");
    }
    o.push_str("],\"events\":[");
    for (i, (e, d)) in events.iter().zip(decisions).enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"suppression\":");
        write_str(o, decision_key(*d));
        let _ = write!(o, ",\"payload\":{}}}", e.to_json());
    }
    o.push_str("],\"summaries\":[");
    for (i, sm) in summaries.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str(&sm.to_json());
    }
    o.push_str("]}\n");
}

/// The record as a fixture to paste under a rule's `fixtures:` (see docs/rules-testing.md).
fn fixture(
    o: &mut String,
    bytes: &[u8],
    items: usize,
    t: &Trace,
    events: &[FrictionEvent],
    json: bool,
) {
    if json {
        return;
    }
    let line = String::from_utf8_lossy(bytes);
    let line = line.trim_end_matches(['\r', '\n']);
    if items > 1 || line.contains('\n') {
        o.push_str("  fixture: this record is an EventList or spans several lines; copy one item onto one line first\n\n");
        return;
    }
    if line.chars().any(char::is_control) {
        // Not printed raw to a terminal: the record is the user's to copy from the log.
        o.push_str("  fixture: this record holds control characters; copy it from the log into `record:` yourself\n\n");
        return;
    }
    let record = format!("'{}'", line.replace('\'', "''"));
    for r in t.rules.iter().filter(|r| r.matched) {
        if let Some(e) = events.iter().find(|e| e.kind == r.name) {
            let _ = writeln!(
                o,
                "  fixture for rule {} (paste under its `fixtures:`):",
                r.name
            );
            let _ = writeln!(o, "      - record: {record}");
            let _ = writeln!(o, "        expect: event");
            let mut d = String::new();
            write_str(&mut d, &e.description);
            let _ = writeln!(o, "        description: {d}");
            let _ = writeln!(o, "        entity: {}", e.entity_ref);
        }
    }
    let _ = writeln!(o, "  fixture for a rule that must not fire on it:");
    let _ = writeln!(o, "      - record: {record}");
    let _ = writeln!(o, "        expect: no event\n");
}
