//! Deciding what is friction: one audit record in, zero or more friction events out.
//!
//! - [`json`]: an RFC 8259 scanner over `&[u8]` that extracts a few paths and skips the rest;
//! - [`audit`]: the audit event fields the rules use ([`audit::AuditFields`]);
//! - [`cloud`]: audit events in the envelopes of cloud logs and CLIs (EKS, GKE, AKS), and
//!   [`cloud::CloudSource`], a stream of any of them read record by record;
//! - [`yaml`] and [`rules`]: the rules file (a YAML subset with line:column errors) and its
//!   model and validation;
//! - [`engine`]: the [`Detector`] (actors, conditions, namespace exclusions, entities);
//! - [`event`]: the [`FrictionEvent`] and the backend's limits.
//!
//! Pure: nothing here reads the environment, counts into metrics, or does I/O other than
//! reading a rules file on request ([`rules::load_file`]) and the stream a
//! [`cloud::CloudSource`] is handed.

pub mod audit;
pub mod cloud;
pub mod engine;
pub mod event;
pub mod json;
pub mod rules;
pub mod yaml;

pub use engine::{DetectOptions, Detector, LineVerdict, ListTally, Verdict};
pub use event::FrictionEvent;

/// Rules and events for the unit tests of the modules downstream (pipeline, replay, deliver).
#[cfg(test)]
pub(crate) mod testing {
    use super::rules::{Match, Rule, RuleSet, Severity, Template};
    use super::{DetectOptions, Detector, FrictionEvent};

    /// `kubectl-exec`: any `exec` subresource, humans only.
    pub fn exec_rule() -> Rule {
        Rule {
            name: "kubectl-exec".into(),
            description_source: String::new(),
            description: Template::default(),
            severity: Severity::High,
            workflow: "deploy".into(),
            ignore_system: true,
            matcher: Match {
                subresource: Some("exec".into()),
                ..Match::default()
            },
            line: 1,
            suppress: None,
            same_act: None,
            fixtures: Vec::new(),
        }
    }

    /// A detector over `rules`, with the default options.
    pub fn detector(rules: Vec<Rule>) -> Detector {
        Detector::new(
            RuleSet {
                rules,
                ignore_namespaces: vec![],
            },
            DetectOptions::default(),
        )
    }

    /// The `n`-th of a series of distinct events.
    pub fn event(n: usize) -> FrictionEvent {
        FrictionEvent {
            entity_ref: format!("component:ns/app{n}"),
            kind: "kubectl-exec".into(),
            severity: Severity::High,
            actor: "alice".into(),
            workflow: "debug".into(),
            description: format!("exec \"{n}\"\n"),
            timestamp: "2026-11-25T22:50:01Z".into(),
            namespace: "ns".into(),
            service: format!("app{n}"),
            repeat: Default::default(),
        }
    }
}
