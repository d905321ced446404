//! `healert-agent run`: wires the pipeline and owns its lifecycle.
//!
//! Threads, data flowing one way:
//! - **follower** (`tail::Follower` + `detect::Detector`): reads complete lines, turns each into
//!   friction events and pushes them, in log order, into the bounded `deliver::Queue` (blocking
//!   when it is full: the log on disk is the buffer);
//! - **sender** (`deliver::spawn_sender`): POSTs the queue's front event until the backend
//!   acknowledges it, then pops it;
//! - **main** (this function): signals, the once-a-second checkpoint (`Queue::ack_position` →
//!   `checkpoint::save`), SIGHUP rule reloads, and the shutdown sequence;
//! - **health server** (`http_server`, optional): reads `metrics::METRICS` only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::checkpoint::{self, Checkpoint, Position};
use crate::config::{Config, StartAt};
use crate::deliver::{self, DeliveryOptions, Queue};
use crate::detect::{DetectOptions, Detector};
use crate::http_client::Client;
use crate::metrics::METRICS;
use crate::rules::{self, RuleSet};
use crate::tail::{FollowOptions, Follower, Poll};
use crate::{error, info, signal, validate, warn};

/// How often the checkpoint is written (when it changed).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often lines without events move the acknowledged position forward.
const ADVANCE_EVERY_LINES: u32 = 4096;
/// After new lines, the follower looks again at a quarter of POLL_INTERVAL for this long.
const BURST_WINDOW: Duration = Duration::from_secs(1);

pub fn run() -> ExitCode {
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(errs) => {
            // LOG_FORMAT=json (when that one is valid) holds for this refusal too: a JSON log
            // pipeline must be able to read why the agent did not start.
            let json = std::env::var("LOG_FORMAT")
                .ok()
                .and_then(|v| crate::log::Format::parse(&v))
                == Some(crate::log::Format::Json);
            if json {
                crate::log::init(crate::log::Level::Info, crate::log::Format::Json);
                for e in &errs {
                    error!(format!("invalid configuration: {e}"));
                }
                error!(format!(
                    "not started ({} invalid variable(s)); see `healert-agent --help`",
                    errs.len()
                ));
            } else {
                for e in &errs {
                    eprintln!("healert-agent: invalid configuration: {e}");
                }
                eprintln!(
                    "healert-agent: not started ({} invalid variable(s)); see `healert-agent --help`",
                    errs.len()
                );
            }
            return ExitCode::from(1);
        }
    };
    crate::log::init(cfg.log_level, cfg.log_format);

    // RULES_PATH, else ./rules.yaml; a missing file is reported with how to set RULES_PATH.
    let rules_path = cfg.rules_path_or_default();
    let rules = match load_rules(&rules_path, rules_origin(&cfg), cfg.log_format) {
        Ok(r) => r,
        Err(()) => return ExitCode::from(1),
    };

    if let Err(e) = signal::install() {
        error!("cannot install signal handlers", "error" => e);
        return ExitCode::from(1);
    }

    let _health = match &cfg.health_addr {
        None => None,
        Some(addr) => match crate::http_server::spawn(addr) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("cannot serve health and metrics", "HEALTH_ADDR" => addr, "error" => e);
                return ExitCode::from(1);
            }
        },
    };

    let mut client = Client::new(
        cfg.backend_url.clone(),
        cfg.api_key.clone(),
        cfg.http_timeout,
    );
    let backend_line = match deliver::log_backend_check(&mut client) {
        Some(h) => format!("OK -- {h}"),
        None => "UNREACHABLE at start: events are kept and retried".to_string(),
    };

    let resume = load_checkpoint(cfg.checkpoint_path.as_deref());
    let resume_skip = resume.as_ref().map(|c| (c.position, c.skip_events));
    let follower = Follower::new(
        FollowOptions {
            path: cfg.audit_log_path.clone(),
            poll_interval: cfg.poll_interval,
            max_line_bytes: cfg.max_line_bytes,
            start_at: cfg.start_at,
        },
        resume,
    );

    banner(
        &cfg,
        &rules_path,
        &rules,
        &backend_line,
        &follower.start_description(),
    );

    let detector = Detector::new(rules, detect_options(&cfg));
    let queue = Queue::new(cfg.queue_capacity);
    let sender = deliver::spawn_sender(
        Arc::clone(&queue),
        client,
        DeliveryOptions::from_config(&cfg),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(ReloadSlot::default());
    let follow_thread = {
        let (queue, stop, reload) = (Arc::clone(&queue), Arc::clone(&stop), Arc::clone(&reload));
        let poll = cfg.poll_interval;
        thread::Builder::new().name("follow".into()).spawn(move || {
            follow_loop(
                follower,
                detector,
                &queue,
                &stop,
                &reload,
                poll,
                resume_skip,
            )
        })
    };
    let follow_thread = match follow_thread {
        Ok(t) => t,
        Err(e) => {
            error!("cannot start the follower thread", "error" => e);
            return ExitCode::from(1);
        }
    };

    // Main loop: signals, reloads, checkpoints.
    let mut saver = CheckpointSaver::new(cfg.checkpoint_path.clone(), cfg.audit_log_path.clone());
    let mut last_save = Instant::now();
    loop {
        if signal::terminate_requests() > 0 {
            break;
        }
        if follow_thread.is_finished() {
            error!("the follower thread stopped unexpectedly; shutting down");
            break;
        }
        if signal::take_reload() {
            reload_rules(&rules_path, &cfg, &reload);
        }
        if last_save.elapsed() >= CHECKPOINT_EVERY {
            saver.save(&queue);
            last_save = Instant::now();
        }
        thread::sleep(Duration::from_millis(50));
    }

    // Shutdown: stop reading, deliver what is queued until the grace period ends or a second
    // signal arrives, save the checkpoint.
    info!("stopping: no more reading; delivering queued events", "pending" => queue.len(), "grace" => format!("{:?}", cfg.shutdown_grace));
    stop.store(true, Ordering::SeqCst);
    queue.close();
    let deadline = Instant::now() + cfg.shutdown_grace;
    let mut forced = false;
    while !queue.is_empty() && Instant::now() < deadline {
        if signal::terminate_requests() > 1 {
            forced = true;
            break;
        }
        saver.save_if_due(&queue, &mut last_save);
        thread::sleep(Duration::from_millis(20));
    }
    let stats = if forced {
        warn!("second signal: stopping at once");
        sender.abort()
    } else {
        sender.finish(Instant::now())
    };
    if follow_thread.join().is_err() {
        error!("the follower thread panicked");
    }
    saver.save(&queue);
    let left = queue.len();
    info!(
        "stopped",
        "sent" => stats.sent,
        "dead_lettered" => stats.dead_lettered,
        "pending_left_in_log" => left,
        "checkpoint" => saver.describe()
    );
    ExitCode::SUCCESS
}

fn rules_origin(cfg: &Config) -> validate::Origin {
    if cfg.rules_path.is_some() {
        validate::Origin::RulesPath
    } else {
        validate::Origin::Default
    }
}

/// Loads rules with the validator's own messages; prints them on failure (with LOG_FORMAT=json,
/// one error record per line of the report, so every stderr line stays a JSON object).
fn load_rules(
    path: &Path,
    origin: validate::Origin,
    format: crate::log::Format,
) -> Result<RuleSet, ()> {
    let result = rules::load_file(path);
    if result.is_err() {
        let report = validate::report(path, origin, &result);
        if format == crate::log::Format::Json {
            for line in report.lines().map(str::trim).filter(|l| !l.is_empty()) {
                error!(line);
            }
        } else {
            eprint!("{report}");
        }
    }
    match result {
        Ok(loaded) => {
            for w in &loaded.warnings {
                warn!("rules warning", "at" => format!("{}:{}:{}", path.display(), w.line, w.col), "warning" => w.message);
            }
            METRICS
                .rules_loaded
                .store(loaded.rules.rules.len() as u64, Ordering::Relaxed);
            Ok(loaded.rules)
        }
        Err(_) => {
            error!("not started: the rules file is invalid or unreadable", "RULES_PATH" => path.display());
            Err(())
        }
    }
}

fn detect_options(cfg: &Config) -> DetectOptions {
    DetectOptions {
        entity_namespace: cfg.entity_namespace.clone(),
        own_namespace: cfg.k8s_namespace.clone(),
    }
}

/// A new detector handed from the main thread (SIGHUP) to the follower thread.
#[derive(Default)]
struct ReloadSlot {
    pending: AtomicBool,
    detector: Mutex<Option<Detector>>,
}

fn reload_rules(path: &Path, cfg: &Config, slot: &ReloadSlot) {
    match rules::load_file(path) {
        Ok(loaded) => {
            let n = loaded.rules.rules.len();
            for w in &loaded.warnings {
                warn!("rules warning", "at" => format!("{}:{}:{}", path.display(), w.line, w.col), "warning" => w.message);
            }
            *slot.detector.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Detector::new(loaded.rules, detect_options(cfg)));
            slot.pending.store(true, Ordering::Release);
            METRICS.rules_loaded.store(n as u64, Ordering::Relaxed);
            METRICS.rule_reloads.fetch_add(1, Ordering::Relaxed);
            info!("SIGHUP: rules reloaded", "path" => path.display(), "rules" => n);
        }
        Err(e) => {
            METRICS.rule_reload_failures.fetch_add(1, Ordering::Relaxed);
            let report = validate::report(path, rules_origin(cfg), &Err(e));
            error!("SIGHUP: the new rules file is invalid; keeping the previous rules", "path" => path.display(), "problems" => report.trim_end().replace('\n', " | "));
        }
    }
}

fn follow_loop(
    mut follower: Follower,
    mut detector: Detector,
    queue: &Queue,
    stop: &AtomicBool,
    reload: &ReloadSlot,
    poll_interval: Duration,
    mut resume_skip: Option<(Position, u32)>,
) {
    let mut events = Vec::new();
    // Lines without events since the position was last handed to the queue.
    let mut quiet_lines = 0u32;
    // Audit lines come in bursts: for a second after new lines, look again four times as often
    // (lower latency while busy); a quiet log costs one look per POLL_INTERVAL.
    let mut saw_lines = false;
    let mut last_activity = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if reload.pending.swap(false, Ordering::Acquire) {
            if let Some(d) = reload
                .detector
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                detector = d;
            }
        }
        let (start, end) = match follower.poll() {
            Poll::Line(line) => {
                saw_lines = true;
                events.clear();
                detector.detect(line.bytes, &mut events);
                (line.start, line.end)
            }
            Poll::Skipped { .. } => {
                events.clear();
                quiet_lines += 1;
                continue;
            }
            Poll::Idle => {
                METRICS.tick_follower();
                // Nothing of ours is unqueued: acknowledge up to the next unread byte (which
                // moves to the new file as soon as a rotated one is finished).
                quiet_lines = 0;
                let pos = follower.position();
                if !queue.push_line(pos, pos, 0, Vec::new()) {
                    return;
                }
                if std::mem::take(&mut saw_lines) {
                    last_activity = Instant::now();
                }
                let wait = if last_activity.elapsed() < BURST_WINDOW {
                    poll_interval / 4
                } else {
                    poll_interval
                };
                sleep_unless(stop, wait);
                continue;
            }
        };
        let mut first = 0u32;
        if let Some((pos, skip)) = resume_skip.take() {
            // Clean stop mid-line: the first `skip` events of this line were accepted.
            // Same file (the fingerprint may have grown since) and same line.
            if pos.file.same_file(&start.file) && pos.offset == start.offset && skip > 0 {
                let n = (skip as usize).min(events.len());
                events.drain(..n);
                first = n as u32;
            }
        }
        if events.is_empty() {
            // Lines without events need no delivery; their end is acknowledged in batches
            // (re-reading them after a crash emits nothing), keeping the hot path lock-free.
            quiet_lines += 1;
            if quiet_lines >= ADVANCE_EVERY_LINES {
                quiet_lines = 0;
                METRICS.tick_follower();
                if !queue.push_line(end, end, 0, Vec::new()) {
                    return;
                }
            }
            continue;
        }
        quiet_lines = 0;
        // Backpressure: while delivery is behind, stop reading but keep watching the path,
        // so rotated files are held open and cannot be deleted under us.
        while queue.is_full() && !stop.load(Ordering::Relaxed) {
            METRICS.tick_follower();
            follower.watch();
            sleep_unless(stop, poll_interval);
        }
        METRICS.tick_follower();
        if !queue.push_line(start, end, first, std::mem::take(&mut events)) {
            return;
        }
    }
}

/// Sleeps up to `d`, waking early when `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end || stop.load(Ordering::Relaxed) {
            return;
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn load_checkpoint(path: Option<&Path>) -> Option<Checkpoint> {
    let path = path?;
    match checkpoint::load(path) {
        Ok(Some(cp)) => Some(cp),
        Ok(None) => {
            info!("no checkpoint yet; one will be written", "CHECKPOINT_PATH" => path.display());
            None
        }
        Err(e) => {
            warn!("checkpoint ignored", "CHECKPOINT_PATH" => path.display(), "reason" => e);
            None
        }
    }
}

/// Writes the checkpoint when the acknowledged position moved.
struct CheckpointSaver {
    path: Option<PathBuf>,
    log_path: PathBuf,
    last: Option<(Position, u32)>,
    throttle: crate::log::Throttle,
}

impl CheckpointSaver {
    fn new(path: Option<PathBuf>, log_path: PathBuf) -> CheckpointSaver {
        CheckpointSaver {
            path,
            log_path,
            last: None,
            throttle: crate::log::Throttle::new(Duration::from_secs(60)),
        }
    }

    fn save_if_due(&mut self, queue: &Queue, last_save: &mut Instant) {
        if last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save(queue);
            *last_save = Instant::now();
        }
    }

    fn save(&mut self, queue: &Queue) {
        let Some(path) = &self.path else { return };
        let Some(ack) = queue.ack_position() else {
            return;
        };
        if self.last == Some(ack) {
            return;
        }
        let cp = Checkpoint {
            path: self.log_path.clone(),
            position: ack.0,
            skip_events: ack.1,
        };
        match checkpoint::save(path, &cp) {
            Ok(()) => {
                self.last = Some(ack);
                self.throttle.reset();
                METRICS
                    .checkpoint_offset
                    .store(ack.0.offset, Ordering::Relaxed);
                METRICS.checkpoint_writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Some(n) = self.throttle.hit("save") {
                    warn!("cannot write the checkpoint; will retry", "CHECKPOINT_PATH" => path.display(), "error" => e, "repeated" => n);
                }
            }
        }
    }

    fn describe(&self) -> String {
        match (&self.path, self.last) {
            (None, _) => "off".into(),
            (Some(_), None) => "not written".into(),
            (Some(_), Some((p, skip))) => format!("offset {} (+{skip} events)", p.offset),
        }
    }
}

fn banner(cfg: &Config, rules_path: &Path, rules: &RuleSet, backend: &str, start: &str) {
    let mut b = String::new();
    b.push_str(&format!("healert-agent {}\n", crate::VERSION));
    b.push_str(&format!("  backend     {}  ({backend})\n", cfg.backend_url));
    b.push_str(&format!(
        "  auth        {}\n",
        crate::log::Redacted(cfg.api_key.as_ref().map(|k| k.expose()).unwrap_or(""))
    ));
    b.push_str(&format!(
        "  audit log   {}  ({start})\n",
        cfg.audit_log_path.display()
    ));
    b.push_str(&format!(
        "  checkpoint  {}\n",
        cfg.checkpoint_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "off (CHECKPOINT_PATH unset)".into())
    ));
    b.push_str(&format!(
        "  fallback ns {}  (entity namespace for cluster-scoped objects)\n",
        cfg.entity_namespace
    ));
    b.push_str(&format!(
        "  rules       {} from {}\n",
        rules.rules.len(),
        rules_path.display()
    ));
    for r in &rules.rules {
        b.push_str(&format!(
            "    {:<26} {:<6} {:<9} {}\n",
            r.name,
            r.severity.as_str(),
            r.workflow,
            scope(r)
        ));
    }
    b.push_str("  ignored namespaces\n");
    for ns in &rules.ignore_namespaces {
        b.push_str(&format!("    {ns}\n"));
    }
    if let Some(own) = &cfg.k8s_namespace {
        if !rules.ignore_namespaces.contains(own) {
            b.push_str(&format!("    {own}  <- auto-added from K8S_NAMESPACE\n"));
        }
    }
    if cfg.start_at == StartAt::Beginning && start.contains("beginning") {
        b.push_str("  note        START_AT=beginning: the whole existing log is evaluated\n");
    }
    // One record per banner line, so `kubectl logs` shows it as written (and json logs stay
    // one object per line); values pass through the logger's sanitising like any other.
    for line in b.lines() {
        info!(line);
    }
}

fn scope(r: &rules::Rule) -> String {
    let mut parts = Vec::new();
    parts.push(
        if r.ignore_system {
            "humans only"
        } else {
            "all actors"
        }
        .to_string(),
    );
    match &r.matcher.namespace_contains {
        Some(s) => parts.push(format!("namespaces containing '{s}'")),
        None => parts.push("all namespaces".into()),
    }
    if !r.matcher.ignore_namespaces.is_empty() {
        parts.push(format!("except {}", r.matcher.ignore_namespaces.join(",")));
    }
    parts.join(", ")
}
