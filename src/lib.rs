//! healert-agent: follows the Kubernetes API server's audit log, detects platform friction and
//! delivers it to the Healert backend. std only.
//!
//! The pipeline, one module per stage (see ARCHITECTURE.md):
//! `tail` (follow the file, split complete lines) → `audit`/`json` (parse the event) →
//! `detect` (rules → `event::FrictionEvent`) → `deliver` (ordered queue, retries, over
//! `http_client`) → acknowledge → `checkpoint`. `agent` wires the threads; `config` reads the
//! environment; `rules`/`yaml` load rules.yaml; `metrics`, `http_server`, `log` and `signal`
//! make it operable.

pub mod agent;
pub mod audit;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod deliver;
pub mod detect;
pub mod event;
pub mod http_client;
pub mod http_server;
pub mod json;
pub mod log;
pub mod metrics;
pub mod replay;
pub mod rules;
pub mod signal;
pub mod tail;
pub mod validate;
pub mod yaml;

/// The agent's version, as printed by `healert-agent version` and sent as User-Agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
