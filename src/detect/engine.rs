//! The rule engine: one audit line → zero or more [`FrictionEvent`]s, with the Go agent's
//! decisions plus its documented-but-missing fixes.
//!
//! Same as the Go agent: only `ResponseComplete` records count; `ignore_system` skips internal
//! `system:` actors (but not `system:admin`/`system:masters`); every condition of a rule must
//! hold; every matching rule emits one event; entity `component:{ns}/{workload}` with pod
//! suffixes stripped in the Go agent's order. Fixes: `config.ignore_namespaces`, the agent's
//! own namespace (`K8S_NAMESPACE`) and per-rule `ignore_namespaces` are applied; `annotation`
//! also looks in `requestObject.metadata.annotations` (a `kubectl annotate` patch carries it
//! there); every value from the log is stripped of control characters; payloads always fit
//! the backend's limits (see [`crate::detect::event`]).
//!
//! The engine is pure: it reads nothing from the environment and counts nothing. It returns a
//! [`Verdict`] per record and appends events; its caller (the pipeline stage, `replay`) counts.

use crate::detect::audit::{extract, items, AuditFields};
use crate::detect::event::{FrictionEvent, Parts};
use crate::detect::json::JsonError;
use crate::detect::rules::{Piece, Rule, RuleSet, Template};

/// Environment-dependent choices of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectOptions {
    /// Namespace used in entity refs of cluster-scoped objects (`ENTITY_NAMESPACE`).
    pub entity_namespace: String,
    /// The agent's own namespace (`K8S_NAMESPACE`), excluded from every rule.
    pub own_namespace: Option<String>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            entity_namespace: "default".into(),
            own_namespace: None,
        }
    }
}

/// What became of one audit event (a line, or one item of an `EventList`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineVerdict {
    /// Empty or whitespace only.
    Blank,
    /// Not valid JSON, or not an object.
    Malformed,
    /// A stage other than ResponseComplete (or none): never produces events.
    SkippedStage,
    /// A ResponseComplete event went through the rules (it may have matched none).
    Evaluated,
}

/// What became of one record handed to [`Detector::detect_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// One audit event (or a blank line).
    Event(LineVerdict),
    /// Not an audit event: the scanner's reason, with line:column in the record.
    Malformed(JsonError),
    /// An `EventList` document: each item was judged like a line.
    List(ListTally),
}

/// The verdicts of the items of one `EventList`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListTally {
    pub items: u64,
    pub malformed: u64,
    pub skipped_stages: u64,
    pub evaluated: u64,
}

impl ListTally {
    /// Counts one item's verdict.
    pub fn count(&mut self, v: LineVerdict) {
        self.items += 1;
        match v {
            LineVerdict::Malformed => self.malformed += 1,
            LineVerdict::SkippedStage => self.skipped_stages += 1,
            LineVerdict::Evaluated => self.evaluated += 1,
            // Items are values inside the list; none is blank.
            LineVerdict::Blank => {}
        }
    }

    /// Adds another tally.
    pub fn add(&mut self, other: &ListTally) {
        self.items += other.items;
        self.malformed += other.malformed;
        self.skipped_stages += other.skipped_stages;
        self.evaluated += other.evaluated;
    }
}

/// The rules, compiled for matching.
#[derive(Debug, Clone)]
pub struct Detector {
    rules: RuleSet,
    opts: DetectOptions,
    /// `namespace_contains` of each rule, lower-cased once.
    contains_lower: Vec<Option<String>>,
    /// "Now" for events without a usable timestamp (replaceable for golden tests).
    now: fn() -> String,
}

/// Whether a `ignore_system` rule skips this user: every `system:` user except `system:admin`
/// and `system:masters` is internal (service accounts, nodes, controllers, anonymous); so are
/// the managed control planes' own identities: EKS's `eks:*` components (`eks:addon-manager`,
/// `eks:node-manager`...), Google service accounts (`…@….gserviceaccount.com`, GKE's
/// principal emails of robots and workloads) and AKS's `aksService`. People stay people
/// however they authenticate: an EKS user mapped by aws-iam-authenticator (`kubernetes-admin`,
/// an IAM ARN), a GKE principal email, an OIDC name.
pub fn is_internal_actor(username: &str) -> bool {
    (username.starts_with("system:") && username != "system:admin" && username != "system:masters")
        || username.starts_with("eks:")
        || username.ends_with(".gserviceaccount.com")
        || username == "aksService"
}

impl Detector {
    pub fn new(rules: RuleSet, opts: DetectOptions) -> Detector {
        let contains_lower = rules
            .rules
            .iter()
            .map(|r| {
                r.matcher
                    .namespace_contains
                    .as_ref()
                    .map(|s| s.to_lowercase())
            })
            .collect();
        Detector {
            rules,
            opts,
            contains_lower,
            now: crate::operate::clock::now_rfc3339,
        }
    }

    /// Replaces the clock used for events without a usable `requestReceivedTimestamp`
    /// (golden tests pin it to a placeholder).
    pub fn with_clock(mut self, now: fn() -> String) -> Detector {
        self.now = now;
        self
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn options(&self) -> &DetectOptions {
        &self.opts
    }

    /// Appends 0..n events for one line (without its trailing newline; a trailing '\r'
    /// tolerated).
    pub fn detect(&self, line: &[u8], out: &mut Vec<FrictionEvent>) -> LineVerdict {
        if is_blank(line) {
            return LineVerdict::Blank;
        }
        match extract(line) {
            Ok(f) => self.evaluate(&f, out),
            Err(_) => LineVerdict::Malformed,
        }
    }

    /// Appends 0..n events for one record: an audit event, or an `EventList` document whose
    /// items are each evaluated (in order) like a line.
    pub fn detect_record(&self, record: &[u8], out: &mut Vec<FrictionEvent>) -> Verdict {
        if is_blank(record) {
            return Verdict::Event(LineVerdict::Blank);
        }
        let f = match extract(record) {
            Ok(f) => f,
            Err(e) => return Verdict::Malformed(e),
        };
        match f.items {
            Some(list) if f.kind == "EventList" => {
                let mut tally = ListTally::default();
                // `items` were validated by `extract`, so this only fails on a bug.
                for item in items(list).unwrap_or_default() {
                    tally.count(self.detect(item, out));
                }
                Verdict::List(tally)
            }
            _ => Verdict::Event(self.evaluate(&f, out)),
        }
    }

    /// Evaluates already extracted fields (an EventList item, or a line the caller parsed).
    pub fn evaluate(&self, f: &AuditFields<'_>, out: &mut Vec<FrictionEvent>) -> LineVerdict {
        if f.stage != "ResponseComplete" {
            return LineVerdict::SkippedStage;
        }
        if self.excluded_everywhere(&f.namespace) {
            return LineVerdict::Evaluated;
        }
        let internal = is_internal_actor(&f.username);
        let mut entity: Option<(String, &str)> = None;
        for (i, rule) in self.rules.rules.iter().enumerate() {
            if rule.ignore_system && internal {
                continue;
            }
            if !self.matches(i, rule, f) {
                continue;
            }
            let (ns, workload) = entity.get_or_insert_with(|| self.entity(f));
            let description = render(&rule.description, f);
            out.push(FrictionEvent::new(Parts {
                kind: &rule.name,
                severity: rule.severity,
                actor: &f.username,
                workflow: &rule.workflow,
                description: &description,
                timestamp: &f.request_received_timestamp,
                now: &self.now,
                namespace: ns,
                workload,
            }));
        }
        LineVerdict::Evaluated
    }

    /// Cluster-scoped objects (no namespace) are in no namespace, so no list excludes them.
    fn excluded_everywhere(&self, ns: &str) -> bool {
        !ns.is_empty() && self.rules.ignore_namespaces.iter().any(|n| n == ns)
            || self.opts.own_namespace.as_deref() == Some(ns)
    }

    /// Every condition of rule `i` (the actor filter aside).
    fn matches(&self, i: usize, rule: &Rule, f: &AuditFields<'_>) -> bool {
        let m = &rule.matcher;
        let eq = |want: &Option<String>, have: &str| want.as_deref().map_or(true, |w| w == have);
        let one_of =
            |list: &[String], have: &str| list.is_empty() || list.iter().any(|x| x == have);
        eq(&m.resource, &f.resource)
            && one_of(&m.resources, &f.resource)
            && eq(&m.subresource, &f.subresource)
            && eq(&m.verb, &f.verb)
            && one_of(&m.verbs, &f.verb)
            && self.contains_lower[i]
                .as_deref()
                .map_or(true, |c| contains_ignore_case(&f.namespace, c))
            && (f.namespace.is_empty() || !m.ignore_namespaces.iter().any(|n| n == &*f.namespace))
            && m.annotation
                .as_ref()
                .map_or(true, |(k, v)| f.annotation_is(k, v))
    }

    /// (namespace, workload) of the entity: the event's namespace or ENTITY_NAMESPACE; the
    /// object's name (or its resource, or `unknown`) with pod suffixes stripped.
    fn entity<'f>(&self, f: &'f AuditFields<'_>) -> (String, &'f str) {
        let ns = if f.namespace.is_empty() {
            self.opts.entity_namespace.clone()
        } else {
            f.namespace.to_string()
        };
        let raw: &str = if !f.name.is_empty() {
            &f.name
        } else if !f.resource.is_empty() {
            &f.resource
        } else {
            "unknown"
        };
        (ns, workload_name(raw))
    }
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Case-insensitive substring test; `needle` is already lower-case. Allocates only for
/// non-ASCII haystacks.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    if haystack.is_ascii() && needle.is_ascii() {
        let (h, n) = (haystack.as_bytes(), needle.as_bytes());
        n.is_empty()
            || h.windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
    } else {
        haystack.to_lowercase().contains(needle)
    }
}

/// The workload behind a pod-like name, stripping the first suffix that applies, in the Go
/// agent's order:
/// 1. `-[a-z0-9]{5,10}-[a-z0-9]{5}$` (Deployment → ReplicaSet → Pod),
/// 2. `-\d+$` (StatefulSet ordinal),
/// 3. `-[a-z0-9]*[0-9][a-z0-9]*$` (DaemonSet/Job hash; needs a digit).
pub fn workload_name(name: &str) -> &str {
    if name.is_empty() {
        return "unknown";
    }
    let b = name.as_bytes();
    let class = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    // The classes exclude '-', so each pattern can only match the last one or two segments.
    let last_dash = b.iter().rposition(|&c| c == b'-');
    if let Some(d2) = last_dash {
        let last = &b[d2 + 1..];
        if last.len() == 5 && class(last) {
            if let Some(d1) = b[..d2].iter().rposition(|&c| c == b'-') {
                let mid = &b[d1 + 1..d2];
                if (5..=10).contains(&mid.len()) && class(mid) {
                    return &name[..d1];
                }
            }
        }
        if !last.is_empty() && last.iter().all(u8::is_ascii_digit) {
            return &name[..d2];
        }
        if class(last) && last.iter().any(u8::is_ascii_digit) {
            return &name[..d2];
        }
    }
    name
}

/// Fills a description template in one pass (values are not re-scanned for `{tokens}`).
pub fn render(t: &Template, f: &AuditFields<'_>) -> String {
    let mut out = String::with_capacity(96);
    for p in &t.0 {
        out.push_str(match p {
            Piece::Text(s) => s,
            Piece::Actor => &f.username,
            Piece::Resource => &f.resource,
            Piece::Namespace => &f.namespace,
            Piece::Name => &f.name,
            Piece::Verb => &f.verb,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_from_the_go_comments() {
        for (name, want) in [
            ("payments-api-7d9f8b6c5-xk2pq", "payments-api"),
            ("my-service-b4c7fb94f-xyz12", "my-service"),
            ("checkout-5d8f9c7b6d-abcde", "checkout"),
            ("postgres-0", "postgres"),
            ("kafka-12", "kafka"),
            ("fluent-bit-x7k2p", "fluent-bit"),
            // The Deployment pattern wins over the DaemonSet one when the name's last two
            // segments fit it: the Go agent strips "exporter-2xk9f" here.
            ("node-exporter-2xk9f", "node"),
            ("kube-proxy-x7k2p", "kube"),
            ("coredns-5d78c9869d-abcde", "coredns"),
            ("web-0", "web"),
            // rules.yaml's comment claims this becomes "my-service", but "xyz" fits none of the
            // three patterns (3 characters, no digit): the Go agent kept the name as is.
            ("my-service-b4c7fb94f-xyz", "my-service-b4c7fb94f-xyz"),
            ("payments-api-pod", "payments-api-pod"),
            ("backup-job-28593840-zq8xr", "backup-job"),
            ("db-migrate-abc1d", "db"),
            ("debug-pod", "debug-pod"),
            ("netshoot", "netshoot"),
            ("my-service", "my-service"),
            ("", "unknown"),
            ("db-credentials", "db-credentials"),
            ("node-01", "node"),
            (
                "system:openshift:scc:privileged",
                "system:openshift:scc:privileged",
            ),
            ("app-ABCDE-fghij", "app-ABCDE-fghij"),
            ("app-abcd-fghij", "app-abcd-fghij"),
            ("app-abcdefghijk-fghij", "app-abcdefghijk-fghij"),
            ("-abcde-fghij", ""),
            ("x-", "x-"),
            ("v1-2", "v1"),
        ] {
            assert_eq!(workload_name(name), want, "{name}");
        }
    }

    #[test]
    fn actors() {
        for (u, internal) in [
            ("alice@example.com", false),
            ("kube:admin", false),
            ("system:admin", false),
            ("system:masters", false),
            ("system:serviceaccount:ns:sa", true),
            ("system:node:n1", true),
            ("system:kube-scheduler", true),
            ("system:anonymous", true),
            ("system:", true),
            ("System:admin", false),
            ("", false),
            // Managed control planes: their components are not people, their users are.
            ("eks:addon-manager", true),
            ("eks:node-manager", true),
            ("kubernetes-admin", false),
            ("arn:aws:sts::123456789012:assumed-role/Admin/alice", false),
            ("alice@example.com", false),
            (
                "container-engine-robot@some-project.iam.gserviceaccount.com",
                true,
            ),
            ("123456789-compute@developer.gserviceaccount.com", true),
            ("aksService", true),
            ("masterclient", false),
        ] {
            assert_eq!(is_internal_actor(u), internal, "{u}");
        }
    }

    #[test]
    fn case_insensitive_contains() {
        assert!(contains_ignore_case("Production-EU", "production"));
        assert!(contains_ignore_case("PRODUCTION", "produc"));
        assert!(!contains_ignore_case("prod", "production"));
        assert!(!contains_ignore_case("", "x"));
        assert!(contains_ignore_case("ÉPRODUCTION", "production"));
    }
}
