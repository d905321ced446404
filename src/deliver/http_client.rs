//! A small HTTP/1.1 client over `std::net::TcpStream` for the Healert backend: [`BackendUrl`]
//! (parsed at start-up by `config`), [`Client`] (one keep-alive connection, a deadline for every
//! whole request) and [`read_response`], the response parser.
//!
//! Everything the backend sends is untrusted: every line, the header count and size, and the
//! kept body are bounded ([`Limits`]), every read has the request's deadline, and anything that
//! is not HTTP/1.x becomes an [`HttpError`] whose `Display` says what happened and what to do —
//! never a panic or a hang. The API key goes only into the request bytes, never into an error.
//!
//! A kept-alive connection carries the next request only if nothing is waiting on it: bytes
//! left after a complete response (in the buffer, or arrived since) would be read as the next
//! request's answer — a stray `400` would dead-letter an event it was never about, a stray
//! `201` acknowledge one the backend never saw. Such a connection is closed and counted
//! ([`Client::discarded_connections`]), and the request goes out on a fresh one.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::operate::log::{sanitize, Redacted};

/// The API key; its `Debug` and `Display` show only its length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(s: String) -> ApiKey {
        ApiKey(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Redacted(&self.0))
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Redacted(&self.0))
    }
}

/// Bounds on what one response may make us read and keep.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest status line, header line or chunk-size line.
    pub max_line: usize,
    /// Most header lines (trailers included).
    pub max_headers: usize,
    /// Most bytes of all header lines together.
    pub max_header_bytes: usize,
    /// Body bytes kept; the rest is read and discarded (so the connection stays usable).
    pub max_body: usize,
    /// Body bytes discarded at most; beyond that we stop reading and close the connection.
    pub max_discard: u64,
    /// Interim (1xx) responses skipped before the real one.
    pub max_interim: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_line: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_body: 64 * 1024,
            max_discard: 1 << 20,
            max_interim: 8,
        }
    }
}

/// One parsed response. Header names keep their case; look them up with [`Response::header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// At most `Limits::max_body` bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no usable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host name did not resolve.
    Resolve { host: String, detail: String },
    /// No TCP connection (refused, unreachable...).
    Connect { addr: String, detail: String },
    /// The request's deadline (HTTP_TIMEOUT) passed.
    Timeout { during: &'static str },
    /// The backend closed or reset the connection before the response was complete.
    Closed { during: &'static str },
    /// Another socket error.
    Io {
        during: &'static str,
        detail: String,
    },
    /// The bytes are not an HTTP/1.x response.
    Malformed(String),
    /// A line or the headers exceed [`Limits`].
    TooLarge(String),
}

// Stages named in errors; the first two mean "nothing of the response arrived yet", which on a
// reused keep-alive connection means the server closed it while idle.
const WRITING: &str = "sending the request";
const WAITING: &str = "waiting for the response";
const HEADERS: &str = "reading the response headers";
const BODY: &str = "reading the response body";
const CONNECTING: &str = "connecting";

impl HttpError {
    /// True when the connection died before any byte of the response arrived.
    fn before_response(&self) -> bool {
        matches!(self, HttpError::Closed { during } | HttpError::Io { during, .. }
            if *during == WRITING || *during == WAITING)
    }

    /// A short, stable name for logs and metrics keys ("refused", "timeout", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Resolve { .. } => "resolve",
            HttpError::Connect { .. } => "connect",
            HttpError::Timeout { .. } => "timeout",
            HttpError::Closed { .. } => "closed",
            HttpError::Io { .. } => "io",
            HttpError::Malformed(_) => "malformed",
            HttpError::TooLarge(_) => "too_large",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Resolve { host, detail } => write!(
                f,
                "cannot resolve backend host `{}` ({}): check HEALERT_BACKEND_URL and the node's DNS",
                sanitize(host, 200),
                sanitize(detail, 200)
            ),
            HttpError::Connect { addr, detail } => write!(
                f,
                "cannot connect to the backend at {addr} ({}): is it running and reachable from this node? check HEALERT_BACKEND_URL",
                sanitize(detail, 200)
            ),
            HttpError::Timeout { during } => write!(
                f,
                "the backend did not answer in time ({during}): it is overloaded or hung; raise HTTP_TIMEOUT if it is just slow"
            ),
            HttpError::Closed { during } => write!(
                f,
                "the backend closed the connection ({during}): it restarted or a proxy cut the connection; will retry"
            ),
            HttpError::Io { during, detail } => write!(
                f,
                "network error while {during}: {}; will retry",
                sanitize(detail, 200)
            ),
            HttpError::Malformed(what) => write!(
                f,
                "the backend's response is not valid HTTP/1.1 ({}): is HEALERT_BACKEND_URL pointing at the Healert backend (and not a TLS port)?",
                sanitize(what, 200)
            ),
            HttpError::TooLarge(what) => write!(
                f,
                "the backend's response is too large ({}): is HEALERT_BACKEND_URL pointing at the Healert backend?",
                sanitize(what, 200)
            ),
        }
    }
}

impl std::error::Error for HttpError {}

fn io_error(e: io::Error, during: &'static str) -> HttpError {
    use io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => HttpError::Timeout { during },
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            HttpError::Closed { during }
        }
        _ => HttpError::Io {
            during,
            detail: e.to_string(),
        },
    }
}

/// Reads one LF-terminated line (CR stripped) of at most `max` bytes into `out`.
/// `Ok(false)`: end of stream before the first byte.
fn read_line<R: BufRead>(
    r: &mut R,
    max: usize,
    during: &'static str,
    out: &mut Vec<u8>,
) -> Result<bool, HttpError> {
    out.clear();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e, during)),
        };
        if buf.is_empty() {
            if out.is_empty() {
                return Ok(false);
            }
            return Err(HttpError::Closed { during });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // The CRLF does not count against the limit.
        if out.len() + take > max + 2 {
            return Err(HttpError::TooLarge(format!(
                "a line longer than {max} bytes while {during}"
            )));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
            return Ok(true);
        }
    }
}

/// Shows the start of an unexpected line in an error.
fn shown(bytes: &[u8]) -> String {
    sanitize(&String::from_utf8_lossy(bytes), 60)
}

/// Parses one response from a reader (a fuzz target calls this with arbitrary bytes).
pub fn read_response<R: BufRead>(r: &mut R, limits: &Limits) -> Result<Response, HttpError> {
    read_response_framed(r, limits).map(|(resp, _)| resp)
}

/// Like [`read_response`]; also says whether the connection can carry another request
/// (the body was framed, fully read, and the server did not ask to close).
fn read_response_framed<R: BufRead>(
    r: &mut R,
    limits: &Limits,
) -> Result<(Response, bool), HttpError> {
    let mut line = Vec::with_capacity(128);
    let mut interim = 0;
    let (status, http10, headers) = loop {
        // RFC 9112 §2.2: a client should ignore empty lines before the status line.
        let mut got = read_line(r, limits.max_line, WAITING, &mut line)?;
        let mut blanks = 0;
        while got && line.is_empty() && blanks < 4 {
            blanks += 1;
            got = read_line(r, limits.max_line, WAITING, &mut line)?;
        }
        if !got {
            return Err(HttpError::Closed { during: WAITING });
        }
        let (status, http10) = parse_status_line(&line)?;
        let headers = read_headers(r, limits, &mut line)?;
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(HttpError::Malformed(
                    "unexpected 101 Switching Protocols".into(),
                ));
            }
            interim += 1;
            if interim > limits.max_interim {
                return Err(HttpError::Malformed(format!(
                    "more than {} interim 1xx responses",
                    limits.max_interim
                )));
            }
            continue;
        }
        break (status, http10, headers);
    };
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let wants_close = resp
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"));
    let keep_alive_10 = resp.header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
    });
    let mut reusable = !wants_close && (!http10 || keep_alive_10);

    if status == 204 || status == 304 {
        return Ok((resp, reusable));
    }
    let chunked = resp.header("transfer-encoding").map(|te| {
        te.rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
    });
    let mut discarded = 0u64;
    let complete = match chunked {
        Some(true) => read_chunked(r, limits, &mut resp.body, &mut discarded, &mut line)?,
        // Another transfer coding: the body ends when the connection does.
        Some(false) => {
            reusable = false;
            read_capped(r, None, limits, &mut resp.body, &mut discarded)?
        }
        None => match content_length(&resp.headers)? {
            Some(n) => read_capped(r, Some(n), limits, &mut resp.body, &mut discarded)?,
            None => {
                reusable = false;
                read_capped(r, None, limits, &mut resp.body, &mut discarded)?
            }
        },
    };
    Ok((resp, reusable && complete))
}

fn parse_status_line(line: &[u8]) -> Result<(u16, bool), HttpError> {
    let bad = || {
        HttpError::Malformed(format!(
            "expected a status line like `HTTP/1.1 200 OK`, got `{}`",
            shown(line)
        ))
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    let (minor, rest) = rest.split_first().ok_or_else(bad)?;
    if !minor.is_ascii_digit() || rest.first() != Some(&b' ') || rest.len() < 4 {
        return Err(bad());
    }
    let code = &rest[1..4];
    if !code.iter().all(u8::is_ascii_digit) || !(rest.len() == 4 || rest[4] == b' ') {
        return Err(bad());
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return Err(HttpError::Malformed(format!(
            "status code {status} is outside 100..599"
        )));
    }
    Ok((status, *minor == b'0'))
}

fn read_headers<R: BufRead>(
    r: &mut R,
    limits: &Limits,
    line: &mut Vec<u8>,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    let mut total = 0usize;
    loop {
        if !read_line(r, limits.max_line, HEADERS, line)? {
            return Err(HttpError::Closed { during: HEADERS });
        }
        if line.is_empty() {
            return Ok(headers);
        }
        total += line.len();
        if headers.len() >= limits.max_headers || total > limits.max_header_bytes {
            return Err(HttpError::TooLarge(format!(
                "more than {} header lines or {} header bytes",
                limits.max_headers, limits.max_header_bytes
            )));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HttpError::Malformed(
                "a folded header line (obsolete line folding)".into(),
            ));
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            HttpError::Malformed(format!("a header line without `:`: `{}`", shown(line)))
        })?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(HttpError::Malformed(format!(
                "a bad header name `{}`",
                shown(name)
            )));
        }
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
}

fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for (_, v) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let n = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            v.parse::<u64>().ok()
        } else {
            None
        }
        .ok_or_else(|| {
            HttpError::Malformed(format!(
                "Content-Length `{}` is not a non-negative number",
                sanitize(v, 40)
            ))
        })?;
        if found.is_some_and(|f| f != n) {
            return Err(HttpError::Malformed(
                "two different Content-Length headers".into(),
            ));
        }
        found = Some(n);
    }
    Ok(found)
}

/// Reads `len` bytes (or up to end of stream when `None`), keeping `max_body` and discarding
/// the rest up to `max_discard`. `Ok(false)`: stopped early, the connection is not reusable.
fn read_capped<R: BufRead>(
    r: &mut R,
    len: Option<u64>,
    limits: &Limits,
    body: &mut Vec<u8>,
    discarded: &mut u64,
) -> Result<bool, HttpError> {
    let mut left = len.unwrap_or(u64::MAX);
    while left > 0 {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e, BODY)),
        };
        if buf.is_empty() {
            return match len {
                None => Ok(true),
                Some(_) => Err(HttpError::Closed { during: BODY }),
            };
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let keep = n.min(limits.max_body.saturating_sub(body.len()));
        body.extend_from_slice(&buf[..keep]);
        *discarded += (n - keep) as u64;
        r.consume(n);
        left -= n as u64;
        if *discarded > limits.max_discard {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_chunked<R: BufRead>(
    r: &mut R,
    limits: &Limits,
    body: &mut Vec<u8>,
    discarded: &mut u64,
    line: &mut Vec<u8>,
) -> Result<bool, HttpError> {
    loop {
        if !read_line(r, limits.max_line, BODY, line)? {
            return Err(HttpError::Closed { during: BODY });
        }
        let size_text = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let size_text = size_text.trim_ascii();
        let size = if !size_text.is_empty()
            && size_text.len() <= 15
            && size_text.iter().all(u8::is_ascii_hexdigit)
        {
            std::str::from_utf8(size_text)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        } else {
            None
        }
        .ok_or_else(|| HttpError::Malformed(format!("bad chunk size `{}`", shown(line))))?;
        if size == 0 {
            // Trailers, then the empty line that ends the message.
            for _ in 0..=limits.max_headers {
                if !read_line(r, limits.max_line, BODY, line)? {
                    return Err(HttpError::Closed { during: BODY });
                }
                if line.is_empty() {
                    return Ok(true);
                }
            }
            return Err(HttpError::TooLarge(format!(
                "more than {} trailer lines",
                limits.max_headers
            )));
        }
        if !read_capped(r, Some(size), limits, body, discarded)? {
            return Ok(false);
        }
        if !read_line(r, limits.max_line, BODY, line)? || !line.is_empty() {
            return Err(HttpError::Malformed(
                "a chunk is not followed by CRLF".into(),
            ));
        }
    }
}

/// A socket whose every read and write gives up at the request's deadline.
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(io::ErrorKind::TimedOut, "request deadline"))
        } else {
            Ok(left)
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// The backend client: one keep-alive connection, opened on demand, re-opened after errors.
pub struct Client {
    url: BackendUrl,
    api_key: Option<ApiKey>,
    timeout: Duration,
    limits: Limits,
    conn: Option<BufReader<DeadlineStream>>,
    deadline_cap: Option<Instant>,
    connections_opened: u64,
    connections_discarded: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.to_string())
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// `timeout` bounds each whole request (connect, send, receive).
    pub fn new(url: BackendUrl, api_key: Option<ApiKey>, timeout: Duration) -> Client {
        Client {
            url,
            api_key: api_key.filter(|k| !k.is_empty()),
            timeout,
            limits: Limits::default(),
            conn: None,
            deadline_cap: None,
            connections_opened: 0,
            connections_discarded: 0,
        }
    }

    pub fn url(&self) -> &BackendUrl {
        &self.url
    }

    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The deadline of one whole request (HTTP_TIMEOUT).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// No request runs past `cap` (shutdown deadline), even if HTTP_TIMEOUT would allow it.
    pub fn set_deadline_cap(&mut self, cap: Option<Instant>) {
        self.deadline_cap = cap;
    }

    /// TCP connections opened so far (connection reuse shows as 1).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened
    }

    /// Kept-alive connections closed instead of reused because bytes nobody asked for followed
    /// a response.
    pub fn discarded_connections(&self) -> u64 {
        self.connections_discarded
    }

    /// `POST {base}{path}` with a JSON body.
    pub fn post_json(&mut self, path: &str, body: &[u8]) -> Result<Response, HttpError> {
        self.request("POST", path, Some(body))
    }

    /// `GET {base}{path}`.
    pub fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.request("GET", path, None)
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let mut deadline = Instant::now() + self.timeout;
        if let Some(cap) = self.deadline_cap {
            deadline = deadline.min(cap);
        }
        let bytes = self.build(method, path, body);
        let reused = self.conn.is_some();
        match self.send_once(&bytes, deadline) {
            // A kept-alive connection the server closed while idle: not a failure, re-send once
            // on a fresh connection (nothing of a response arrived, so nothing was processed
            // as far as we can know).
            Err(e) if reused && e.before_response() => self.send_once(&bytes, deadline),
            r => r,
        }
    }

    fn build(&self, method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: healert-agent/{}\r\nAccept: application/json\r\n",
            self.url.base_path,
            self.url.authority(),
            crate::VERSION
        );
        if let Some(b) = body {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        if let Some(k) = &self.api_key {
            head.push_str("Authorization: Bearer ");
            head.push_str(k.expose());
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        bytes
    }

    fn send_once(&mut self, bytes: &[u8], deadline: Instant) -> Result<Response, HttpError> {
        let result = self.exchange(bytes, deadline);
        match &result {
            Ok((_, true)) => {
                // More bytes than the response: never take them for the next answer.
                if self.conn.as_ref().is_some_and(|c| !c.buffer().is_empty()) {
                    self.conn = None;
                    self.connections_discarded += 1;
                }
            }
            // Unknown state of the stream: never reuse it.
            _ => self.conn = None,
        }
        result.map(|(r, _)| r)
    }

    /// The kept-alive connection, if it is still clean: nothing arrived on it since the last
    /// response (stray bytes: closed and counted) and the server did not close it (closed
    /// quietly; a new connection is not a retry).
    fn reusable_conn(&mut self) -> Option<BufReader<DeadlineStream>> {
        let conn = self.conn.take()?;
        let stream = &conn.get_ref().stream;
        if stream.set_nonblocking(true).is_err() {
            return None;
        }
        let mut probe = [0u8; 1];
        let state = stream.peek(&mut probe);
        if stream.set_nonblocking(false).is_err() {
            return None;
        }
        match state {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(conn),
            Ok(n) if n > 0 => {
                self.connections_discarded += 1;
                None
            }
            // End of stream (closed while idle) or an error: not usable.
            _ => None,
        }
    }

    fn exchange(&mut self, bytes: &[u8], deadline: Instant) -> Result<(Response, bool), HttpError> {
        let conn = match self.reusable_conn() {
            Some(c) => self.conn.insert(c),
            None => {
                let c = self.connect(deadline)?;
                self.connections_opened += 1;
                self.conn.insert(c)
            }
        };
        conn.get_mut().deadline = deadline;
        conn.get_mut()
            .write_all(bytes)
            .map_err(|e| io_error(e, WRITING))?;
        read_response_framed(conn, &self.limits)
    }

    fn connect(&self, deadline: Instant) -> Result<BufReader<DeadlineStream>, HttpError> {
        let addrs: Vec<_> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| HttpError::Resolve {
                host: self.url.host.clone(),
                detail: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(HttpError::Resolve {
                host: self.url.host.clone(),
                detail: "no addresses".into(),
            });
        }
        let mut last = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpError::Timeout { during: CONNECTING });
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    // Request head and body go out in one write; no need to wait for ACKs.
                    let _ = stream.set_nodelay(true);
                    return Ok(BufReader::with_capacity(
                        16 * 1024,
                        DeadlineStream { stream, deadline },
                    ));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    last = Some(HttpError::Timeout { during: CONNECTING })
                }
                Err(e) => {
                    last = Some(HttpError::Connect {
                        addr: addr.to_string(),
                        detail: e.to_string(),
                    })
                }
            }
        }
        Err(last.unwrap_or(HttpError::Timeout { during: CONNECTING }))
    }
}

/// Why an `https://` URL is refused (std only: no TLS in the binary).
pub const HTTPS_REFUSED: &str = "https is not supported by the binary itself: run the TLS sidecar \
     (see docs/tls.md) and point HEALERT_BACKEND_URL at it, e.g. http://127.0.0.1:8443";

/// `http://host[:port][/base-path]`, trailing `/` trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// "" or "/base" (never ends with '/').
    pub base_path: String,
}

impl BackendUrl {
    /// `http://localhost:8000`.
    pub fn localhost() -> BackendUrl {
        BackendUrl {
            host: "localhost".into(),
            port: 8000,
            base_path: String::new(),
        }
    }

    /// Parses the URL or explains how to fix it.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err(HTTPS_REFUSED.into());
        } else if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unsupported scheme `{}`: use http://HOST:PORT",
                sanitize(scheme, 20)
            ));
        } else {
            return Err("missing scheme: write http://HOST:PORT".into());
        };
        // Userinfo, wherever a sloppy URL puts it (a password may hold `/`): refused before
        // anything else is looked at, so no error below can quote a part of it.
        if rest.contains('@') {
            return Err(
                "credentials in the URL are not allowed: put the key in HEALERT_API_KEY".into(),
            );
        }
        if rest.contains(['?', '#']) {
            return Err("a query or fragment is not allowed in the base URL".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| "unterminated IPv6 literal: write http://[::1]:8000".to_string())?;
            // Found by fuzzing (`http://[a[b]:1`): brackets hold an IPv6 address and nothing
            // else, so that the URL prints back to itself.
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "`[{}]` is not an IPv6 address: write http://[::1]:8000",
                    sanitize(h, 60)
                ));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("missing host: write http://HOST:PORT".into());
        }
        // Found by fuzzing (`http://:1:[]:01`): outside brackets a host never contains `:`,
        // `[` or `]`, else the URL would not print back to itself.
        if !authority.starts_with('[') && host.contains([':', '[', ']']) {
            return Err(
                "bad host: an IPv6 address goes in brackets (http://[::1]:8000), \
                 and a host name contains no `:`, `[` or `]`"
                    .into(),
            );
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the host contains spaces or control characters".into());
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port `{p}`: use a number from 1 to 65535"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the path contains spaces or control characters".into());
        }
        Ok(BackendUrl {
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` for connecting (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.base_path)
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn parses_and_trims() {
        let u = BackendUrl::parse("http://backend.ns:8000/api/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("backend.ns", 8000, "/api")
        );
        let u = BackendUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.to_string(), "http://[::1]:9000");
        assert_eq!(BackendUrl::parse("http://h").unwrap().port, 80);
    }

    #[test]
    fn rejects_with_fix() {
        assert_eq!(BackendUrl::parse("https://x").unwrap_err(), HTTPS_REFUSED);
        assert!(HTTPS_REFUSED.contains("TLS sidecar (see docs/tls.md)"));
        // A password is never quoted, wherever it sits.
        for bad in [
            "http://u:p4ss@h",
            "http://u:p4/ss@h:1",
            "http://h/x@p4ss",
            "http://u:p4ss@h:99999",
        ] {
            let e = BackendUrl::parse(bad).unwrap_err();
            assert!(
                e.contains("HEALERT_API_KEY") && !e.contains("p4"),
                "{bad}: {e}"
            );
        }
        assert!(BackendUrl::parse("ftp://x").unwrap_err().contains("ftp"));
        assert!(BackendUrl::parse("localhost:8000")
            .unwrap_err()
            .contains("scheme"));
        assert!(BackendUrl::parse("http://u:p@h")
            .unwrap_err()
            .contains("HEALERT_API_KEY"));
        assert!(BackendUrl::parse("http://h:99999")
            .unwrap_err()
            .contains("port"));
        assert!(BackendUrl::parse("http://:80")
            .unwrap_err()
            .contains("host"));
        // Regression inputs found by fuzz/fuzz_targets/config_values.rs.
        for bad in [
            "http://:1:[]:01/api/",
            "http://::1",
            "http://a]:80",
            "http://[::1]x",
            "http://[a[b]:01",
            "http://[example.com]:80",
        ] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

#[cfg(test)]
mod response_tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<(Response, bool), HttpError> {
        read_response_framed(&mut io::Cursor::new(bytes), &Limits::default())
    }

    #[test]
    fn content_length_body_and_case_insensitive_headers() {
        let (r, reuse) =
            parse(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 5\r\nX-A:  b \r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), reuse),
            (200, &b"hello"[..], true)
        );
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.header("Content-Length"), Some("5"));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let (r, reuse) = parse(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), reuse),
            (201, &b"abc0123456789"[..], true)
        );
    }

    #[test]
    fn connection_close_and_http10_and_read_to_eof() {
        let (r, reuse) =
            parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((r.status, reuse), (200, false));
        let (_, reuse) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(!reuse);
        let (r, reuse) = parse(b"HTTP/1.1 500 Oops\r\n\r\nall of it").unwrap();
        assert_eq!((r.body.as_slice(), reuse), (&b"all of it"[..], false));
    }

    #[test]
    fn interim_responses_skipped() {
        let (r, _) =
            parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
    }

    #[test]
    fn body_is_capped_and_rest_discarded() {
        let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        raw.resize(raw.len() + 100_000, b'x');
        raw.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        let mut cur = io::Cursor::new(raw);
        let limits = Limits::default();
        let (r, reuse) = read_response_framed(&mut cur, &limits).unwrap();
        assert_eq!((r.body.len(), reuse), (limits.max_body, true));
        // The stream is positioned at the next response.
        assert_eq!(read_response(&mut cur, &limits).unwrap().status, 204);
    }

    #[test]
    fn garbage_gives_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "closed"),
            (b"hello world\r\n\r\n", "status line"),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "status line"),
            (b"HTTP/1.1 999 Nope\r\n\r\n", "outside"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
                "non-negative",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                "different",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
                "CRLF",
            ),
            (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "without `:`"),
            (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "folded"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "closed",
            ),
            (b"HTTP/1.1 200 OK\r\nA: b\r\n", "closed"),
        ];
        for (raw, want) in cases {
            let e = parse(raw).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn huge_header_is_bounded() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        raw.resize(raw.len() + 10 * 1024 * 1024, b'a');
        let e = parse(&raw).unwrap_err();
        assert!(matches!(e, HttpError::TooLarge(_)), "{e}");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..500 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        assert!(matches!(parse(&many).unwrap_err(), HttpError::TooLarge(_)));
    }

    #[test]
    fn error_display_says_what_and_fix() {
        let e = HttpError::Connect {
            addr: "127.0.0.1:1".into(),
            detail: "Connection refused".into(),
        };
        assert!(e.to_string().contains("HEALERT_BACKEND_URL"));
        assert!(HttpError::Timeout { during: WAITING }
            .to_string()
            .contains("HTTP_TIMEOUT"));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any well-formed response parses to what was sent, whatever the read boundaries.
        #[test]
        fn well_formed_responses_round_trip(
            status in 200u16..600,
            headers in proptest::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,20}"), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            chunk in 1usize..50,
            chunked in any::<bool>(),
            cap in 1usize..64,
        ) {
            // 204 and 304 never carry a body.
            prop_assume!(status != 204 && status != 304);
            let mut raw = format!("HTTP/1.1 {status} Whatever\r\n").into_bytes();
            for (k, v) in &headers {
                raw.extend_from_slice(format!("{}: {v}\r\n", k.to_uppercase()).as_bytes());
            }
            if chunked {
                raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in body.chunks(chunk) {
                    raw.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
                    raw.extend_from_slice(c);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
            } else {
                raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                raw.extend_from_slice(&body);
            }
            let mut r = BufReader::with_capacity(cap, io::Cursor::new(raw));
            let (resp, reuse) = read_response_framed(&mut r, &Limits::default()).unwrap();
            prop_assert_eq!(resp.status, status);
            prop_assert_eq!(&resp.body, &body);
            prop_assert!(reuse);
            for (k, v) in &headers {
                let got = resp.header(k);
                prop_assert!(got.is_some());
                // The first header of that name wins; values are trimmed.
                let first = headers.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.trim_matches([' ', '\t']));
                prop_assert_eq!(got, first);
                let _ = v;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
            let mut framed = b"HTTP/1.1 200 OK\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = parse(&framed);
        }
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// Reads one request (head and Content-Length body) from `r`; false at end of stream.
    fn read_request(r: &mut BufReader<TcpStream>) -> bool {
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).is_ok()
    }

    /// A server whose first connection answers 200 and then, unasked, a second response
    /// (`late`: after the client has the first one); any request sent on that connection
    /// afterwards gets 500. The next connection answers 201. Signals when the stray is sent.
    fn two_answer_server(late: bool) -> (BackendUrl, mpsc::Receiver<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = BackendUrl::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().take(2).enumerate() {
                let s = s.unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                std::thread::spawn({
                    let tx = tx.clone();
                    move || {
                        while read_request(&mut r) {
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                            let stray = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}";
                            let other = b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n{}";
                            let created = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}";
                            if i > 0 {
                                w.write_all(created).unwrap();
                            } else if late {
                                w.write_all(ok).unwrap();
                                std::thread::sleep(Duration::from_millis(20));
                                w.write_all(stray).unwrap();
                                let _ = tx.send(());
                                w.write_all(other).unwrap();
                            } else {
                                w.write_all(&[&ok[..], &stray[..]].concat()).unwrap();
                                let _ = tx.send(());
                                w.write_all(other).unwrap();
                            }
                        }
                    }
                });
            }
        });
        (url, rx)
    }

    #[test]
    fn a_connection_with_bytes_after_the_response_is_closed_not_reused() {
        for late in [false, true] {
            let (url, sent) = two_answer_server(late);
            let mut c = Client::new(url, None, Duration::from_secs(10));
            assert_eq!(c.post_json("/events", b"{\"n\":1}").unwrap().status, 200);
            // The stray answer is on its way (on loopback it is queued once written).
            sent.recv_timeout(Duration::from_secs(10)).unwrap();
            let r = c.post_json("/events", b"{\"n\":2}").unwrap();
            assert_eq!(r.status, 201, "late={late}: took a stray answer");
            assert_eq!(
                (c.connections_opened(), c.discarded_connections()),
                (2, 1),
                "late={late}"
            );
        }
    }
}
