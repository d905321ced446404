//! Getting friction events to the backend, in order, exactly as often as needed.
//!
//! - [`queue`]: the bounded, ordered [`Queue`] between the pipeline stage and the sender;
//! - [`sender`]: the one sender thread, its retry policy, dead letters, pacing, and the one
//!   drain-within-grace shutdown;
//! - [`suppress`]: the suppression window (one event, then one summary, per rule, entity and
//!   actor), kept under the queue's lock so it changes exactly as events are acknowledged;
//! - [`http_client`]: HTTP/1.1 over `TcpStream` (keep-alive, deadlines, bounded responses), the
//!   backend URL and the API key.
//!
//! Upstream of nothing: it takes `FrictionEvent`s from `detect` and opaque places from the
//! stage, and never looks at where they came from.

pub mod http_client;
pub mod queue;
pub mod sender;
pub mod suppress;

pub use queue::{Queue, Room};
pub use sender::{
    check_backend, check_key, key_fix, log_backend_check, spawn_sender, DeliveryOptions,
    DeliveryStats, Drained, KeyCheck, RunMode, SenderHandle,
};
