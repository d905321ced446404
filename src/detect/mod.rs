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
