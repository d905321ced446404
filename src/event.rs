//! The friction event: what one matching rule emits for one audit event, and its JSON payload
//! for `POST /events` (issue 3 fills in construction, sanitising, limits and serialisation).

use crate::rules::Severity;

/// One event for the backend. Every string is already sanitised and within the backend's
/// limits when it is built (see `detect`).
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
}
