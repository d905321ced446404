//! The one integration-test binary: every test here drives the real `healert-agent` binary or
//! the library's public API. Shared helpers (a std-only backend sink, audit line builders,
//! process control) live in `support`.

mod cli;
mod cloud;
mod deliver;
mod detect;
mod e2e_follow;
mod e2e_ops;
mod follow;
mod gen;
mod harden;
mod layout;
mod ops;
mod perf_replay;
mod rules;
mod rules_testing;
mod script;
mod secure;
mod sink;
mod soak;
mod support;
mod unseen;
mod walkthrough;
mod webhook;
