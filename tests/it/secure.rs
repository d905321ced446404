//! Issue 17 (the binary's side of the adversarial review) and issue 18 item 2 (the key checked
//! at start), through the real binary: every test starts `healert-agent` as a child process
//! (killed on drop) against the std-only [`Sink`] or a hostile loopback peer, and checks what
//! the agent did: probes answered, events delivered exactly once, files it created, what its
//! messages show.

use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ops::parse_exposition;
use crate::sink::Sink;
use crate::support::{
    self, assert_exactly_once, expected_exec, free_port, http_get, repo_rules, Proc, Reply, TempDir,
};

/// Hang guard for every wait (a loaded 2-core CI machine is slow, not stuck).
const GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The agent as a child process.

struct Agent {
    proc: Proc,
    stderr_path: PathBuf,
}

type Env = Vec<(String, String)>;

/// A running agent's environment: `backend`, `log`, the repository's rules, fast polling.
fn env(backend: &str, log: &Path, extra: &[(&str, &str)]) -> Env {
    let mut env: Env = vec![
        ("HEALERT_BACKEND_URL".into(), backend.to_string()),
        ("AUDIT_LOG_PATH".into(), log.display().to_string()),
        ("RULES_PATH".into(), repo_rules().display().to_string()),
        ("POLL_INTERVAL".into(), "20ms".into()),
        ("START_AT".into(), "beginning".into()),
        ("SHUTDOWN_GRACE".into(), "2s".into()),
    ];
    for (k, v) in extra {
        env.retain(|(n, _)| n != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// `program` with none of the agent's variables inherited, in `dir`, with `env`.
fn command_for(program: &Path, dir: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new(program);
    for (name, _, _) in healert_agent::config::VARS {
        c.env_remove(name);
    }
    c.env_remove("HEALERT_MODE");
    c.current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// The binary (see [`command_for`]).
fn command(dir: &Path, env: &[(String, String)]) -> Command {
    command_for(&support::bin(), dir, env)
}

impl Agent {
    /// `healert-agent run` (under `umask`, when given); stderr to `<dir>/<label>.stderr`.
    fn start_umask(
        dir: &TempDir,
        label: &str,
        env: &[(String, String)],
        umask: Option<&str>,
    ) -> Agent {
        let stderr_path = dir.join(&format!("{label}.stderr"));
        let err = File::create(&stderr_path).unwrap();
        let mut cmd = match umask {
            None => command(dir.path(), env),
            Some(mask) => {
                // `exec` keeps the pid, so signals reach the agent itself.
                let mut c = command_for(Path::new("sh"), dir.path(), env);
                c.arg("-c")
                    .arg(format!("umask {mask} && exec \"$0\" run"))
                    .arg(support::bin());
                c
            }
        };
        if umask.is_none() {
            cmd.arg("run");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        Agent {
            proc: Proc::new(child),
            stderr_path,
        }
    }

    fn start(dir: &TempDir, label: &str, env: &[(String, String)]) -> Agent {
        Agent::start_umask(dir, label, env, None)
    }

    /// With a health server on a free loopback port (retried if another process took it).
    fn start_with_health(
        dir: &TempDir,
        label: &str,
        env: &[(String, String)],
    ) -> (Agent, SocketAddr) {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut env = env.to_vec();
            env.push(("HEALTH_ADDR".into(), addr.to_string()));
            let mut a = Agent::start(dir, label, &env);
            let deadline = Instant::now() + GUARD;
            loop {
                if let Some(st) = a.proc.try_wait() {
                    let err = a.stderr();
                    assert!(
                        err.contains("cannot serve health"),
                        "agent exited ({st}):\n{err}"
                    );
                    break;
                }
                if http_get(addr, "/healthz").is_ok() {
                    return (a, addr);
                }
                assert!(
                    Instant::now() < deadline,
                    "no health server:\n{}",
                    a.stderr()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free port for HEALTH_ADDR after 5 tries");
    }

    fn stderr(&self) -> String {
        support::read_lossy(&self.stderr_path)
    }

    /// Waits until stderr contains `needle` (hang guard).
    fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + GUARD;
        loop {
            let err = self.stderr();
            if err.contains(needle) {
                return err;
            }
            if let Some(st) = self.proc.try_wait() {
                let err = self.stderr();
                assert!(
                    err.contains(needle),
                    "agent exited ({st}) before logging {needle:?}:\n{err}"
                );
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in stderr after {GUARD:?}:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let path = self.stderr_path.clone();
        self.proc.wait_exit(GUARD, || {
            format!("agent stderr:\n{}", support::read_lossy(&path))
        })
    }

    /// SIGTERM, a clean exit, the whole stderr.
    fn stop(&mut self) -> String {
        self.proc.signal("TERM");
        let st = self.wait_exit();
        let err = self.stderr();
        assert_eq!(st.code(), Some(0), "agent exit status {st}:\n{err}");
        err
    }

    /// Polls `GET path` until `cond` holds (hang guard).
    fn wait_http(&mut self, addr: SocketAddr, path: &str, cond: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(st) = self.proc.try_wait() {
                panic!("agent exited ({st}):\n{}", self.stderr());
            }
            let last = match http_get(addr, path) {
                Ok(r) if cond(&r) => return r,
                Ok(r) => format!("{} {}", r.status, r.body),
                Err(e) => format!("error: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "GET {path}: not as expected after {GUARD:?}; last: {last}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Runs the binary to its exit (a refusal at start): (exit code, stderr).
fn run_to_exit(dir: &TempDir, env: &[(String, String)]) -> (Option<i32>, String) {
    let mut a = Agent::start(dir, "refused", env);
    let st = a.wait_exit();
    (st.code(), a.stderr())
}

fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = http_get(addr, "/metrics").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let e = parse_exposition(&r.body).unwrap_or_else(|e| panic!("bad exposition: {e}\n{}", r.body));
    e.value(name, labels).unwrap_or(0.0)
}

fn actor(token: &str) -> String {
    format!("u-{token}@example.com")
}

/// `n` kubectl-exec lines by `u-<prefix><i>`; returns the tokens.
fn exec_lines(log: &Path, prefix: &str, n: usize) -> Vec<String> {
    let toks: Vec<String> = (0..n).map(|i| format!("{prefix}{i:03}")).collect();
    let mut text = String::new();
    for t in &toks {
        text.push_str(&support::exec_line(&actor(t)));
        text.push('\n');
    }
    support::append(log, &text);
    toks
}

fn quiet_line() -> String {
    support::list_configmaps_line("system:serviceaccount:kube-system:foo") + "\n"
}

fn wait_events(sink: &Sink, n: usize, agent: &Agent) {
    assert!(
        sink.wait_for_events(n, GUARD),
        "{} of {n} events at the sink:\n{}",
        sink.events().len(),
        agent.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 1: probes that cannot be starved.

/// 32 clients trickling one byte at a time into never-ending request heads (reconnecting as
/// soon as the server drops them) while 20 `/healthz` probes are made: every probe is
/// answered 200.
#[test]
fn every_healthz_probe_is_answered_200_while_32_clients_trickle_on_the_health_port() {
    let dir = TempDir::new("secure", "trickle");
    let log = dir.log();
    support::append(&log, &quiet_line());
    let sink = Sink::start();
    let (mut a, addr) = Agent::start_with_health(&dir, "run", &env(&sink.url(), &log, &[]));
    a.wait_http(addr, "/readyz", |r| r.status == 200);

    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let tricklers: Vec<_> = (0..32)
        .map(|_| {
            let (stop, connected) = (Arc::clone(&stop), Arc::clone(&connected));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    connected.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
                    while !stop.load(Ordering::SeqCst) && s.write_all(b"a").is_ok() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    connected.fetch_sub(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    support::wait_until(
        GUARD,
        "32 trickling connections",
        || connected.load(Ordering::SeqCst) >= 32,
        || a.stderr(),
    );
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(match http_get(addr, "/healthz") {
            Ok(r) => format!("{} {}", r.status, r.body.trim()),
            Err(e) => format!("error: {e}"),
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in tricklers {
        t.join().unwrap();
    }
    let failed: Vec<&String> = answers.iter().filter(|a| *a != "200 ok").collect();
    assert!(
        failed.is_empty(),
        "{} of 20 probes failed: {answers:?}",
        failed.len()
    );
    // The agent itself was never disturbed.
    assert_eq!(http_get(addr, "/readyz").unwrap().status, 200);
    a.stop();
}

// ---------------------------------------------------------------------------------------------
// Finding 9: the follower does not wait for the startup check.

/// A backend that accepts connections (the kernel completes the handshake) and never answers,
/// with HTTP_TIMEOUT=60s: the follower reads and detects at once, /healthz stays 200, and a
/// SIGTERM still stops the agent.
#[test]
fn the_follower_starts_while_the_startup_check_waits_on_a_blackholed_backend() {
    let dir = TempDir::new("secure", "blackhole");
    let log = dir.log();
    support::append(&log, &quiet_line());
    let hole = TcpListener::bind("127.0.0.1:0").unwrap(); // never accepted
    let url = format!("http://{}", hole.local_addr().unwrap());
    let (mut a, addr) = Agent::start_with_health(
        &dir,
        "run",
        &env(
            &url,
            &log,
            &[("HTTP_TIMEOUT", "60s"), ("SHUTDOWN_GRACE", "1s")],
        ),
    );
    exec_lines(&log, "hole-", 3);
    let deadline = Instant::now() + GUARD;
    while metric(
        addr,
        "healert_agent_events_matched_total",
        &[("rule", "kubectl-exec")],
    ) < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "the follower did not detect the 3 lines while the backend check hangs:\n{}",
            a.stderr()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        metric(addr, "healert_agent_queue_depth", &[]),
        (3 * support::EXEC_TYPES.len()) as f64
    );
    let h = http_get(addr, "/healthz").unwrap();
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let err = a.stop();
    assert!(err.contains("checking the backend"), "{err}");
    drop(hole);
}

// ---------------------------------------------------------------------------------------------
// Finding 2: 404 and other "wrong address" answers are retried, never dead-lettered.

/// A backend path answering 404 for a while: /readyz and /metrics say so, the log says what
/// to check, the checkpoint stays before the first event, nothing is dead-lettered, and once
/// it answers 200 every event arrives once.
#[test]
fn a_404_is_retried_shown_in_readyz_and_metrics_and_loses_nothing() {
    let dir = TempDir::new("secure", "404");
    let log = dir.log();
    let quiet = quiet_line();
    support::append(&log, &quiet);
    let cp = dir.join("checkpoint");
    let dl = dir.join("dead-letter.jsonl");
    let sink = Sink::builder()
        .status_for(404, Duration::from_secs(3))
        .start();
    let (cp_s, dl_s) = (cp.display().to_string(), dl.display().to_string());
    let (mut a, addr) = Agent::start_with_health(
        &dir,
        "run",
        &env(
            &sink.url(),
            &log,
            &[("CHECKPOINT_PATH", &cp_s), ("DEAD_LETTER_PATH", &dl_s)],
        ),
    );
    let toks = exec_lines(&log, "nf-", 3);
    let r = a.wait_http(addr, "/readyz", |r| {
        r.status == 503 && r.body.contains("404")
    });
    assert!(r.body.contains("HEALERT_BACKEND_URL"), "{}", r.body);
    assert_eq!(
        metric(
            addr,
            "healert_agent_backend_state",
            &[("state", "refusing")]
        ),
        1.0
    );
    a.wait_log("check HEALERT_BACKEND_URL's base path");
    // Nothing acknowledged: the checkpoint (if written yet) is at the first exec line.
    if let Ok(text) = fs::read_to_string(&cp) {
        if sink.events().is_empty() {
            assert!(
                text.contains(&format!("\noffset={}\n", quiet.len())),
                "{text}"
            );
        }
    }
    wait_events(&sink, 3 * support::EXEC_TYPES.len(), &a);
    a.wait_http(addr, "/readyz", |r| r.status == 200);
    let err = a.stop();
    assert_exactly_once(
        &[&sink],
        &expected_exec(toks.iter().map(|t| actor(t))),
        &err,
    );
    assert!(!dl.exists(), "dead-lettered:\n{}", support::read_lossy(&dl));
    assert!(sink.statuses().iter().filter(|s| **s == 404).count() >= 2);
}

// ---------------------------------------------------------------------------------------------
// Finding 3: a connection with unread bytes after a response is not reused.

/// A peer that sends an extra, unrequested `400` right behind its first `200`: no event is
/// dead-lettered for an answer it never got, every event arrives once, and the discarded
/// connection is counted.
#[test]
fn a_stray_response_after_an_answer_is_never_taken_for_the_next_one() {
    let dir = TempDir::new("secure", "stray");
    let log = dir.log();
    let dl = dir.join("dead-letter.jsonl");
    let dl_s = dl.display().to_string();
    let sink = Sink::builder().stray_response_after_first().start();
    let (mut a, addr) = Agent::start_with_health(
        &dir,
        "run",
        &env(&sink.url(), &log, &[("DEAD_LETTER_PATH", &dl_s)]),
    );
    let toks = exec_lines(&log, "stray-", 3);
    wait_events(&sink, 3 * support::EXEC_TYPES.len(), &a);
    let discarded = metric(
        addr,
        "healert_agent_backend_connections_discarded_total",
        &[],
    );
    let err = a.stop();
    assert_exactly_once(
        &[&sink],
        &expected_exec(toks.iter().map(|t| actor(t))),
        &err,
    );
    assert!(!dl.exists(), "dead-lettered:\n{}", support::read_lossy(&dl));
    assert!(!err.contains("not for you"), "{err}");
    assert_eq!(discarded, 1.0, "{err}");
    assert!(
        sink.statuses().iter().all(|s| *s == 200),
        "{:?}",
        sink.statuses()
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 7: files the agent creates.

/// Under umask 000 the checkpoint and the dead-letter file are 0600; a symlink planted at
/// `<checkpoint>.tmp` is not followed (its target is untouched, the checkpoint is a regular
/// file); a symlink planted at DEAD_LETTER_PATH is refused with a message.
#[test]
fn files_are_0600_under_umask_000_and_planted_symlinks_are_not_followed() {
    let dir = TempDir::new("secure", "files");
    let log = dir.log();
    let cp = dir.join("checkpoint");
    let dl = dir.join("dead-letter.jsonl");
    let victim = dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("checkpoint.tmp")).unwrap();
    let sink = Sink::builder().reject_containing("rejected-", 422).start();
    let (cp_s, dl_s) = (cp.display().to_string(), dl.display().to_string());
    let e = env(
        &sink.url(),
        &log,
        &[("CHECKPOINT_PATH", &cp_s), ("DEAD_LETTER_PATH", &dl_s)],
    );
    let mut a = Agent::start_umask(&dir, "run", &e, Some("000"));
    exec_lines(&log, "rejected-", 1);
    let toks = exec_lines(&log, "kept-", 1);
    wait_events(&sink, support::EXEC_TYPES.len(), &a);
    support::wait_until(GUARD, "a checkpoint", || cp.exists(), || a.stderr());
    let err = a.stop();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n", "{err}");
    for (what, p) in [("checkpoint", &cp), ("dead-letter file", &dl)] {
        let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{what}: {e}\n{err}"));
        assert!(md.file_type().is_file(), "{what} is not a regular file");
        assert_eq!(
            md.permissions().mode() & 0o777,
            0o600,
            "{what} mode {:o}",
            md.mode()
        );
    }
    assert_eq!(
        support::read_lossy(&dl).lines().count(),
        support::EXEC_TYPES.len(),
        "{err}"
    );
    assert_exactly_once(
        &[&sink],
        &expected_exec(toks.iter().map(|t| actor(t))),
        &err,
    );
    assert!(!dir.join("checkpoint.tmp").exists());

    // A symlink at DEAD_LETTER_PATH: the agent refuses to write through it.
    let dl2 = dir.join("dead-letter-2.jsonl");
    let victim2 = dir.join("victim-2");
    fs::write(&victim2, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim2, &dl2).unwrap();
    let dl2_s = dl2.display().to_string();
    let log2 = dir.join("audit-2.log");
    let e = env(&sink.url(), &log2, &[("DEAD_LETTER_PATH", &dl2_s)]);
    let mut b = Agent::start(&dir, "run2", &e);
    exec_lines(&log2, "rejected-again-", 1);
    b.wait_log("cannot append to DEAD_LETTER_PATH");
    b.stop();
    assert_eq!(fs::read_to_string(&victim2).unwrap(), "precious\n");
}

// ---------------------------------------------------------------------------------------------
// Finding 8: bidirectional controls and line separators.

const SPOOF: &[char] = &[
    '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}',
    '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{2028}', '\u{2029}',
];

/// An actor name carrying every bidi control and line separator: neither the agent's log, nor
/// the payload the backend receives, nor `replay`'s output contains one of them raw; each shows
/// as a visible `\u{...}` escape.
#[test]
fn bidi_controls_and_line_separators_never_reach_logs_payloads_or_replay_output() {
    let dir = TempDir::new("secure", "bidi");
    let log = dir.log();
    let evil: String = std::iter::once("eve")
        .chain(
            SPOOF
                .iter()
                .map(|c| c.encode_utf8(&mut [0; 4]).to_string())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )
        .chain(std::iter::once("gpj.exe"))
        .collect();
    // JSON escapes in the audit line, as kube-apiserver writes non-ASCII.
    let escaped: String = evil
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect();
    support::append(&log, &(support::exec_line(&escaped) + "\n"));

    let sink = Sink::start();
    let mut a = Agent::start(&dir, "run", &env(&sink.url(), &log, &[]));
    wait_events(&sink, support::EXEC_TYPES.len(), &a);
    let err = a.stop();
    let replay = command(dir.path(), &env(&sink.url(), &log, &[]))
        .arg("replay")
        .arg(&log)
        .output()
        .unwrap();
    let out = String::from_utf8(replay.stdout).unwrap();
    let payloads = sink.events().join("\n");
    let decoded: Vec<String> = sink
        .events_json()
        .iter()
        .map(|v| v["actor"].as_str().unwrap().to_string())
        .collect();
    for (what, text) in [
        ("agent log", &err),
        ("payload", &payloads),
        ("decoded actor", &decoded.join("\n")),
        ("replay output", &out),
    ] {
        for c in SPOOF {
            assert!(
                !text.contains(*c),
                "{what} contains U+{:04X} raw:\n{text}",
                *c as u32
            );
        }
    }
    assert!(
        decoded[0].starts_with("eve\\u{202a}\\u{202b}"),
        "{decoded:?}"
    );
    assert!(decoded[0].ends_with("\\u{2029}gpj.exe"), "{decoded:?}");
    assert!(err.contains("\\u{202e}"), "{err}");

    // validate: a workflow name from a rules file.
    let rules = dir.join("rules.yaml");
    fs::write(
        &rules,
        "rules:\n  - name: spoof\n    match:\n      verb: create\n    severity: low\n    workflow: \"de\u{202e}bug\u{2028}\"\n    description: \"x\"\n",
    )
    .unwrap();
    let v = command(dir.path(), &[])
        .arg("validate")
        .arg(&rules)
        .output()
        .unwrap();
    let vout =
        String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(vout.contains("de\\u{202e}bug\\u{2028}"), "{vout}");
    for c in SPOOF {
        assert!(
            !vout.contains(*c),
            "validate output contains U+{:04X} raw:\n{vout}",
            *c as u32
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 10: no password from a URL in any message.

#[test]
fn a_url_with_a_password_is_refused_without_showing_the_password() {
    let dir = TempDir::new("secure", "userinfo");
    let log = dir.log();
    for url in [
        "http://u:Pw5ecr3tXy@backend:8000",
        "http://u:Pw5ecr3tXy@backend:99999",
        "http://u:Pw5/ecr3tXy@backend:8000",
        "ftp://u:Pw5ecr3tXy@backend",
        "https://u:Pw5ecr3tXy@backend",
    ] {
        for format in ["text", "json"] {
            let (code, err) = run_to_exit(&dir, &env(url, &log, &[("LOG_FORMAT", format)]));
            assert_eq!(code, Some(1), "{url}: {err}");
            assert!(err.contains("HEALERT_BACKEND_URL"), "{url}: {err}");
            for part in ["Pw5ecr3tXy", "Pw5", "ecr3tXy"] {
                assert!(
                    !err.contains(part),
                    "{url} ({format}): `{part}` shown:\n{err}"
                );
            }
            assert!(err.contains("u:***@backend"), "{url}: {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 11: impossible dates.

/// An audit line stamped with an impossible date (30 February, second 60) or an offset out
/// of range: the event keeps its place and is sent with the time it was processed, as when
/// the timestamp is missing.
#[test]
fn impossible_timestamps_are_replaced_by_the_processing_time() {
    let dir = TempDir::new("secure", "dates");
    let log = dir.log();
    let mut text = String::new();
    let bad = [
        "2025-02-30T23:59:59Z",
        "2025-01-01T23:59:60Z",
        "2025-02-30T23:59:60Z",
        "2023-02-29T10:00:00Z",
        "0000-01-01T00:00:00Z",
        "2025-01-01T00:00:00+24:00",
        "2025-01-01T00:00:00+05:60",
    ];
    for ts in bad {
        let line = support::exec_line(&actor("date")).replace("2026-11-25T10:00:00.000000Z", ts);
        assert!(line.contains(ts));
        text.push_str(&line);
        text.push('\n');
    }
    let good = support::exec_line(&actor("leap"))
        .replace("2026-11-25T10:00:00.000000Z", "2024-02-29T23:59:59.5+05:30");
    text.push_str(&good);
    text.push('\n');
    support::append(&log, &text);
    // Every line is judged on its own: repeats are not folded into one summary here.
    let out = command(dir.path(), &env("http://127.0.0.1:9", &log, &[]))
        .arg("replay")
        .arg("--no-suppress")
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let per = support::EXEC_TYPES.len();
    assert_eq!(events.len(), per * (bad.len() + 1), "{stdout}");
    let this_year = healert_agent::operate::clock::now_rfc3339()[..4].to_string();
    for (i, ev) in events.iter().enumerate() {
        let ts = ev["timestamp"].as_str().unwrap();
        if i / per < bad.len() {
            assert!(
                ts.starts_with(&this_year) && ts.ends_with('Z'),
                "{}: sent as {ts}",
                bad[i / per]
            );
        } else {
            assert_eq!(ts, "2024-02-29T23:59:59.5+05:30");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// https: the sidecar.

#[test]
fn an_https_url_is_refused_naming_the_tls_sidecar_and_its_docs() {
    let dir = TempDir::new("secure", "https");
    let (code, err) = run_to_exit(&dir, &env("https://healert.example.com", &dir.log(), &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "https is not supported by the binary itself: run the TLS sidecar (see docs/tls.md) \
             and point HEALERT_BACKEND_URL at it, e.g. http://127.0.0.1:8443"
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 18 item 2: the key is checked at start.

/// A wrong key is reported at start, before any event, with the fix for the mode the agent
/// runs in; /readyz says not ready; the check (`POST /events` with `{}`) stores nothing.
#[test]
fn a_wrong_key_is_reported_at_start_with_the_fix_for_local_daemonset_and_webhook_mode() {
    const RIGHT: &str = "right-key-8fQ2mZp0Lx";
    const WRONG: &str = "wrong-key-3nB7vR1sKc";
    let dir = TempDir::new("secure", "key-check");
    let log = dir.log();
    support::append(&log, &quiet_line());
    let sink = Sink::builder().api_key(RIGHT).start();
    for (mode, fix) in [
        ("local", "./healert.sh restart agent"),
        ("daemonset", "Secret healert-api-key"),
        ("webhook", "deployment/healert-agent-webhook"),
    ] {
        let e = env(
            &sink.url(),
            &log,
            &[("HEALERT_API_KEY", WRONG), ("HEALERT_MODE", mode)],
        );
        let (mut a, addr) = Agent::start_with_health(&dir, mode, &e);
        let err = a.wait_log("backend answered 401 to the API key check at start: ");
        let line = err
            .lines()
            .find(|l| l.contains("to the API key check at start"))
            .unwrap();
        assert!(line.contains(fix), "{mode}: {line}");
        if mode == "local" {
            assert!(line.contains(".env"), "{line}");
            assert!(!line.contains("Secret"), "{line}");
        } else {
            assert!(!line.contains(".env"), "{line}");
        }
        let r = a.wait_http(addr, "/readyz", |r| r.status == 503);
        assert!(
            r.body.contains("backend rejected the API key (401)"),
            "{}",
            r.body
        );
        let err = a.stop();
        assert!(!err.contains(WRONG) && !err.contains(&WRONG[10..]), "{err}");
    }
    let checks = sink.key_checks();
    assert_eq!(checks.len(), 3, "one check per start");
    assert!(checks.iter().all(|(r, s)| *s == 401 && r.body == b"{}"));

    // The right key: accepted (422 to the empty event), ready, nothing stored.
    let e = env(
        &sink.url(),
        &log,
        &[("HEALERT_API_KEY", RIGHT), ("HEALERT_MODE", "local")],
    );
    let (mut a, addr) = Agent::start_with_health(&dir, "right", &e);
    a.wait_log("API key accepted by the backend");
    a.wait_http(addr, "/readyz", |r| r.status == 200);
    let err = a.stop();
    assert!(!err.contains("ERROR"), "{err}");
    assert_eq!(sink.key_checks().last().map(|c| c.1), Some(422));
    assert!(sink.events().is_empty());
    assert!(sink.requests().iter().all(|r| r.method != "POST"));
}

/// The banner names where /healthz, /readyz and /metrics are served: with HEALTH_ADDR's port 0,
/// the port the kernel chose, which answers.
#[test]
fn the_banner_names_the_health_address_the_kernel_chose() {
    let dir = TempDir::new("secure", "health-port0");
    let log = dir.log();
    support::append(&log, &quiet_line());
    let sink = Sink::builder().start();
    let e = env(&sink.url(), &log, &[("HEALTH_ADDR", "127.0.0.1:0")]);
    let mut a = Agent::start(&dir, "port0", &e);
    let err = a.wait_log("  health      http://127.0.0.1:");
    let line = err
        .lines()
        .find(|l| l.contains("  health      http://"))
        .unwrap();
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_ne!(addr.port(), 0, "{line}");
    assert!(line.contains("(/healthz, /readyz, /metrics)"), "{line}");
    let r = a.wait_http(addr, "/healthz", |r| r.status == 200);
    assert_eq!(r.status, 200);
    a.stop();

    // Without HEALTH_ADDR the banner says it is off.
    let e = env(&sink.url(), &log, &[]);
    let mut a = Agent::start(&dir, "no-health", &e);
    a.wait_log("  health      off (HEALTH_ADDR unset)");
    a.stop();
}

/// An unknown mode is a bad value (the agent names the variable and the choices).
#[test]
fn healert_mode_takes_local_daemonset_or_webhook() {
    let dir = TempDir::new("secure", "mode");
    let (code, err) = run_to_exit(
        &dir,
        &env(
            "http://127.0.0.1:9",
            &dir.log(),
            &[("HEALERT_MODE", "laptop")],
        ),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("HEALERT_MODE=\"laptop\": must be `local`, `daemonset` or `webhook`"),
        "{err}"
    );
}
