//! healert-agent: follows the Kubernetes API server's audit log, detects platform friction and
//! delivers it to the Healert backend. std only.
//!
//! The tree reads like the data path (see ARCHITECTURE.md):
//! [`source`] (where audit records come from: the bounded line reader, the file follower, positions
//! and the checkpoint) → [`detect`] (JSON scanner, audit fields, rules, the engine, the friction
//! event) → [`deliver`] (the ordered queue, the sender and its retry policy, the HTTP client).
//! [`pipeline`] is the one stage that joins them; [`agent`] (`run`), [`replay`], [`explain`],
//! [`fixtures`] (`test`) and [`validate`] are the commands; [`config`] is the only reader of the environment; [`operate`] (health
//! server, metrics, logs, signals, clock) is what every stage may use and what uses none of them.
//!
//! Imports run one way: from the top (commands, pipeline, config) down, from `source` to
//! `detect` to `deliver`, and everything may use `operate`.

#![deny(unsafe_code)]

pub mod agent;
pub mod config;
pub mod deliver;
pub mod detect;
pub mod explain;
pub mod fixtures;
pub mod operate;
pub mod pipeline;
pub mod replay;
pub mod source;
pub mod validate;
pub mod webhook;

/// The agent's version, as printed by `healert-agent version` and sent as User-Agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
