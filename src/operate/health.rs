//! The health and metrics HTTP server (`HEALTH_ADDR`): `GET /healthz`, `GET /readyz` and
//! `GET /metrics`, read from the [`Metrics`] it is handed.
//!
//! It faces whatever can reach the pod's port, so it is small and bounded: a request head of at
//! most [`Limits::max_head`] bytes (else 431), a deadline for the whole head (a slow-loris
//! client cannot pin a connection), at most [`Limits::max_connections`] requests served at once
//! (extra connections get 503 straight from the accept thread), `Connection: close` after every
//! response, and no request body is ever read. It only reads atomics, so it never slows the
//! pipeline; it runs on its own threads and stops on [`HealthServer::stop`] or drop.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::operate::log::{sanitize, Throttle};
use crate::operate::metrics::{self, Metrics};

/// Bounds on what one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_head: usize,
    /// Time allowed to receive the whole request head.
    pub head_timeout: Duration,
    /// Requests served concurrently; further connections are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(2),
            max_connections: 4,
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
        .name("health-accept".into())
        .spawn(move || accept_loop(listener, m, limits, stop2))
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

    /// Stops accepting and joins the accept thread. Requests in flight finish on their own
    /// threads (each bounded by the head timeout).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // `accept` blocks; a connection of our own wakes it to see the flag. A wildcard bind
        // is reached through loopback.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
        // If even loopback cannot reach it, leave the thread detached rather than hang the
        // shutdown sequence; the process is about to exit anyway.
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, m: Arc<Metrics>, limits: Limits, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut errors = Throttle::new(Duration::from_secs(60));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if let Some(n) = errors.hit(&e.kind().to_string()) {
                    crate::warn!("health server: accept failed", "error" => e, "suppressed" => n);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= limits.max_connections {
            // Refuse on a thread of its own so the 503 survives a client whose request is
            // still arriving (see `linger`); those threads are bounded too. Past both bounds
            // the accept thread answers inline, best effort, never blocking.
            if refusing.load(Ordering::SeqCst) >= limits.max_connections {
                refuse_inline(stream);
                continue;
            }
            refusing.fetch_add(1, Ordering::SeqCst);
            let guard = Slot(Arc::clone(&refusing));
            let _ = std::thread::Builder::new()
                .name("health-busy".into())
                .spawn(move || {
                    let _guard = guard;
                    let _ = stream.set_write_timeout(Some(limits.head_timeout));
                    let mut s = &stream;
                    if s.write_all(&busy()).is_ok() {
                        linger(&stream, limits);
                    }
                });
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = Slot(Arc::clone(&active));
        let m = Arc::clone(&m);
        let spawned = std::thread::Builder::new()
            .name("health-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, &m, limits);
            });
        if let Err(e) = spawned {
            // The closure (and its slot guard and stream) was dropped: the slot is free again
            // and the client sees a closed connection.
            if let Some(n) = errors.hit("spawn") {
                crate::warn!("health server: cannot start a thread", "error" => e, "suppressed" => n);
            }
        }
    }
}

/// Frees one connection slot when the serving thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn busy() -> Vec<u8> {
    Reply::text(503, "too many connections\n").to_bytes()
}

/// Answers 503 on the accept thread without ever blocking it: a fresh socket's send buffer
/// takes the few bytes at once, and non-blocking mode guarantees it. Whatever request bytes
/// already arrived are swallowed so that closing does not turn into a reset.
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

/// What a request head turned out to be.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    TimedOut,
    Closed,
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

fn serve(stream: TcpStream, m: &Metrics, limits: Limits) {
    let head = read_head(&stream, limits);
    let reply = match head {
        Head::Closed => return,
        Head::TimedOut => Reply::text(408, "request head not received in time\n"),
        Head::TooLarge => Reply::text(
            431,
            format!("request head larger than {} bytes\n", limits.max_head),
        ),
        Head::Complete(h) => route(&h, m),
    };
    let _ = stream.set_write_timeout(Some(limits.head_timeout));
    let mut s = &stream;
    if s.write_all(&reply.to_bytes()).is_err() {
        return;
    }
    let _ = s.flush();
    linger(&stream, limits);
}

/// Reads until the blank line that ends the head, within the size and time bounds.
fn read_head(stream: &TcpStream, limits: Limits) -> Head {
    let deadline = Instant::now() + limits.head_timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Head::TimedOut;
        }
        let mut s = stream;
        match s.read(&mut chunk) {
            Ok(0) => return Head::Closed,
            Ok(n) => {
                // Look for the end only in the part that could contain it (new bytes + 3).
                let from = buf.len().saturating_sub(3);
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = find_head_end(&buf[from..]) {
                    let end = from + end;
                    if end > limits.max_head {
                        return Head::TooLarge;
                    }
                    buf.truncate(end);
                    return Head::Complete(buf);
                }
                if buf.len() > limits.max_head {
                    return Head::TooLarge;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Head::TimedOut
            }
            Err(_) => return Head::Closed,
        }
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

/// After answering, half-close and swallow a bounded amount of what the client still sends:
/// closing a socket with unread input makes the kernel send RST, which can destroy our
/// response (e.g. the 431 for an oversized request) before the client reads it.
fn linger(stream: &TcpStream, limits: Limits) {
    const MAX_DRAIN: usize = 2 * 1024 * 1024;
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + limits.head_timeout.min(Duration::from_millis(500));
    let mut drained = 0usize;
    let mut chunk = [0u8; 8192];
    while drained < MAX_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let mut s = stream;
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
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
