//! Deciding what is friction: one audit record in, zero or more friction events out.
//!
//! - [`json`]: an RFC 8259 scanner over `&[u8]` that extracts a few paths and skips the rest;
//! - [`audit`]: the audit event fields the rules use ([`audit::AuditFields`]);
//! - [`yaml`] and [`rules`]: the rules file (a YAML subset with line:column errors) and its
//!   model and validation;
//! - [`engine`]: the [`Detector`] (actors, conditions, namespace exclusions, entities);
//! - [`event`]: the [`FrictionEvent`] and the backend's limits.
//!
//! Pure: nothing here reads the environment, counts into metrics, or does I/O other than
//! reading a rules file on request ([`rules::load_file`]).

pub mod audit;
pub mod engine;
pub mod event;
pub mod json;
pub mod rules;
pub mod yaml;

pub use engine::{DetectOptions, Detector, LineVerdict, ListTally, Verdict};
pub use event::FrictionEvent;
