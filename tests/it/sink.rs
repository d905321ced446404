//! A std-only, loopback, multi-connection HTTP/1.1 stand-in for the Healert backend, shared by
//! the integration tests (delivery, follower end-to-end, signals/metrics, healert.sh).
//!
//! `Sink::start()` accepts every `POST /events` (200) and answers `GET /health`; like the real
//! backend, it answers the agent's start-up key check (`POST /events` with body `{}`) with 401
//! for a wrong or missing key (when a key is required) and 422 otherwise, storing nothing; a
//! [`SinkBuilder`] injects the faults the agent must survive: scripted statuses, 429 with
//! `Retry-After` every Nth request, refused connections for a while (the listener is closed and
//! kept-alive connections dropped), 503 windows, `Connection: close` after every response,
//! chunked replies, one request never answered, malformed responses, slow responses and a
//! required bearer key. Everything it saw is recorded: accepted bodies in arrival order,
//! every request with its headers, the TCP connection count. Threads are bounded (one acceptor,
//! at most [`MAX_CONNS`] connection threads) and all stop on `Drop`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most connections served at once; further ones are closed at once (bounded threads).
pub const MAX_CONNS: usize = 64;

/// A broken answer to a `POST /events` (the event is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Bytes that are not a status line.
    NoStatusLine,
    /// A status line, then one header of this many bytes (e.g. 10 MB).
    HugeHeader(usize),
    NegativeContentLength,
    BadChunkSize,
    /// A status line, then one header byte every 50 ms, forever.
    Slowloris,
}

/// What to do with one `POST /events` (scripted answers are consumed in request order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer this status with `{"detail": ...}`; a 2xx stores the event.
    Status(u16),
    /// Answer this status with a `Retry-After` header.
    RetryAfter(u16, String),
    /// Read the request and never answer (the connection stays open until the client leaves).
    NoAnswer,
    /// Close the connection without answering.
    Close,
    Malformed(Malformed),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// 1-based TCP connection number.
    pub conn: usize,
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request was fully read.
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Fault script for a [`Sink`].
#[derive(Debug, Clone, Default)]
pub struct SinkBuilder {
    script: Vec<Action>,
    every_nth_429: Option<(usize, Option<String>)>,
    down_after: Option<(usize, Duration)>,
    unavailable_after: Option<(usize, Duration)>,
    no_answer_after: Option<usize>,
    close_after_each: bool,
    chunked: bool,
    delay: Duration,
    api_key: Option<String>,
    reject: Vec<(String, u16)>,
    ipv6: bool,
    idle_close: Option<Duration>,
    port: u16,
    retention_days: Option<u32>,
    stray_after_first: bool,
    status_for: Option<(u16, Duration)>,
}

impl SinkBuilder {
    /// Answers for the first `POST /events` requests, one action each, before any other rule.
    pub fn script(mut self, actions: Vec<Action>) -> Self {
        self.script = actions;
        self
    }
    /// Every `n`th `POST /events` gets 429 (with `Retry-After: retry_after` when given).
    pub fn every_nth_429(mut self, n: usize, retry_after: Option<&str>) -> Self {
        self.every_nth_429 = Some((n.max(1), retry_after.map(str::to_string)));
        self
    }
    /// Once `after` events are accepted, refuse connections for `for_` (listener closed,
    /// open connections dropped), then listen again on the same port.
    pub fn down_after(mut self, after: usize, for_: Duration) -> Self {
        self.down_after = Some((after, for_));
        self
    }
    /// Once `after` events are accepted, answer 503 for `for_`.
    pub fn unavailable_after(mut self, after: usize, for_: Duration) -> Self {
        self.unavailable_after = Some((after, for_));
        self
    }
    /// The first `POST /events` after `after` accepted events is never answered.
    pub fn no_answer_once_after(mut self, after: usize) -> Self {
        self.no_answer_after = Some(after);
        self
    }
    /// `Connection: close` and close after every response.
    pub fn close_after_each(mut self) -> Self {
        self.close_after_each = true;
        self
    }
    /// Answer with `Transfer-Encoding: chunked`.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    /// Sleep this long before answering each `POST /events`.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Require `Authorization: Bearer KEY` on `POST /events` (401 otherwise).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }
    /// Answer `status` to every body containing `needle`.
    pub fn reject_containing(mut self, needle: &str, status: u16) -> Self {
        self.reject.push((needle.to_string(), status));
        self
    }
    /// Close a kept-alive connection silently after this long without a request (like a
    /// backend's keep-alive timeout; the client learns it only when it sends the next request).
    pub fn idle_close(mut self, after: Duration) -> Self {
        self.idle_close = Some(after);
        self
    }
    /// Listen on this port instead of an ephemeral one (e.g. a backend that comes up after
    /// the agent, on the address the agent was given).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Like the real backend's `HEALERT_RETENTION_DAYS`: `GET /friction/...` shows and scores
    /// only events whose `timestamp` is within the last `days` days (off by default, so that
    /// tests with fixed timestamps do not age out).
    pub fn retention_days(mut self, days: u32) -> Self {
        self.retention_days = Some(days);
        self
    }
    /// Answer `status` to every `POST /events` for `for_`, counted from the first one (after
    /// the scripted answers; e.g. a proxy answering 404 during a reconfiguration).
    pub fn status_for(mut self, status: u16, for_: Duration) -> Self {
        self.status_for = Some((status, for_));
        self
    }
    /// After the first accepted event, send one extra, unrequested `400` response right behind
    /// the `200`, in the same write, on the same connection (a confused proxy or a hostile
    /// peer).
    pub fn stray_response_after_first(mut self) -> Self {
        self.stray_after_first = true;
        self
    }
    /// Listen on [::1] instead of 127.0.0.1.
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    pub fn start(self) -> Sink {
        self.try_start()
            .unwrap_or_else(|e| panic!("sink: cannot listen on loopback: {e}"))
    }

    pub fn try_start(self) -> io::Result<Sink> {
        let host = if self.ipv6 { "[::1]" } else { "127.0.0.1" };
        let listener = TcpListener::bind(format!("{host}:{}", self.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            data: Mutex::new(Data {
                script: self.script.iter().cloned().collect(),
                api_key: self.api_key.clone(),
                ..Data::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            cfg: self,
        });
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("sink-accept".into())
            .spawn(move || accept_loop(st, listener, addr))?;
        Ok(Sink {
            state,
            addr,
            accept: Some(accept),
        })
    }
}

#[derive(Default)]
struct Data {
    events: Vec<String>,
    requests: Vec<Request>,
    /// `POST /events` with body `{}` (the agent's key check), with the status answered.
    key_checks: Vec<(Request, u16)>,
    stray_sent: bool,
    status_until: Option<Instant>,
    /// Status answered to each `POST /events` (0: no answer / malformed).
    statuses: Vec<u16>,
    script: VecDeque<Action>,
    posts: usize,
    connections: usize,
    api_key: Option<String>,
    down_until: Option<Instant>,
    unavailable_until: Option<Instant>,
    down_done: bool,
    unavailable_done: bool,
    no_answer_done: bool,
    streams: HashMap<usize, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

struct State {
    cfg: SinkBuilder,
    data: Mutex<Data>,
    changed: Condvar,
    stop: AtomicBool,
    active: AtomicUsize,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The running test backend; stops on `Drop`.
pub struct Sink {
    state: Arc<State>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Sink {
    /// A well-behaved backend: 200 for every `POST /events`.
    pub fn start() -> Sink {
        SinkBuilder::default().start()
    }

    pub fn builder() -> SinkBuilder {
        SinkBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (or `http://[::1]:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepted `POST /events` bodies, in arrival order.
    pub fn events(&self) -> Vec<String> {
        self.state.lock().events.clone()
    }

    /// Accepted bodies parsed as JSON (a body that is not JSON becomes `Value::Null`).
    pub fn events_json(&self) -> Vec<serde_json::Value> {
        self.events()
            .iter()
            .map(|b| serde_json::from_str(b).unwrap_or(serde_json::Value::Null))
            .collect()
    }

    /// Waits until at least `n` events were accepted; false on timeout.
    pub fn wait_for_events(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut g = self.state.lock();
        while g.events.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .state
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().connections
    }

    /// TCP connections open now (each served by a thread of its own until either side closes).
    pub fn open_connections(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Every request received (all paths), in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().requests.clone()
    }

    /// The status answered to each `POST /events` so far (0: none or malformed).
    pub fn statuses(&self) -> Vec<u16> {
        self.state.lock().statuses.clone()
    }

    /// The key checks received (`POST /events` with body `{}`) and the status each got; they
    /// are not in [`Sink::requests`], not scripted and never stored.
    pub fn key_checks(&self) -> Vec<(Request, u16)> {
        self.state.lock().key_checks.clone()
    }

    /// Changes the required key at run time (None: no auth).
    pub fn set_api_key(&self, key: Option<&str>) {
        self.state.lock().api_key = key.map(str::to_string);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = {
            let mut g = self.state.lock();
            for s in g.streams.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut g.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(st: Arc<State>, listener: TcpListener, addr: SocketAddr) {
    let mut listener = Some(listener);
    let mut next_id = 0usize;
    while !st.stopped() {
        let down = st.lock().down_until.is_some_and(|t| Instant::now() < t);
        if down {
            if listener.take().is_some() {
                let g = st.lock();
                for s in g.streams.values() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // Back up after a down window: same port (std sets SO_REUSEADDR).
            match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
                Ok(l) => listener = Some(l),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        match l.accept() {
            Ok((s, _)) => {
                if st.active.load(Ordering::SeqCst) >= MAX_CONNS {
                    drop(s);
                    continue;
                }
                next_id += 1;
                let id = next_id;
                let _ = s.set_nonblocking(false);
                let _ = s.set_nodelay(true);
                let mut g = st.lock();
                g.connections += 1;
                if let Ok(c) = s.try_clone() {
                    g.streams.insert(id, c);
                }
                g.threads.retain(|t| !t.is_finished());
                st.active.fetch_add(1, Ordering::SeqCst);
                let st2 = st.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("sink-conn-{id}"))
                    .spawn(move || {
                        serve(&st2, s, id);
                        st2.lock().streams.remove(&id);
                        st2.active.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(t) => g.threads.push(t),
                    Err(_) => {
                        g.streams.remove(&id);
                        st.active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Blocking reads that give up when the sink stops (polls the stop flag every 10 ms), and
/// report end of stream once `idle_until` passes (idle keep-alive close).
struct PollRead<'a> {
    s: TcpStream,
    st: &'a State,
    idle_until: Option<Instant>,
}

impl Read for PollRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.s.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && !self.st.stopped() =>
                {
                    if self.idle_until.is_some_and(|t| Instant::now() >= t) {
                        return Ok(0);
                    }
                }
                r => return r,
            }
        }
    }
}

fn serve(st: &State, s: TcpStream, conn: usize) {
    let Ok(mut w) = s.try_clone() else { return };
    serve_conn(st, s, &mut w, conn);
    let _ = w.shutdown(Shutdown::Both);
}

fn serve_conn(st: &State, s: TcpStream, w: &mut TcpStream, conn: usize) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut r = BufReader::new(PollRead {
        s,
        st,
        idle_until: None,
    });
    loop {
        r.get_mut().idle_until = st.cfg.idle_close.map(|d| Instant::now() + d);
        let req = match read_request(&mut r, conn) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(_) => {
                let _ = respond(w, false, 400, &[], br#"{"detail":"bad request"}"#, true);
                return;
            }
        };
        r.get_mut().idle_until = None;
        if st.stopped() {
            return;
        }
        // Refusing: drop the connection without answering.
        let down = st.lock().down_until.is_some_and(|t| Instant::now() < t);
        if down || !handle(st, w, &mut r, req) {
            return;
        }
    }
}

fn read_request<R: BufRead>(r: &mut R, conn: usize) -> io::Result<Option<Request>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.by_ref().take(8192).read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line"));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.by_ref().take(65536).read_line(&mut line)? == 0 {
            return Err(bad("eof in headers"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if headers.len() > 100 {
            return Err(bad("too many headers"));
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("header"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.by_ref().take(1024).read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk"))?;
            if size == 0 {
                line.clear();
                r.by_ref().take(1024).read_line(&mut line)?;
                break;
            }
            if body.len() + size > 16 << 20 {
                return Err(bad("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.by_ref().take(16).read_line(&mut line)?;
        }
    } else if let Some(n) = get("content-length") {
        let n: usize = n.parse().map_err(|_| bad("content-length"))?;
        if n > 16 << 20 {
            return Err(bad("body too large"));
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Some(Request {
        conn,
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    }))
}

/// Serves one request; false when the connection must close.
fn handle<R: BufRead>(st: &State, w: &mut TcpStream, r: &mut R, req: Request) -> bool {
    let cfg = &st.cfg;
    let close = cfg.close_after_each;
    let (method, path) = (req.method.clone(), req.path.clone());
    let auth = req.header("authorization").map(str::to_string);
    let body = String::from_utf8_lossy(&req.body).into_owned();
    if method == "POST" && path == "/events" && body.trim() == "{}" {
        return key_check(st, w, req, auth.as_deref());
    }
    st.lock().requests.push(req);
    st.changed.notify_all();

    match (method.as_str(), path.as_str()) {
        ("GET", "/health") => {
            let auth_on = st.lock().api_key.is_some();
            let b = format!(r#"{{"status":"ok","version":"test","auth":{auth_on}}}"#);
            respond(w, cfg.chunked, 200, &[], b.as_bytes(), close).is_ok() && !close
        }
        ("GET", p) if p.starts_with("/friction/") => {
            let want = percent_decode(&p["/friction/".len()..]);
            let (status, b) = match friction(st, &want) {
                Ok(b) => (200, b),
                Err(b) => (400, b),
            };
            respond(w, cfg.chunked, status, &[], b.as_bytes(), close).is_ok() && !close
        }
        ("GET", p) if p == "/events" || p.starts_with("/events?") => {
            let (status, b) = match all_events(st, p) {
                Ok(b) => (200, b),
                Err(b) => (422, b),
            };
            respond(w, cfg.chunked, status, &[], b.as_bytes(), close).is_ok() && !close
        }
        ("POST", "/events") => post_event(st, w, r, &body, auth.as_deref()),
        _ => {
            respond(
                w,
                cfg.chunked,
                404,
                &[],
                br#"{"detail":"Not Found"}"#,
                close,
            )
            .is_ok()
                && !close
        }
    }
}

/// The real backend checks the key before the body: `{}` gets 401 with a wrong or missing key
/// (when one is required), else 422 (an empty event is invalid); nothing is stored.
fn key_check(st: &State, w: &mut TcpStream, req: Request, auth: Option<&str>) -> bool {
    let close = st.cfg.close_after_each;
    let status = {
        let mut g = st.lock();
        let s = if g.unavailable_until.is_some_and(|t| Instant::now() < t) {
            503
        } else if g
            .api_key
            .as_ref()
            .is_some_and(|k| auth != Some(format!("Bearer {k}").as_str()))
        {
            401
        } else {
            422
        };
        g.key_checks.push((req, s));
        s
    };
    st.changed.notify_all();
    let body: &[u8] = match status {
        401 => br#"{"detail":"Invalid or missing API key"}"#,
        422 => {
            br#"{"detail":[{"type":"missing","loc":["body","entity_ref"],"msg":"Field required"}]}"#
        }
        _ => br#"{"detail":"Service Unavailable"}"#,
    };
    respond(w, st.cfg.chunked, status, &[], body, close).is_ok() && !close
}

fn post_event<R: BufRead>(
    st: &State,
    w: &mut TcpStream,
    r: &mut R,
    body: &str,
    auth: Option<&str>,
) -> bool {
    let cfg = &st.cfg;
    let close = cfg.close_after_each;
    if !cfg.delay.is_zero() {
        std::thread::sleep(cfg.delay);
    }
    let action = {
        let mut g = st.lock();
        g.posts += 1;
        let n = g.posts;
        let now = Instant::now();
        if let Some((_, d)) = cfg.status_for {
            if g.status_until.is_none() {
                g.status_until = Some(now + d);
            }
        }
        if let Some(a) = g.script.pop_front() {
            a
        } else if let Some(s) = cfg
            .status_for
            .filter(|_| g.status_until.is_some_and(|t| now < t))
            .map(|(s, _)| s)
        {
            Action::Status(s)
        } else if g.unavailable_until.is_some_and(|t| now < t) {
            Action::Status(503)
        } else if cfg
            .no_answer_after
            .is_some_and(|k| !g.no_answer_done && g.events.len() >= k)
        {
            g.no_answer_done = true;
            Action::NoAnswer
        } else if let Some((every, ra)) = cfg.every_nth_429.as_ref().filter(|(e, _)| n % e == 0) {
            let _ = every;
            match ra {
                Some(v) => Action::RetryAfter(429, v.clone()),
                None => Action::Status(429),
            }
        } else if g
            .api_key
            .as_ref()
            .is_some_and(|k| auth != Some(format!("Bearer {k}").as_str()))
        {
            Action::Status(401)
        } else if let Some((_, s)) = cfg.reject.iter().find(|(n, _)| body.contains(n.as_str())) {
            Action::Status(*s)
        } else {
            Action::Status(200)
        }
    };
    let record = |status: u16| st.lock().statuses.push(status);
    match action {
        Action::Status(s) if (200..300).contains(&s) => {
            let stray =
                cfg.stray_after_first && !std::mem::replace(&mut st.lock().stray_sent, true);
            // The stray answer goes out in the same write as the real one, so it is already
            // there when the client has read its answer (it never waits to see whether one
            // comes: that would be a race no client can win).
            let trailer: &[u8] = if stray {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\n{\"detail\":\"not for you\"}"
            } else {
                b""
            };
            let ok = respond_with(
                w,
                cfg.chunked,
                s,
                &[],
                br#"{"status":"ok"}"#,
                close,
                trailer,
            )
            .is_ok();
            let mut g = st.lock();
            g.statuses.push(s);
            g.events.push(body.to_string());
            let accepted = g.events.len();
            let now = Instant::now();
            if let Some((k, d)) = cfg.down_after {
                if accepted >= k && !g.down_done {
                    g.down_done = true;
                    g.down_until = Some(now + d);
                }
            }
            if let Some((k, d)) = cfg.unavailable_after {
                if accepted >= k && !g.unavailable_done {
                    g.unavailable_done = true;
                    g.unavailable_until = Some(now + d);
                }
            }
            drop(g);
            st.changed.notify_all();
            ok && !close
        }
        Action::Status(s) => {
            record(s);
            let detail = match s {
                401 => r#"{"detail":"Invalid or missing API key"}"#.to_string(),
                422 => r#"{"detail":"type: string does not match pattern"}"#.to_string(),
                503 => r#"{"detail":"Service Unavailable"}"#.to_string(),
                s => format!(r#"{{"detail":"scripted {s}"}}"#),
            };
            respond(w, cfg.chunked, s, &[], detail.as_bytes(), close).is_ok() && !close
        }
        Action::RetryAfter(s, v) => {
            record(s);
            let h = [("Retry-After", v.as_str())];
            respond(w, cfg.chunked, s, &h, br#"{"detail":"slow down"}"#, close).is_ok() && !close
        }
        Action::NoAnswer => {
            record(0);
            // Hold the connection until the client gives up (EOF) or the sink stops.
            let mut buf = [0u8; 1024];
            while !st.stopped() {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            false
        }
        Action::Close => {
            record(0);
            false
        }
        Action::Malformed(m) => {
            record(0);
            let _ = write_malformed(st, w, &m);
            false
        }
    }
}

fn write_malformed(st: &State, w: &mut TcpStream, m: &Malformed) -> io::Result<()> {
    match m {
        Malformed::NoStatusLine => w.write_all(b"this is not http\r\n\r\n"),
        Malformed::NegativeContentLength => {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n")
        }
        Malformed::BadChunkSize => w.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-hex\r\nabc\r\n0\r\n\r\n",
        ),
        Malformed::HugeHeader(n) => {
            w.write_all(b"HTTP/1.1 200 OK\r\nX-Huge: ")?;
            let block = vec![b'a'; 64 * 1024];
            let mut left = *n;
            while left > 0 && !st.stopped() {
                let k = left.min(block.len());
                w.write_all(&block[..k])?;
                left -= k;
            }
            w.write_all(b"\r\n\r\n")
        }
        Malformed::Slowloris => {
            w.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ")?;
            // Bounded: 2 minutes at most even if nobody stops us.
            for _ in 0..2400 {
                if st.stopped() {
                    break;
                }
                w.write_all(b"a")?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        }
    }
}

fn respond(
    w: &mut TcpStream,
    chunked: bool,
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    respond_with(w, chunked, status, extra, body, close, b"")
}

/// [`respond`], with `trailer` (e.g. an unrequested second response) in the same write.
fn respond_with(
    w: &mut TcpStream,
    chunked: bool,
    status: u16,
    extra: &[(&str, &str)],
    body: &[u8],
    close: bool,
    trailer: &[u8],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n");
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    let mut bytes;
    if chunked {
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        bytes = out.into_bytes();
        // Small chunks with an extension, to exercise the client's chunk parser.
        for c in body.chunks(7) {
            bytes.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            bytes.extend_from_slice(c);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        bytes = out.into_bytes();
        bytes.extend_from_slice(body);
    }
    bytes.extend_from_slice(trailer);
    w.write_all(&bytes)?;
    w.flush()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The read side of the real backend (healert-io/backend, as its README documents it), so that
// the README's walkthrough and `healert.sh test` see the same shapes here as there: GET /events
// (rows newest first, `limit` 1..500, default 100) and GET /friction/<entity_ref> (score with
// exponential decay: high 10, medium 6, low 3 points, half-life 7 days, 50 points = score 100;
// only the last 30 days count). Keys are written in the backend's order, compact like its JSON.
// ---------------------------------------------------------------------------------------------

/// A stored event as the backend's `friction_events` row.
struct Row {
    id: String,
    v: serde_json::Value,
    ts: String,
}

fn rows(st: &State) -> Vec<Row> {
    let events = st.lock().events.clone();
    let mut rows: Vec<Row> = events
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap_or(serde_json::Value::Null);
            let ts = v["timestamp"].as_str().unwrap_or("").to_string();
            Row {
                id: format!("{:032x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15),
                v,
                ts,
            }
        })
        .collect();
    // ORDER BY timestamp DESC (text order, as SQLite compares the stored strings).
    rows.sort_by(|a, b| b.ts.cmp(&a.ts));
    rows
}

fn js(v: &serde_json::Value) -> String {
    if v.is_null() {
        "null".into()
    } else {
        v.to_string()
    }
}

fn points(v: &serde_json::Value) -> u64 {
    v["points"]
        .as_u64()
        .unwrap_or(match v["severity"].as_str() {
            Some("high") => 10,
            Some("medium") => 6,
            Some("low") => 3,
            _ => 5,
        })
}

fn all_events(st: &State, path: &str) -> Result<String, String> {
    let mut limit: i64 = 100;
    if let Some((_, q)) = path.split_once('?') {
        for kv in q.split('&') {
            if let Some(v) = kv.strip_prefix("limit=") {
                limit = v.parse().map_err(|_| {
                    r#"{"detail":[{"type":"int_parsing","loc":["query","limit"],"msg":"Input should be a valid integer"}]}"#.to_string()
                })?;
            }
        }
    }
    let limit = limit.clamp(1, 500) as usize;
    let out: Vec<String> = rows(st)
        .iter()
        .take(limit)
        .map(|r| {
            let f = |k: &str| js(&r.v[k]);
            format!(
                r#"{{"id":"{}","entity_ref":{},"type":{},"severity":{},"actor":{},"service":{},"namespace":{},"workflow":{},"description":{},"timestamp":{},"points":{}}}"#,
                r.id,
                f("entity_ref"),
                f("type"),
                f("severity"),
                f("actor"),
                f("service"),
                f("namespace"),
                f("workflow"),
                f("description"),
                f("timestamp"),
                points(&r.v)
            )
        })
        .collect();
    Ok(format!("[{}]", out.join(",")))
}

fn friction(st: &State, entity: &str) -> Result<String, String> {
    let ok_part = |s: &str, extra: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(b as char)
            })
    };
    let valid = entity.split_once(':').is_some_and(|(kind, rest)| {
        rest.split_once('/')
            .is_some_and(|(ns, name)| ok_part(kind, "") && ok_part(ns, "") && ok_part(name, "."))
    });
    if !valid {
        return Err(format!(
            r#"{{"detail":{}}}"#,
            serde_json::Value::String(format!("Invalid entity_ref format: '{entity}'"))
        ));
    }
    let now = unix_now();
    let window = st.cfg.retention_days.map(|d| f64::from(d) * 86400.0);
    let age = |r: &Row| parse_utc(&r.ts).map(|t| (now - t).max(0.0)).unwrap_or(0.0);
    let shown: Vec<Row> = rows(st)
        .into_iter()
        .filter(|r| r.v["entity_ref"].as_str() == Some(entity))
        .filter(|r| window.map_or(true, |w| age(r) <= w))
        .take(500)
        .collect();
    let now_text = format_utc(now);
    let score = if shown.is_empty() {
        format!(
            r#"{{"score":0,"severity":"low","bypassCount":0,"overheadHoursPerEngineer":0.0,"topFrictionWorkflow":"none","calculatedAt":"{now_text}"}}"#
        )
    } else {
        let total: f64 = shown
            .iter()
            .map(|r| points(&r.v) as f64 * 0.5f64.powf(age(r) / 86400.0 / 7.0))
            .sum();
        let score = ((total / 50.0 * 100.0).round_ties_even() as u64).min(100);
        let severity = match score {
            80.. => "critical",
            60.. => "high",
            40.. => "medium",
            _ => "low",
        };
        let mut counts: Vec<(String, usize)> = Vec::new();
        for r in &shown {
            if let Some(w) = r.v["workflow"].as_str().filter(|w| !w.is_empty()) {
                match counts.iter_mut().find(|(k, _)| k == w) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((w.to_string(), 1)),
                }
            }
        }
        let top = counts
            .iter()
            .max_by_key(|(_, n)| *n)
            .map(|(w, _)| w.as_str())
            .unwrap_or("deploy");
        let hours = (shown.len() as f64 * 25.0 / 60.0 * 10.0).round_ties_even() / 10.0;
        format!(
            r#"{{"score":{score},"severity":"{severity}","bypassCount":{},"overheadHoursPerEngineer":{},"topFrictionWorkflow":{},"calculatedAt":"{now_text}"}}"#,
            shown.len(),
            serde_json::Value::from(hours),
            serde_json::Value::from(top)
        )
    };
    let recent: Vec<String> = shown
        .iter()
        .map(|r| {
            let f = |k: &str| js(&r.v[k]);
            format!(
                r#"{{"timestamp":{},"actor":{},"type":{},"description":{},"workflow":{}}}"#,
                f("timestamp"),
                f("actor"),
                f("type"),
                f("description"),
                f("workflow")
            )
        })
        .collect();
    Ok(format!(
        r#"{{"entityRef":{},"frictionScore":{score},"recentEvents":[{}],"sources":{{"kubernetesAuditLog":true,"github":false,"jira":false}},"fetchedAt":"{now_text}"}}"#,
        serde_json::Value::from(entity),
        recent.join(",")
    ))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` → seconds since the epoch; None otherwise.
fn parse_utc(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" | "+00:00" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset;
    Some(secs as f64 + frac)
}

/// Seconds since the epoch → `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (Python's `isoformat()`).
fn format_utc(t: f64) -> String {
    let micros = (t * 1e6) as i64;
    let (secs, us) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil_from_days (H. Hinnant).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}+00:00",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

#[test]
fn sink_time_conversions_agree() {
    for (text, want) in [
        ("1970-01-01T00:00:00Z", 0.0),
        ("2000-03-01T00:00:00Z", 951868800.0),
        ("2026-11-25T22:50:01.5Z", 1795647001.5),
        ("2026-11-25T23:50:01+01:00", 1795647001.0),
    ] {
        assert_eq!(parse_utc(text), Some(want), "{text}");
    }
    let t = 1795647001.25;
    assert_eq!(format_utc(t), "2026-11-25T22:50:01.250000+00:00");
    assert_eq!(parse_utc(&format_utc(t)), Some(t));
    assert_eq!(parse_utc("yesterday"), None);
}
