//! Process-wide counters and gauges, updated lock-free by the pipeline threads and rendered in
//! the Prometheus text format by `/metrics`.
//!
//! One [`Metrics`] per process, created by the command that runs the pipeline and handed to
//! each stage (`&Metrics` / `Arc<Metrics>`): every stage increments what it owns, and each
//! thread beats its own [`Heartbeat`]. Nobody reads counters back to make decisions, except the
//! health checks (heartbeats, `backend_state`). No global: tests give each agent under test a
//! fresh `Metrics` and assert exact counts.
//!
//! This module also owns what is derived from the counters: [`render_prometheus`] (text
//! format 0.0.4 for `/metrics`), [`health`] (liveness for `/healthz`) and [`readiness`]
//! (`/readyz`). They only read atomics and briefly lock the small per-rule maps, so a scrape
//! never holds up the pipeline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// A pipeline thread whose tick is older than this is reported as stalled by [`health`].
pub const STALL_AFTER_MS: u64 = 30_000;

/// What the last contact with the backend said (for `/readyz` and the banner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Nothing was sent yet.
    Unknown = 0,
    /// The last request was accepted (2xx, or 400/422, dead-lettered: the backend answered).
    Ok = 1,
    /// The backend is unreachable, timing out, or answering 5xx/429.
    Failing = 2,
    /// 401/403: the API key is wrong or missing.
    Unauthorized = 3,
    /// Another 4xx (404, 405, 413...): the base path or a proxy in between is wrong.
    Refusing = 4,
}

impl BackendState {
    pub fn from_u8(v: u8) -> BackendState {
        match v {
            1 => BackendState::Ok,
            2 => BackendState::Failing,
            3 => BackendState::Unauthorized,
            4 => BackendState::Refusing,
            _ => BackendState::Unknown,
        }
    }
}

/// Where audit records come from (`AUDIT_SOURCE`): one per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AuditSource {
    /// The audit log file, followed across rotations (the default).
    File = 0,
    /// Standard input: audit lines or a cloud CLI's output, read to its end.
    Stdin = 1,
    /// kube-apiserver's audit webhook, spooled to disk before it is acknowledged.
    Webhook = 2,
}

impl AuditSource {
    pub const ALL: [AuditSource; 3] = [AuditSource::File, AuditSource::Stdin, AuditSource::Webhook];

    pub fn from_u8(v: u8) -> AuditSource {
        match v {
            1 => AuditSource::Stdin,
            2 => AuditSource::Webhook,
            _ => AuditSource::File,
        }
    }

    /// The name `AUDIT_SOURCE` takes, used in labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSource::File => "file",
            AuditSource::Stdin => "stdin",
            AuditSource::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<AuditSource> {
        AuditSource::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

#[derive(Debug)]
pub struct Metrics {
    /// The active [`AuditSource`] (`as u8`).
    pub source: AtomicU8,
    // webhook
    /// Requests answered by the webhook, per HTTP status.
    pub webhook_requests: Mutex<BTreeMap<u16, u64>>,
    /// Audit events received in webhook batches (items of the EventLists).
    pub webhook_events_received: AtomicU64,
    /// Items written to the spool (each produced at least one friction event).
    pub webhook_events_spooled: AtomicU64,
    /// Items not spooled again because every (auditID, rule) they produce was spooled before
    /// (a batch re-sent by kube-apiserver).
    pub webhook_duplicates: AtomicU64,
    /// Spooled bytes not yet acknowledged by the checkpoint.
    pub spool_backlog_bytes: AtomicU64,
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
    /// The follow thread's loop turns (also while idle or waiting for room in the queue).
    pub follower: Heartbeat,
    // parse + detect
    pub malformed_lines: AtomicU64,
    pub blank_lines: AtomicU64,
    pub stages_skipped: AtomicU64,
    /// Lines (or records of a streamed line) not evaluated, per reason.
    pub lines_dropped: Mutex<BTreeMap<&'static str, u64>>,
    /// Records evaluated although not read whole, per how they were read.
    pub records_recovered: Mutex<BTreeMap<&'static str, u64>>,
    pub events_matched: Mutex<BTreeMap<String, u64>>,
    // suppress
    /// Repeats counted into a window's summary instead of being sent, per rule.
    pub events_suppressed: Mutex<BTreeMap<String, u64>>,
    /// Events merged into the previous one as the same act (`same_act`), per rule.
    pub events_same_act: Mutex<BTreeMap<String, u64>>,
    /// Summaries acknowledged by the backend, per rule.
    pub suppress_summaries: Mutex<BTreeMap<String, u64>>,
    /// Windows open now.
    pub suppress_windows: AtomicI64,
    /// First events that found no room for a window (MAX_WINDOWS) and were sent unsuppressed.
    pub suppress_overflow: AtomicU64,
    /// Suppression state files written.
    pub suppress_state_writes: AtomicU64,
    // deliver
    pub events_sent: Mutex<BTreeMap<String, u64>>,
    pub events_rejected: Mutex<BTreeMap<u16, u64>>,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
    /// Kept-alive backend connections closed because bytes nobody asked for followed a
    /// response (the client's count, copied by the sender).
    pub connections_discarded: AtomicU64,
    pub queue_depth: AtomicI64,
    pub backend_state: AtomicU8,
    /// Unix ms at which `backend_state` last changed (set by [`Metrics::set_backend_state`]).
    pub backend_since_unix_ms: AtomicU64,
    /// HTTP status of the last answer from the backend (0: none yet, or a transport error);
    /// only used to make the `/readyz` reason precise.
    pub backend_last_status: AtomicU64,
    /// The sender thread's loop turns (also while idle or backing off).
    pub sender: Heartbeat,
    // checkpoint
    pub checkpoint_offset: AtomicU64,
    pub checkpoint_writes: AtomicU64,
    // rules
    pub rules_loaded: AtomicU64,
    pub rule_reloads: AtomicU64,
    pub rule_reload_failures: AtomicU64,
    // process
    /// Unix ms at which the pipeline started ([`Metrics::mark_started`]); the grace period of
    /// [`health`] for threads that have not ticked yet counts from here.
    pub started_unix_ms: AtomicU64,
}

/// A thread's sign of life: Unix ms of its last loop turn (0: none yet). Only the thread that
/// owns it beats it; [`health`] reads it.
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub const fn new() -> Heartbeat {
        Heartbeat(AtomicU64::new(0))
    }

    /// Records a loop turn now.
    pub fn beat(&self) {
        self.0.store(now_unix_ms(), Ordering::Relaxed);
    }

    /// Declares that the thread is about to block on an operation bounded by a deadline at
    /// `unix_ms` (a backend request and its HTTP_TIMEOUT): it counts as alive until then, and
    /// stalled only [`STALL_AFTER_MS`] past it.
    pub fn busy_until(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::Relaxed);
    }

    /// Records a loop turn at `unix_ms` (tests).
    pub fn beat_at(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::Relaxed);
    }

    /// Unix ms of the last beat (or of the end of a declared [`Heartbeat::busy_until`], which
    /// may lie ahead), 0 if none.
    pub fn last_unix_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            source: AtomicU8::new(0),
            webhook_requests: Mutex::new(BTreeMap::new()),
            webhook_events_received: AtomicU64::new(0),
            webhook_events_spooled: AtomicU64::new(0),
            webhook_duplicates: AtomicU64::new(0),
            spool_backlog_bytes: AtomicU64::new(0),
            lines_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            oversized_lines: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            file_size: AtomicU64::new(0),
            read_offset: AtomicU64::new(0),
            log_open: AtomicU64::new(0),
            last_line_unix_ms: AtomicU64::new(0),
            follower: Heartbeat::new(),
            malformed_lines: AtomicU64::new(0),
            blank_lines: AtomicU64::new(0),
            stages_skipped: AtomicU64::new(0),
            lines_dropped: Mutex::new(BTreeMap::new()),
            records_recovered: Mutex::new(BTreeMap::new()),
            events_matched: Mutex::new(BTreeMap::new()),
            events_suppressed: Mutex::new(BTreeMap::new()),
            events_same_act: Mutex::new(BTreeMap::new()),
            suppress_summaries: Mutex::new(BTreeMap::new()),
            suppress_windows: AtomicI64::new(0),
            suppress_overflow: AtomicU64::new(0),
            suppress_state_writes: AtomicU64::new(0),
            events_sent: Mutex::new(BTreeMap::new()),
            events_rejected: Mutex::new(BTreeMap::new()),
            dead_lettered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            connections_discarded: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            backend_state: AtomicU8::new(0),
            backend_since_unix_ms: AtomicU64::new(0),
            backend_last_status: AtomicU64::new(0),
            sender: Heartbeat::new(),
            checkpoint_offset: AtomicU64::new(0),
            checkpoint_writes: AtomicU64::new(0),
            rules_loaded: AtomicU64::new(0),
            rule_reloads: AtomicU64::new(0),
            rule_reload_failures: AtomicU64::new(0),
            started_unix_ms: AtomicU64::new(0),
        }
    }

    pub fn inc_matched(&self, rule: &str) {
        bump(&self.events_matched, rule.to_string());
    }

    /// A line (or record) not evaluated: `reason` is `malformed`, `too_large`, `too_deep` or
    /// `over_max_line`.
    pub fn inc_dropped(&self, reason: &'static str) {
        bump(&self.lines_dropped, reason);
    }

    /// A record evaluated although not read whole: `how` is `damaged` (a broken body
    /// skipped) or `streamed` (a line over MAX_LINE_BYTES read as it passed).
    pub fn inc_recovered(&self, how: &'static str) {
        bump(&self.records_recovered, how);
    }

    /// A repeat counted into a summary (`same_act`: merged into the previous event instead).
    pub fn inc_suppressed(&self, rule: &str, same_act: bool) {
        let map = if same_act {
            &self.events_same_act
        } else {
            &self.events_suppressed
        };
        bump(map, rule.to_string());
    }

    pub fn inc_summary(&self, rule: &str) {
        bump(&self.suppress_summaries, rule.to_string());
    }

    /// A webhook request answered with `status`.
    pub fn inc_webhook_request(&self, status: u16) {
        bump(&self.webhook_requests, status);
    }

    /// The active source, as set by [`Metrics::set_source`].
    pub fn source(&self) -> AuditSource {
        AuditSource::from_u8(self.source.load(Ordering::Relaxed))
    }

    pub fn set_source(&self, s: AuditSource) {
        self.source.store(s as u8, Ordering::Relaxed);
    }

    pub fn inc_sent(&self, rule: &str) {
        bump(&self.events_sent, rule.to_string());
    }

    pub fn inc_rejected(&self, status: u16) {
        bump(&self.events_rejected, status);
    }

    /// Records what the last contact with the backend said; remembers when the state changed
    /// so `/readyz` can say "since ...".
    pub fn set_backend_state(&self, s: BackendState) {
        let old = self.backend_state.swap(s as u8, Ordering::Relaxed);
        if old != s as u8 {
            self.backend_since_unix_ms
                .store(now_unix_ms(), Ordering::Relaxed);
        }
    }

    /// Records the HTTP status of the last backend answer (0 for a transport error). Optional:
    /// it only sharpens the `/readyz` reason.
    pub fn set_backend_status(&self, status: u16) {
        self.backend_last_status
            .store(u64::from(status), Ordering::Relaxed);
    }

    /// Marks the start of the pipeline (once; later calls keep the first time).
    pub fn mark_started(&self, now_ms: u64) {
        let _ = self.started_unix_ms.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
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

pub use crate::operate::clock::now_unix_ms;

/// Content-Type of [`render_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `m` in the Prometheus text exposition format 0.0.4, as of now.
pub fn render_prometheus(m: &Metrics) -> String {
    render_prometheus_at(m, now_unix_ms())
}

/// [`render_prometheus`] with an explicit clock (tests). Families appear in a fixed order,
/// each with `# HELP` and `# TYPE` before its samples; counters end in `_total`.
///
/// `healert_agent_seconds_since_last_line` is `NaN` until the first complete line was read
/// (there is no honest number to give; `NaN` compares false in every alert expression).
pub fn render_prometheus_at(m: &Metrics, now_ms: u64) -> String {
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut w = Writer {
        out: String::with_capacity(4096),
    };

    w.family(
        "healert_agent_build_info",
        "gauge",
        "Always 1; the version label names the running agent.",
    );
    w.sample(
        "healert_agent_build_info",
        &[("version", crate::VERSION)],
        1,
    );
    w.family(
        "healert_agent_start_time_seconds",
        "gauge",
        "Unix time at which the pipeline started (0 if not started).",
    );
    w.sample(
        "healert_agent_start_time_seconds",
        &[],
        Seconds(ld(&m.started_unix_ms)),
    );
    w.family(
        "healert_agent_audit_source",
        "gauge",
        "1 for the source audit records come from (AUDIT_SOURCE), 0 for the others.",
    );
    let active = m.source();
    for s in AuditSource::ALL {
        w.sample(
            "healert_agent_audit_source",
            &[("source", s.as_str())],
            u8::from(s == active),
        );
    }

    // Follow.
    for (name, help, v) in [
        (
            "healert_agent_lines_read_total",
            "Complete lines read from the audit log.",
            &m.lines_read,
        ),
        (
            "healert_agent_bytes_read_total",
            "Bytes read from the audit log.",
            &m.bytes_read,
        ),
        (
            "healert_agent_oversized_lines_total",
            "Lines longer than MAX_LINE_BYTES (read in streaming mode).",
            &m.oversized_lines,
        ),
        (
            "healert_agent_malformed_lines_total",
            "Lines (or list items) not evaluated because they are not JSON the agent can read.",
            &m.malformed_lines,
        ),
        (
            "healert_agent_blank_lines_total",
            "Empty or whitespace-only lines.",
            &m.blank_lines,
        ),
        (
            "healert_agent_stages_skipped_total",
            "Audit events skipped because of their stage (e.g. RequestReceived).",
            &m.stages_skipped,
        ),
        (
            "healert_agent_rotations_total",
            "Rotations of the audit log seen (the file was replaced).",
            &m.rotations,
        ),
        (
            "healert_agent_truncations_total",
            "Truncations of the audit log seen (the file shrank in place).",
            &m.truncations,
        ),
    ] {
        w.family(name, "counter", help);
        w.sample(name, &[], ld(v));
    }
    for (name, help, v) in [
        (
            "healert_agent_log_open",
            "1 while the audit log is open, else 0.",
            ld(&m.log_open),
        ),
        (
            "healert_agent_file_size_bytes",
            "Size of the audit log being read.",
            ld(&m.file_size),
        ),
        (
            "healert_agent_read_offset_bytes",
            "Offset reached in the audit log being read.",
            ld(&m.read_offset),
        ),
        (
            "healert_agent_lag_bytes",
            "Bytes of the audit log not read yet (file size minus read offset).",
            ld(&m.file_size).saturating_sub(ld(&m.read_offset)),
        ),
    ] {
        w.family(name, "gauge", help);
        w.sample(name, &[], v);
    }
    w.family(
        "healert_agent_seconds_since_last_line",
        "gauge",
        "Seconds since the last complete line was read; NaN before the first line.",
    );
    let last = ld(&m.last_line_unix_ms);
    let since = if last == 0 {
        f64::NAN
    } else {
        now_ms.saturating_sub(last) as f64 / 1000.0
    };
    w.sample("healert_agent_seconds_since_last_line", &[], Float(since));

    // What could not be read whole: dropped, or evaluated from what the rules read.
    let dropped = snapshot(&m.lines_dropped);
    w.family(
        "healert_agent_lines_dropped_total",
        "counter",
        "Lines (or records of a streamed line) not evaluated, per reason: malformed, too_large, too_deep, over_max_line, truncated (a cloud log message cut short), unknown_format (no input format matches), not_audit (a record that is not an audit event).",
    );
    for reason in [
        "malformed",
        "too_large",
        "too_deep",
        "over_max_line",
        "truncated",
        "unknown_format",
        "not_audit",
    ] {
        w.sample(
            "healert_agent_lines_dropped_total",
            &[("reason", reason)],
            dropped.get(reason).copied().unwrap_or(0),
        );
    }
    let recovered = snapshot(&m.records_recovered);
    w.family(
        "healert_agent_records_recovered_total",
        "counter",
        "Records evaluated although not read whole: damaged (a broken body skipped), streamed (a line over MAX_LINE_BYTES read as it passed).",
    );
    for how in ["damaged", "streamed"] {
        w.sample(
            "healert_agent_records_recovered_total",
            &[("how", how)],
            recovered.get(how).copied().unwrap_or(0),
        );
    }

    // Detect and deliver, per rule. Both families carry the same rule labels so that
    // `sent / matched` works for a rule that matched but never got through.
    let matched = snapshot(&m.events_matched);
    let sent = snapshot(&m.events_sent);
    let mut rules: Vec<&String> = matched.keys().chain(sent.keys()).collect();
    rules.sort();
    rules.dedup();
    for (name, help, map) in [
        (
            "healert_agent_events_matched_total",
            "Friction events produced by each rule.",
            &matched,
        ),
        (
            "healert_agent_events_sent_total",
            "Friction events accepted by the backend, per rule.",
            &sent,
        ),
    ] {
        w.family(name, "counter", help);
        for r in &rules {
            w.sample(name, &[("rule", r)], map.get(*r).copied().unwrap_or(0));
        }
    }
    // Suppression.
    let suppressed = snapshot(&m.events_suppressed);
    let same_act = snapshot(&m.events_same_act);
    w.family(
        "healert_agent_events_suppressed_total",
        "counter",
        "Friction events not sent because of the suppression window, per rule: repeats counted into a summary (reason=repeat) and second halves of one act (reason=same_act).",
    );
    for (reason, map) in [("repeat", &suppressed), ("same_act", &same_act)] {
        for (rule, n) in map {
            w.sample(
                "healert_agent_events_suppressed_total",
                &[("rule", rule), ("reason", reason)],
                *n,
            );
        }
    }
    let summaries = snapshot(&m.suppress_summaries);
    w.family(
        "healert_agent_suppress_summaries_total",
        "counter",
        "Summary events (\"... N more times in 10m\") acknowledged by the backend, per rule.",
    );
    for (rule, n) in &summaries {
        w.sample(
            "healert_agent_suppress_summaries_total",
            &[("rule", rule)],
            *n,
        );
    }
    w.family(
        "healert_agent_suppress_windows_open",
        "gauge",
        "Suppression windows open now (rule, entity and actor seen within their window).",
    );
    w.sample(
        "healert_agent_suppress_windows_open",
        &[],
        m.suppress_windows.load(Ordering::Relaxed),
    );
    for (name, help, v) in [
        (
            "healert_agent_suppress_overflow_total",
            "First events sent without a window because MAX_WINDOWS windows were open.",
            &m.suppress_overflow,
        ),
        (
            "healert_agent_suppress_state_writes_total",
            "Suppression state files written (beside the checkpoint).",
            &m.suppress_state_writes,
        ),
    ] {
        w.family(name, "counter", help);
        w.sample(name, &[], ld(v));
    }

    let rejected = snapshot(&m.events_rejected);
    w.family(
        "healert_agent_events_rejected_total",
        "counter",
        "Friction events the backend refused for good, per HTTP status (dead-lettered).",
    );
    for (status, n) in &rejected {
        w.sample(
            "healert_agent_events_rejected_total",
            &[("status", &status.to_string())],
            *n,
        );
    }
    for (name, help, v) in [
        (
            "healert_agent_dead_lettered_total",
            "Friction events given up on and written to the dead-letter log.",
            &m.dead_lettered,
        ),
        (
            "healert_agent_retries_total",
            "Delivery attempts repeated after a failure.",
            &m.retries,
        ),
        (
            "healert_agent_backend_connections_discarded_total",
            "Kept-alive backend connections closed instead of reused: bytes nobody asked for followed a response.",
            &m.connections_discarded,
        ),
        (
            "healert_agent_checkpoint_writes_total",
            "Checkpoint files written.",
            &m.checkpoint_writes,
        ),
        (
            "healert_agent_rule_reloads_total",
            "Successful reloads of the rules file (SIGHUP).",
            &m.rule_reloads,
        ),
        (
            "healert_agent_rule_reload_failures_total",
            "Reloads of the rules file refused because the new file is invalid.",
            &m.rule_reload_failures,
        ),
    ] {
        w.family(name, "counter", help);
        w.sample(name, &[], ld(v));
    }
    if active == AuditSource::Webhook {
        let requests = snapshot(&m.webhook_requests);
        w.family(
            "healert_agent_webhook_requests_total",
            "counter",
            "Requests to the audit webhook, per HTTP status answered.",
        );
        for code in [200u16, 400, 401, 413, 429] {
            w.sample(
                "healert_agent_webhook_requests_total",
                &[("code", &code.to_string())],
                requests.get(&code).copied().unwrap_or(0),
            );
        }
        for (code, n) in requests
            .iter()
            .filter(|(c, _)| ![200, 400, 401, 413, 429].contains(*c))
        {
            w.sample(
                "healert_agent_webhook_requests_total",
                &[("code", &code.to_string())],
                *n,
            );
        }
        for (name, help, v) in [
            (
                "healert_agent_webhook_events_received_total",
                "Audit events received in webhook batches.",
                &m.webhook_events_received,
            ),
            (
                "healert_agent_webhook_events_spooled_total",
                "Audit events written to the spool (each produced a friction event).",
                &m.webhook_events_spooled,
            ),
            (
                "healert_agent_webhook_duplicates_total",
                "Audit events received again (same auditID and rule) and not spooled twice.",
                &m.webhook_duplicates,
            ),
        ] {
            w.family(name, "counter", help);
            w.sample(name, &[], ld(v));
        }
        w.family(
            "healert_agent_spool_backlog_bytes",
            "gauge",
            "Spooled bytes the checkpoint has not passed yet (SPOOL_MAX_BYTES caps it: 429 beyond).",
        );
        w.sample(
            "healert_agent_spool_backlog_bytes",
            &[],
            ld(&m.spool_backlog_bytes),
        );
    }
    w.family(
        "healert_agent_queue_depth",
        "gauge",
        "Friction events waiting to be delivered.",
    );
    w.sample(
        "healert_agent_queue_depth",
        &[],
        m.queue_depth.load(Ordering::Relaxed),
    );
    w.family(
        "healert_agent_checkpoint_offset_bytes",
        "gauge",
        "Offset saved in the checkpoint (everything before it was delivered).",
    );
    w.sample(
        "healert_agent_checkpoint_offset_bytes",
        &[],
        ld(&m.checkpoint_offset),
    );
    w.family(
        "healert_agent_rules_loaded",
        "gauge",
        "Rules currently loaded.",
    );
    w.sample("healert_agent_rules_loaded", &[], ld(&m.rules_loaded));

    let state = m.backend_state();
    w.family(
        "healert_agent_backend_up",
        "gauge",
        "1 if the backend accepted the last request, else 0 (also 0 before the first request).",
    );
    w.sample(
        "healert_agent_backend_up",
        &[],
        u8::from(state == BackendState::Ok),
    );
    w.family(
        "healert_agent_backend_state",
        "gauge",
        "1 for the current state of the backend connection, 0 for the others.",
    );
    for s in [
        BackendState::Unknown,
        BackendState::Ok,
        BackendState::Failing,
        BackendState::Unauthorized,
        BackendState::Refusing,
    ] {
        w.sample(
            "healert_agent_backend_state",
            &[("state", s.as_str())],
            u8::from(s == state),
        );
    }
    w.out
}

impl BackendState {
    /// Lower-case name used in metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Unknown => "unknown",
            BackendState::Ok => "ok",
            BackendState::Failing => "failing",
            BackendState::Unauthorized => "unauthorized",
            BackendState::Refusing => "refusing",
        }
    }
}

/// Liveness for `/healthz`: `(true, "ok")` while the follower and the sender have ticked in the
/// last [`STALL_AFTER_MS`]; a thread that has not ticked yet gets that long from
/// [`Metrics::mark_started`]. Otherwise `(false, reason)` naming the stalled thread(s).
pub fn health(m: &Metrics, now_ms: u64) -> (bool, String) {
    let started = m.started_unix_ms.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    for (what, tick) in [
        ("follower", m.follower.last_unix_ms()),
        ("sender", m.sender.last_unix_ms()),
    ] {
        // Not ticked yet: measure from the start. Not started either: nothing to judge yet
        // (the server may come up a moment before the pipeline threads).
        let reference = if tick != 0 { tick } else { started };
        if reference == 0 {
            continue;
        }
        // A clock stepping backwards must not make a thread look stalled.
        let age = now_ms.saturating_sub(reference);
        if age > STALL_AFTER_MS {
            if tick == 0 {
                problems.push(format!(
                    "{what} has not started {} s after start",
                    age / 1000
                ));
            } else {
                problems.push(format!(
                    "{what} stalled: last progress {} s ago",
                    age / 1000
                ));
            }
        }
    }
    if problems.is_empty() {
        (true, "ok".to_string())
    } else {
        (false, problems.join("; "))
    }
}

/// Readiness for `/readyz`: `(true, "ready")` when rules are loaded, the audit log is open and
/// the backend accepted the last request (or none was needed yet); else `(false, reason)`,
/// one line naming every unmet condition.
pub fn readiness(m: &Metrics) -> (bool, String) {
    let mut problems = Vec::new();
    if m.rules_loaded.load(Ordering::Relaxed) == 0 {
        problems.push("no rules loaded".to_string());
    }
    let source = m.source();
    if m.log_open.load(Ordering::Relaxed) != 1 {
        problems.push(
            match source {
                AuditSource::File => "audit log not open",
                AuditSource::Stdin => "stdin not open",
                AuditSource::Webhook => "spool not open",
            }
            .to_string(),
        );
    }
    let since = m.backend_since_unix_ms.load(Ordering::Relaxed);
    let since = if since == 0 {
        String::new()
    } else {
        format!(
            " since {}",
            crate::operate::clock::rfc3339_secs(since / 1000)
        )
    };
    let status = m.backend_last_status.load(Ordering::Relaxed);
    match m.backend_state() {
        BackendState::Unknown | BackendState::Ok => {}
        BackendState::Unauthorized => {
            let code = if status == 401 || status == 403 {
                status.to_string()
            } else {
                "401/403".to_string()
            };
            problems.push(format!(
                "backend rejected the API key ({code}){since}; check HEALERT_API_KEY"
            ));
        }
        BackendState::Refusing => {
            let code = if status == 0 {
                "4xx".to_string()
            } else {
                status.to_string()
            };
            problems.push(format!(
                "backend refuses POST /events ({code}){since}; check HEALERT_BACKEND_URL's base path and any proxy in between"
            ));
        }
        BackendState::Failing => {
            let how = if status == 0 {
                "unreachable".to_string()
            } else {
                format!("failing (last status {status})")
            };
            problems.push(format!("backend {how}{since}"));
        }
    }
    if problems.is_empty() {
        (true, format!("ready (source: {})", source.as_str()))
    } else {
        (false, problems.join("; "))
    }
}

fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
    map.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A value in seconds from Unix milliseconds, printed exactly (no float rounding noise).
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 % 1000 {
            0 => write!(f, "{}", self.0 / 1000),
            ms => write!(f, "{}.{:03}", self.0 / 1000, ms),
        }
    }
}

/// A float in the exposition format's spelling (`NaN`, `+Inf`, `-Inf`).
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, line feed → `\n` (text format 0.0.4).
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a `# HELP` docstring: `\` → `\\`, line feed → `\n`.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn lag_and_seconds_since_last_line() {
        let m = Metrics::new();
        let text = render_prometheus_at(&m, 10_000);
        assert!(text.contains("\nhealert_agent_seconds_since_last_line NaN\n"));
        m.file_size.store(1000, Ordering::Relaxed);
        m.read_offset.store(400, Ordering::Relaxed);
        m.last_line_unix_ms.store(7_500, Ordering::Relaxed);
        let text = render_prometheus_at(&m, 10_000);
        assert!(text.contains("\nhealert_agent_lag_bytes 600\n"), "{text}");
        assert!(text.contains("\nhealert_agent_seconds_since_last_line 2.5\n"));
        // A read offset past the size (file truncated under us) is no negative lag.
        m.read_offset.store(5000, Ordering::Relaxed);
        let text = render_prometheus_at(&m, 10_000);
        assert!(text.contains("\nhealert_agent_lag_bytes 0\n"));
    }

    #[test]
    fn matched_and_sent_share_rule_labels() {
        let m = Metrics::new();
        m.inc_matched("kubectl-exec");
        m.inc_matched("kubectl-exec");
        m.inc_sent("kubectl-exec");
        m.inc_matched("secret-read");
        m.inc_rejected(422);
        let text = render_prometheus_at(&m, 1);
        for want in [
            "healert_agent_events_matched_total{rule=\"kubectl-exec\"} 2\n",
            "healert_agent_events_sent_total{rule=\"kubectl-exec\"} 1\n",
            "healert_agent_events_sent_total{rule=\"secret-read\"} 0\n",
            "healert_agent_events_rejected_total{status=\"422\"} 1\n",
            "healert_agent_backend_state{state=\"unknown\"} 1\n",
            "healert_agent_backend_up 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn liveness_grace_and_stall() {
        let m = Metrics::new();
        // Nothing started: nothing to judge.
        assert_eq!(health(&m, 1_000_000), (true, "ok".to_string()));
        m.mark_started(1_000_000);
        assert!(health(&m, 1_000_000 + STALL_AFTER_MS).0);
        let (ok, why) = health(&m, 1_000_000 + STALL_AFTER_MS + 1);
        assert!(!ok);
        assert!(why.contains("follower has not started"), "{why}");
        m.follower.beat_at(1_040_000);
        m.sender.beat_at(1_040_000);
        assert!(health(&m, 1_050_000).0);
        let (ok, why) = health(&m, 1_080_000);
        assert!(!ok);
        assert_eq!(
            why,
            "follower stalled: last progress 40 s ago; sender stalled: last progress 40 s ago"
        );
        // Clock stepped back: not a stall.
        assert!(health(&m, 900_000).0);
        // A request bounded by a 60 s HTTP_TIMEOUT: alive until its deadline, stalled only
        // STALL_AFTER_MS past it.
        m.follower.beat_at(1_100_000);
        m.sender.beat_at(1_040_000);
        m.sender.busy_until(1_100_000);
        assert!(health(&m, 1_095_000).0);
        assert!(health(&m, 1_100_000 + STALL_AFTER_MS).0);
        m.follower.beat_at(1_200_000);
        let (ok, why) = health(&m, 1_200_000);
        assert!(!ok);
        assert_eq!(why, "sender stalled: last progress 100 s ago");
    }

    #[test]
    fn readiness_reasons() {
        let m = Metrics::new();
        let (ok, why) = readiness(&m);
        assert!(!ok);
        assert_eq!(why, "no rules loaded; audit log not open");
        m.rules_loaded.store(3, Ordering::Relaxed);
        m.log_open.store(1, Ordering::Relaxed);
        assert_eq!(readiness(&m), (true, "ready (source: file)".to_string()));
        m.set_source(AuditSource::Webhook);
        assert_eq!(readiness(&m), (true, "ready (source: webhook)".to_string()));
        m.log_open.store(0, Ordering::Relaxed);
        assert_eq!(readiness(&m), (false, "spool not open".to_string()));
        m.log_open.store(1, Ordering::Relaxed);
        m.set_source(AuditSource::File);
        m.set_backend_status(401);
        m.set_backend_state(BackendState::Unauthorized);
        let (ok, why) = readiness(&m);
        assert!(!ok);
        assert!(
            why.starts_with("backend rejected the API key (401) since "),
            "{why}"
        );
        m.set_backend_status(0);
        m.set_backend_state(BackendState::Failing);
        let (ok, why) = readiness(&m);
        assert!(!ok);
        assert!(why.starts_with("backend unreachable since "), "{why}");
        m.set_backend_status(404);
        m.set_backend_state(BackendState::Refusing);
        let (ok, why) = readiness(&m);
        assert!(!ok);
        assert!(
            why.starts_with("backend refuses POST /events (404) since ")
                && why.ends_with("check HEALERT_BACKEND_URL's base path and any proxy in between"),
            "{why}"
        );
        m.set_backend_state(BackendState::Ok);
        assert!(readiness(&m).0);
    }
}
