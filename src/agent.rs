//! `healert-agent run`: wires the pipeline's threads and owns their lifecycle; nothing else.
//!
//! Threads, data flowing one way:
//! - **follow** (`pipeline::Stage` over `source::follow::Follower`, then `pipeline::Feeder`):
//!   reads complete lines, turns each into friction events and queues them in log order,
//!   waiting while the queue is full (the log on disk is the buffer);
//! - **deliver** (`deliver::spawn_sender`): checks the backend once (`GET /health`, then the
//!   API key, off the follower's path), then POSTs the queue's front event until the backend
//!   acknowledges it, then pops it;
//! - **main** (this function): signals, the once-a-second checkpoint (`Queue::ack_position` →
//!   `checkpoint::save`), SIGHUP rule reloads, and the shutdown (`SenderHandle::drain`);
//! - **health server** (`operate::health`, optional): reads the shared `Metrics` only.
//!
//! The source (`AUDIT_SOURCE`) decides what the follow thread reads: the audit log
//! (`source::follow::Follower`, checkpointed), stdin (`detect::cloud::CloudSource` over a
//! `source::stream::Background` reader; read to its end, then everything queued is delivered
//! and the agent exits), or the webhook's spool (the same follower and checkpoint over
//! `SPOOL_PATH/spool.ndjson`, written by the **webhook** threads, `crate::webhook`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::deliver::http_client::Client;
use crate::deliver::suppress::{Clock, Suppressor};
use crate::deliver::{self, Queue};
use crate::detect::audit::{EVENT_LIST, EVENT_SPEC};
use crate::detect::cloud::CloudSource;
use crate::detect::rules::{self, RuleSet};
use crate::detect::Detector;
use crate::operate::log::{self as oplog, Redacted, Throttle};
use crate::operate::metrics::{now_unix_ms, AuditSource, Metrics};
use crate::operate::signal;
use crate::pipeline::{self, Feeder, ResumePoint, Stage, Step, TroubleLog};
use crate::source::checkpoint::{self, Checkpoint};
use crate::source::follow::{FollowOptions, Follower, StartAt};
use crate::source::position::Position;
use crate::source::prune::Caps;
use crate::source::stream::Background;
use crate::source::Source;
use crate::webhook::spool::Spool;
use crate::webhook::{self, SharedDetector};
use crate::{error, info, validate, warn};

/// How often the checkpoint is written (when it changed).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The follow thread beats its heartbeat at least once per this many records while busy.
const BEAT_EVERY_RECORDS: u32 = 1024;
/// After new lines, the follower looks again at a quarter of POLL_INTERVAL for this long.
const BURST_WINDOW: Duration = Duration::from_secs(1);

pub fn run() -> ExitCode {
    let (cfg, errs) = Config::load();
    if !errs.is_empty() {
        // LOG_FORMAT=json (when that one is valid) holds for this refusal too: a JSON log
        // pipeline must be able to read why the agent did not start.
        if cfg.log_format == oplog::Format::Json {
            oplog::init(oplog::Level::Info, oplog::Format::Json);
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
    oplog::init(cfg.log_level, cfg.log_format);
    let metrics = Arc::new(Metrics::new());
    metrics.set_source(cfg.audit_source);

    // RULES_PATH, else ./rules.yaml; a missing file is reported with how to set RULES_PATH.
    let rules_path = cfg.rules_path_or_default();
    let rules = match load_rules(&rules_path, rules_origin(&cfg), cfg.log_format, &metrics) {
        Ok(r) => r,
        Err(()) => return ExitCode::from(1),
    };

    if let Err(e) = signal::install() {
        error!("cannot install signal handlers", "error" => e);
        return ExitCode::from(1);
    }

    let health = match &cfg.health_addr {
        None => None,
        Some(addr) => match crate::operate::health::spawn(addr, Arc::clone(&metrics)) {
            Ok(s) => Some(s),
            Err(e) => {
                error!("cannot serve health and metrics", "HEALTH_ADDR" => addr, "error" => e);
                return ExitCode::from(1);
            }
        },
    };
    metrics.mark_started(now_unix_ms());

    // The backend is checked by the sender thread before its first event (its result is
    // logged there): a slow or blackholed backend must not hold up the follower.
    let client = cfg.client();
    let backend_line = "checking the backend in the background; events are queued meanwhile";

    let ctx = Ctx {
        cfg: &cfg,
        rules_path: &rules_path,
        backend_line,
        metrics,
        health: health.as_ref().map(|s| s.local_addr()),
    };
    let code = match cfg.audit_source {
        AuditSource::File => run_file(ctx, rules, client),
        AuditSource::Stdin => run_stdin(ctx, rules, client),
        AuditSource::Webhook => run_webhook(ctx, rules, client),
    };
    // Served until the end (dropping it stops the server).
    drop(health);
    code
}

/// What every source's wiring shares.
struct Ctx<'a> {
    cfg: &'a Config,
    rules_path: &'a Path,
    backend_line: &'a str,
    metrics: Arc<Metrics>,
    /// Where /healthz, /readyz and /metrics are served (the bound address: with a port of 0,
    /// the one the kernel chose).
    health: Option<std::net::SocketAddr>,
}

/// The audit log: the follower, resumed from its checkpoint.
fn run_file(ctx: Ctx<'_>, rules: RuleSet, client: Client) -> ExitCode {
    let cfg = ctx.cfg;
    let resume = load_checkpoint(cfg.checkpoint_path.as_deref());
    let state_path = cfg.suppress_state_path();
    let (resume, suppressor) = load_suppression(cfg, state_path.as_deref(), resume);
    let resume_point = resume.as_ref().map(|c| ResumePoint {
        position: c.position,
        skip: c.skip_events,
    });
    let follower = Follower::new(cfg.follow_options(), resume, Arc::clone(&ctx.metrics))
        .streaming_long_lines(EVENT_SPEC, EVENT_LIST, Caps::default());
    let source = vec![
        ("source", "file".to_string()),
        (
            "audit log",
            format!(
                "{}  ({})",
                cfg.audit_log_path.display(),
                follower.start_description()
            ),
        ),
    ];
    banner(
        &ctx,
        &rules,
        &source,
        follower.start_description().contains("beginning"),
    );
    let stage = Stage::new(
        follower,
        Detector::new(rules, cfg.detect_options()),
        resume_point,
    );
    let mut saver = CheckpointSaver::new(
        cfg.checkpoint_path.clone(),
        state_path,
        cfg.audit_log_path.clone(),
        Arc::clone(&ctx.metrics),
    );
    supervise(
        &ctx,
        stage,
        client,
        Hooks {
            // Open windows are kept across a stop (in the state file), not summarised early.
            suppressor: (suppressor, false),
            tick: &mut |q, last| saver.tick(q, last),
            source_ends: false,
            detector: None,
            stop_intake: None,
        },
    )
}

/// Standard input, read to its end (no checkpoint: nothing to resume from).
fn run_stdin(ctx: Ctx<'_>, rules: RuleSet, client: Client) -> ExitCode {
    let cfg = ctx.cfg;
    if cfg.checkpoint_path.is_some() {
        warn!("CHECKPOINT_PATH is ignored with AUDIT_SOURCE=stdin: a stream cannot be resumed; after a restart, ask the CLI for what you missed (e.g. --since)");
    }
    let input = match Background::spawn(std::io::stdin(), "stdin") {
        Ok(b) => b,
        Err(e) => {
            error!("cannot start the stdin reader thread", "error" => e);
            return ExitCode::from(1);
        }
    };
    let source = Counted {
        inner: CloudSource::new(input, cfg.max_line_bytes, cfg.audit_format),
        metrics: Arc::clone(&ctx.metrics),
        lines: 0,
        bytes: 0,
    };
    ctx.metrics.log_open.store(1, Ordering::Relaxed);
    let lines = vec![
        (
            "source",
            format!(
                "stdin  (AUDIT_FORMAT={}; read to its end, then queued events are delivered and the agent exits; no resume after a restart)",
                cfg.audit_format.as_str()
            ),
        ),
    ];
    banner(&ctx, &rules, &lines, false);
    let stage = Stage::new(source, Detector::new(rules, cfg.detect_options()), None);
    supervise(
        &ctx,
        stage,
        client,
        Hooks {
            // Nothing to resume from: the windows still open at the end of the input are
            // summarised before the agent exits.
            suppressor: (Suppressor::new(cfg.suppress_window, Clock::Wall), true),
            tick: &mut |_, _| "off (stdin)".to_string(),
            source_ends: true,
            detector: None,
            stop_intake: None,
        },
    )
}

/// The audit webhook: batches spooled by the webhook threads, the spool followed like an
/// audit log (the same follower, checkpoint and delivery).
fn run_webhook(ctx: Ctx<'_>, rules: RuleSet, client: Client) -> ExitCode {
    let cfg = ctx.cfg;
    let detector = Detector::new(rules.clone(), cfg.detect_options());
    let cp_path = cfg.spool_checkpoint_path();
    let spool = match Spool::open(
        &cfg.spool_path,
        &cp_path,
        cfg.spool_max_bytes,
        &detector,
        Arc::clone(&ctx.metrics),
    ) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            error!("not started: cannot open the spool (give the agent a writable directory)", "SPOOL_PATH" => cfg.spool_path.display(), "error" => e);
            return ExitCode::from(1);
        }
    };
    let resume = load_checkpoint(Some(&cp_path));
    let state_path = suppress_state_path(&cp_path);
    let (resume, suppressor) = load_suppression(cfg, Some(&state_path), resume);
    let resume_point = resume.as_ref().map(|c| ResumePoint {
        position: c.position,
        skip: c.skip_events,
    });
    let follow = FollowOptions {
        path: spool.path().to_path_buf(),
        poll_interval: cfg.poll_interval,
        max_line_bytes: cfg.max_line_bytes,
        // Everything in the spool was accepted and not delivered, unless the checkpoint says.
        start_at: StartAt::Beginning,
    };
    let follower = Follower::new(follow, resume, Arc::clone(&ctx.metrics)).streaming_long_lines(
        EVENT_SPEC,
        EVENT_LIST,
        Caps::default(),
    );
    let shared = Arc::new(SharedDetector::new(detector.clone()));
    if cfg.webhook_token.is_none() {
        warn!("AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true: the webhook accepts batches without a bearer token; anyone who can reach AUDIT_WEBHOOK_ADDR can make the agent report events. Set AUDIT_WEBHOOK_TOKEN and put the same token in the apiserver's webhook kubeconfig");
    }
    let server = match webhook::spawn(
        webhook::Options {
            addr: cfg.webhook_addr.clone(),
            token: cfg.webhook_token.clone(),
            max_body: cfg.webhook_max_body,
            limits: webhook::Limits::default(),
        },
        Arc::clone(&spool),
        Arc::clone(&shared),
        Arc::clone(&ctx.metrics),
    ) {
        Ok(s) => s,
        Err(e) => {
            error!("not started: cannot serve the audit webhook", "error" => e);
            return ExitCode::from(1);
        }
    };
    let auth = match &cfg.webhook_token {
        Some(t) => format!("bearer token {}", Redacted(t.expose())),
        None => "NO TOKEN (AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true)".to_string(),
    };
    let lines = vec![
        (
            "source",
            format!(
                "webhook on http://{}  ({auth}; bodies up to {})",
                server.local_addr(),
                crate::config::human_size(cfg.webhook_max_body)
            ),
        ),
        (
            "spool",
            format!(
                "{}  (up to {} undelivered, then 429; {})",
                cfg.spool_path.display(),
                crate::config::human_size(cfg.spool_max_bytes),
                follower.start_description()
            ),
        ),
    ];
    banner(&ctx, &rules, &lines, false);
    drop(rules);
    let stage = Stage::new(follower, detector, resume_point);
    let mut saver = CheckpointSaver::new(
        Some(cp_path),
        Some(state_path),
        spool.path().to_path_buf(),
        Arc::clone(&ctx.metrics),
    );
    let mut last_tidy = Instant::now();
    let mut server = Some(server);
    supervise(
        &ctx,
        stage,
        client,
        Hooks {
            suppressor: (suppressor, false),
            tick: &mut |q, last| {
                let said = saver.tick(q, last);
                if !last && last_tidy.elapsed() >= CHECKPOINT_EVERY {
                    last_tidy = Instant::now();
                    spool.tidy();
                }
                said
            },
            source_ends: false,
            detector: Some(&shared),
            stop_intake: Some(&mut || {
                if let Some(s) = server.take() {
                    // Batches being received are answered (and spooled) before delivery drains.
                    s.stop(Duration::from_secs(5));
                }
            }),
        },
    )
}

/// A stdin source that counts what it reads into the metrics (the follower does so itself).
struct Counted<S> {
    inner: CloudSource<S>,
    metrics: Arc<Metrics>,
    lines: u64,
    bytes: u64,
}

impl<R: std::io::Read> Source for Counted<R> {
    type Pos = u64;

    fn next(&mut self) -> crate::source::Next<'_, u64> {
        let (lines, bytes) = (self.inner.lines_read(), self.inner.bytes_read());
        let m = &self.metrics;
        if lines > self.lines {
            m.lines_read
                .fetch_add(lines - self.lines, Ordering::Relaxed);
            m.last_line_unix_ms.store(now_unix_ms(), Ordering::Relaxed);
            self.lines = lines;
        }
        if bytes > self.bytes {
            m.bytes_read
                .fetch_add(bytes - self.bytes, Ordering::Relaxed);
            m.read_offset.store(bytes, Ordering::Relaxed);
            self.bytes = bytes;
        }
        self.inner.next()
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }

    fn describe(&self, place: &u64) -> String {
        format!("stdin offset {place}")
    }
}

/// What differs between sources around the one pipeline.
struct Hooks<'a, P> {
    /// The suppression state the queue starts with, and whether the windows still open when
    /// the queue closes are summarised then (a source with no state file to keep them in).
    suppressor: (Suppressor, bool),
    /// Every main-loop turn (the checkpoint, the spool's housekeeping), `false`; and once after
    /// the drain, `true` (the last checkpoint), returning how to describe it.
    tick: &'a mut dyn FnMut(&Queue<P>, bool) -> String,
    /// The source ends by itself (stdin): its end is a stop, not a failure.
    source_ends: bool,
    /// Also handed each detector a SIGHUP loads (the webhook's).
    detector: Option<&'a SharedDetector>,
    /// Stops taking input before the drain (the webhook server).
    stop_intake: Option<&'a mut dyn FnMut()>,
}

/// Runs the pipeline over `stage`: the follow thread, the sender, and on this thread signals,
/// reloads, the hooks' ticks and the shutdown.
fn supervise<S>(
    ctx: &Ctx<'_>,
    stage: Stage<S>,
    client: Client,
    mut hooks: Hooks<'_, S::Pos>,
) -> ExitCode
where
    S: Source + Send + 'static,
{
    let cfg = ctx.cfg;
    let metrics = &ctx.metrics;
    let queue = Queue::new(cfg.queue_capacity, Arc::clone(metrics));
    let (suppressor, flush_at_close) = hooks.suppressor;
    queue.enable_suppression(suppressor, flush_at_close);
    let sender = deliver::spawn_sender(
        Arc::clone(&queue),
        client,
        cfg.delivery_options(),
        Arc::clone(metrics),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(ReloadSlot::default());
    let follow_thread = {
        let (queue, stop, reload, metrics) = (
            Arc::clone(&queue),
            Arc::clone(&stop),
            Arc::clone(&reload),
            Arc::clone(metrics),
        );
        let poll = cfg.poll_interval;
        thread::Builder::new()
            .name("follow".into())
            .spawn(move || follow_loop(stage, &queue, &metrics, &stop, &reload, poll))
    };
    let follow_thread = match follow_thread {
        Ok(t) => t,
        Err(e) => {
            error!("cannot start the follower thread", "error" => e);
            return ExitCode::from(1);
        }
    };

    // Main loop: signals, reloads, checkpoints.
    let mut input_ended = false;
    loop {
        if signal::terminate_requests() > 0 {
            break;
        }
        if follow_thread.is_finished() {
            if hooks.source_ends {
                input_ended = true;
                info!("the input ended; delivering what is queued, then stopping", "pending" => queue.len());
            } else {
                error!("the follower thread stopped unexpectedly; shutting down");
            }
            break;
        }
        if signal::take_reload() {
            reload_rules(ctx.rules_path, cfg, &reload, metrics, hooks.detector);
        }
        (hooks.tick)(&queue, false);
        thread::sleep(Duration::from_millis(50));
    }

    if let Some(stop_intake) = hooks.stop_intake.as_mut() {
        stop_intake();
    }
    // Shutdown: stop reading, deliver what is queued until the grace period ends or a second
    // signal arrives, save the checkpoint. At the end of stdin, delivery goes on until the
    // queue is empty (or a signal starts the grace period).
    if !input_ended {
        info!("stopping: no more reading; delivering queued events", "pending" => queue.len(), "grace" => format!("{:?}", cfg.shutdown_grace));
    }
    stop.store(true, Ordering::SeqCst);
    queue.close();
    // A follower that died is a stop request too: the drain's grace starts at once.
    let drained = sender.drain(
        cfg.shutdown_grace,
        || {
            if input_ended {
                signal::terminate_requests()
            } else {
                signal::terminate_requests().max(1)
            }
        },
        || {
            (hooks.tick)(&queue, false);
        },
    );
    if follow_thread.join().is_err() {
        error!("the follower thread panicked");
    }
    let checkpoint = (hooks.tick)(&queue, true);
    let left = queue.len();
    info!(
        "stopped",
        "sent" => drained.stats.sent,
        "dead_lettered" => drained.stats.dead_lettered,
        "pending_left_in_log" => left,
        "checkpoint" => checkpoint
    );
    if input_ended && left > 0 {
        error!("events read from the input were not delivered (there is no log to read them again from)", "pending" => left);
        return ExitCode::from(1);
    }
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
    format: oplog::Format,
    metrics: &Metrics,
) -> Result<RuleSet, ()> {
    let result = rules::load_file(path);
    if result.is_err() {
        let report = validate::report(path, origin, &result);
        if format == oplog::Format::Json {
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
            metrics
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

/// A new detector handed from the main thread (SIGHUP) to the follower thread.
#[derive(Default)]
struct ReloadSlot {
    pending: AtomicBool,
    detector: Mutex<Option<Detector>>,
}

fn reload_rules(
    path: &Path,
    cfg: &Config,
    slot: &ReloadSlot,
    metrics: &Metrics,
    also: Option<&SharedDetector>,
) {
    match rules::load_file(path) {
        Ok(loaded) => {
            let n = loaded.rules.rules.len();
            for w in &loaded.warnings {
                warn!("rules warning", "at" => format!("{}:{}:{}", path.display(), w.line, w.col), "warning" => w.message);
            }
            let detector = Detector::new(loaded.rules, cfg.detect_options());
            if let Some(shared) = also {
                shared.set(detector.clone());
            }
            *slot.detector.lock().unwrap_or_else(|p| p.into_inner()) = Some(detector);
            slot.pending.store(true, Ordering::Release);
            metrics.rules_loaded.store(n as u64, Ordering::Relaxed);
            metrics.rule_reloads.fetch_add(1, Ordering::Relaxed);
            info!("SIGHUP: rules reloaded", "path" => path.display(), "rules" => n);
        }
        Err(e) => {
            metrics.rule_reload_failures.fetch_add(1, Ordering::Relaxed);
            let report = validate::report(path, rules_origin(cfg), &Err(e));
            error!("SIGHUP: the new rules file is invalid; keeping the previous rules", "path" => path.display(), "problems" => report.trim_end().replace('\n', " | "));
        }
    }
}

/// The follow thread: the pipeline stage over the follower, fed into the queue, until `stop`
/// or the queue closes. Owns the follower heartbeat.
fn follow_loop<S: Source>(
    mut stage: Stage<S>,
    queue: &Queue<S::Pos>,
    metrics: &Metrics,
    stop: &AtomicBool,
    reload: &ReloadSlot,
    poll_interval: Duration,
) {
    let mut feeder = Feeder::new(queue, poll_interval);
    let mut troubles = TroubleLog::default();
    // Audit lines come in bursts: for a second after new lines, look again four times as often
    // (lower latency while busy); a quiet log costs one look per POLL_INTERVAL.
    let mut saw_records = false;
    let mut last_activity = Instant::now();
    let mut since_beat = 0u32;
    metrics.follower.beat();
    while !stop.load(Ordering::Relaxed) {
        if reload.pending.swap(false, Ordering::Acquire) {
            if let Some(d) = reload
                .detector
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                stage.set_detector(d);
            }
        }
        since_beat += 1;
        if since_beat >= BEAT_EVERY_RECORDS {
            since_beat = 0;
            metrics.follower.beat();
        }
        // While delivery is behind: stop reading but keep watching the path, so rotated files
        // are held open and cannot be deleted under us; waiting is progress, not a stall.
        let wait = |stage: &mut Stage<S>| {
            metrics.follower.beat();
            stage.source_mut().hold();
            !stop.load(Ordering::Relaxed)
        };
        let step = stage.step();
        pipeline::count(metrics, &step);
        troubles.report(&step, || match &step {
            Step::Record { start, .. } | Step::Skipped { start, .. } => {
                stage.source().describe(start)
            }
            _ => String::new(),
        });
        let go_on = match step {
            Step::Record {
                start,
                end,
                first_index,
                events,
                ..
            } => {
                saw_records = true;
                feeder.record(start, end, first_index, events, || wait(&mut stage))
            }
            Step::Skipped { start, end, .. } => {
                feeder.record(start, end, 0, Vec::new(), || wait(&mut stage))
            }
            Step::Idle => {
                metrics.follower.beat();
                // Nothing of ours is unqueued: acknowledge up to the next unread byte (which
                // moves to the new file as soon as a rotated one is finished).
                let ok = feeder.caught_up(stage.position());
                if std::mem::take(&mut saw_records) {
                    last_activity = Instant::now();
                }
                let wait = if last_activity.elapsed() < BURST_WINDOW {
                    poll_interval / 4
                } else {
                    poll_interval
                };
                sleep_unless(stop, wait);
                ok
            }
            Step::End => false,
        };
        if !go_on {
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

/// `<checkpoint>.suppress`: where the suppression state is kept beside a checkpoint.
fn suppress_state_path(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_owned();
    s.push(".suppress");
    PathBuf::from(s)
}

/// The suppression state saved beside the checkpoint, restored only when it belongs to the same
/// acknowledged position: it is written just before the checkpoint, with that checkpoint inside,
/// so the two agree, or — after a crash between the two renames — the state is one save ahead
/// and its own checkpoint is where to resume. Anything else (no checkpoint, another log) starts
/// with no open window and says so.
fn load_suppression(
    cfg: &Config,
    path: Option<&Path>,
    resume: Option<Checkpoint>,
) -> (Option<Checkpoint>, Suppressor) {
    let fresh = || Suppressor::new(cfg.suppress_window, Clock::Wall);
    let Some(path) = path else {
        return (resume, fresh());
    };
    let bytes = match std::fs::File::open(path) {
        Ok(f) => {
            let mut b = Vec::new();
            use std::io::Read;
            if let Err(e) = f
                .take(deliver::suppress::MAX_STATE_BYTES as u64 + 1)
                .read_to_end(&mut b)
            {
                warn!("suppression state ignored: cannot be read", "path" => path.display(), "error" => e);
                return (resume, fresh());
            }
            b
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (resume, fresh()),
        Err(e) => {
            warn!("suppression state ignored: cannot be read", "path" => path.display(), "error" => e);
            return (resume, fresh());
        }
    };
    let (state, embedded) = match Suppressor::decode(&bytes, cfg.suppress_window, Clock::Wall) {
        Ok(x) => x,
        Err(why) => {
            warn!("suppression state ignored: open windows start again", "path" => path.display(), "reason" => why);
            return (resume, fresh());
        }
    };
    let with = match checkpoint::parse(&embedded) {
        Ok(cp) => cp,
        Err(e) => {
            warn!("suppression state ignored: its checkpoint does not parse", "path" => path.display(), "reason" => e);
            return (resume, fresh());
        }
    };
    match resume {
        Some(cp) if cp == with => {
            info!("suppression state restored", "open_windows" => state.open_windows(), "repeats_counted" => state.pending_repeats());
            (Some(cp), state)
        }
        Some(cp) if cp.path == with.path => {
            info!("suppression state is one save ahead of the checkpoint (stopped between the two writes); resuming at its position",
                  "offset" => with.position.offset, "open_windows" => state.open_windows());
            (Some(with), state)
        }
        _ => {
            warn!("suppression state ignored: it does not belong to the checkpoint in use", "path" => path.display());
            (resume, fresh())
        }
    }
}

/// Writes the checkpoint when the acknowledged position moved, and the suppression state (just
/// before it, with the same position inside) when either changed.
struct CheckpointSaver {
    path: Option<PathBuf>,
    state_path: Option<PathBuf>,
    log_path: PathBuf,
    last: Option<(Position, u32)>,
    last_generation: Option<u64>,
    last_save: Instant,
    throttle: Throttle,
    metrics: Arc<Metrics>,
}

impl CheckpointSaver {
    fn new(
        path: Option<PathBuf>,
        state_path: Option<PathBuf>,
        log_path: PathBuf,
        metrics: Arc<Metrics>,
    ) -> CheckpointSaver {
        CheckpointSaver {
            path,
            state_path,
            log_path,
            last: None,
            last_generation: None,
            last_save: Instant::now(),
            throttle: Throttle::new(Duration::from_secs(60)),
            metrics,
        }
    }

    /// Saves once a second, and at once after a first event or a summary was acknowledged (so
    /// a restart cannot send it a second time).
    fn save_if_due(&mut self, queue: &Queue<Position>) {
        let urgent = queue.snapshot(|_, s| s.is_some_and(|s| s.take_urgent()));
        if urgent || self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save(queue);
            self.last_save = Instant::now();
        }
    }

    fn save(&mut self, queue: &Queue<Position>) {
        let Some(path) = &self.path else { return };
        let log_path = self.log_path.clone();
        let last = self.last;
        let last_generation = self.last_generation;
        let want_state = self.state_path.is_some();
        // Position and state are read under one lock, so they describe the same records.
        let snap = queue.snapshot(|ack, s| {
            let ack = ack?;
            let cp = Checkpoint {
                path: log_path,
                position: ack.0,
                skip_events: ack.1,
            };
            let generation = s.as_ref().map(|s| s.generation());
            if last == Some(ack) && generation == last_generation {
                return None;
            }
            let state = match s {
                Some(s) if want_state => Some(s.encode(&checkpoint::encode(&cp))),
                _ => None,
            };
            Some((ack, cp, generation, state))
        });
        let Some((ack, cp, generation, state)) = snap else {
            return;
        };
        // The state first: a checkpoint never runs ahead of the state that goes with it.
        if let (Some(state_path), Some(bytes)) = (&self.state_path, state) {
            if let Err(e) = checkpoint::write_atomically(state_path, &bytes) {
                if let Some(n) = self.throttle.hit("state") {
                    warn!("cannot write the suppression state; the checkpoint waits for it", "path" => state_path.display(), "error" => e, "repeated" => n);
                }
                return;
            }
            self.metrics
                .suppress_state_writes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.last_generation = generation;
        if self.last == Some(ack) {
            return;
        }
        match checkpoint::save(path, &cp) {
            Ok(()) => {
                self.last = Some(ack);
                self.throttle.reset();
                self.metrics
                    .checkpoint_offset
                    .store(ack.0.offset, Ordering::Relaxed);
                self.metrics
                    .checkpoint_writes
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Some(n) = self.throttle.hit("save") {
                    warn!("cannot write the checkpoint; will retry", "CHECKPOINT_PATH" => path.display(), "error" => e, "repeated" => n);
                }
            }
        }
    }

    /// A main-loop turn: saves when due; `last` (after the drain): saves now and says what.
    fn tick(&mut self, queue: &Queue<Position>, last: bool) -> String {
        if last {
            self.save(queue);
            self.describe()
        } else {
            self.save_if_due(queue);
            String::new()
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

fn banner(ctx: &Ctx<'_>, rules: &RuleSet, source: &[(&str, String)], from_beginning: bool) {
    let (cfg, rules_path, backend) = (ctx.cfg, ctx.rules_path, ctx.backend_line);
    let mut b = String::new();
    b.push_str(&format!("healert-agent {}\n", crate::VERSION));
    b.push_str(&format!("  backend     {}  ({backend})\n", cfg.backend_url));
    b.push_str(&format!(
        "  auth        {}\n",
        Redacted(cfg.api_key.as_ref().map(|k| k.expose()).unwrap_or(""))
    ));
    for (k, v) in source {
        b.push_str(&format!("  {k:<11} {v}\n"));
    }
    let checkpoint = match cfg.audit_source {
        AuditSource::Stdin => "off (stdin cannot be resumed)".to_string(),
        AuditSource::Webhook => cfg.spool_checkpoint_path().display().to_string(),
        AuditSource::File => cfg
            .checkpoint_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "off (CHECKPOINT_PATH unset)".into()),
    };
    b.push_str(&format!("  checkpoint  {checkpoint}\n"));
    b.push_str(&match ctx.health {
        Some(addr) => format!("  health      http://{addr}  (/healthz, /readyz, /metrics)\n"),
        None => "  health      off (HEALTH_ADDR unset)\n".to_string(),
    });
    b.push_str(&format!(
        "  suppression {}  (SUPPRESS_WINDOW; a rule's suppress: wins){}\n",
        if cfg.suppress_window.is_zero() {
            "off".to_string()
        } else {
            crate::operate::clock::human_duration(cfg.suppress_window)
        },
        match cfg.audit_source {
            AuditSource::Stdin => "; windows open at the end of the input are summarised then",
            AuditSource::File if cfg.checkpoint_path.is_none() => "",
            _ => "; open windows kept beside the checkpoint",
        }
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
    if cfg.audit_source == AuditSource::File && cfg.start_at == StartAt::Beginning && from_beginning
    {
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
