//! Making the agent operable: what every stage may use and what uses none of them.
//!
//! [`log`] (records on stderr, sanitising, throttling), [`metrics`] (the counters each stage is
//! handed, Prometheus text, liveness and readiness), [`health`] (the `/healthz`, `/readyz` and
//! `/metrics` server), [`signal`] (the crate's only `unsafe`), [`clock`] (RFC 3339 without a
//! time crate) and [`files`] (private files never opened through a symlink). Nothing here imports from `source`, `detect` or `deliver`.

pub mod clock;
pub mod files;
pub mod health;
pub mod log;
pub mod metrics;
pub mod signal;
