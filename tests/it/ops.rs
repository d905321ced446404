//! Operability: the Prometheus exposition (checked by a strict parser of text format 0.0.4
//! written here), the health/metrics HTTP server against hostile clients, probe flips, signal
//! handling (in a child process, so the test binary's own signal dispositions stay default)
//! and JSON log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use healert_agent::operate::health::{self, Limits};
use healert_agent::operate::metrics::{self, BackendState, Metrics};

use crate::support::{self, exchange, http_get, parse_reply, Reply};

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text format 0.0.4, stricter than Prometheus itself where our
// renderer has no reason to use the format's leniency (blank lines, free comments, untyped
// samples).

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// family → (type, help)
    pub families: BTreeMap<String, (String, String)>,
}

impl Exposition {
    /// The value of the one sample `name{labels}` (labels in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        self.samples
            .iter()
            .find(|s| {
                let mut l = s.labels.clone();
                l.sort();
                s.name == name && l == want
            })
            .map(|s| s.value)
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            Err(format!("bad value {s:?}"))
        }
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{k="v",...}` starting at `s[0] == '{'`; returns labels and the rest after `}`.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("duplicate label {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => return Err(format!("bad escape in HELP: {other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

pub fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("the last line must end with a line feed".into());
    }
    let mut exp = Exposition::default();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<String> = BTreeSet::new();
    for (no, line) in text[..text.len() - 1].split('\n').enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", no + 1);
        if line.is_empty() {
            return Err(at("blank line".into()));
        }
        let open_family = |name: &str,
                           current: &mut Option<String>,
                           closed: &mut BTreeSet<String>|
         -> Result<(), String> {
            if current.as_deref() != Some(name) {
                if closed.contains(name) {
                    return Err(format!("family {name} is split"));
                }
                if let Some(prev) = current.take() {
                    closed.insert(prev);
                }
                *current = Some(name.to_string());
            }
            Ok(())
        };
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text".into()))?;
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            open_family(name, &mut current, &mut closed).map_err(at)?;
            if exp.samples.iter().any(|s| s.name == name) {
                return Err(at("HELP after samples".into()));
            }
            if helps
                .insert(name.to_string(), unescape_help(doc).map_err(at)?)
                .is_some()
            {
                return Err(at("second HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without type".into()))?;
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if !["counter", "gauge"].contains(&kind) {
                return Err(at(format!("unexpected type {kind:?}")));
            }
            open_family(name, &mut current, &mut closed).map_err(at)?;
            if exp.samples.iter().any(|s| s.name == name) {
                return Err(at("TYPE after samples".into()));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at("second TYPE".into()));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(at("counter name must end in _total".into()));
            }
            if kind == "gauge" && name.ends_with("_total") {
                return Err(at("gauge named like a counter".into()));
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("unexpected comment".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("expected one space before the value".into()))?;
        let mut toks = rest.split(' ');
        let value = parse_value(toks.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = toks.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if toks.next().is_some() {
            return Err(at("trailing tokens".into()));
        }
        if current.as_deref() != Some(name) {
            return Err(at(
                "sample outside its family (no HELP/TYPE right before)".into()
            ));
        }
        let kind = types
            .get(name)
            .ok_or_else(|| at("sample without TYPE".into()))?;
        if !helps.contains_key(name) {
            return Err(at("sample without HELP".into()));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("counter must be a non-negative number".into()));
        }
        let mut key_labels = labels.clone();
        key_labels.sort();
        if !series.insert(format!("{name}{key_labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        exp.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, kind) in &types {
        exp.families.insert(
            name.clone(),
            (kind.clone(), helps.get(name).cloned().unwrap_or_default()),
        );
    }
    Ok(exp)
}

#[test]
fn the_exposition_parser_rejects_what_it_must() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n";
    let exp = parse_exposition(good).unwrap();
    assert_eq!(exp.value("a_total", &[("x", "q\"\\\n")]), Some(1.0));
    for bad in [
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1",
        "a_total 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"\\t\"} 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total -1\n",
        "# HELP g G.\n# TYPE g gauge\ng one\n",
        "# HELP g G.\n# TYPE g gauge\ng inf\n",
        "# HELP g G.\n# TYPE g gauge\ng{1x=\"a\"} 1\n",
        "# HELP g G.\n# TYPE g gauge\ng{x=\"a\",x=\"b\"} 1\n",
        "# HELP g G.\n# TYPE g gauge\ng{x=a} 1\n",
        "# HELP g G.\n# TYPE g gauge\n\ng 1\n",
        "# HELP g G.\n# TYPE g gauge\n# HELP h H.\n# TYPE h gauge\nh 1\ng 1\n",
        "# HELP g G.\n# TYPE g gauge\ng  1\n",
        "# HELP g G\\x.\n# TYPE g gauge\ng 1\n",
        "# HELP g G.\n# TYPE g histogram\ng 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

fn leak(m: Metrics) -> Arc<Metrics> {
    Arc::new(m)
}

#[test]
fn rendered_metrics_parse_strictly_and_round_trip_weird_rule_names() {
    let m = Metrics::new();
    let weird = [
        "kubectl-exec",
        "quote\"d",
        "back\\slash",
        "new\nline",
        "ünïcödé ✓",
        "{braces}=,",
        "",
    ];
    for (i, r) in weird.iter().enumerate() {
        for _ in 0..=i {
            m.inc_matched(r);
        }
        if i % 2 == 0 {
            m.inc_sent(r);
        }
    }
    m.inc_rejected(422);
    m.inc_rejected(422);
    m.inc_rejected(400);
    m.lines_read.store(12345, Ordering::Relaxed);
    m.bytes_read.store(9_876_543_210, Ordering::Relaxed);
    m.queue_depth.store(-1, Ordering::Relaxed);
    m.file_size.store(100, Ordering::Relaxed);
    m.read_offset.store(40, Ordering::Relaxed);
    m.last_line_unix_ms.store(1_000, Ordering::Relaxed);
    m.set_backend_state(BackendState::Failing);

    let text = metrics::render_prometheus_at(&m, 3_500);
    let exp = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (i, r) in weird.iter().enumerate() {
        assert_eq!(
            exp.value("healert_agent_events_matched_total", &[("rule", r)]),
            Some((i + 1) as f64),
            "rule {r:?}"
        );
        let sent = if i % 2 == 0 { 1.0 } else { 0.0 };
        assert_eq!(
            exp.value("healert_agent_events_sent_total", &[("rule", r)]),
            Some(sent)
        );
    }
    let v = |name: &str| exp.value(name, &[]);
    assert_eq!(
        exp.value("healert_agent_events_rejected_total", &[("status", "422")]),
        Some(2.0)
    );
    assert_eq!(
        exp.value("healert_agent_events_rejected_total", &[("status", "400")]),
        Some(1.0)
    );
    assert_eq!(v("healert_agent_lines_read_total"), Some(12345.0));
    assert_eq!(v("healert_agent_bytes_read_total"), Some(9_876_543_210.0));
    assert_eq!(v("healert_agent_queue_depth"), Some(-1.0));
    assert_eq!(v("healert_agent_lag_bytes"), Some(60.0));
    assert_eq!(v("healert_agent_seconds_since_last_line"), Some(2.5));
    assert_eq!(v("healert_agent_backend_up"), Some(0.0));
    assert_eq!(
        exp.value("healert_agent_backend_state", &[("state", "failing")]),
        Some(1.0)
    );
    assert_eq!(
        exp.value(
            "healert_agent_build_info",
            &[("version", healert_agent::VERSION)]
        ),
        Some(1.0)
    );
    // Every family the issue asks for is there, with the right type.
    for (name, kind) in [
        ("healert_agent_lines_read_total", "counter"),
        ("healert_agent_bytes_read_total", "counter"),
        ("healert_agent_malformed_lines_total", "counter"),
        ("healert_agent_oversized_lines_total", "counter"),
        ("healert_agent_events_matched_total", "counter"),
        ("healert_agent_events_sent_total", "counter"),
        ("healert_agent_events_rejected_total", "counter"),
        ("healert_agent_retries_total", "counter"),
        ("healert_agent_rotations_total", "counter"),
        ("healert_agent_truncations_total", "counter"),
        ("healert_agent_queue_depth", "gauge"),
        ("healert_agent_checkpoint_offset_bytes", "gauge"),
        ("healert_agent_lag_bytes", "gauge"),
        ("healert_agent_seconds_since_last_line", "gauge"),
        ("healert_agent_build_info", "gauge"),
        ("healert_agent_backend_up", "gauge"),
    ] {
        assert_eq!(
            exp.families.get(name).map(|f| f.0.as_str()),
            Some(kind),
            "{name}"
        );
    }

    // Before the first line the age is NaN, which the parser accepts as a float.
    let fresh = metrics::render_prometheus_at(&Metrics::new(), 3_500);
    let exp = parse_exposition(&fresh).unwrap();
    assert!(exp
        .value("healert_agent_seconds_since_last_line", &[])
        .is_some_and(f64::is_nan));
}

// ---------------------------------------------------------------------------------------------
// The HTTP server, in-process on loopback with port 0.

/// `GET path`; the server must answer.
fn get(addr: SocketAddr, path: &str) -> Reply {
    http_get(addr, path).unwrap()
}

fn start(m: &Arc<Metrics>, limits: Limits) -> health::HealthServer {
    health::spawn_with("127.0.0.1:0", Arc::clone(m), limits).unwrap()
}

fn ready_metrics() -> Arc<Metrics> {
    let m = leak(Metrics::new());
    m.rules_loaded.store(5, Ordering::Relaxed);
    m.log_open.store(1, Ordering::Relaxed);
    m
}

#[test]
fn endpoints_methods_and_content_types() {
    let m = leak(Metrics::new());
    m.inc_matched("kubectl-exec");
    let srv = start(&m, Limits::default());
    let a = srv.local_addr();

    let r = get(a, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert!(r.head.contains("Connection: close"));

    let r = get(a, "/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "no rules loaded; audit log not open\n");
    m.rules_loaded.store(1, Ordering::Relaxed);
    m.log_open.store(1, Ordering::Relaxed);
    let r = get(a, "/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready (source: file)\n"));

    let r = get(a, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.head
    );
    let exp = parse_exposition(&r.body).unwrap();
    assert_eq!(
        exp.value(
            "healert_agent_events_matched_total",
            &[("rule", "kubectl-exec")]
        ),
        Some(1.0)
    );
    let len: usize = r
        .head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, r.body.len());

    let r = exchange(a, b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert!(r.head.contains(&format!("Content-Length: {len}")));

    let r = get(a, "/secret");
    assert_eq!(r.status, 404);
    let r = exchange(a, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").unwrap();
    assert_eq!(r.status, 405);
    assert!(r.head.contains("Allow: GET, HEAD"));
    let r = exchange(a, b"hello\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    // A bare-LF client is understood.
    let r = exchange(a, b"GET /healthz HTTP/1.0\n\n").unwrap();
    assert_eq!(r.status, 200);
    srv.stop();
}

#[test]
fn probes_flip_on_rejected_key_backend_outage_and_stalled_follower() {
    let m = ready_metrics();
    let srv = start(&m, Limits::default());
    let a = srv.local_addr();
    assert_eq!(get(a, "/readyz").status, 200);

    m.set_backend_status(401);
    m.set_backend_state(BackendState::Unauthorized);
    let r = get(a, "/readyz");
    assert_eq!(r.status, 503);
    assert!(
        r.body.starts_with("backend rejected the API key (401)"),
        "{}",
        r.body
    );
    assert_eq!(r.body.lines().count(), 1);

    m.set_backend_status(503);
    m.set_backend_state(BackendState::Failing);
    let r = get(a, "/readyz");
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .starts_with("backend failing (last status 503) since "),
        "{}",
        r.body
    );
    m.set_backend_state(BackendState::Ok);
    assert_eq!(get(a, "/readyz").status, 200);

    m.log_open.store(0, Ordering::Relaxed);
    let r = get(a, "/readyz");
    assert_eq!((r.status, r.body.as_str()), (503, "audit log not open\n"));
    m.log_open.store(1, Ordering::Relaxed);

    let now = metrics::now_unix_ms();
    m.follower.beat_at(now);
    m.sender.beat_at(now);
    assert_eq!(get(a, "/healthz").status, 200);
    m.follower.beat_at(now - 3 * metrics::STALL_AFTER_MS);
    let r = get(a, "/healthz");
    assert_eq!(r.status, 503);
    assert!(r.body.starts_with("follower stalled"), "{}", r.body);
    m.follower.beat();
    assert_eq!(get(a, "/healthz").status, 200);
    m.sender.beat_at(now - 3 * metrics::STALL_AFTER_MS);
    let r = get(a, "/healthz");
    assert_eq!(r.status, 503);
    assert!(r.body.starts_with("sender stalled"), "{}", r.body);
    m.sender.beat();
    assert_eq!(get(a, "/healthz").status, 200);
}

#[test]
fn oversized_requests_are_refused_and_the_server_keeps_serving() {
    let srv = start(&ready_metrics(), Limits::default());
    let a = srv.local_addr();

    // 16 KiB of headers without an end: fits in socket buffers, so the 431 must arrive.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() < 16 * 1024 {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let r = exchange(a, &big).unwrap();
    assert_eq!(r.status, 431);

    // 1 MB: the server refuses after 8 KiB; the client sees the 431 or, at worst, a reset —
    // never a hang, and the server stays healthy.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(1024 * 1024, b'a');
    match exchange(a, &huge) {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    assert_eq!(get(a, "/healthz").status, 200);
    assert_eq!(get(a, "/readyz").status, 200);
}

#[test]
fn a_slow_loris_neither_blocks_others_nor_keeps_its_connection() {
    let limits = Limits {
        head_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let srv = start(&ready_metrics(), limits);
    let a = srv.local_addr();

    let slow = TcpStream::connect(a).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = slow.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        buf
    });
    let writing = std::thread::spawn(move || {
        let mut w = &slow;
        // One byte per 500 ms of a head that never ends, for at most 20 bytes (10 s). Each byte
        // resets a per-read timeout, so only a deadline for the whole head stops it: the
        // writer must see the server close the connection before it runs out of bytes.
        let head = b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaa";
        for b in head.iter().take(20) {
            if w.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    });
    // Meanwhile others are served.
    for _ in 0..3 {
        assert_eq!(get(a, "/healthz").status, 200);
    }
    let buf = reading.join().unwrap();
    assert!(
        writing.join().unwrap(),
        "the server kept a trickling client"
    );
    let r = parse_reply(&buf).unwrap();
    assert_eq!(r.status, 408, "{}", r.head);
}

/// Issue 17: a full table never refuses the newcomer (a probe): the oldest connection that
/// has not been answered makes room (it is told 503 and closed), first within the newcomer's
/// own peer address, then overall.
#[test]
fn a_full_server_evicts_its_oldest_unanswered_connection_for_a_new_probe() {
    let limits = Limits {
        max_connections: 2,
        head_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let srv = start(&ready_metrics(), limits);
    let a = srv.local_addr();
    let read_all = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        parse_reply(&buf).unwrap()
    };
    let idle1 = TcpStream::connect(a).unwrap();
    let idle2 = TcpStream::connect(a).unwrap();
    // Both idle connections hold the two places; the probe still gets its answer...
    assert_eq!(get(a, "/healthz").status, 200);
    // ... because the oldest idle connection was told why it was closed.
    let r = read_all(idle1);
    assert_eq!((r.status, r.body.as_str()), (503, "too many connections\n"));
    // And the next probe too (the server makes room again: an answered connection still
    // lingering, or the next oldest idle one).
    assert_eq!(get(a, "/readyz").status, 200);
    drop(idle2);

    // Per peer: one address holds at most max_per_peer places, its own oldest making room.
    let limits = Limits {
        max_connections: 64,
        max_per_peer: 3,
        head_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let srv = start(&ready_metrics(), limits);
    let a = srv.local_addr();
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(a).unwrap()).collect();
    assert_eq!(get(a, "/healthz").status, 200);
    let mut idle = idle.into_iter();
    assert_eq!(read_all(idle.next().unwrap()).status, 503);
}

#[test]
fn bind_errors_name_the_address_and_stop_frees_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = health::spawn_with(&addr, leak(Metrics::new()), Limits::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&addr), "{msg}");
    assert!(msg.contains("another process"), "{msg}");
    let e = health::spawn("no-port-here", leak(Metrics::new())).unwrap_err();
    assert!(
        e.to_string().contains("HEALTH_ADDR=\"no-port-here\""),
        "{e}"
    );
    drop(taken);

    let srv = start(&leak(Metrics::new()), Limits::default());
    let a = srv.local_addr();
    assert_eq!(get(a, "/healthz").status, 200);
    srv.stop();
    // The listener is gone: the port can be bound again.
    std::net::TcpListener::bind(a).unwrap();
}

#[test]
fn the_global_server_serves_the_global_metrics() {
    let srv = health::spawn("127.0.0.1:0", leak(Metrics::new())).unwrap();
    let r = get(srv.local_addr(), "/metrics");
    assert_eq!(r.status, 200);
    parse_exposition(&r.body).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Signals, in a child copy of this test binary: the handlers change process-wide dispositions.

const SIGNAL_CHILD_ENV: &str = "HEALERT_OPS_SIGNAL_CHILD";

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    support::wait_until(Duration::from_secs(10), what, cond, String::new);
}

fn kill(sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(std::process::id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
#[ignore = "helper: run only by signals_are_counted_and_not_fatal in a child process"]
fn signal_child() {
    if std::env::var_os(SIGNAL_CHILD_ENV).is_none() {
        return;
    }
    use healert_agent::operate::signal;
    signal::install().unwrap();
    assert_eq!(signal::terminate_requests(), 0);
    assert!(!signal::take_reload());

    kill("TERM");
    wait_until("SIGTERM", || signal::terminate_requests() == 1);
    kill("HUP");
    wait_until("SIGHUP", || signal::reload_requests() == 1);
    assert!(signal::take_reload());
    assert!(!signal::take_reload());
    kill("INT");
    wait_until("SIGINT", || signal::terminate_requests() == 2);
    kill("HUP");
    wait_until("second SIGHUP", || signal::reload_requests() == 2);
    assert!(signal::take_reload());
    // Still alive after two terminate requests: stopping is the agent's decision.
    println!(
        "SIGNALS-OK term={} reloads={}",
        signal::terminate_requests(),
        signal::reload_requests()
    );
}

#[test]
fn signals_are_counted_and_not_fatal() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "ops::signal_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SIGNAL_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SIGNALS-OK term=2 reloads=2"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[test]
fn json_logs_parse_line_by_line_and_stay_one_line() {
    use healert_agent::operate::log::{self, Format, Level};
    let hostile = "evil\n{\"level\":\"error\"}\r\u{1b}[31m\u{85}\"\\";
    let mut out = String::new();
    out.push_str(&log::render(
        Level::Warn,
        Format::Json as u8,
        "2026-01-01T00:00:00.000Z",
        &hostile,
        &[
            ("actor", &hostile),
            ("status", &503),
            ("key", &log::Redacted("s3cr3t")),
        ],
    ));
    let ev = healert_agent::detect::event::FrictionEvent {
        entity_ref: "component:ns/app".into(),
        kind: "kubectl-exec".into(),
        severity: healert_agent::detect::rules::Severity::Medium,
        actor: hostile.into(),
        workflow: String::new(),
        description: String::new(),
        timestamp: String::new(),
        namespace: "ns".into(),
        service: "app".into(),
        repeat: Default::default(),
    };
    // The record the sender writes for a delivered event (`[201] type=... actor=...`).
    let delivered = |format: Format| {
        log::render(
            Level::Info,
            format as u8,
            "2026-01-01T00:00:00.000Z",
            &"[201]",
            &[
                ("type", &ev.kind),
                ("severity", &ev.severity),
                ("actor", &ev.actor),
                ("ns", &ev.namespace),
            ],
        )
    };
    out.push_str(&delivered(Format::Json));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for k in ["ts", "level", "msg"] {
            assert!(v[k].is_string(), "{k} missing in {line}");
        }
    }
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["level"], "warn");
    assert_eq!(first["status"], "503");
    assert_eq!(first["key"], "<redacted, 6 bytes>");
    assert!(!lines[0].contains("s3cr3t"));
    let actor = first["actor"].as_str().unwrap();
    assert!(!actor.chars().any(char::is_control), "{actor:?}");
    let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(second["msg"], "[201]");
    assert_eq!(second["type"], "kubectl-exec");
    assert_eq!(second["severity"], "medium");

    // Text: one line per record too, whatever the values.
    let t = delivered(Format::Text);
    assert_eq!(t.lines().count(), 1);
    assert!(t.starts_with(
        "2026-01-01T00:00:00.000Z INFO  [201] type=kubectl-exec severity=medium actor="
    ));
}

#[test]
fn serves_on_ipv6_loopback_and_stops() {
    let m = leak(Metrics::new());
    let srv = match health::spawn_with("[::1]:0", m, Limits::default()) {
        Ok(s) => s,
        // Not a silent pass: a host without IPv6 loopback cannot run this check, and says so.
        Err(e) => panic!(
            "this test serves on the IPv6 loopback [::1] and cannot run without it ({e}); \
             enable IPv6 on `lo` (sysctl net.ipv6.conf.lo.disable_ipv6=0)"
        ),
    };
    let a = srv.local_addr();
    assert!(a.is_ipv6());
    assert_eq!(get(a, "/healthz").status, 200);
    srv.stop();
    std::net::TcpListener::bind(a).unwrap();
}
