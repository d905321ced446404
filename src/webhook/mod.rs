//! The audit webhook (`AUDIT_SOURCE=webhook`): kube-apiserver POSTs `EventList` batches
//! (`--audit-webhook-config-file`), the agent answers 200 once the batch's friction events are
//! on disk in the [`spool`], and the file follower delivers them from there.
//!
//! One request: the head (at most [`Limits::max_head`] bytes, within
//! [`Limits::head_timeout`]), `POST` only, `Authorization: Bearer <AUDIT_WEBHOOK_TOKEN>` (401
//! otherwise), a `Content-Length` body (411 without one; 413 past `AUDIT_WEBHOOK_MAX_BODY`),
//! refused with 429 and `Retry-After` while the spool's backlog is at `SPOOL_MAX_BYTES`. The
//! body is streamed item by item through a `DocumentSource` (items may lack `kind` and
//! `apiVersion`; `?timeout=30s` on the URL is ignored: the answer comes well before), each item
//! judged by the shared [`Detector`]; those that produced events are appended to the spool and
//! synced, then 200. A body that is not an `EventList` (or one event) gets 400 and nothing of
//! it is kept. Connections are kept alive between batches, closed after
//! [`Limits::idle_timeout`], at most [`Limits::max_connections`] at once (429 beyond); the
//! whole body must arrive within [`Limits::body_timeout`]. None of this shares a thread, a lock
//! or a port with `/healthz` and `/readyz`.

pub mod spool;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::detect::audit::{EVENT_LIST, EVENT_SPEC};
use crate::detect::{Detector, LineVerdict, Verdict};
use crate::operate::log::{sanitize, Throttle};
use crate::operate::metrics::Metrics;
use crate::source::document::DocumentSource;
use crate::source::prune::{Caps, PruneErrorKind};
use crate::source::{Next, Source, Unreadable};
use crate::{error, warn};

use spool::{AppendError, Candidate, Spool};

/// The bearer token kube-apiserver sends (`AUDIT_WEBHOOK_TOKEN`); shown only as its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(t: String) -> Token {
        Token(t)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, given: &[u8]) -> bool {
        let want = self.0.as_bytes();
        let mut diff = (want.len() ^ given.len()) as u8 | u8::from(want.len() != given.len());
        for (i, &b) in want.iter().enumerate() {
            diff |= b ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<redacted, {} bytes>)", self.0.len())
    }
}

/// The detector the webhook judges batches with, replaced on SIGHUP.
#[derive(Debug)]
pub struct SharedDetector(Mutex<Arc<Detector>>);

impl SharedDetector {
    pub fn new(d: Detector) -> SharedDetector {
        SharedDetector(Mutex::new(Arc::new(d)))
    }

    pub fn get(&self) -> Arc<Detector> {
        Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set(&self, d: Detector) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
    }
}

/// Bounds on what one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head accepted (431 beyond).
    pub max_head: usize,
    /// Time to receive a request head once its first byte arrived (and the first request's
    /// first byte after connecting).
    pub head_timeout: Duration,
    /// A kept-alive connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Time to receive a whole body.
    pub body_timeout: Duration,
    /// Connections served at once; further ones get 429 and are closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 16 << 10,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 32,
        }
    }
}

/// What the server needs to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `HOST:PORT` (`AUDIT_WEBHOOK_ADDR`; `:PORT` means all IPv4 interfaces).
    pub addr: String,
    /// `None`: no token required (`AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true`).
    pub token: Option<Token>,
    /// `AUDIT_WEBHOOK_MAX_BODY`.
    pub max_body: u64,
    pub limits: Limits,
}

/// Seconds a refused client is told to wait (`Retry-After`).
const RETRY_AFTER_SECS: u64 = 5;

struct Ctx {
    token: Option<Token>,
    max_body: u64,
    limits: Limits,
    spool: Arc<Spool>,
    detector: Arc<SharedDetector>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    errors: Mutex<Throttle>,
    /// Requests in progress (for the shutdown's wait).
    busy: AtomicU64,
}

/// A running webhook server; stops accepting on [`WebhookServer::stop`] or drop.
pub struct WebhookServer {
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    thread: Option<JoinHandle<()>>,
}

/// Starts serving on `opts.addr`.
pub fn spawn(
    opts: Options,
    spool: Arc<Spool>,
    detector: Arc<SharedDetector>,
    metrics: Arc<Metrics>,
) -> io::Result<WebhookServer> {
    let target = match opts.addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => opts.addr.clone(),
    };
    let bind_err = |e: io::Error| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => "another process listens there; pick a free port",
            io::ErrorKind::PermissionDenied => "ports below 1024 need privileges; use e.g. :8765",
            _ => "set AUDIT_WEBHOOK_ADDR to HOST:PORT, e.g. 0.0.0.0:8765",
        };
        io::Error::new(
            e.kind(),
            format!(
                "AUDIT_WEBHOOK_ADDR={:?}: cannot listen: {e}; {hint}",
                sanitize(&opts.addr, 200)
            ),
        )
    };
    let listener = TcpListener::bind(target.as_str()).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let ctx = Arc::new(Ctx {
        token: opts.token,
        max_body: opts.max_body,
        limits: opts.limits,
        spool,
        detector,
        metrics,
        stop: Arc::new(AtomicBool::new(false)),
        errors: Mutex::new(Throttle::new(Duration::from_secs(60))),
        busy: AtomicU64::new(0),
    });
    let c = Arc::clone(&ctx);
    let thread = std::thread::Builder::new()
        .name("webhook-accept".into())
        .spawn(move || accept_loop(listener, c))?;
    Ok(WebhookServer {
        addr,
        ctx,
        thread: Some(thread),
    })
}

impl WebhookServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, then waits (at most `wait`) for the requests in progress to be
    /// answered; kept-alive connections are closed after their current request.
    pub fn stop(mut self, wait: Duration) {
        self.shutdown();
        let end = Instant::now() + wait;
        while self.ctx.busy.load(Ordering::SeqCst) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.ctx.stop.store(true, Ordering::SeqCst);
        if crate::operate::health::wake_accept(self.addr) {
            let _ = thread.join();
        }
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Frees a connection slot when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                ctx.log_error("webhook: accept failed", &e);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= ctx.limits.max_connections {
            // Never blocks the accept thread: a fresh socket takes these few bytes at once.
            ctx.metrics.inc_webhook_request(429);
            let _ = stream.set_nonblocking(true);
            let mut s = &stream;
            let _ = s.write_all(&response(
                429,
                "too many connections; retry\n",
                true,
                Some(RETRY_AFTER_SECS),
            ));
            let _ = stream.shutdown(Shutdown::Write);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(&active));
        let c = Arc::clone(&ctx);
        let spawned = std::thread::Builder::new()
            .name("webhook-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &c);
            });
        if let Err(e) = spawned {
            ctx.log_error("webhook: cannot start a thread", &e);
        }
    }
}

impl Ctx {
    fn log_error(&self, what: &str, e: &dyn std::fmt::Display) {
        let hit = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hit(what);
        if let Some(n) = hit {
            warn!(what, "error" => e, "suppressed" => n);
        }
    }
}

/// One connection: bytes read past the request being served are kept for the next one.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A parsed request head.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    method: String,
    content_length: Option<u64>,
    chunked: bool,
    authorization: Option<Vec<u8>>,
    close: bool,
    expect_continue: bool,
}

/// An answer that ends the request.
struct Reply {
    status: u16,
    body: String,
    close: bool,
    retry_after: Option<u64>,
}

impl Reply {
    fn new(status: u16, body: impl Into<String>, close: bool) -> Reply {
        Reply {
            status,
            body: body.into(),
            close,
            retry_after: None,
        }
    }
}

fn serve(stream: TcpStream, ctx: &Ctx) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(ctx.limits.head_timeout));
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    let mut first = true;
    loop {
        let wait = if first {
            ctx.limits.head_timeout
        } else {
            ctx.limits.idle_timeout
        };
        first = false;
        let raw = match read_head(&mut conn, ctx.limits, wait) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(reply) => {
                finish(&mut conn, ctx, reply);
                return;
            }
        };
        ctx.busy.fetch_add(1, Ordering::SeqCst);
        let mut reply = match parse_head(&raw) {
            Ok(head) => handle(&mut conn, &head, ctx),
            Err(r) => r,
        };
        if ctx.stop.load(Ordering::SeqCst) {
            reply.close = true;
        }
        let close = reply.close;
        finish(&mut conn, ctx, reply);
        ctx.busy.fetch_sub(1, Ordering::SeqCst);
        if close {
            return;
        }
    }
}

/// Writes the reply; a closing reply half-closes and swallows a bounded amount of what the
/// client still sends, so that the kernel does not reset the connection before the client
/// reads the answer.
fn finish(conn: &mut Conn, ctx: &Ctx, r: Reply) {
    ctx.metrics.inc_webhook_request(r.status);
    let bytes = response(r.status, &r.body, r.close, r.retry_after);
    if (&conn.stream).write_all(&bytes).is_err() || !r.close {
        return;
    }
    let _ = conn.stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut chunk = [0u8; 8192];
    let mut drained = 0usize;
    while drained < (4 << 20) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&conn.stream).read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads one request head: `Ok(None)` when the client closed (or stayed idle past `wait`)
/// between requests.
fn read_head(conn: &mut Conn, limits: Limits, wait: Duration) -> Result<Option<Vec<u8>>, Reply> {
    let mut deadline = Instant::now() + wait;
    let mut started = !conn.buf.is_empty();
    if started {
        deadline = deadline.min(Instant::now() + limits.head_timeout);
    }
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&conn.buf) {
            if end > limits.max_head {
                return Err(Reply::new(431, "request head too large\n", true));
            }
            let rest = conn.buf.split_off(end);
            let head = std::mem::replace(&mut conn.buf, rest);
            return Ok(Some(head));
        }
        if conn.buf.len() > limits.max_head {
            return Err(Reply::new(431, "request head too large\n", true));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.stream.set_read_timeout(Some(left)).is_err() {
            return if started {
                Err(Reply::new(408, "request head not received in time\n", true))
            } else {
                Ok(None)
            };
        }
        match (&conn.stream).read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                if !started {
                    started = true;
                    deadline = deadline.min(Instant::now() + limits.head_timeout);
                }
                conn.buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if started {
                    return Err(Reply::new(408, "request head not received in time\n", true));
                }
                return Ok(None);
            }
            Err(_) => return Ok(None),
        }
    }
}

/// Index just past the blank line ending the head (`\r\n\r\n` or `\n\n`).
fn head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b'\n') {
        let nl = i + p;
        let rest = &b[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

fn parse_head(raw: &[u8]) -> Result<Head, Reply> {
    let bad = |m: &str| Reply::new(400, format!("{m}\n"), true);
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "malformed request line; expected `POST /path HTTP/1.1`",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is spoken here"));
    }
    let mut h = Head {
        method: method.to_string(),
        close: version == "HTTP/1.0",
        ..Head::default()
    };
    for l in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = l.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| bad("Content-Length is not a number"))?;
                if h.content_length.is_some_and(|m| m != n) {
                    return Err(bad("conflicting Content-Length headers"));
                }
                h.content_length = Some(n);
            }
            "transfer-encoding" => h.chunked = true,
            "authorization" => h.authorization = Some(value.as_bytes().to_vec()),
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    h.close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    h.close = false;
                }
            }
            "expect" => h.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    Ok(h)
}

/// Answers one request whose head was read; reads its body when it is to be judged.
fn handle(conn: &mut Conn, h: &Head, ctx: &Ctx) -> Reply {
    if h.method != "POST" {
        return Reply::new(
            405,
            "method not allowed: the audit webhook takes POST of an EventList\n",
            true,
        );
    }
    if let Some(token) = &ctx.token {
        let given = h
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix(b"Bearer ".as_slice()));
        if !given.is_some_and(|g| token.matches(g)) {
            return Reply::new(
                401,
                "missing or wrong bearer token (AUDIT_WEBHOOK_TOKEN)\n",
                true,
            );
        }
    }
    if h.chunked {
        return Reply::new(
            411,
            "chunked bodies are not read: send Content-Length (kube-apiserver does)\n",
            true,
        );
    }
    let Some(len) = h.content_length else {
        return Reply::new(411, "Content-Length required\n", true);
    };
    if len > ctx.max_body {
        return Reply::new(
            413,
            format!(
                "body of {len} bytes is over AUDIT_WEBHOOK_MAX_BODY ({} bytes); lower --audit-webhook-batch-max-size or enable --audit-webhook-truncate-enabled\n",
                ctx.max_body
            ),
            true,
        );
    }
    let (full, backlog) = ctx.spool.full();
    if full {
        return Reply {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Reply::new(
                429,
                format!("spool full ({backlog} bytes not delivered yet); retry later\n"),
                true,
            )
        };
    }
    if h.expect_continue
        && (&conn.stream)
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .is_err()
    {
        return Reply::new(400, "", true);
    }
    let deadline = Instant::now() + ctx.limits.body_timeout;
    let body = Body {
        conn,
        left: len,
        deadline,
    };
    let detector = ctx.detector.get();
    let batch = match judge(body, &detector, &ctx.metrics) {
        Ok(b) => b,
        Err(Judged::Malformed(why)) => {
            return Reply::new(
                400,
                format!("not an EventList: {why}; nothing of this batch was kept\n"),
                true,
            )
        }
        Err(Judged::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
            return Reply::new(408, "body not received in time\n", true)
        }
        Err(Judged::Io(_)) => return Reply::new(400, "body cut short\n", true),
    };
    let close = h.close;
    ctx.metrics
        .webhook_events_received
        .fetch_add(batch.items, Ordering::Relaxed);
    match ctx.spool.append(&batch.candidates) {
        Ok(a) => {
            ctx.metrics
                .webhook_events_spooled
                .fetch_add(a.spooled, Ordering::Relaxed);
            ctx.metrics
                .webhook_duplicates
                .fetch_add(a.duplicates, Ordering::Relaxed);
            Reply::new(
                200,
                format!(
                    "{{\"received\":{},\"spooled\":{},\"duplicates\":{}}}\n",
                    batch.items, a.spooled, a.duplicates
                ),
                close,
            )
        }
        Err(AppendError::Full { backlog }) => Reply {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Reply::new(
                429,
                format!("spool full ({backlog} bytes not delivered yet); retry later\n"),
                close,
            )
        },
        Err(AppendError::Io(e)) => {
            error!("webhook: cannot write the spool; the batch is refused (kube-apiserver retries it)", "SPOOL_PATH" => ctx.spool.dir().display(), "error" => e);
            Reply::new(500, "cannot write the spool; retry\n", true)
        }
    }
}

/// The body of the request being served: what is left of it, read with a deadline.
struct Body<'a> {
    conn: &'a mut Conn,
    left: u64,
    deadline: Instant,
}

impl Read for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out.len().min(self.left.min(usize::MAX as u64) as usize);
        if !self.conn.buf.is_empty() {
            let n = want.min(self.conn.buf.len());
            out[..n].copy_from_slice(&self.conn.buf[..n]);
            self.conn.buf.drain(..n);
            self.left -= n as u64;
            return Ok(n);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "body deadline"));
        }
        self.conn.stream.set_read_timeout(Some(left))?;
        match (&self.conn.stream).read(&mut out[..want]) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed before the end of the body",
            )),
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "body deadline"))
            }
            Err(e) => Err(e),
        }
    }
}

/// The items of a batch that produced friction events.
#[derive(Debug, Default)]
pub struct Batch {
    /// Audit events read.
    pub items: u64,
    pub candidates: Vec<Candidate>,
}

/// Why a batch could not be judged.
#[derive(Debug)]
pub enum Judged {
    /// Not an `EventList` (or one event) as a whole: nothing of it is kept.
    Malformed(String),
    /// Reading the body failed.
    Io(io::Error),
}

/// Reads an `EventList` (or one event) item by item and judges each with `detector`: the
/// items that produced friction events, and the counts of what could not be judged.
pub fn judge(body: impl Read, detector: &Detector, metrics: &Metrics) -> Result<Batch, Judged> {
    let mut src = DocumentSource::new(body, EVENT_SPEC, EVENT_LIST, Caps::default(), false);
    let mut batch = Batch::default();
    let mut events = Vec::new();
    loop {
        match src.next() {
            Next::Record(r) => {
                batch.items += 1;
                events.clear();
                match detector.detect_record(r.bytes, &mut events) {
                    Verdict::Malformed(_) | Verdict::Event(LineVerdict::Malformed) => {
                        metrics.malformed_lines.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Event(LineVerdict::SkippedStage) => {
                        metrics.stages_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::List(t) => {
                        metrics
                            .malformed_lines
                            .fetch_add(t.malformed, Ordering::Relaxed);
                        metrics
                            .stages_skipped
                            .fetch_add(t.skipped_stages, Ordering::Relaxed);
                    }
                    Verdict::Event(_) => {}
                }
                if !events.is_empty() {
                    batch.candidates.push(Candidate::new(
                        r.bytes,
                        events.iter().map(|e| e.kind.as_str()),
                    ));
                }
            }
            Next::Skipped {
                why: Unreadable::Pruner(e),
                ..
            } if e.kind == PruneErrorKind::TooLarge => {
                // One item whose kept fields are over the cap: skipped, as in a log.
                batch.items += 1;
                metrics.inc_dropped("too_large");
            }
            Next::Skipped { why, .. } => {
                if let Some(e) = src.take_error() {
                    return Err(Judged::Io(e));
                }
                return Err(Judged::Malformed(why.to_string()));
            }
            Next::Idle | Next::End => break,
        }
    }
    if let Some(e) = src.take_error() {
        return Err(Judged::Io(e));
    }
    Ok(batch)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn response(status: u16, body: &str, close: bool, retry_after: Option<u64>) -> Vec<u8> {
    let ctype = if status == 200 {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    if let Some(s) = retry_after {
        out.push_str(&format!("Retry-After: {s}\r\n"));
    }
    match status {
        401 => out.push_str("WWW-Authenticate: Bearer\r\n"),
        405 => out.push_str("Allow: POST\r\n"),
        _ => {}
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(head_end(b"POST / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(25));
        assert_eq!(head_end(b"POST / HTTP/1.1\n\nx"), Some(17));
        assert_eq!(head_end(b"POST / HTTP/1.1\r\nA: b\r\n"), None);
        let h = parse_head(b"POST /audit?timeout=30s HTTP/1.1\r\nContent-Length: 12\r\nAuthorization: Bearer abc\r\nExpect: 100-continue\r\n\r\n").ok().unwrap();
        assert_eq!(
            h,
            Head {
                method: "POST".into(),
                content_length: Some(12),
                chunked: false,
                authorization: Some(b"Bearer abc".to_vec()),
                close: false,
                expect_continue: true,
            }
        );
        assert!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"POST /\r\n\r\n").is_err());
        assert!(parse_head(b"POST / HTTP/1.0\r\n\r\n").ok().unwrap().close);
    }

    #[test]
    fn tokens_compare_whole() {
        let t = Token::new("s3cret".into());
        assert!(t.matches(b"s3cret"));
        for bad in [&b"s3cre"[..], b"s3crett", b"S3cret", b""] {
            assert!(!t.matches(bad));
        }
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    /// A server on loopback with small limits (one rule: exec), its spool in a fresh directory.
    fn server(name: &str, limits: Limits) -> (WebhookServer, Arc<Spool>, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("healert-webhook-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Arc::new(Metrics::new());
        let d = crate::detect::testing::detector(vec![crate::detect::testing::exec_rule()]);
        let spool = Arc::new(
            Spool::open(&dir, &dir.join("checkpoint"), 1 << 20, &d, Arc::clone(&m)).unwrap(),
        );
        let s = spawn(
            Options {
                addr: "127.0.0.1:0".into(),
                token: Some(Token::new("t".into())),
                max_body: 1 << 20,
                limits,
            },
            Arc::clone(&spool),
            Arc::new(SharedDetector::new(d)),
            m,
        )
        .unwrap();
        (s, spool, dir)
    }

    fn answer(s: &mut TcpStream) -> String {
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn slow_clients_huge_heads_and_too_many_connections_are_answered_and_cut_off() {
        let limits = Limits {
            max_head: 1024,
            head_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            max_connections: 2,
        };
        let connect = |addr| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        // Two connections held: the third is told to come back, at once.
        let (srv, spool, dir) = server("busy", limits);
        {
            let _a = connect(srv.local_addr());
            let _b = connect(srv.local_addr());
            let mut c = connect(srv.local_addr());
            let a = answer(&mut c);
            assert!(a.starts_with("HTTP/1.1 429 "), "{a}");
            assert!(
                a.contains("Retry-After: 5") && a.contains("too many connections"),
                "{a}"
            );
        }
        srv.stop(Duration::from_secs(1));
        drop(spool);
        let _ = std::fs::remove_dir_all(&dir);

        let (srv, spool, dir) = server("limits", limits);
        let addr = srv.local_addr();
        // A head that never ends.
        {
            let mut s = connect(addr);
            s.write_all(b"POST / HTTP/1.1\r\nAuthorization: Bearer t\r\n")
                .unwrap();
            let a = answer(&mut s);
            assert!(a.starts_with("HTTP/1.1 408 "), "{a}");
            assert!(a.contains("request head not received in time"), "{a}");
        }
        // A head over the cap.
        {
            let mut s = connect(addr);
            let _ = s.write_all(
                format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(2000)).as_bytes(),
            );
            let a = answer(&mut s);
            assert!(a.starts_with("HTTP/1.1 431 "), "{a}");
        }
        // A body that stops coming.
        {
            let mut s = connect(addr);
            s.write_all(b"POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 100\r\n\r\n{\"kind\":").unwrap();
            let a = answer(&mut s);
            assert!(a.starts_with("HTTP/1.1 408 "), "{a}");
            assert!(a.contains("body not received in time"), "{a}");
        }
        // A spool that cannot be written: 500, and kube-apiserver retries.
        {
            spool.break_writes();
            let body = br#"{"kind":"EventList","items":[{"auditID":"a","stage":"ResponseComplete","verb":"create","user":{"username":"u"},"objectRef":{"resource":"pods","name":"p","subresource":"exec"}}]}"#;
            let mut s = connect(addr);
            write!(
                s,
                "POST / HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(body).unwrap();
            let a = answer(&mut s);
            assert!(a.starts_with("HTTP/1.1 500 "), "{a}");
            assert!(a.contains("cannot write the spool; retry"), "{a}");
        }
        srv.stop(Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_body_that_is_not_an_event_list_is_refused_whole() {
        let d = Detector::new(
            crate::detect::rules::RuleSet {
                rules: vec![],
                ignore_namespaces: vec![],
            },
            crate::detect::DetectOptions::default(),
        );
        let m = Metrics::new();
        let ok = judge(
            &br#"{"kind":"EventList","items":[{"stage":"ResponseComplete"},{}]}"#[..],
            &d,
            &m,
        )
        .unwrap();
        assert_eq!(ok.items, 2);
        for bad in [
            &b""[..],
            b"[1,2]",
            b"{\"kind\":\"EventList\",\"items\":[{}",
            b"{} {}",
        ] {
            assert!(
                matches!(judge(bad, &d, &m), Err(Judged::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
