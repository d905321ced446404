//! Process-wide counters and gauges, updated lock-free by the pipeline threads and rendered in
//! the Prometheus text format by `/metrics`.
//!
//! One global [`METRICS`]: every stage increments what it owns; nobody reads counters back to
//! make decisions, except the health checks (`last_*` timestamps, `backend_state`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the last contact with the backend said (for `/readyz` and the banner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Nothing was sent yet.
    Unknown = 0,
    /// The last request was accepted (2xx, or a 4xx that is dead-lettered: the backend answered).
    Ok = 1,
    /// The backend is unreachable, timing out, or answering 5xx/429.
    Failing = 2,
    /// 401/403: the API key is wrong or missing.
    Unauthorized = 3,
}

impl BackendState {
    pub fn from_u8(v: u8) -> BackendState {
        match v {
            1 => BackendState::Ok,
            2 => BackendState::Failing,
            3 => BackendState::Unauthorized,
            _ => BackendState::Unknown,
        }
    }
}

pub struct Metrics {
    // follow
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub oversized_lines: AtomicU64,
    pub rotations: AtomicU64,
    pub truncations: AtomicU64,
    /// Size of the file being read, and the offset reached in it (lag = size - offset).
    pub file_size: AtomicU64,
    pub read_offset: AtomicU64,
    /// 1 while the audit log is open.
    pub log_open: AtomicU64,
    /// Unix ms of the last complete line read / of the follower's last loop turn.
    pub last_line_unix_ms: AtomicU64,
    pub follower_tick_unix_ms: AtomicU64,
    // parse + detect
    pub malformed_lines: AtomicU64,
    pub blank_lines: AtomicU64,
    pub stages_skipped: AtomicU64,
    pub events_matched: Mutex<BTreeMap<String, u64>>,
    // deliver
    pub events_sent: Mutex<BTreeMap<String, u64>>,
    pub events_rejected: Mutex<BTreeMap<u16, u64>>,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
    pub queue_depth: AtomicI64,
    pub backend_state: AtomicU8,
    pub sender_tick_unix_ms: AtomicU64,
    // checkpoint
    pub checkpoint_offset: AtomicU64,
    pub checkpoint_writes: AtomicU64,
    // rules
    pub rules_loaded: AtomicU64,
    pub rule_reloads: AtomicU64,
    pub rule_reload_failures: AtomicU64,
}

pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            lines_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            oversized_lines: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            file_size: AtomicU64::new(0),
            read_offset: AtomicU64::new(0),
            log_open: AtomicU64::new(0),
            last_line_unix_ms: AtomicU64::new(0),
            follower_tick_unix_ms: AtomicU64::new(0),
            malformed_lines: AtomicU64::new(0),
            blank_lines: AtomicU64::new(0),
            stages_skipped: AtomicU64::new(0),
            events_matched: Mutex::new(BTreeMap::new()),
            events_sent: Mutex::new(BTreeMap::new()),
            events_rejected: Mutex::new(BTreeMap::new()),
            dead_lettered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            backend_state: AtomicU8::new(0),
            sender_tick_unix_ms: AtomicU64::new(0),
            checkpoint_offset: AtomicU64::new(0),
            checkpoint_writes: AtomicU64::new(0),
            rules_loaded: AtomicU64::new(0),
            rule_reloads: AtomicU64::new(0),
            rule_reload_failures: AtomicU64::new(0),
        }
    }

    pub fn inc_matched(&self, rule: &str) {
        bump(&self.events_matched, rule.to_string());
    }

    pub fn inc_sent(&self, rule: &str) {
        bump(&self.events_sent, rule.to_string());
    }

    pub fn inc_rejected(&self, status: u16) {
        bump(&self.events_rejected, status);
    }

    pub fn set_backend_state(&self, s: BackendState) {
        self.backend_state.store(s as u8, Ordering::Relaxed);
    }

    pub fn backend_state(&self) -> BackendState {
        BackendState::from_u8(self.backend_state.load(Ordering::Relaxed))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    // A poisoned lock only means another thread panicked mid-increment; the map is still usable.
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(key).or_insert(0) += 1;
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
