//! The health and metrics HTTP server (`HEALTH_ADDR`): `GET /healthz`, `GET /readyz` and
//! `GET /metrics`, read from the [`Metrics`] it is handed.
//!
//! It faces whatever can reach the pod's port, so it is small and bounded, and a probe can
//! never be starved by other clients (issue 17): the kubelet restarts a pod whose `/healthz`
//! goes unanswered, so a handful of slow clients must not be able to cause a restart loop.
//!
//! **Design.** One thread serves every connection from a table of at most
//! [`Limits::max_connections`] entries, each a non-blocking socket in one of three states:
//! *reading* its request head (at most [`Limits::max_head`] bytes, else 431, within
//! [`Limits::head_timeout`] for the whole head, else 408), *writing* the answer, or
//! *lingering* (half-closed, swallowing what the client still sends for at most 500 ms, so
//! closing does not turn into a reset that destroys the answer). Nothing ever blocks on one
//! client:
//! - **Answered on the accept path.** A new connection is read at once, in the same turn that
//!   accepted it: a probe's request (one small segment, sent right after the handshake) is
//!   answered before the server looks at anyone else. Answers only read atomics.
//! - **The newest connection always gets in.** When the table is full, the *oldest* entry that
//!   has not been answered yet is evicted (told 503 and closed) to make room — lingering
//!   entries first. A probe completes in a fraction of a millisecond, so it is never the oldest
//!   unanswered entry; a client that trickles its head holds its place only until enough newer
//!   connections arrive. Refusing the newcomer instead (what a fixed pool of slots does) is what
//!   let 32 trickling clients make 19 of 20 probes fail.
//! - **Per-peer share.** One peer address holds at most [`Limits::max_per_peer`] entries; past
//!   that its own oldest unanswered entry makes room, so one noisy client cannot push out the
//!   slow-but-honest requests of others.
//! - **Idle costs nothing.** With no connection open the thread blocks in `accept`; while some
//!   are open it polls them every [`POLL`] (5 ms), which bounds a probe's extra latency.
//!
//! `Connection: close` after every response, and no request body is ever read. It only reads
//! atomics, so it never slows the pipeline; it stops on [`HealthServer::stop`] or drop.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::operate::log::{sanitize, Throttle};
use crate::operate::metrics::{self, Metrics};

/// How often open connections are looked at while some are open.
pub const POLL: Duration = Duration::from_millis(5);
/// How long an answered connection may keep sending before it is closed.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes swallowed from an answered connection.
const MAX_DRAIN: usize = 2 * 1024 * 1024;
/// Most connections accepted in one turn (the others wait in the listen queue).
const ACCEPT_BATCH: usize = 64;

/// Bounds on what one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_head: usize,
    /// Time allowed to receive the whole request head (and, separately, to send the answer).
    pub head_timeout: Duration,
    /// Connections held at once; a new one makes room by evicting the oldest unanswered one.
    pub max_connections: usize,
    /// Connections held at once from one peer address (same eviction rule, within the peer).
    pub max_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(2),
            max_connections: 64,
            max_per_peer: 16,
        }
    }
}

/// A running server; stops (and joins its accept thread) on [`HealthServer::stop`] or drop.
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Why the server could not start.
#[derive(Debug)]
pub struct BindError {
    pub addr: String,
    pub source: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = match self.source.kind() {
            io::ErrorKind::AddrInUse => "another process listens there; pick a free port",
            io::ErrorKind::PermissionDenied => "ports below 1024 need privileges; use e.g. :8080",
            io::ErrorKind::AddrNotAvailable => {
                "that address is not on this host; use 0.0.0.0:PORT or the pod IP"
            }
            _ => "set HEALTH_ADDR to HOST:PORT, e.g. 0.0.0.0:8080, or unset it to disable",
        };
        write!(
            f,
            "HEALTH_ADDR={:?}: cannot listen: {}; {hint}",
            sanitize(&self.addr, 200),
            self.source
        )
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Starts serving `m` on `addr` (`HOST:PORT`) with the default [`Limits`].
pub fn spawn(addr: &str, m: Arc<Metrics>) -> Result<HealthServer, BindError> {
    spawn_with(addr, m, Limits::default())
}

/// Starts serving `m` on `addr` with `limits` (tests pass port 0 and small limits).
/// `:PORT` (Go's spelling, which the old agent's users may carry over) means all IPv4
/// interfaces. Also marks the pipeline's start in `m` if nobody did yet, so liveness has a
/// reference.
pub fn spawn_with(addr: &str, m: Arc<Metrics>, limits: Limits) -> Result<HealthServer, BindError> {
    let bind_err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(bind_target(addr).as_str()).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    m.mark_started(metrics::now_unix_ms());
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || serve_loop(listener, &m, limits, &stop2))
        .map_err(bind_err)?;
    Ok(HealthServer {
        addr: local,
        stop,
        thread: Some(thread),
    })
}

/// `:PORT` → `0.0.0.0:PORT`; anything else as given.
fn bind_target(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    }
}

impl HealthServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the server thread; connections still open are closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        if wake_accept(self.addr) {
            let _ = thread.join();
        }
        // If even loopback cannot reach it, leave the thread detached rather than hang the
        // shutdown sequence; the process is about to exit anyway.
    }
}

/// Wakes a thread blocked in `accept` on `addr` (so it sees its stop flag) by connecting to
/// it, through loopback for a wildcard bind; false if even that fails (then do not join).
pub fn wake_accept(addr: SocketAddr) -> bool {
    let mut wake = addr;
    if wake.ip().is_unspecified() {
        wake.set_ip(match wake {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok()
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The server thread: accept, then drive every open connection, until `stop`.
fn serve_loop(listener: TcpListener, m: &Metrics, limits: Limits, stop: &AtomicBool) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut blocking = true;
    let mut errors = Throttle::new(Duration::from_secs(60));
    while !stop.load(Ordering::SeqCst) {
        // Block in accept while nothing is open; poll while something is.
        let want_blocking = conns.is_empty();
        if want_blocking != blocking && listener.set_nonblocking(!want_blocking).is_ok() {
            blocking = want_blocking;
        }
        let mut progress = false;
        for _ in 0..ACCEPT_BATCH {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    progress = true;
                    admit(&mut conns, stream, peer.ip(), limits);
                    // Serve the newcomer now: a probe is answered before anything else.
                    if let Some(c) = conns.last_mut() {
                        c.step(m, limits, Instant::now());
                    }
                    if blocking {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    if let Some(n) = errors.hit(&e.kind().to_string()) {
                        crate::warn!("health server: accept failed", "error" => e, "suppressed" => n);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
        let now = Instant::now();
        for c in conns.iter_mut() {
            progress |= c.step(m, limits, now);
        }
        conns.retain(|c| !matches!(c.state, State::Done));
        if !progress && !conns.is_empty() {
            std::thread::sleep(POLL);
        }
    }
}

/// Adds a new connection to the table, evicting to stay within the limits (see the module
/// docs): first within its peer's share, then overall.
fn admit(conns: &mut Vec<Conn>, stream: TcpStream, peer: IpAddr, limits: Limits) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let now = Instant::now();
    conns.push(Conn {
        stream,
        peer,
        state: State::Reading {
            buf: Vec::new(),
            deadline: now + limits.head_timeout,
        },
    });
    let newest = conns.len() - 1;
    let same_peer = conns.iter().filter(|c| c.peer == peer).count();
    if same_peer > limits.max_per_peer.max(1) {
        evict(conns, newest, Some(peer));
    }
    if conns.len() > limits.max_connections.max(1) {
        evict(conns, newest, None);
    }
}

/// Evicts the oldest lingering entry (of `peer`, when given), else the oldest one still being
/// read, else — nothing else left — the newcomer itself. Entries being written finish.
fn evict(conns: &mut Vec<Conn>, newest: usize, peer: Option<IpAddr>) {
    let candidates = || {
        conns[..newest]
            .iter()
            .enumerate()
            .filter(move |(_, c)| peer.map_or(true, |p| c.peer == p))
    };
    let victim = candidates()
        .find(|(_, c)| matches!(c.state, State::Lingering { .. }))
        .or_else(|| candidates().find(|(_, c)| matches!(c.state, State::Reading { .. })))
        .map_or(newest, |(i, _)| i);
    let c = conns.remove(victim);
    if matches!(c.state, State::Reading { .. }) {
        refuse_inline(c.stream);
    }
}

/// One open connection and where it is.
struct Conn {
    stream: TcpStream,
    peer: IpAddr,
    state: State,
}

enum State {
    /// Reading the request head until `deadline`.
    Reading {
        buf: Vec<u8>,
        deadline: Instant,
    },
    /// Sending `out[sent..]` until `deadline`.
    Writing {
        out: Vec<u8>,
        sent: usize,
        deadline: Instant,
    },
    /// Answered and half-closed: swallowing what the client still sends.
    Lingering {
        deadline: Instant,
        drained: usize,
    },
    Done,
}

impl Conn {
    /// Moves the connection as far as it can go without blocking; true if anything happened.
    fn step(&mut self, m: &Metrics, limits: Limits, now: Instant) -> bool {
        let mut progress = false;
        let mut chunk = [0u8; 4096];
        loop {
            let mut s = &self.stream;
            let next = match &mut self.state {
                State::Done => return progress,
                State::Reading { buf, deadline } => match s.read(&mut chunk) {
                    Ok(0) => State::Done,
                    Ok(n) => {
                        progress = true;
                        // Look for the end only in the part that could contain it (new + 3).
                        let from = buf.len().saturating_sub(3);
                        buf.extend_from_slice(&chunk[..n]);
                        match find_head_end(&buf[from..]).map(|e| from + e) {
                            Some(end) if end <= limits.max_head => {
                                answer(route(&buf[..end], m), limits, now)
                            }
                            Some(_) => answer(too_large(limits), limits, now),
                            None if buf.len() > limits.max_head => {
                                answer(too_large(limits), limits, now)
                            }
                            None => continue,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if now < *deadline {
                            return progress;
                        }
                        progress = true;
                        answer(
                            Reply::text(408, "request head not received in time\n"),
                            limits,
                            now,
                        )
                    }
                    Err(_) => State::Done,
                },
                State::Writing {
                    out,
                    sent,
                    deadline,
                } => match s.write(&out[*sent..]) {
                    Ok(n) if n > 0 => {
                        progress = true;
                        *sent += n;
                        if *sent < out.len() {
                            continue;
                        }
                        let _ = self.stream.shutdown(Shutdown::Write);
                        State::Lingering {
                            deadline: now + limits.head_timeout.min(LINGER),
                            drained: 0,
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && now < *deadline => {
                        return progress;
                    }
                    _ => State::Done,
                },
                State::Lingering { deadline, drained } => match s.read(&mut chunk) {
                    Ok(n) if n > 0 && *drained + n <= MAX_DRAIN => {
                        progress = true;
                        *drained += n;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && now < *deadline => {
                        return progress;
                    }
                    _ => State::Done,
                },
            };
            self.state = next;
        }
    }
}

/// The state that sends `reply`.
fn answer(reply: Reply, limits: Limits, now: Instant) -> State {
    State::Writing {
        out: reply.to_bytes(),
        sent: 0,
        deadline: now + limits.head_timeout,
    }
}

fn too_large(limits: Limits) -> Reply {
    Reply::text(
        431,
        format!("request head larger than {} bytes\n", limits.max_head),
    )
}

fn busy() -> Vec<u8> {
    Reply::text(503, "too many connections\n").to_bytes()
}

/// Answers 503 to an evicted connection without ever blocking: a socket's send buffer takes
/// the few bytes at once, and non-blocking mode guarantees it. Whatever request bytes already
/// arrived are swallowed so that closing does not turn into a reset.
fn refuse_inline(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut s = &stream;
    let _ = s.write_all(&busy());
    let _ = stream.shutdown(Shutdown::Write);
    let mut chunk = [0u8; 4096];
    for _ in 0..16 {
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// One answer of the server.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// False for HEAD: the headers announce the body's length, the body is not sent.
    send_body: bool,
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: TEXT,
            body: body.into().into_bytes(),
            send_body: true,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        response(self.status, self.content_type, &self.body, self.send_body)
    }
}

/// End of the head (index just past `\r\n\r\n` or a bare `\n\n`).
fn find_head_end(b: &[u8]) -> Option<usize> {
    for i in 0..b.len() {
        if b[i..].starts_with(b"\r\n\r\n") {
            return Some(i + 4);
        }
        if b[i..].starts_with(b"\n\n") {
            return Some(i + 2);
        }
    }
    None
}

/// Maps a complete head to a response.
fn route(head: &[u8], m: &Metrics) -> Reply {
    let line_end = head
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Reply::text(400, "request line is not UTF-8\n");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::text(
            400,
            "malformed request line; expected `GET /path HTTP/1.1`\n",
        );
    };
    if !version.starts_with("HTTP/1.") {
        return Reply::text(400, "only HTTP/1.x is spoken here\n");
    }
    let send_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Reply::text(405, "method not allowed; use GET or HEAD\n"),
    };
    let path = target.split('?').next().unwrap_or("");
    let mut reply = match path {
        "/healthz" => {
            let (ok, why) = metrics::health(m, metrics::now_unix_ms());
            Reply::text(if ok { 200 } else { 503 }, format!("{why}\n"))
        }
        "/readyz" => {
            let (ok, why) = metrics::readiness(m);
            Reply::text(if ok { 200 } else { 503 }, format!("{why}\n"))
        }
        "/metrics" => Reply {
            status: 200,
            content_type: metrics::PROMETHEUS_CONTENT_TYPE,
            body: metrics::render_prometheus(m).into_bytes(),
            send_body: true,
        },
        _ => Reply::text(404, "not found; try /healthz, /readyz or /metrics\n"),
    };
    reply.send_body = send_body;
    reply
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn response(status: u16, ctype: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn go_style_port_only_address_means_all_interfaces() {
        assert_eq!(bind_target(":8080"), "0.0.0.0:8080");
        assert_eq!(bind_target("127.0.0.1:9"), "127.0.0.1:9");
        assert_eq!(bind_target("[::1]:9"), "[::1]:9");
    }

    #[test]
    fn routing() {
        let m = Metrics::new();
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n", &m).status, 404);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n", &m).status, 405);
        assert_eq!(route(b"GET /metrics\r\n\r\n", &m).status, 400);
        assert_eq!(route(b"GET /metrics HTTP/2.0\r\n\r\n", &m).status, 400);
        assert_eq!(route(b"\xff\xfe HTTP/1.1\r\n\r\n", &m).status, 400);
        let r = route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &m);
        assert_eq!(
            (r.status, r.content_type, r.send_body),
            (200, metrics::PROMETHEUS_CONTENT_TYPE, true)
        );
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("healert_agent_build_info"));
        let r = route(b"HEAD /readyz HTTP/1.0\r\n\r\n", &m);
        assert_eq!((r.status, r.send_body), (503, false));
        assert_eq!(r.body, b"no rules loaded; audit log not open\n");
    }

    #[test]
    fn head_response_keeps_length_but_drops_body() {
        let r = response(200, "text/plain", b"hello", false);
        let r = String::from_utf8(r).unwrap();
        assert!(r.contains("Content-Length: 5\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }
}
