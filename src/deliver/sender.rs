//! The one sender thread and its retry policy, which never drops an event the backend may
//! still accept.
//!
//! The sender takes the event at the front of the [`Queue`], POSTs it, and pops it only once
//! the backend answered 2xx, or refused the event's *content* with 400 or 422 (which
//! dead-letters it), so the queue's front is always the oldest unacknowledged event.
//! 429/503/5xx/network errors back off and retry forever; 401/403 wait for a fixed key; every
//! other 4xx (404, 405, 413...) says something about the address or a proxy in between, not
//! about the event — a wrong base path, a proxy being reconfigured, anyone on the path — so it
//! is retried with backoff like a 5xx, logged with what to check and shown in `/readyz` and
//! `/metrics` (state `refusing`): a misconfiguration never costs an event. [`SenderHandle::drain`] is the one
//! shutdown: deliver what is queued within a grace period, then stop.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::deliver::http_client::{Client, HttpError, Response};
use crate::deliver::queue::{Job, Queue};
use crate::deliver::suppress::SummaryKey;
use crate::detect::json::{Peek, Scanner};
use crate::detect::FrictionEvent;
use crate::operate::log::{sanitize, Throttle};
use crate::operate::metrics::{now_unix_ms, BackendState, Metrics};
use crate::{error, info, warn};

/// How the agent is run (`HEALERT_MODE`), so that a message gives the fix that applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Not said: messages name both fixes.
    #[default]
    Unspecified,
    /// `./healert.sh start agent`: the key is in the agent's `.env`.
    Local,
    /// `daemonset.yaml`: the key comes from the Secret `healert-api-key`.
    DaemonSet,
    /// `docs/examples/webhook.yaml`: the same Secret, in the Deployment `healert-agent-webhook`.
    Webhook,
}

impl RunMode {
    /// `local` | `daemonset` | `webhook` (any case).
    pub fn parse(s: &str) -> Option<RunMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Some(RunMode::Local),
            "daemonset" => Some(RunMode::DaemonSet),
            "webhook" => Some(RunMode::Webhook),
            _ => None,
        }
    }
}

/// What to do about a key the backend refuses (401/403), in the words of `mode`.
pub fn key_fix(mode: RunMode, has_key: bool) -> &'static str {
    match (mode, has_key) {
        (RunMode::Local, true) => "HEALERT_API_KEY in the agent's .env is not accepted by the backend: put the backend's current key there and run ./healert.sh restart agent",
        (RunMode::Local, false) => "the backend requires an API key and HEALERT_API_KEY is not set: add HEALERT_API_KEY=<the backend's key> to the agent's .env and run ./healert.sh restart agent",
        (RunMode::DaemonSet, true) => "HEALERT_API_KEY from the Secret healert-api-key is not accepted by the backend: put the backend's current key in that Secret (./healert.sh setup does it) and restart the pods (kubectl -n healert-system rollout restart daemonset/healert-agent)",
        (RunMode::DaemonSet, false) => "the backend requires an API key and the Secret healert-api-key gives none: create it with the backend's key (./healert.sh setup does it) and restart the pods (kubectl -n healert-system rollout restart daemonset/healert-agent)",
        (RunMode::Webhook, true) => "HEALERT_API_KEY from the Secret healert-api-key is not accepted by the backend: put the backend's current key in that Secret (./healert.sh setup does it) and restart the Deployment (kubectl -n healert-system rollout restart deployment/healert-agent-webhook)",
        (RunMode::Webhook, false) => "the backend requires an API key and the Secret healert-api-key gives none: create it with the backend's key (./healert.sh setup does it) and restart the Deployment (kubectl -n healert-system rollout restart deployment/healert-agent-webhook)",
        (RunMode::Unspecified, true) => "HEALERT_API_KEY is not accepted by the backend: set it to the backend's current key (local mode: in the agent's .env, then ./healert.sh restart agent; DaemonSet: in the Secret healert-api-key, then restart the pods)",
        (RunMode::Unspecified, false) => "the backend requires an API key and HEALERT_API_KEY is not set: set it to the backend's key (local mode: in the agent's .env, then ./healert.sh restart agent; DaemonSet: in the Secret healert-api-key, then restart the pods)",
    }
}

/// How the sender behaves; `Default` is the production policy of the issue.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Client-side pacing of POST /events (0 = off).
    pub max_events_per_minute: u32,
    /// Where refused (400, 422) payloads are appended, one JSON line each.
    pub dead_letter_path: Option<PathBuf>,
    /// First backoff step after a failure (doubles up to `backoff_max`).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Wait between attempts while the backend answers 401/403.
    pub auth_retry: Duration,
    /// Longest `Retry-After` honoured (a hostile value cannot park the sender for days).
    pub retry_after_max: Duration,
    /// Minimum time between two "API key rejected" error lines.
    pub auth_log_every: Duration,
    /// Log one line per delivered event (`[200] type=... severity=...`).
    pub log_each_event: bool,
    /// Check the backend (`GET /health`) and the key ([`check_key`]) on the sender thread
    /// before the first event, so that a slow or blackholed backend never holds up the
    /// follower.
    pub startup_check: bool,
    /// How the agent is run: which fix a refused key's message gives.
    pub mode: RunMode,
}

impl Default for DeliveryOptions {
    fn default() -> DeliveryOptions {
        DeliveryOptions {
            max_events_per_minute: 0,
            dead_letter_path: None,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            auth_retry: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(600),
            auth_log_every: Duration::from_secs(60),
            log_each_event: true,
            startup_check: false,
            mode: RunMode::Unspecified,
        }
    }
}

/// What a sender did in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Accepted with 2xx.
    pub sent: u64,
    /// Refused with 400 or 422, acknowledged (and written to DEAD_LETTER_PATH when set).
    pub dead_lettered: u64,
    /// Events still in the queue when the sender stopped.
    pub pending: usize,
    /// Failed attempts (each followed by a wait and a retry).
    pub retries: u64,
}

/// Shutdown requests from the handle to the sender thread.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl Control {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop now, or the shutdown deadline passed.
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.deadline().is_some_and(|d| Instant::now() >= d)
    }
}

/// How long a stopping sender may still take, past its deadline (or past [`SenderHandle::abort`]),
/// to finish the request in flight before it is left behind. The HTTP deadline (HTTP_TIMEOUT)
/// can be minutes; a stop must not wait for it.
pub const STOP_SLACK: Duration = Duration::from_millis(1000);

/// The running sender thread.
#[derive(Debug)]
pub struct SenderHandle<P> {
    queue: Arc<Queue<P>>,
    control: Arc<Control>,
    thread: Option<JoinHandle<DeliveryStats>>,
    /// The sender's stats so far (for a thread left behind in a hung request).
    progress: Arc<Mutex<DeliveryStats>>,
}

/// How a [`SenderHandle::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub stats: DeliveryStats,
    /// A second stop request ended the drain at once.
    pub forced: bool,
}

impl<P: Copy> SenderHandle<P> {
    /// The one shutdown sequence (`run` and `replay --send`): closes the queue and delivers
    /// what is in it until it is empty. `stop_requests()` counts stop requests so far (SIGTERM
    /// and SIGINT): the first starts the `grace` period (already started if it is non-zero at
    /// the call), past which the drain ends; a second ends it at once. `tick` runs every 20 ms
    /// meanwhile (the agent saves its checkpoint there). Returns the sender's stats.
    pub fn drain(
        self,
        grace: Duration,
        stop_requests: impl Fn() -> u32,
        mut tick: impl FnMut(),
    ) -> Drained {
        self.queue.close();
        let mut deadline: Option<Instant> = None;
        let mut forced = false;
        while !self.queue.is_empty() {
            let stops = stop_requests();
            if stops > 1 {
                forced = true;
                break;
            }
            if stops == 1 && deadline.is_none() {
                deadline = Some(Instant::now() + grace);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            tick();
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = if forced {
            warn!("second signal: stopping at once");
            self.abort()
        } else {
            self.finish(Instant::now())
        };
        Drained { stats, forced }
    }

    /// Shutdown: close the queue; keep delivering until it is empty or `deadline`; then stop
    /// (interrupt any backoff sleep) and join. Returns stats (sent, dead-lettered, left pending).
    /// A request still in flight [`STOP_SLACK`] after the deadline is abandoned (its event stays
    /// queued, so behind the checkpoint).
    pub fn finish(mut self, deadline: Instant) -> DeliveryStats {
        *self
            .control
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.queue.close();
        self.join()
    }

    /// Immediate stop (second signal): stop after the in-flight request, join; a request still
    /// in flight after [`STOP_SLACK`] is abandoned (its event stays queued).
    pub fn abort(mut self) -> DeliveryStats {
        self.control.stop.store(true, Ordering::SeqCst);
        self.queue.close();
        self.join()
    }

    fn join(&mut self) -> DeliveryStats {
        self.queue.wake();
        let now = Instant::now();
        let limit = self.control.deadline().map_or(now, |d| d.max(now)) + STOP_SLACK;
        if let Some(t) = &self.thread {
            // Sleeps and waits inside the sender end at the deadline or stop; only a request
            // in flight (bounded by HTTP_TIMEOUT alone) can outlast them.
            while !t.is_finished() && Instant::now() < limit {
                self.queue.wake();
                std::thread::sleep(Duration::from_millis(10));
            }
            if !t.is_finished() {
                let progress = *self.progress.lock().unwrap_or_else(|p| p.into_inner());
                warn!("a backend request is still in flight; not waiting for it (its event stays queued and is sent again after the restart)",
                      "waited_past_deadline" => human(STOP_SLACK));
                // Detached: the process is about to exit.
                self.thread = None;
                return DeliveryStats {
                    pending: self.queue.len(),
                    ..progress
                };
            }
        }
        let stats = self.thread.take().map(|t| t.join());
        match stats {
            Some(Ok(s)) => s,
            _ => {
                error!("the delivery thread panicked; events still queued were not sent");
                DeliveryStats {
                    pending: self.queue.len(),
                    ..DeliveryStats::default()
                }
            }
        }
    }
}

/// Starts the sender thread: takes events from the queue in order, POSTs each, acknowledges,
/// retries per the policy in the module docs.
pub fn spawn_sender<P: Copy + Send + 'static>(
    queue: Arc<Queue<P>>,
    client: Client,
    opts: DeliveryOptions,
    metrics: Arc<Metrics>,
) -> SenderHandle<P> {
    let control = Arc::new(Control::default());
    let progress = Arc::new(Mutex::new(DeliveryStats::default()));
    let mut sender = Sender {
        queue: queue.clone(),
        metrics,
        control: control.clone(),
        client,
        backoff: Backoff::new(opts.backoff_base, opts.backoff_max),
        auth_throttle: Throttle::new(opts.auth_log_every),
        opts,
        next_post_at: None,
        failing_since: None,
        stats: DeliveryStats::default(),
        progress: progress.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("deliver".into())
        .spawn(move || sender.run());
    match thread {
        Ok(t) => SenderHandle {
            queue,
            control,
            thread: Some(t),
            progress,
        },
        Err(e) => {
            // Without a thread nothing can be delivered; the handle reports all as pending.
            error!("cannot start the delivery thread", "error" => e);
            SenderHandle {
                queue,
                control,
                thread: None,
                progress,
            }
        }
    }
}

/// What one attempt's answer means for the event.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted(u16),
    /// 400/422: the backend rejects the event's content; dead-letter and move on.
    Refused(u16, String),
    /// Another 4xx (404, 405, 413...): the address or a proxy is wrong, not the event; retry
    /// with backoff until it is fixed.
    Misrouted(u16, String),
    /// 401/403: the key is wrong or missing.
    Unauthorized(u16),
    /// Try again after the given wait (None: the next backoff step).
    Retry(String, Option<Duration>),
}

fn classify(result: &Result<Response, HttpError>, retry_after_max: Duration) -> Outcome {
    let r = match result {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(e.to_string(), None),
    };
    match r.status {
        200..=299 => Outcome::Accepted(r.status),
        401 | 403 => Outcome::Unauthorized(r.status),
        429 | 503 => Outcome::Retry(
            format!("HTTP {}", r.status),
            r.header("retry-after")
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                .map(|d| d.min(retry_after_max)),
        ),
        // 408 Request Timeout is transient by definition.
        408 => Outcome::Retry("HTTP 408".into(), None),
        400 | 422 => Outcome::Refused(r.status, detail(&r.body)),
        400..=499 => Outcome::Misrouted(r.status, detail(&r.body)),
        // 5xx, and 1xx/3xx (a redirect means a wrong base URL: keep the events until fixed).
        s => Outcome::Retry(format!("HTTP {s}: {}", detail(&r.body)), None),
    }
}

/// The backend's `detail` (FastAPI style) or the start of the body, sanitised and truncated.
fn detail(body: &[u8]) -> String {
    let d = match body_field(body, "detail") {
        Some(d) => d,
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    sanitize(&d, 300)
}

struct Sender<P> {
    queue: Arc<Queue<P>>,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    client: Client,
    opts: DeliveryOptions,
    backoff: Backoff,
    auth_throttle: Throttle,
    next_post_at: Option<Instant>,
    /// When the current run of failed attempts started, and how many there were.
    failing_since: Option<(Instant, u64)>,
    stats: DeliveryStats,
    /// A copy of `stats`, readable by the handle while this thread is busy.
    progress: Arc<Mutex<DeliveryStats>>,
}

impl<P: Copy> Sender<P> {
    fn run(&mut self) -> DeliveryStats {
        if self.opts.startup_check && !self.control.stopped() {
            self.startup_check();
            self.metrics.sender.beat();
        }
        while let Some(job) = self.next_job() {
            let delivered = match job {
                Job::Event(ev) => self.deliver(&ev, None),
                Job::Summary(key, ev) => self.deliver(&ev, Some(&key)),
            };
            *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = self.stats;
            if !delivered {
                break;
            }
        }
        self.stats.pending = self.queue.len();
        self.stats
    }

    /// The next event to send (the front one, still queued, or a due summary), or None when
    /// the queue is closed and empty or we must stop. Repeats are acknowledged on the way.
    fn next_job(&self) -> Option<Job> {
        let mut g = self.queue.lock();
        loop {
            self.metrics.sender.beat();
            if self.control.stopped() {
                return None;
            }
            let wait = match Queue::next_job(&mut g, &self.metrics) {
                Ok(job) => {
                    // Repeats acknowledged on the way freed room for the producer.
                    self.queue.notify_space();
                    return Some(job);
                }
                Err((true, _)) => return None,
                Err((false, wait)) => wait,
            };
            // Room may have freed up (repeats were acknowledged).
            self.queue.notify_space();
            // Wake at least once a second so the liveness tick stays fresh, and when a
            // suppression window ends.
            g = self
                .queue
                .items
                .wait_timeout(g, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sleeps up to `d`; false if told to stop (or past the shutdown deadline) meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut g = self.queue.lock();
        loop {
            self.metrics.sender.beat();
            if self.control.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            let mut slice = (until - now).min(Duration::from_secs(1));
            if let Some(dl) = self.control.deadline() {
                slice = slice.min(dl.saturating_duration_since(now));
            }
            g = self
                .queue
                .items
                .wait_timeout(g, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sends one event until it is acknowledged; false if stopped first (it stays queued, or
    /// for a summary, its window stays open).
    fn deliver(&mut self, ev: &FrictionEvent, summary: Option<&SummaryKey>) -> bool {
        let ack = |q: &Queue<P>| match summary {
            Some(k) => q.summary_done(k, &ev.kind),
            None => q.pop_front(),
        };
        let body = ev.to_json();
        let body: &[u8] = AsRef::<[u8]>::as_ref(&body);
        loop {
            if self.control.stopped() {
                return false;
            }
            if !self.pace() {
                return false;
            }
            self.client.set_deadline_cap(self.control.deadline());
            self.in_flight();
            let result = self.client.post_json("/events", body);
            self.metrics.sender.beat();
            self.metrics
                .connections_discarded
                .store(self.client.discarded_connections(), Ordering::Relaxed);
            // The status sharpens the /readyz reason ("rejected the API key (401)", "failing
            // (last status 503)"); 0 for a transport error ("unreachable").
            self.metrics
                .set_backend_status(result.as_ref().map_or(0, |r| r.status));
            match classify(&result, self.opts.retry_after_max) {
                Outcome::Accepted(status) => {
                    self.recovered();
                    self.metrics.set_backend_state(BackendState::Ok);
                    self.metrics.inc_sent(&ev.kind);
                    self.stats.sent += 1;
                    if self.opts.log_each_event {
                        info!(format!("[{status}]"), "type" => ev.kind, "severity" => ev.severity,
                              "actor" => ev.actor, "ns" => ev.namespace);
                    }
                    ack(&self.queue);
                    return true;
                }
                Outcome::Refused(status, detail) => {
                    self.recovered();
                    self.metrics.set_backend_state(BackendState::Ok);
                    self.dead_letter(ev, body, status, &detail);
                    ack(&self.queue);
                    return true;
                }
                Outcome::Unauthorized(status) => {
                    self.metrics.set_backend_state(BackendState::Unauthorized);
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    self.note_failure();
                    if let Some(suppressed) = self.auth_throttle.hit("auth") {
                        let fix = key_fix(self.opts.mode, self.client.has_api_key());
                        error!(format!("backend answered {status}: {fix}; events are kept and retried"),
                               "retry_every" => human(self.opts.auth_retry),
                               "pending" => self.queue.len(), "suppressed" => suppressed);
                    }
                    if !self.sleep(self.opts.auth_retry) {
                        return false;
                    }
                }
                Outcome::Misrouted(status, detail) => {
                    self.metrics.set_backend_state(BackendState::Refusing);
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    let attempt = self.note_failure();
                    let wait = self.backoff.next();
                    warn!(format!("backend answered {status} to POST /events: {}; the event is kept and retried (nothing is dropped)", misrouted_hint(status)),
                          "detail" => detail, "attempt" => attempt,
                          "wait" => human(wait), "pending" => self.queue.len());
                    if !self.sleep(wait) {
                        return false;
                    }
                }
                Outcome::Retry(why, retry_after) => {
                    self.metrics.set_backend_state(BackendState::Failing);
                    self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    let attempt = self.note_failure();
                    let wait = match retry_after {
                        Some(d) => d.max(self.opts.backoff_base),
                        None => self.backoff.next(),
                    };
                    warn!("backend not accepting events; retrying (nothing is dropped)",
                          "why" => why, "attempt" => attempt,
                          "wait" => human(wait),
                          "pending" => self.queue.len());
                    if !self.sleep(wait) {
                        return false;
                    }
                }
            }
        }
    }

    /// The start-up check, before the first event: `GET /health` (logged as
    /// [`log_backend_check`] does), then, unless the backend is unreachable, the key
    /// ([`check_key`]). A refused key sets the backend state (so `/readyz` says not ready) and
    /// is logged with the fix for the mode the agent runs in. Nothing here is fatal.
    fn startup_check(&mut self) {
        self.in_flight();
        if health_check(&mut self.client) == HealthCheck::Unreachable {
            info!(
                "API key check skipped: the backend is unreachable; the first event sent will tell"
            );
            return;
        }
        self.in_flight();
        let has_key = self.client.has_api_key();
        match check_key(&mut self.client) {
            KeyCheck::Accepted if has_key => {
                self.metrics.set_backend_state(BackendState::Ok);
                info!("API key accepted by the backend (checked at start with an empty event, which it refuses with 422: nothing stored)");
            }
            KeyCheck::Accepted => {
                self.metrics.set_backend_state(BackendState::Ok);
                info!("the backend requires no API key (checked at start with an empty event: nothing stored)");
            }
            KeyCheck::Refused(status) => {
                self.metrics.set_backend_status(status);
                self.metrics.set_backend_state(BackendState::Unauthorized);
                // The first event's 401 would only repeat this.
                let _ = self.auth_throttle.hit("auth");
                error!(format!(
                    "backend answered {status} to the API key check at start: {}; events are kept and retried",
                    key_fix(self.opts.mode, has_key)
                ));
            }
            KeyCheck::Unexpected(status, detail) => {
                warn!(format!("the API key check at start got HTTP {status} to an empty event (the backend answers 401, 403 or 422): {}", unexpected_hint(status)),
                      "detail" => detail);
            }
            KeyCheck::Unreachable(why) => {
                info!("API key check skipped: the backend did not answer; the first event sent will tell", "why" => why);
            }
        }
    }

    /// Declares a request about to block this thread: it is bounded by HTTP_TIMEOUT, so liveness
    /// must not call the sender stalled before that deadline (HTTP_TIMEOUT may exceed
    /// `STALL_AFTER_MS`).
    fn in_flight(&self) {
        self.metrics
            .sender
            .busy_until(now_unix_ms().saturating_add(self.client.timeout().as_millis() as u64));
    }

    /// Waits for the client-side pacing slot; false if stopped meanwhile.
    fn pace(&mut self) -> bool {
        if self.opts.max_events_per_minute == 0 {
            return true;
        }
        if let Some(at) = self.next_post_at {
            let now = Instant::now();
            if at > now && !self.sleep(at - now) {
                return false;
            }
        }
        let interval = Duration::from_secs(60) / self.opts.max_events_per_minute;
        self.next_post_at = Some(Instant::now() + interval);
        true
    }

    /// Counts a failed attempt; returns the attempt number in the current failure run.
    fn note_failure(&mut self) -> u64 {
        self.stats.retries += 1;
        let f = self.failing_since.get_or_insert((Instant::now(), 0));
        f.1 += 1;
        f.1
    }

    fn recovered(&mut self) {
        self.backoff.reset();
        self.auth_throttle.reset();
        if let Some((since, attempts)) = self.failing_since.take() {
            info!("backend accepting events again",
                  "failed_attempts" => attempts,
                  "after" => human(since.elapsed()),
                  "pending" => self.queue.len());
        }
    }

    fn dead_letter(&mut self, ev: &FrictionEvent, body: &[u8], status: u16, detail: &str) {
        self.metrics.inc_rejected(status);
        self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.stats.dead_lettered += 1;
        let written = match &self.opts.dead_letter_path {
            None => "no (DEAD_LETTER_PATH not set)".to_string(),
            Some(path) => {
                let r = crate::operate::files::append_private(path).and_then(|mut f| {
                    let mut line = Vec::with_capacity(body.len() + 1);
                    line.extend_from_slice(body);
                    line.push(b'\n');
                    f.write_all(&line)
                });
                match r {
                    Ok(()) => path.display().to_string(),
                    Err(e) => {
                        error!("cannot append to DEAD_LETTER_PATH; check the path and its permissions",
                               "path" => path.display(), "error" => e);
                        "no (write failed)".to_string()
                    }
                }
            }
        };
        warn!(format!("[{status}] backend refused the event; it will never accept this payload"),
              "type" => ev.kind, "entity" => ev.entity_ref, "detail" => detail,
              "dead_letter" => written);
    }
}

/// `250ms`, `1.5s`: a wait as people read it.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Exponential backoff with jitter: step n waits a random time in [d/2, d],
/// d = min(max, base * 2^n), never less than `base`.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    max: Duration,
    step: u32,
    rng: u64,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Backoff {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Backoff {
            base,
            max: max.max(base),
            step: 0,
            rng: (t ^ (u64::from(std::process::id()) << 32)) | 1,
        }
    }

    fn next(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.step.min(20))
            .min(self.max);
        self.step = self.step.saturating_add(1);
        // xorshift64: enough to spread a fleet of agents, no rand crate needed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        (d / 2 + d.mul_f64(frac / 2.0)).max(self.base)
    }

    fn reset(&mut self) {
        self.step = 0;
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = v.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.len() != 5 || parts[4] != "GMT" {
        return None;
    }
    let day: u32 = parts[0].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[1])? as u32
        + 1;
    let year: i64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 || !(1..=31).contains(&day) {
        return None;
    }
    let days = crate::operate::clock::days_from_civil(year, month, day);
    let secs = days.checked_mul(86_400)? + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(secs.saturating_sub(now).max(0) as u64))
}

/// What `GET /health` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub version: String,
    pub auth_enabled: bool,
}

impl std::fmt::Display for BackendHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version={} auth={}",
            self.version,
            if self.auth_enabled {
                "enabled"
            } else {
                "disabled"
            }
        )
    }
}

/// Startup probe: GET {base}/health → Ok(BackendHealth{version, auth_enabled}) or Err(reason).
pub fn check_backend(client: &mut Client) -> Result<BackendHealth, String> {
    let r = client.get("/health");
    health_from(client, r)
}

/// The outcome of a `GET /health` as [`check_backend`] reports it.
fn health_from(client: &Client, r: Result<Response, HttpError>) -> Result<BackendHealth, String> {
    let r = r.map_err(|e| format!("GET {}/health failed: {e}", client.url()))?;
    if !(200..300).contains(&r.status) {
        return Err(format!(
            "GET {}/health answered HTTP {} ({}): check that HEALERT_BACKEND_URL is the backend's base URL",
            client.url(),
            r.status,
            detail(&r.body)
        ));
    }
    let version = body_field(&r.body, "version").unwrap_or_else(|| "unknown".into());
    let auth_enabled = body_field(&r.body, "auth").is_some_and(|a| {
        matches!(
            a.to_ascii_lowercase().as_str(),
            "true" | "enabled" | "required" | "on"
        )
    });
    Ok(BackendHealth {
        version: sanitize(&version, 80),
        auth_enabled,
    })
}

/// What the start-up `GET /health` found.
#[derive(Debug, PartialEq, Eq)]
enum HealthCheck {
    Ok,
    /// The backend answered, but not 2xx.
    Answered,
    /// No answer at all (resolve, connect, timeout...).
    Unreachable,
}

/// `GET /health`, logged: `Backend OK -- version=... auth=...`, or a warning (never fatal).
fn health_check(client: &mut Client) -> HealthCheck {
    let r = client.get("/health");
    let outcome = match &r {
        Err(_) => HealthCheck::Unreachable,
        Ok(r) if (200..300).contains(&r.status) => HealthCheck::Ok,
        Ok(_) => HealthCheck::Answered,
    };
    log_health(client, health_from(client, r));
    outcome
}

fn log_health(client: &Client, h: Result<BackendHealth, String>) -> Option<BackendHealth> {
    match h {
        Ok(h) => {
            info!(format!("Backend OK -- {h}"), "url" => client.url());
            Some(h)
        }
        Err(reason) => {
            warn!("backend not reachable at startup; events will be queued and retried until it is",
                  "why" => reason);
            None
        }
    }
}

/// Runs [`check_backend`] and logs the outcome as the start-up check does.
pub fn log_backend_check(client: &mut Client) -> Option<BackendHealth> {
    let h = check_backend(client);
    log_health(client, h)
}

/// What the key check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// 422: the backend took the key and refused the empty event.
    Accepted,
    /// 401 or 403: the key is wrong or missing.
    Refused(u16),
    /// Any other answer, with the backend's detail.
    Unexpected(u16, String),
    /// No answer.
    Unreachable(String),
}

/// Checks the key without storing anything: `POST /events` with the body `{}`. The backend
/// checks the key before the body, so it answers 401 for a wrong or missing key and 422 (an
/// invalid event, nothing stored) for the right one. Costs one request of the backend's rate
/// limit.
pub fn check_key(client: &mut Client) -> KeyCheck {
    match client.post_json("/events", b"{}") {
        Err(e) => KeyCheck::Unreachable(e.to_string()),
        Ok(r) => match r.status {
            401 | 403 => KeyCheck::Refused(r.status),
            422 => KeyCheck::Accepted,
            s => KeyCheck::Unexpected(s, detail(&r.body)),
        },
    }
}

/// What a 4xx other than 400/401/403/408/422/429 suggests to check.
pub fn misrouted_hint(status: u16) -> &'static str {
    match status {
        413 => "the event is larger than the backend or a proxy in between accepts: check HEALERT_BACKEND_URL's base path and raise the proxy's body size limit",
        _ => "check HEALERT_BACKEND_URL's base path (events go to {url}/events) and any proxy in between",
    }
}

/// What an unexpected answer to the key check suggests.
fn unexpected_hint(status: u16) -> &'static str {
    match status {
        200..=299 => "is HEALERT_BACKEND_URL the Healert backend? it accepted an empty event",
        429 | 503 => "the backend is busy; the first event sent will tell",
        400..=499 => misrouted_hint(status),
        _ => "the first event sent will tell",
    }
}

/// Top-level `key` of a JSON object body (the last one if duplicated): a string decoded, any
/// other value as written. `None` when the body is not a JSON object or has no such key.
/// Uses the agent's own validating scanner, so a hostile body cannot confuse it.
fn body_field(body: &[u8], key: &str) -> Option<String> {
    let mut s = Scanner::new(body);
    s.begin_object().ok()?;
    let mut found = None;
    let mut first = true;
    while let Some(k) = s.next_key(first).ok()? {
        first = false;
        let wanted = k == key;
        if wanted && s.peek().ok()? == Peek::String {
            found = Some(s.string().ok()?.into_owned());
        } else {
            let (a, b) = s.skip_value(0).ok()?;
            if wanted {
                found = Some(String::from_utf8_lossy(body.get(a..b)?).into_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::event as ev;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let waits: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        for (n, w) in waits.iter().enumerate() {
            let d = Duration::from_millis(500)
                .saturating_mul(1 << n)
                .min(Duration::from_secs(30));
            assert!(
                *w >= (d / 2).max(Duration::from_millis(500)) && *w <= d,
                "{n}: {w:?}"
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(500));
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-1",
            "soon",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 06 Foo 1994 08:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn classification_of_answers() {
        let resp = |status: u16, headers: &[(&str, &str)], body: &str| {
            Ok(Response {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.as_bytes().to_vec(),
            })
        };
        let max = Duration::from_secs(600);
        assert_eq!(classify(&resp(201, &[], ""), max), Outcome::Accepted(201));
        assert_eq!(
            classify(&resp(403, &[], ""), max),
            Outcome::Unauthorized(403)
        );
        assert_eq!(
            classify(&resp(429, &[("retry-after", "2")], ""), max),
            Outcome::Retry("HTTP 429".into(), Some(Duration::from_secs(2)))
        );
        assert_eq!(
            classify(&resp(503, &[("Retry-After", "99999")], ""), max),
            Outcome::Retry("HTTP 503".into(), Some(max))
        );
        assert_eq!(
            classify(&resp(422, &[], r#"{"detail":"bad \"type\"\n"}"#), max),
            Outcome::Refused(422, "bad \"type\"\\u{a}".into())
        );
        assert_eq!(
            classify(&resp(400, &[], "nope"), max),
            Outcome::Refused(400, "nope".into())
        );
        // Only 400 and 422 reject the content; every other 4xx is about the address.
        for s in [404, 405, 409, 410, 411, 413, 414, 415, 418, 451, 499] {
            assert!(
                matches!(classify(&resp(s, &[], ""), max), Outcome::Misrouted(st, _) if st == s),
                "{s}"
            );
        }
        assert!(matches!(
            classify(&resp(500, &[], ""), max),
            Outcome::Retry(_, None)
        ));
        assert!(matches!(
            classify(&resp(408, &[], ""), max),
            Outcome::Retry(_, None)
        ));
        let err = Err(HttpError::Timeout { during: "x" });
        assert!(matches!(classify(&err, max), Outcome::Retry(_, None)));
    }

    #[test]
    fn a_refused_key_is_explained_in_the_words_of_the_mode() {
        for has_key in [true, false] {
            let local = key_fix(RunMode::Local, has_key);
            assert!(local.contains(".env") && local.contains("./healert.sh restart agent"));
            assert!(!local.contains("Secret") && !local.contains("kubectl"));
            let ds = key_fix(RunMode::DaemonSet, has_key);
            assert!(ds.contains("Secret healert-api-key") && ds.contains("rollout restart"));
            assert!(!ds.contains(".env"));
            let webhook = key_fix(RunMode::Webhook, has_key);
            assert!(webhook.contains("Secret healert-api-key"));
            assert!(webhook.contains("deployment/healert-agent-webhook"));
            assert!(!webhook.contains(".env") && !webhook.contains("daemonset/"));
            let either = key_fix(RunMode::Unspecified, has_key);
            assert!(either.contains(".env") && either.contains("Secret"));
        }
        assert!(key_fix(RunMode::Local, false).contains("not set"));
        assert_eq!(RunMode::parse(" DaemonSet "), Some(RunMode::DaemonSet));
        assert_eq!(RunMode::parse("local"), Some(RunMode::Local));
        assert_eq!(RunMode::parse("Webhook"), Some(RunMode::Webhook));
        assert_eq!(RunMode::parse("k8s"), None);
    }

    #[test]
    fn json_helpers_and_payload() {
        let h = r#"{"status":"ok","version":"v0.1.0","auth": "enabled"}"#;
        assert_eq!(
            body_field(h.as_bytes(), "version").as_deref(),
            Some("v0.1.0")
        );
        assert_eq!(body_field(h.as_bytes(), "auth").as_deref(), Some("enabled"));
        assert_eq!(
            body_field(br#"{"auth":false}"#, "auth").as_deref(),
            Some("false")
        );
        assert_eq!(
            body_field(br#"{"detail":"a \"b\" \u00e9"}"#, "detail").as_deref(),
            Some("a \"b\" \u{e9}")
        );
        assert_eq!(
            body_field(br#"{"detail":[{"x":1}]}"#, "detail").as_deref(),
            Some(r#"[{"x":1}]"#)
        );
        assert_eq!(
            body_field(br#"{"nested":{"version":"x"}}"#, "version"),
            None
        );
        assert_eq!(body_field(b"[1,2]", "detail"), None);
        assert_eq!(detail(b"plain text"), "plain text");
        // Whatever serializer event.rs provides, the payload is JSON carrying the event.
        let body: serde_json::Value = serde_json::from_str(&ev(1).to_json()).unwrap();
        assert_eq!(body["type"], "kubectl-exec");
        assert_eq!(body["severity"], "high");
        assert_eq!(body["description"], "exec \"1\"\n");
    }
}
