//! The friction event: what one matching rule emits for one audit event, built so the backend
//! always accepts it, and its JSON payload for `POST /events`.
//!
//! The backend answers 422 — and the event is lost — when a field breaks its limits, so
//! [`FrictionEvent::new`] is the one place that enforces them: control characters stripped
//! from every value taken from the log (and bidirectional controls and line separators shown as
//! visible `\u{..}` escapes, so an actor cannot read as someone else in the backend's UI),
//! entity refs mapped onto the backend's alphabet, every field truncated on a character
//! boundary, timestamps checked for ISO 8601.

use std::borrow::Cow;
use std::time::Duration;

use crate::detect::json::write_str;
use crate::detect::rules::Severity;
use crate::operate::log::is_spoofing;

/// The backend's limits (characters).
pub const MAX_ENTITY_REF: usize = 200;
pub const MIN_TYPE: usize = 3;
pub const MAX_TYPE: usize = 50;
pub const MAX_ACTOR: usize = 200;
pub const MAX_WORKFLOW: usize = 200;
pub const MAX_DESCRIPTION: usize = 500;
pub const MAX_TIMESTAMP: usize = 40;
/// Longest namespace part of an entity ref (Kubernetes namespaces have at most 63).
pub const MAX_ENTITY_NAMESPACE: usize = 63;
/// The entity kind prefix.
pub const ENTITY_KIND: &str = "component";

/// One event for the backend. Every string is already sanitised and within the backend's
/// limits when it is built (see [`FrictionEvent::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrictionEvent {
    /// `component:{ns}/{workload}`.
    pub entity_ref: String,
    /// The rule name (the payload's `type`).
    pub kind: String,
    pub severity: Severity,
    pub actor: String,
    pub workflow: String,
    pub description: String,
    /// RFC 3339 / ISO 8601.
    pub timestamp: String,
    pub namespace: String,
    /// The workload name (suffixes stripped).
    pub service: String,
    /// What repeat suppression needs to know (not part of the payload).
    pub repeat: Repeat,
}

/// What the suppression window (`deliver::suppress`) needs to know about an event besides its
/// payload: set by the engine from the rule, never sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repeat {
    /// The rule's own `suppress:` window (`None`: SUPPRESS_WINDOW applies).
    pub window: Option<Duration>,
    /// The rule's `same_act:` span (`None`: off).
    pub same_act: Option<Duration>,
    /// The audit event's verb (`get` then `create` within `same_act` is one act).
    pub verb: String,
}

/// The raw parts of an event, before the backend's limits are applied.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub kind: &'a str,
    pub severity: Severity,
    pub actor: &'a str,
    pub workflow: &'a str,
    pub description: &'a str,
    /// The audit event's timestamp; replaced by `now` when empty, not ISO 8601, or not a real
    /// date and time (see [`is_iso8601`]).
    pub timestamp: &'a str,
    pub now: &'a dyn Fn() -> String,
    /// Namespace and workload of the entity (already defaulted, suffixes stripped).
    pub namespace: &'a str,
    pub workload: &'a str,
}

impl FrictionEvent {
    /// Builds an event that satisfies every backend limit.
    pub fn new(p: Parts<'_>) -> FrictionEvent {
        let namespace = entity_part(p.namespace, false, MAX_ENTITY_NAMESPACE, "default");
        // "component:" + ns + "/" + workload ≤ MAX_ENTITY_REF.
        let room = MAX_ENTITY_REF - ENTITY_KIND.len() - 2 - namespace.len();
        let service = entity_part(p.workload, true, room, "unknown");
        let timestamp = if is_iso8601(p.timestamp) {
            p.timestamp.to_string()
        } else {
            (p.now)()
        };
        FrictionEvent {
            entity_ref: format!("{ENTITY_KIND}:{namespace}/{service}"),
            kind: truncate(&strip_controls(p.kind), MAX_TYPE),
            severity: p.severity,
            actor: truncate(&strip_controls(p.actor), MAX_ACTOR),
            workflow: truncate(&strip_controls(p.workflow), MAX_WORKFLOW),
            description: truncate(&strip_controls(p.description), MAX_DESCRIPTION),
            timestamp,
            namespace,
            service,
            repeat: Repeat::default(),
        }
    }

    /// The payload for `POST /events`: one JSON object, fields in a fixed order.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(160 + self.description.len());
        let fields: [(&str, &str); 9] = [
            ("entity_ref", &self.entity_ref),
            ("type", &self.kind),
            ("severity", self.severity.as_str()),
            ("actor", &self.actor),
            ("workflow", &self.workflow),
            ("description", &self.description),
            ("timestamp", &self.timestamp),
            ("namespace", &self.namespace),
            ("service", &self.service),
        ];
        o.push('{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            write_str(&mut o, k);
            o.push(':');
            write_str(&mut o, v);
        }
        o.push('}');
        o
    }
}

/// `s` without control characters (< 0x20 and DEL), and with the characters that make text
/// display as something else (bidi controls, U+2028/U+2029: [`is_spoofing`]) written as
/// visible `\u{..}` escapes, as the logs show them; borrowed when it has none of either.
pub fn strip_controls(s: &str) -> Cow<'_, str> {
    let bad = |c: char| c < ' ' || c == '\u{7f}' || is_spoofing(c);
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_spoofing(c) {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else if !bad(c) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max` characters of `s` (cut on a character boundary).
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// One side of an entity ref: characters outside `[A-Za-z0-9_-]` (plus `.` when `dot`)
/// become `-`, at most `max` characters, `empty` when nothing is left.
pub fn entity_part(s: &str, dot: bool, max: usize, empty: &str) -> String {
    let mapped: String = s
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dot && c == '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if mapped.is_empty() {
        empty.to_string()
    } else {
        mapped
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, at most [`MAX_TIMESTAMP`] characters, naming a
/// real instant: what kube-apiserver writes and the backend accepts.
///
/// Real means a day that exists in its month (no 30 February, 29 February only in leap
/// years), year 0001 or later, hours ≤ 23, minutes ≤ 59, seconds ≤ 59, and an offset under a
/// day (±23:59). A leap second (`:60`) is refused too: the backend's datetime type has none,
/// and kube-apiserver (Go's `time`) never writes one.
///
/// An event whose timestamp fails this is **sent with the time it was processed**, like an
/// event without one, rather than dead-lettered: kube-apiserver cannot write an impossible
/// date, so only a corrupted or forged line carries one; what the line records (someone
/// exec'ed into a pod) still happened and still counts as friction, while the backend would
/// refuse the whole event (422) for that one field and a dead letter would lose it (the
/// DaemonSet may have no dead-letter file). For a followed log, the processing time is seconds
/// from the real one.
pub fn is_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > MAX_TIMESTAMP {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return false;
    }
    let num =
        |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32);
    let (year, month) = (num(0..4), num(5..7));
    let ranges = year >= 1
        && (1..=12).contains(&month)
        && (1..=crate::operate::clock::days_in_month(i64::from(year), month)).contains(&num(8..10))
        && num(11..13) <= 23
        && num(14..16) <= 59
        && num(17..19) <= 59;
    if !ranges {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let d = [h1, h2, m1, m2];
            d.iter().all(|d| d.is_ascii_digit())
                && (*h1 - b'0') * 10 + (*h2 - b'0') <= 23
                && (*m1 - b'0') * 10 + (*m2 - b'0') <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(now: &'a dyn Fn() -> String) -> Parts<'a> {
        Parts {
            kind: "kubectl-exec",
            severity: Severity::High,
            actor: "alice",
            workflow: "deploy",
            description: "d",
            timestamp: "2025-01-01T00:00:00.5Z",
            now,
            namespace: "prod",
            workload: "api",
        }
    }

    #[test]
    fn payload_shape_and_escaping() {
        let now = || "NOW".to_string();
        let mut p = parts(&now);
        p.description = "a \"quoted\" \\ desc\u{1}";
        let e = FrictionEvent::new(p);
        assert_eq!(
            e.to_json(),
            r#"{"entity_ref":"component:prod/api","type":"kubectl-exec","severity":"high","actor":"alice","workflow":"deploy","description":"a \"quoted\" \\ desc","timestamp":"2025-01-01T00:00:00.5Z","namespace":"prod","service":"api"}"#
        );
    }

    #[test]
    fn entity_refs_are_mapped_and_bounded() {
        let now = || "NOW".to_string();
        let mut p = parts(&now);
        p.workload = "system:openshift:controller:é/x y.z";
        p.namespace = "a.b";
        let e = FrictionEvent::new(p);
        assert_eq!(
            e.entity_ref,
            "component:a-b/system-openshift-controller---x-y.z"
        );
        let long = "x".repeat(500);
        p.namespace = &long;
        p.workload = &long;
        let e = FrictionEvent::new(p);
        assert_eq!(e.entity_ref.chars().count(), MAX_ENTITY_REF);
        p.namespace = "";
        p.workload = "";
        let e = FrictionEvent::new(p);
        assert_eq!(e.entity_ref, "component:default/unknown");
    }

    #[test]
    fn fields_truncate_on_char_boundaries_and_bad_timestamps_become_now() {
        let now = || "2030-01-01T00:00:00Z".to_string();
        let mut p = parts(&now);
        let d = "é".repeat(700);
        p.description = &d;
        p.actor = &d;
        p.timestamp = "yesterday";
        let e = FrictionEvent::new(p);
        assert_eq!(e.description.chars().count(), MAX_DESCRIPTION);
        assert_eq!(e.actor.chars().count(), MAX_ACTOR);
        assert_eq!(e.timestamp, "2030-01-01T00:00:00Z");
    }

    #[test]
    fn iso8601_table() {
        for good in [
            "2025-01-01T00:00:00Z",
            "2019-02-03T14:06:41.145374Z",
            "2020-12-31T23:59:59.1+05:30",
            "2020-12-31t23:59:59-00:00",
            "2024-02-29T00:00:00Z",
            "2000-02-29T23:59:59+23:59",
            "0001-01-01T00:00:00Z",
        ] {
            assert!(is_iso8601(good), "{good}");
        }
        for bad in [
            "",
            "2025-01-01",
            "2025-01-01 00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-01T00:00:00",
            "2025-01-01T00:00:00.Z",
            "2025-01-01T00:00:00+0100",
            "2025-01-01T00:00:00.0000000000000000000000Z",
            // Issue 17 finding 11: the right shape, but no such instant.
            "2025-02-30T23:59:60Z",
            "2025-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-01-00T00:00:00Z",
            "2016-12-31T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00+24:00",
            "2025-01-01T00:00:00-05:60",
        ] {
            assert!(!is_iso8601(bad), "{bad}");
        }
    }

    #[test]
    fn strip_controls_only_touches_c0_and_del() {
        assert_eq!(strip_controls("a\u{0}b\nc\u{7f}d\u{85}"), "abcd\u{85}");
        assert!(matches!(strip_controls("plain"), Cow::Borrowed(_)));
        assert!(matches!(strip_controls("שלום"), Cow::Borrowed(_)));
    }

    #[test]
    fn bidi_controls_and_line_separators_become_visible_escapes_in_the_payload() {
        assert_eq!(
            strip_controls("eve\u{202e}gpj.exe\u{2028}\u{2066}x\n"),
            "eve\\u{202e}gpj.exe\\u{2028}\\u{2066}x"
        );
        let now = || "NOW".to_string();
        let mut p = parts(&now);
        p.actor = "mallory\u{202e}\u{200f}";
        p.description = "exec\u{2029}INFO forged";
        let e = FrictionEvent::new(p);
        assert_eq!(e.actor, "mallory\\u{202e}\\u{200f}");
        assert_eq!(e.description, "exec\\u{2029}INFO forged");
        assert!(!e.to_json().contains('\u{202e}'));
    }
}
