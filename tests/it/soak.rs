//! The soak test of issue 8 (ignored by default; run it explicitly, it takes ~6 minutes;
//! `.ci/run` runs a 60-second one):
//!
//! ```sh
//! cargo test --release --test it soak -- --ignored --nocapture      # SOAK_SECS=60 for a short one
//! ```
//!
//! It drives the real binary (`healert-agent run`) for SOAK_SECS (default 300) against a
//! writer of 2 000 lines/s (tests/it/gen.rs, 1 % friction) that rotates the log by rename every
//! 20 MB, and against a loopback backend written here that goes down (connections refused,
//! open ones dropped) for 10 s every minute and answers 429 with Retry-After in bursts. At the
//! end every expected friction event must have arrived exactly once (identified by rule and
//! requestReceivedTimestamp, which the generator makes unique), nothing unexpected arrived,
//! every request carried the bearer key, the agent's peak RSS stayed under the documented 5 MB
//! (plus a 1 MiB margin) and its RSS did not grow. The drain waits for the agent's checkpoint
//! at the end of the live file (everything read and acknowledged), never a fixed time. A run too
//! short to see a rotation, an outage and 429s fails (SOAK_SECS >= 45).
//!
//! The backend is its own small sink (not `sink.rs`) because it needs outage and 429 control
//! that only this test uses.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::gen::{GenOptions, Generator};
use crate::support;

const API_KEY: &str = "soak-key-4f1c9e2a7b";
const LINES_PER_SEC: u64 = 2_000;
const ROTATE_BYTES: u64 = 20_000_000;
const OUTAGE_EVERY: Duration = Duration::from_secs(60);
const OUTAGE_FOR: Duration = Duration::from_secs(10);
/// 429 bursts: for 3 s out of every 17 s (outside outages).
const THROTTLE_EVERY: Duration = Duration::from_secs(17);
const THROTTLE_FOR: Duration = Duration::from_secs(3);

/// README "Performance": peak RSS on ordinary logs at most 5 MB; margin 1 MiB.
const MAX_HWM_KIB: u64 = 5_000_000 / 1024 + 1024;

/// What the chaos backend saw.
#[derive(Default)]
struct Seen {
    /// (type, timestamp) → how many times it was accepted with 200.
    accepted: HashMap<(String, String), u32>,
    answered_429: u64,
    /// Outages begun (the listener closed).
    outages: u64,
    bad_auth: u64,
    bad_json: u64,
}

/// A loopback backend with scheduled outages and 429 bursts.
struct ChaosSink {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ChaosSink {
    fn start(t0: Instant) -> ChaosSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, st) = (seen.clone(), connections.clone(), stop.clone());
        let thread = thread::spawn(move || accept_loop(listener, port, t0, s, c, st));
        ChaosSink {
            port,
            seen,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn accepted_total(&self) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .accepted
            .values()
            .map(|n| *n as u64)
            .sum()
    }
}

impl Drop for ChaosSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Down during [k·60 s + 30 s, k·60 s + 40 s): the first outage comes after a normal start.
fn is_down(t0: Instant) -> bool {
    let e = t0.elapsed().as_millis() as u64 % OUTAGE_EVERY.as_millis() as u64;
    let start = 30_000;
    e >= start && e < start + OUTAGE_FOR.as_millis() as u64
}

fn is_throttled(t0: Instant) -> bool {
    let e = t0.elapsed().as_millis() as u64 % THROTTLE_EVERY.as_millis() as u64;
    e < THROTTLE_FOR.as_millis() as u64 && !is_down(t0)
}

fn accept_loop(
    listener: TcpListener,
    port: u16,
    t0: Instant,
    seen: Arc<Mutex<Seen>>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut listener = Some(listener);
    while !stop.load(Ordering::Relaxed) {
        if is_down(t0) {
            // Refuse new connections: close the listening socket until the outage ends.
            if listener.take().is_some() {
                seen.lock().unwrap().outages += 1;
            }
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => {
                // Back up: bind the same port again (loopback, just released by us).
                match TcpListener::bind(("127.0.0.1", port)) {
                    Ok(l) => {
                        l.set_nonblocking(true).unwrap();
                        listener.insert(l)
                    }
                    Err(_) => {
                        thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
        };
        match l.accept() {
            Ok((conn, _)) => {
                connections.fetch_add(1, Ordering::Relaxed);
                let (s, st) = (seen.clone(), stop.clone());
                thread::spawn(move || serve(conn, t0, s, st));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(conn: TcpStream, t0: Instant, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        if stop.load(Ordering::Relaxed) || is_down(t0) {
            return; // an outage drops open connections too
        }
        let mut request_line = String::new();
        match r.read_line(&mut request_line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        if request_line.trim().is_empty() {
            continue;
        }
        let (mut len, mut auth_ok, mut close) = (0usize, false, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => len = value.parse().unwrap_or(0),
                "authorization" => auth_ok = value == format!("Bearer {API_KEY}"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0; len.min(16 << 20)];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let is_events = request_line.starts_with("POST") && request_line.contains("/events");
        let response: String = if !is_events {
            "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}".into()
        } else if is_throttled(t0) {
            seen.lock().unwrap().answered_429 += 1;
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n".into()
        } else {
            let mut s = seen.lock().unwrap();
            if !auth_ok {
                s.bad_auth += 1;
            }
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) => {
                    let items = match v {
                        serde_json::Value::Array(a) => a,
                        other => vec![other],
                    };
                    for e in items {
                        let k = (
                            e["type"].as_str().unwrap_or("").to_string(),
                            e["timestamp"].as_str().unwrap_or("").to_string(),
                        );
                        *s.accepted.entry(k).or_insert(0) += 1;
                    }
                }
                Err(_) => s.bad_json += 1,
            }
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}".into()
        };
        if w.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The repository's rules with repeat suppression off (`SUPPRESS_WINDOW=0` below): the soak
/// checks that every match is delivered exactly once, as its oracle (`gen`) counts them.
fn unsuppressed_rules(dir: &Path) -> PathBuf {
    let p = dir.join("rules-unsuppressed.yaml");
    crate::gen::rules_without_suppression(&support::repo_rules(), &p).unwrap();
    p
}

fn start_agent(dir: &Path, log: &Path, backend: &str) -> Child {
    let mut c = Command::new(support::bin());
    for (name, _, _) in healert_agent::config::VARS {
        c.env_remove(name);
    }
    c.arg("run")
        .env("HEALERT_BACKEND_URL", backend)
        .env("HEALERT_API_KEY", API_KEY)
        .env("AUDIT_LOG_PATH", log)
        .env("RULES_PATH", unsuppressed_rules(dir))
        .env("SUPPRESS_WINDOW", "0")
        .env("START_AT", "beginning")
        .env("CHECKPOINT_PATH", dir.join("checkpoint"))
        .env("HTTP_TIMEOUT", "2s")
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("agent.stderr")).unwrap())
        .spawn()
        .unwrap()
}

/// Kills the agent however the test ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "soak test: ~6 minutes at 2 000 lines/s; run with --ignored (SOAK_SECS to shorten)"]
fn soak_rotation_outages_and_429_exactly_once() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("healert-soak-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let log: PathBuf = dir.join("audit.log");
    File::create(&log).unwrap();

    let t0 = Instant::now();
    let sink = ChaosSink::start(t0);
    let mut agent = Agent(start_agent(&dir, &log, &sink.url()));
    let pid = agent.0.id();
    // Up once it saved its first checkpoint (the follower has looked at the empty file).
    let stderr_text = || fs::read_to_string(dir.join("agent.stderr")).unwrap_or_default();
    support::wait_until(
        Duration::from_secs(60),
        "the agent's first checkpoint",
        || {
            if let Ok(Some(st)) = agent.0.try_wait() {
                panic!("the agent exited at start ({st}): {}", stderr_text());
            }
            support::read_checkpoint(&dir.join("checkpoint")).is_some()
        },
        stderr_text,
    );

    // The writer: 2 000 lines/s in 10 ms slices, rename rotation every 20 MB.
    let mut g = Generator::new(GenOptions {
        seed: 777,
        lines: u64::MAX,
        match_fraction: 0.01,
        body_fraction: 0.05,
        start_unix_micros: Some(1_767_225_600_000_000), // 2026-01-01
        ..GenOptions::default()
    });
    let mut out = OpenOptions::new().append(true).open(&log).unwrap();
    let mut in_file = 0u64;
    let mut rotations = 0u32;
    let mut rss: Vec<(f64, u64)> = Vec::new();
    let mut next_sample = Instant::now();
    let mut buf = Vec::with_capacity(1 << 20);
    let end = t0 + Duration::from_secs(secs);
    let mut written = 0u64;
    while Instant::now() < end {
        let due = (t0.elapsed().as_secs_f64() * LINES_PER_SEC as f64) as u64;
        buf.clear();
        while written < due {
            g.next_line(&mut buf);
            written += 1;
        }
        out.write_all(&buf).unwrap();
        in_file += buf.len() as u64;
        if in_file >= ROTATE_BYTES {
            // kube-apiserver's lumberjack: rename, then a new file at the old name. Keep two
            // rotated files (the agent has long finished them), delete older ones.
            rotations += 1;
            fs::rename(&log, dir.join(format!("audit.log.{rotations}"))).unwrap();
            if rotations > 2 {
                let _ = fs::remove_file(dir.join(format!("audit.log.{}", rotations - 2)));
            }
            out = File::create(&log).unwrap();
            in_file = 0;
        }
        if Instant::now() >= next_sample {
            if let Some(kb) = vm_rss_kb(pid) {
                rss.push((t0.elapsed().as_secs_f64(), kb));
            }
            next_sample += Duration::from_secs(5);
        }
        if let Ok(Some(st)) = agent.0.try_wait() {
            panic!(
                "the agent died after {:.0} s ({st}): {}",
                t0.elapsed().as_secs_f64(),
                fs::read_to_string(dir.join("agent.stderr")).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    drop(out);
    let summary = g.into_summary();
    let expected = summary.expected;
    eprintln!(
        "soak: wrote {} lines ({} MB) in {} s, {} rotations, {} events expected",
        summary.lines,
        summary.bytes / 1_000_000,
        secs,
        rotations,
        expected.len()
    );

    // Drain (outages may still be scheduled): until everything arrived and the checkpoint is
    // at the end of the live file — the agent read all and every event was acknowledged, so a
    // late duplicate would have arrived by then. Bounded: a hang guard, not a timing check.
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let cp = dir.join("checkpoint");
    while !(sink.accepted_total() >= expected.len() as u64
        && support::checkpoint_at_end(&cp, &log, None))
    {
        if Instant::now() > drain_deadline {
            break; // reported below as missing events (or as the checkpoint never at the end)
        }
        thread::sleep(Duration::from_millis(50));
    }
    let caught_up = support::checkpoint_at_end(&cp, &log, None);
    if let Some(kb) = vm_rss_kb(pid) {
        rss.push((t0.elapsed().as_secs_f64(), kb));
    }
    let hwm = support::peak_rss_kb(pid).expect("VmHWM of the agent");

    let seen = sink.seen.lock().unwrap();
    let mut missing = Vec::new();
    let mut duplicated = Vec::new();
    for e in &expected {
        match seen
            .accepted
            .get(&(e.rule.to_string(), e.timestamp.clone()))
        {
            None => missing.push((e.rule, e.timestamp.clone())),
            Some(1) => {}
            Some(n) => duplicated.push((e.rule, e.timestamp.clone(), *n)),
        }
    }
    let expected_keys: std::collections::HashSet<(String, String)> = expected
        .iter()
        .map(|e| (e.rule.to_string(), e.timestamp.clone()))
        .collect();
    let unexpected: Vec<_> = seen
        .accepted
        .keys()
        .filter(|k| !expected_keys.contains(*k))
        .take(5)
        .collect();
    eprintln!(
        "soak: accepted {} distinct events, {} 429 answers, {} outage(s), {} connections, peak \
         RSS {hwm} KB, RSS samples (s, KB): {:?}",
        seen.accepted.len(),
        seen.answered_429,
        seen.outages,
        sink.connections.load(Ordering::Relaxed),
        rss
    );
    assert!(
        rotations >= 1,
        "the writer never rotated (SOAK_SECS={secs})"
    );
    assert!(seen.answered_429 > 0, "the 429 bursts were never exercised");
    assert!(
        seen.outages >= 1,
        "no outage happened (the first is 30 s in; SOAK_SECS={secs})"
    );
    assert_eq!(seen.bad_auth, 0, "requests without the bearer key");
    assert_eq!(seen.bad_json, 0, "request bodies that are not JSON");
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "{} events arrived more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(
        unexpected.is_empty(),
        "events nobody expected: {unexpected:?}"
    );
    assert!(
        caught_up,
        "the checkpoint never reached the end of the live file: {:?}",
        support::read_checkpoint(&cp)
    );
    assert!(
        hwm <= MAX_HWM_KIB,
        "peak RSS {hwm} KB over {MAX_HWM_KIB} KB (documented 5 MB + 1 MiB)"
    );

    // RSS did not grow: the last sample is within 2 MB (+10 %) of the largest sample of the
    // first minute after warm-up (the queue may hold an outage's worth of events then too).
    let early: u64 = rss
        .iter()
        .filter(|(t, _)| *t >= 20.0 && *t <= 80.0)
        .map(|(_, kb)| *kb)
        .max()
        .expect("RSS samples between 20 s and 80 s");
    let last = rss.last().map_or(0, |(_, kb)| *kb);
    assert!(
        last <= early + early / 10 + 2048,
        "RSS grew from {early} KB (first minute) to {last} KB (end): {rss:?}"
    );
    drop(seen);
    drop(agent);
    let _ = fs::remove_dir_all(&dir);
}
