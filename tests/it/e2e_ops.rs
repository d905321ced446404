//! Issue 6 (operability) and issue 5 (startup, keys, shutdown) acceptance, through the real
//! binary: every test starts `healert-agent` as a child process (killed on drop) against the
//! std-only [`Sink`] on loopback, writes audit lines, and checks what reached the sink, the
//! checkpoint across a restart, the health server and stderr.
//!
//! Events carry a unique token in the actor (`u-<token>@example.com`), so the exact multiset of
//! `(actor, type)` at the sink can be checked: nothing lost, nothing repeated.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ops::{parse_exposition, Exposition};
use crate::sink::Sink;
use crate::support::{
    self, assert_exactly_once, audit_id, bin, http_get, multiset, parse_reply, peak_rss_kb,
    repo_rules, Multiset, Proc, RefusedPort, Reply, TempDir,
};

/// Hang guard for every wait on the agent (a loaded 2-core CI machine is slow, not stuck).
const GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers: the agent child, audit lines, the health server.

/// A running agent; killed (SIGKILL) and reaped on drop if still running.
struct Agent {
    proc: Proc,
    stderr_path: PathBuf,
}

/// A command for the binary with none of the agent's variables inherited from the test's own
/// environment; `dir` is the working directory (so ./rules.yaml is never picked up by accident).
fn command(dir: &Path, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(bin());
    for (name, _, _) in healert_agent::config::VARS {
        c.env_remove(name);
    }
    c.current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

impl Agent {
    /// Starts `healert-agent run`; stderr goes to `<dir>/<label>.stderr`.
    fn start(dir: &TempDir, label: &str, env: &[(&str, String)]) -> Agent {
        let stderr_path = dir.join(&format!("{label}.stderr"));
        let err = File::create(&stderr_path).unwrap();
        let child = command(dir.path(), env)
            .arg("run")
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

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn stderr(&self) -> String {
        support::read_lossy(&self.stderr_path)
    }

    fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// Waits until stderr contains `needle`; panics (with stderr) after the guard.
    fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + GUARD;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(st) = self.proc.try_wait() {
                // One last look: the line may have been written just before exiting.
                if self.stderr().contains(needle) {
                    return;
                }
                panic!(
                    "agent exited ({st}) before logging {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit (hang guard: `guard`).
    fn wait_exit(&mut self, guard: Duration) -> ExitStatus {
        let path = &self.stderr_path;
        self.proc.wait_exit(guard, || {
            format!("agent stderr:\n{}", support::read_lossy(path))
        })
    }

    /// SIGTERM and wait for a clean exit (code 0).
    fn stop(&mut self) -> String {
        self.signal("TERM");
        let st = self.wait_exit(GUARD);
        let err = self.stderr();
        assert_eq!(st.code(), Some(0), "agent exit status {st}:\n{err}");
        err
    }

    fn assert_running(&mut self) {
        if let Some(st) = self.proc.try_wait() {
            panic!("agent exited ({st}):\n{}", self.stderr());
        }
    }
}

/// Runs the binary to completion (a startup refusal): (exit code, stderr).
fn run_to_exit(dir: &TempDir, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut a = Agent::start(dir, "refused", env);
    let st = a.wait_exit(GUARD);
    (st.code(), a.stderr())
}

/// The actor name carrying `token`.
fn actor(token: &str) -> String {
    format!("u-{token}@example.com")
}

/// A `kubectl exec` line by `u-<token>`: with the repo rules it yields kubectl-exec (one act,
/// one event: config-drift does not match pods/exec).
fn exec_line(token: &str) -> String {
    support::exec_line(&actor(token))
}

/// A person reading a Secret (`emergency-access` in the repo rules).
fn secret_line(token: &str) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/secrets/db-password","verb":"get","user":{{"username":"{}"}},"objectRef":{{"resource":"secrets","namespace":"shop","name":"db-password","apiVersion":"v1"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"2026-11-25T10:00:00.000000Z"}}"#,
        audit_id(),
        actor(token)
    )
}

/// A line no rule matches (a controller listing configmaps).
fn quiet_line() -> String {
    support::list_configmaps_line("system:serviceaccount:kube-system:foo")
}

/// Appends `lines`, each with a newline.
fn append(path: &Path, lines: &[String]) {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    support::append(path, &text);
}

/// The multiset expected from `tokens` exec lines with the repo rules.
fn expected_exec(tokens: &[String]) -> BTreeMap<(String, String), usize> {
    support::expected_exec(tokens.iter().map(|t| actor(t)))
}

/// Waits until the sinks together hold `n` events (hang guard).
fn wait_total(sinks: &[&Sink], n: usize, what: &str, agent: &Agent) {
    let deadline = Instant::now() + GUARD;
    loop {
        let have: usize = sinks.iter().map(|s| s.events().len()).sum();
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {have} of {n} events after {GUARD:?}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Environment variables for the agent.
type Env = Vec<(&'static str, String)>;

/// Common environment of a running agent.
fn base_env(backend: &str, log: &Path, rules: &Path, extra: &[(&str, &str)]) -> Env {
    let mut env: Env = vec![
        ("HEALERT_BACKEND_URL", backend.to_string()),
        ("AUDIT_LOG_PATH", log.display().to_string()),
        ("RULES_PATH", rules.display().to_string()),
        ("POLL_INTERVAL", "20ms".into()),
        ("START_AT", "beginning".into()),
        ("SHUTDOWN_GRACE", "2s".into()),
    ];
    for (k, v) in extra {
        let k: &'static str = healert_agent::config::VARS
            .iter()
            .find(|(n, _, _)| n == k)
            .map(|(n, _, _)| *n)
            .unwrap_or_else(|| panic!("unknown variable {k}"));
        env.retain(|(n, _)| *n != k);
        env.push((k, v.to_string()));
    }
    env
}

/// Polls `GET path` until `cond` holds (hang guard); returns the matching reply.
fn wait_http(
    agent: &mut Agent,
    addr: SocketAddr,
    path: &str,
    cond: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + GUARD;
    loop {
        agent.assert_running();
        let last = match http_get(addr, path) {
            Ok(r) if cond(&r) => return r,
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "GET {path}: condition not met after {GUARD:?}; last: {last}\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn metrics(addr: SocketAddr) -> Exposition {
    let r = http_get(addr, "/metrics").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    parse_exposition(&r.body).unwrap_or_else(|e| panic!("bad exposition: {e}\n{}", r.body))
}

fn metric(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.value(name, labels).unwrap_or(0.0)
}

/// Starts an agent with a health server on `HEALTH_ADDR=127.0.0.1:0` (the kernel picks a free
/// port, so none can collide) and finds the port in /proc; waits until it answers.
fn start_with_health(dir: &TempDir, label: &str, env: &[(&str, String)]) -> (Agent, SocketAddr) {
    let mut env = env.to_vec();
    env.push(("HEALTH_ADDR", "127.0.0.1:0".into()));
    let mut a = Agent::start(dir, label, &env);
    let deadline = Instant::now() + GUARD;
    loop {
        a.assert_running();
        if let Some(port) = support::listening_port(a.pid()) {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if http_get(addr, "/healthz").is_ok() {
                return (a, addr);
            }
        }
        assert!(
            Instant::now() < deadline,
            "health server never came up:\n{}",
            a.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the agent saved a checkpoint (since `before`, see [`support::file_stamp`]) at
/// the end of `log`: it read everything and every event was acknowledged. Anything it would
/// send twice would have been sent by then, so this is what precedes "nothing more arrived".
fn wait_caught_up(agent: &mut Agent, cp: &Path, log: &Path, before: Option<(u64, i64, i64)>) {
    let deadline = Instant::now() + GUARD;
    while !support::checkpoint_at_end(cp, log, before) {
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "no checkpoint at the end of {} after {GUARD:?} (checkpoint: {:?}, log size {:?}):\n{}",
            log.display(),
            support::read_checkpoint(cp),
            fs::metadata(log).map(|m| m.len()),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Shutdown and restarts.

/// A clean stop between the two events of one line: the backend accepted the first
/// (`pipeline-skip`) and keeps refusing the second (`config-drift`, 503) until the grace period
/// ends. The checkpoint names that line and the one event of it already accepted
/// (`skip_events=1`), so the restart sends the second event only: nothing lost, nothing twice.
#[test]
fn sigterm_between_the_two_events_of_one_line_resumes_with_the_second_only() {
    let dir = TempDir::new("e2e-ops", "halfline");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let actor = "half@example.com";
    append(
        &log,
        &[
            quiet_line(),
            support::bypass_patch_line(actor),
            quiet_line(),
        ],
    );
    let second = format!("\"type\":\"{}\"", support::BYPASS_TYPES[1]);
    let refusing = Sink::builder().reject_containing(&second, 503).start();
    let cp_s = cp.display().to_string();
    let env = base_env(
        &refusing.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s), ("SHUTDOWN_GRACE", "1s")],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    assert!(refusing.wait_for_events(1, GUARD), "{}", a.stderr());
    support::wait_until(
        GUARD,
        "a 503 for the second event",
        || refusing.statuses().contains(&503),
        || a.stderr(),
    );
    let err1 = a.stop();
    let text = support::read_lossy(&cp);
    assert!(text.contains("\nskip_events=1\n"), "{text}\n{err1}");
    assert!(
        text.contains(&format!("\noffset={}\n", quiet_line().len() + 1)),
        "the checkpoint is not at the bypass line:\n{text}"
    );

    let fast = Sink::start();
    let env2 = base_env(
        &fast.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(&[&refusing, &fast], 2, "after the restart", &b);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    let mut want = BTreeMap::new();
    for ty in support::BYPASS_TYPES {
        want.insert((actor.to_string(), ty.to_string()), 1);
    }
    assert_exactly_once(&[&refusing, &fast], &want, &format!("{err1}\n---\n{err2}"));
    assert_eq!(fast.events().len(), 1, "{err2}");
}

/// Issue 6: SIGTERM with 500 queued events and a slow sink: what the grace period did not
/// deliver stays behind the checkpoint and a restart delivers it; nothing lost, nothing twice.
#[test]
fn sigterm_with_500_queued_events_and_a_slow_sink_loses_nothing_across_a_restart() {
    let dir = TempDir::new("e2e-ops", "sigterm500");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let toks = tokens("t500-", 250 * 2 / support::EXEC_TYPES.len()); // 500 events (two per exec line with the Go rules, one with ours)
    let lines: Vec<String> = toks
        .iter()
        .flat_map(|t| [exec_line(t), quiet_line()])
        .collect();
    append(&log, &lines);

    let slow = Sink::builder().delay(Duration::from_millis(40)).start();
    let cp_s = cp.display().to_string();
    let env = base_env(
        &slow.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s), ("SHUTDOWN_GRACE", "2s")],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    // The whole log is read at once (the queue holds 10000): events are queued behind the
    // slow sink when the signal comes.
    assert!(slow.wait_for_events(10, GUARD), "{}", a.stderr());
    let rss1 = peak_rss_kb(a.pid());
    let err1 = a.stop();
    let first = slow.events().len();
    // The grace period was used to deliver queued events: by the agent's own account (events
    // pending when it stopped reading, and left at the exit), and what it did not deliver is
    // exactly what the sink lacks. At 40 ms an event, 2 s deliver about 50; at least 10 is a
    // bound a loaded machine keeps, and an agent that drops the grace (one event in flight at
    // most) does not.
    let field = |line_start: &str, key: &str| -> usize {
        let line = err1
            .lines()
            .find(|l| l.contains(line_start))
            .unwrap_or_else(|| panic!("no {line_start:?} line\n{err1}"));
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let pending_at_stop = field("stopping: no more reading", "pending=");
    let left = field(" stopped ", "pending_left_in_log=");
    assert_eq!(left, 500 - first, "{first} delivered of 500\n{err1}");
    assert!(
        pending_at_stop >= left + 10,
        "{} events delivered during the 2 s grace period\n{err1}",
        pending_at_stop - left
    );
    assert!(cp.exists(), "no checkpoint written:\n{err1}");

    let fast = Sink::start();
    let env2 = base_env(
        &fast.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(&[&slow, &fast], 500, "after the restart", &b);
    // Anything repeated would have been sent before the restarted agent's checkpoint reaches
    // the end of the log.
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(
        &[&slow, &fast],
        &expected_exec(&toks),
        &format!("{err1}\n---\n{err2}"),
    );
    eprintln!(
        "sigterm/500: first run delivered {first} (peak RSS {rss1:?} kB with ~490 queued), restart {}",
        fast.events().len()
    );
}

/// Issue 5: a second SIGTERM during a long grace (backend down) stops at once, with the
/// checkpoint saved; a restart with a working backend delivers everything, once.
#[test]
fn second_sigterm_during_a_long_grace_exits_at_once_and_a_restart_delivers_the_rest() {
    let dir = TempDir::new("e2e-ops", "second-term");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    let toks = tokens("t2nd-", 10 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());

    let down = RefusedPort::new();
    let env = base_env(
        &down.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s), ("SHUTDOWN_GRACE", "10m")],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    a.wait_log("backend not accepting events; retrying");
    a.signal("TERM");
    a.wait_log("stopping: no more reading");
    a.signal("TERM");
    // The grace period is 10 minutes: exiting within the hang guard means "at once".
    let st = a.wait_exit(GUARD);
    let err1 = a.stderr();
    assert_eq!(st.code(), Some(0), "{err1}");
    assert!(err1.contains("second signal: stopping at once"), "{err1}");
    assert!(err1.contains("pending_left_in_log=20"), "{err1}");
    assert!(cp.exists(), "checkpoint not saved:\n{err1}");

    let sink = Sink::start();
    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(&[&sink], 20, "after the restart", &b);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err2);
}

/// Issue 5: a backend unreachable at start is a warning; the agent keeps running and delivers
/// once the backend comes up on the address it was given.
#[test]
fn backend_unreachable_at_start_is_a_warning_and_delivery_starts_when_it_comes_up() {
    let dir = TempDir::new("e2e-ops", "late-backend");
    let log = dir.join("audit.log");
    append(&log, &[quiet_line()]);
    // Nothing listens on the port, and nobody else can take it, until the backend comes up.
    let down = RefusedPort::new();
    let env = base_env(&down.url(), &log, &repo_rules(), &[]);
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    a.wait_log("checking the backend in the background; events are queued meanwhile");
    a.wait_log("backend not reachable at startup");
    let toks = tokens("late-", 3 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    a.wait_log("backend not accepting events; retrying");
    let r = wait_http(&mut a, addr, "/readyz", |r| r.status == 503);
    assert!(
        r.body.starts_with("backend unreachable since "),
        "{}",
        r.body
    );
    assert_eq!(http_get(addr, "/healthz").unwrap().status, 200);

    let sink = down.release_to(|port| Sink::builder().port(port).try_start());
    wait_total(&[&sink], 6, "once the backend is up", &a);
    a.wait_log("backend accepting events again");
    wait_http(&mut a, addr, "/readyz", |r| r.status == 200);
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
    assert!(!err.contains(" ERROR "), "{err}");
}

/// Issue 5: 401 (wrong key) keeps every event; /readyz says why; a restart with the right key
/// delivers them all, once; neither key ever appears on stderr.
#[test]
fn rejected_key_then_the_right_key_loses_nothing_and_never_logs_the_key() {
    const RIGHT: &str = "right-key-Zq8vT3xP0wLm";
    const WRONG: &str = "wrong-key-Kd7sU2nQ5yHb";
    let dir = TempDir::new("e2e-ops", "api-key");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    let toks = tokens("key-", 5 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let sink = Sink::builder().api_key(RIGHT).start();

    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp_s),
            ("HEALERT_API_KEY", WRONG),
            ("SHUTDOWN_GRACE", "1s"),
        ],
    );
    let (mut a, addr) = start_with_health(&dir, "wrong", &env);
    let r = wait_http(&mut a, addr, "/readyz", |r| {
        r.status == 503 && r.body.contains("API key")
    });
    assert!(
        r.body.contains("backend rejected the API key (401)") && r.body.contains("HEALERT_API_KEY"),
        "{}",
        r.body
    );
    let m = metrics(addr);
    assert_eq!(
        metric(
            &m,
            "healert_agent_backend_state",
            &[("state", "unauthorized")]
        ),
        1.0
    );
    // Matched, kept, not sent.
    let exec = [("rule", "kubectl-exec")];
    assert_eq!(
        metric(&m, "healert_agent_events_matched_total", &exec),
        toks.len() as f64
    );
    assert_eq!(metric(&m, "healert_agent_events_sent_total", &exec), 0.0);
    assert_eq!(metric(&m, "healert_agent_queue_depth", &[]), 10.0);
    assert_eq!(metric(&m, "healert_agent_backend_up", &[]), 0.0);
    let body = http_get(addr, "/metrics").unwrap().body;
    assert!(!body.contains(WRONG) && !r.body.contains(WRONG));
    a.wait_log("HEALERT_API_KEY is not accepted by the backend");
    let err1 = a.stop();
    assert!(sink.events().is_empty());
    assert!(
        sink.statuses().iter().all(|s| *s == 401),
        "{:?}",
        sink.statuses()
    );
    assert!(
        err1.contains(&format!("<redacted, {} bytes>", WRONG.len())),
        "banner shows the key's length:\n{err1}"
    );

    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s), ("HEALERT_API_KEY", RIGHT)],
    );
    let before = support::file_stamp(&cp);
    let (mut b, addr2) = start_with_health(&dir, "right", &env2);
    wait_total(&[&sink], 10, "with the right key", &b);
    wait_http(&mut b, addr2, "/readyz", |r| r.status == 200);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err2);
    for (what, err) in [("wrong-key run", &err1), ("right-key run", &err2)] {
        for key in [RIGHT, WRONG] {
            assert!(
                !err.contains(key),
                "{what}: the API key leaked to stderr:\n{err}"
            );
            // Not even a recognisable part of it.
            assert!(
                !err.contains(&key[10..]),
                "{what}: part of the key leaked:\n{err}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Startup refusals.

#[test]
fn https_backend_url_exits_1_with_the_tls_explanation() {
    let dir = TempDir::new("e2e-ops", "https");
    let log = dir.join("audit.log");
    let env = base_env("https://healert.example.com", &log, &repo_rules(), &[]);
    let (code, err) = run_to_exit(&dir, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("HEALERT_BACKEND_URL"), "{err}");
    assert!(err.contains("https is not supported"), "{err}");
    assert!(err.contains("TLS sidecar"), "{err}");
    assert!(err.contains("docs/tls.md"), "{err}");
}

#[test]
fn bad_environment_values_exit_1_naming_variable_value_and_example() {
    let dir = TempDir::new("e2e-ops", "bad-env");
    let log = dir.join("audit.log");
    let env = base_env(
        "http://127.0.0.1:9",
        &log,
        &repo_rules(),
        &[
            ("POLL_INTERVAL", "fast"),
            ("QUEUE_CAPACITY", "lots"),
            ("START_AT", "middle"),
            ("LOG_FORMAT", "xml"),
        ],
    );
    let (code, err) = run_to_exit(&dir, &env);
    assert_eq!(code, Some(1), "{err}");
    for (var, value, example) in [
        ("POLL_INTERVAL", "fast", "250ms"),
        ("QUEUE_CAPACITY", "lots", "10000"),
        ("START_AT", "middle", "end"),
        ("LOG_FORMAT", "xml", "json"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{var}=\"{value}\"")))
            .unwrap_or_else(|| panic!("{var}={value} not named:\n{err}"));
        assert!(
            line.contains(&format!("(example: {var}={example})")),
            "{line}"
        );
    }
    assert!(err.contains("not started (4 invalid variable(s))"), "{err}");
}

#[test]
fn health_addr_in_use_exits_1_naming_the_address() {
    let dir = TempDir::new("e2e-ops", "health-busy");
    let log = dir.join("audit.log");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let env = base_env(
        "http://127.0.0.1:9",
        &log,
        &repo_rules(),
        &[("HEALTH_ADDR", &addr)],
    );
    let (code, err) = run_to_exit(&dir, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("HEALTH_ADDR={addr}")), "{err}");
    assert!(err.contains("another process listens there"), "{err}");
}

#[test]
fn missing_rules_file_exits_1_saying_how_to_set_rules_path() {
    let dir = TempDir::new("e2e-ops", "no-rules");
    let log = dir.join("audit.log");
    let missing = dir.join("nope/rules.yaml");
    let env = base_env("http://127.0.0.1:9", &log, &missing, &[]);
    let (code, err) = run_to_exit(&dir, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("RULES_PATH=/etc/healert/rules.yaml"), "{err}");

    // Unset: ./rules.yaml is tried, and the message says so.
    let mut env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| *k != "RULES_PATH")
        .collect();
    env.push(("LOG_LEVEL", "info".into()));
    let (code, err) = run_to_exit(&dir, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("RULES_PATH is not set"), "{err}");
}

#[test]
fn invalid_rules_exit_1_with_validate_path_line_col_errors() {
    let dir = TempDir::new("e2e-ops", "bad-rules");
    let log = dir.join("audit.log");
    let rules = dir.join("rules.yaml");
    fs::write(
        &rules,
        "rules:\n  - name: kubectl-exec\n    severity: hgih\n    workflow: deploy\n    match:\n      resource: pods\n      subresource: exec\n  - name: Bad_Name\n    severity: low\n    workflow: debug\n    match:\n      verb: get\n",
    )
    .unwrap();
    let env = base_env("http://127.0.0.1:9", &log, &rules, &[]);
    let (code, err) = run_to_exit(&dir, &env);
    assert_eq!(code, Some(1), "{err}");
    let prefix = format!("{}:", rules.display());
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(": error: "))
        .collect();
    // `severity: hgih` and `name: Bad_Name`.
    assert_eq!(
        errors.len(),
        2,
        "expected two PATH:LINE:COL: error: lines:\n{err}"
    );
    for l in &errors {
        let rest = &l[prefix.len()..];
        let mut it = rest.splitn(3, ':');
        let line: u32 = it.next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"));
        let col: u32 = it.next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"));
        assert!(line >= 1 && col >= 1, "{l}");
    }
    assert!(
        errors.iter().any(|l| l.starts_with(&format!("{prefix}3:"))),
        "{err}"
    );
    // The same lines as `validate` prints.
    let out = command(dir.path(), &[])
        .arg("validate")
        .arg(&rules)
        .output()
        .unwrap();
    let v =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for l in &errors {
        assert!(v.contains(l), "validate does not print {l:?}:\n{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Banner, logs.

#[test]
fn banner_shows_version_backend_log_rules_namespaces_auth_and_start() {
    let dir = TempDir::new("e2e-ops", "banner");
    let log = dir.join("audit.log");
    append(&log, &[quiet_line()]);
    let sink = Sink::start();
    let key = "banner-key-0123456789";
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[
            ("K8S_NAMESPACE", "healert-system"),
            ("HEALERT_API_KEY", key),
            ("START_AT", "end"),
        ],
    );
    let mut a = Agent::start(&dir, "run", &env);
    a.wait_log("ignored namespaces");
    a.wait_log("auto-added from K8S_NAMESPACE");
    let err = a.stop();
    let version = env!("CARGO_PKG_VERSION");
    for want in [
        format!("healert-agent {version}"),
        format!("backend     {}", sink.url()),
        "(checking the backend in the background".to_string(),
        "Backend OK -- version=test auth=disabled".to_string(),
        format!("auth        <redacted, {} bytes>", key.len()),
        format!("audit log   {}", log.display()),
        format!("rules       5 from {}", repo_rules().display()),
        "healert-system  <- auto-added from K8S_NAMESPACE".to_string(),
        "kube-system".to_string(),
        "argocd".to_string(),
    ] {
        assert!(err.contains(&want), "banner lacks {want:?}:\n{err}");
    }
    for (rule, sev) in [
        ("kubectl-exec", "high"),
        ("pipeline-skip", "high"),
        ("config-drift", "high"),
        ("port-forward", "medium"),
        ("emergency-access", "medium"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(rule) && l.split_whitespace().any(|w| w == sev)),
            "rule {rule} with severity {sev} not in the banner:\n{err}"
        );
    }
    // The start position says where reading begins (START_AT=end on an existing file).
    let audit = err.lines().find(|l| l.contains("audit log   ")).unwrap();
    let size = fs::metadata(&log).unwrap().len();
    assert!(
        audit.contains(&format!("(from end-of-file (offset {size}))")),
        "{audit}"
    );
    assert!(!err.contains(key));

    // Already in the list: not auto-added.
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("K8S_NAMESPACE", "kube-system")],
    );
    let mut b = Agent::start(&dir, "run2", &env);
    b.wait_log("ignored namespaces");
    b.wait_log("checkpoint  off");
    // SIGINT (Ctrl-C) stops like SIGTERM.
    b.signal("INT");
    assert_eq!(b.wait_exit(GUARD).code(), Some(0), "{}", b.stderr());
    let err = b.stderr();
    assert!(err.contains("stopping: no more reading"), "{err}");
    assert!(!err.contains("auto-added"), "{err}");
    assert!(err.contains("(from beginning)"), "{err}");
    assert!(
        err.contains("START_AT=beginning: the whole existing log is evaluated"),
        "{err}"
    );
}

#[test]
fn json_logs_every_stderr_line_parses_with_ts_level_msg() {
    let dir = TempDir::new("e2e-ops", "json-logs");
    let log = dir.join("audit.log");
    let toks = tokens("json-", 3);
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    // A hostile actor must not break the one-object-per-line shape.
    append(
        &log,
        &[exec_line("evil\\n{\\\"level\\\":\\\"error\\\"}\\u001b[31m")],
    );
    let sink = Sink::builder()
        .script(vec![crate::sink::Action::Status(503)])
        .start();
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("LOG_FORMAT", "json"), ("K8S_NAMESPACE", "healert-system")],
    );
    let mut a = Agent::start(&dir, "run", &env);
    wait_total(&[&sink], 4 * support::EXEC_TYPES.len(), "json run", &a);
    a.signal("HUP");
    a.wait_log("SIGHUP: rules reloaded");
    let err = a.stop();
    let mut levels = BTreeMap::new();
    for line in err.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{err}"));
        for k in ["ts", "level", "msg"] {
            assert!(v[k].is_string(), "{k} missing in {line}");
        }
        *levels
            .entry(v["level"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    // What this run must have logged, each record exactly so often: the 503 once, then the
    // recovery, the deliveries (4 exec lines), the reload; and no error.
    let count = |level: &str, msg: &str| {
        err.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| {
                v["level"] == level && v["msg"].as_str().is_some_and(|m| m.starts_with(msg))
            })
            .count()
    };
    for (level, msg, n) in [
        ("warn", "backend not accepting events; retrying", 1),
        ("info", "backend accepting events again", 1),
        ("info", "[200]", 4 * support::EXEC_TYPES.len()),
        ("info", "SIGHUP: rules reloaded", 1),
        ("info", "stopping: no more reading", 1),
        ("info", "stopped", 1),
    ] {
        assert_eq!(count(level, msg), n, "{level} {msg:?}\n{err}");
    }
    assert_eq!(levels.get("warn"), Some(&1), "{levels:?}\n{err}");
    assert_eq!(levels.get("error"), None, "{levels:?}\n{err}");
}

// ---------------------------------------------------------------------------------------------
// SIGHUP.

const RULES_EXEC_ONLY: &str = "rules:
  - name: kubectl-exec
    description: \"kubectl exec on {resource}/{name} by {actor}\"
    severity: high
    workflow: deploy
    ignore_system: true
    match:
      resource: pods
      subresource: exec
";

const RULES_PLUS_SECRETS: &str = "rules:
  - name: kubectl-exec
    description: \"kubectl exec on {resource}/{name} by {actor}\"
    severity: high
    workflow: deploy
    ignore_system: true
    match:
      resource: pods
      subresource: exec
  - name: emergency-access
    description: \"Direct secret access: {name} in {namespace} by {actor}\"
    severity: medium
    workflow: incident
    ignore_system: true
    match:
      resource: secrets
      verb: get
";

/// Replaces the rules file atomically (as `kubectl` updates a mounted ConfigMap).
fn write_rules(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn sighup_reloads_valid_rules_and_keeps_the_old_ones_on_an_invalid_file() {
    let dir = TempDir::new("e2e-ops", "sighup");
    let log = dir.join("audit.log");
    let rules = dir.join("rules.yaml");
    write_rules(&rules, RULES_EXEC_ONLY);
    append(&log, &[quiet_line()]);
    let sink = Sink::start();
    let cp = dir.join("checkpoint");
    let env = base_env(
        &sink.url(),
        &log,
        &rules,
        &[("CHECKPOINT_PATH", &cp.display().to_string())],
    );
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    wait_http(&mut a, addr, "/readyz", |r| r.status == 200);

    // Old rules: a secret read is nothing, an exec is one event.
    append(&log, &[secret_line("hup-a"), exec_line("hup-b")]);
    wait_total(&[&sink], 1, "before the reload", &a);

    // Add a rule.
    write_rules(&rules, RULES_PLUS_SECRETS);
    a.signal("HUP");
    wait_http(&mut a, addr, "/metrics", |r| {
        r.body.contains("\nhealert_agent_rule_reloads_total 1\n")
    });
    let m = metrics(addr);
    assert_eq!(metric(&m, "healert_agent_rules_loaded", &[]), 2.0);
    a.wait_log("SIGHUP: rules reloaded");
    append(&log, &[secret_line("hup-c"), exec_line("hup-d")]);
    wait_total(&[&sink], 3, "after the reload", &a);

    // An invalid file: refused, counted, logged; the previous rules keep working.
    write_rules(&rules, "rules:\n  - name: broken\n    severity: extreme\n");
    a.signal("HUP");
    wait_http(&mut a, addr, "/metrics", |r| {
        r.body
            .contains("\nhealert_agent_rule_reload_failures_total 1\n")
    });
    a.wait_log("SIGHUP: the new rules file is invalid; keeping the previous rules");
    let m = metrics(addr);
    assert_eq!(metric(&m, "healert_agent_rule_reloads_total", &[]), 1.0);
    assert_eq!(metric(&m, "healert_agent_rules_loaded", &[]), 2.0);
    append(&log, &[secret_line("hup-e"), exec_line("hup-f")]);
    wait_total(&[&sink], 5, "after the refused reload", &a);
    wait_caught_up(&mut a, &cp, &log, None);
    let err = a.stop();

    let error_line = err
        .lines()
        .find(|l| l.contains("keeping the previous rules"))
        .unwrap();
    assert!(error_line.contains(" ERROR "), "{error_line}");
    assert!(
        error_line.contains(&rules.display().to_string()),
        "{error_line}"
    );
    let want: BTreeMap<(String, String), usize> = [
        ("hup-b", "kubectl-exec"),
        ("hup-c", "emergency-access"),
        ("hup-d", "kubectl-exec"),
        ("hup-e", "emergency-access"),
        ("hup-f", "kubectl-exec"),
    ]
    .iter()
    .map(|(t, ty)| ((actor(t), ty.to_string()), 1))
    .collect();
    assert_exactly_once(&[&sink], &want, &err);
}

// ---------------------------------------------------------------------------------------------
// Metrics against replay, probes, hostile requests.

/// Issue 6: /metrics values equal the counts of a known replay of the same file.
#[test]
fn metrics_equal_the_counts_of_a_replay_of_the_same_log() {
    let dir = TempDir::new("e2e-ops", "replay-metrics");
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sample/audit.ndjson");
    let log = dir.join("audit.log");
    fs::copy(&sample, &log).unwrap();

    let out = command(dir.path(), &[])
        .arg("replay")
        .arg("--rules")
        .arg(repo_rules())
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let summary: BTreeMap<String, String> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("summary "))
        .unwrap_or_else(|| panic!("no summary line:\n{stderr}"))
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let num = |k: &str| -> f64 { summary[k].parse().unwrap() };
    let mut per_type: BTreeMap<String, f64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *per_type
            .entry(v["type"].as_str().unwrap().to_string())
            .or_insert(0.0) += 1.0;
    }
    let events = num("events");
    assert_eq!(per_type.values().sum::<f64>(), events);
    // The bundled sample with rules.yaml's 5 enabled rules (each fires at least once; the
    // exec and the port-forward are not also config-drift: one act, one event).
    let want_types: BTreeMap<String, f64> = [
        ("config-drift", 6.0),
        ("emergency-access", 3.0),
        ("kubectl-exec", 1.0),
        ("pipeline-skip", 3.0),
        ("port-forward", 1.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(per_type, want_types, "{stderr}");
    assert_eq!(
        (
            num("lines"),
            num("skipped_stages"),
            num("evaluated"),
            events
        ),
        (188.0, 57.0, 131.0, 14.0),
        "{stderr}"
    );

    let sink = Sink::start();
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    wait_total(&[&sink], events as usize, "replayed sample", &a);
    let size = fs::metadata(&log).unwrap().len() as f64;
    assert_eq!(size, num("bytes"));
    let lines = num("lines");
    let m = wait_http(&mut a, addr, "/metrics", |r| {
        parse_exposition(&r.body).is_ok_and(|e| {
            metric(&e, "healert_agent_lines_read_total", &[]) >= lines
                && e.samples
                    .iter()
                    .filter(|s| s.name == "healert_agent_events_sent_total")
                    .map(|s| s.value)
                    .sum::<f64>()
                    >= events
                // The checkpoint (written once a second) reached the end of the file.
                && metric(&e, "healert_agent_checkpoint_offset_bytes", &[]) == size
        })
    });
    let m = parse_exposition(&m.body).unwrap();
    let err = a.stop();

    for (metric_name, key) in [
        ("healert_agent_lines_read_total", "lines"),
        ("healert_agent_bytes_read_total", "bytes"),
        ("healert_agent_blank_lines_total", "blank"),
        ("healert_agent_malformed_lines_total", "malformed"),
        ("healert_agent_stages_skipped_total", "skipped_stages"),
    ] {
        assert_eq!(
            metric(&m, metric_name, &[]),
            num(key),
            "{metric_name} vs replay {key}\n{err}"
        );
    }
    for (rule, n) in &per_type {
        for fam in [
            "healert_agent_events_matched_total",
            "healert_agent_events_sent_total",
        ] {
            assert_eq!(
                metric(&m, fam, &[("rule", rule)]),
                *n,
                "{fam}{{rule={rule}}}\n{err}"
            );
        }
    }
    let labelled: Vec<&str> = m
        .samples
        .iter()
        .filter(|s| s.name == "healert_agent_events_matched_total")
        .filter_map(|s| {
            s.labels
                .iter()
                .find(|(k, _)| k == "rule")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(
        labelled,
        per_type.keys().map(String::as_str).collect::<Vec<_>>()
    );
    // And the sink got exactly replay's payload count per type.
    let mut at_sink: BTreeMap<String, f64> = BTreeMap::new();
    for v in sink.events_json() {
        *at_sink
            .entry(v["type"].as_str().unwrap().to_string())
            .or_insert(0.0) += 1.0;
    }
    assert_eq!(at_sink, per_type, "{err}");
    assert_eq!(metric(&m, "healert_agent_queue_depth", &[]), 0.0);
    assert_eq!(metric(&m, "healert_agent_dead_lettered_total", &[]), 0.0);
    assert_eq!(metric(&m, "healert_agent_retries_total", &[]), 0.0);
    for gauge in [
        "healert_agent_file_size_bytes",
        "healert_agent_read_offset_bytes",
    ] {
        assert_eq!(metric(&m, gauge, &[]), size, "{gauge}");
    }
    assert_eq!(metric(&m, "healert_agent_lag_bytes", &[]), 0.0);
    assert_eq!(metric(&m, "healert_agent_log_open", &[]), 1.0);
    assert_eq!(metric(&m, "healert_agent_rules_loaded", &[]), 5.0);
    assert_eq!(metric(&m, "healert_agent_backend_up", &[]), 1.0);
    assert!(metric(&m, "healert_agent_checkpoint_writes_total", &[]) >= 1.0);
}

/// Issue 6: probes flip to 503 when the backend fails (and back when it recovers). The stall
/// of the follower cannot be caused from outside (it ticks on every poll, also while blocked
/// on a full queue, and a FIFO or directory at the path is waited out without blocking): that
/// flip is covered in-process by `ops::probes_flip_on_rejected_key_backend_outage_and_stalled_follower`.
#[test]
fn readyz_flips_to_503_while_the_backend_fails_and_back_when_it_recovers() {
    let dir = TempDir::new("e2e-ops", "probes");
    let log = dir.join("audit.log");
    append(&log, &[quiet_line()]);
    let sink = Sink::builder()
        .unavailable_after(1, Duration::from_secs(3))
        .start();
    let env = base_env(&sink.url(), &log, &repo_rules(), &[]);
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    wait_http(&mut a, addr, "/readyz", |r| r.status == 200);
    let toks = tokens("probe-", 3 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let r = wait_http(&mut a, addr, "/readyz", |r| r.status == 503);
    assert!(
        r.body
            .starts_with("backend failing (last status 503) since "),
        "{}",
        r.body
    );
    // Liveness is not readiness: the agent is alive while the backend fails.
    assert_eq!(http_get(addr, "/healthz").unwrap().status, 200);
    wait_total(&[&sink], 6, "after the outage", &a);
    wait_http(&mut a, addr, "/readyz", |r| {
        r.status == 200 && r.body == "ready (source: file)\n"
    });
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
}

/// Issue 6: a 1 MB request to /metrics is refused without harm: 431, and the agent keeps
/// serving and delivering.
#[test]
fn a_1mb_request_to_metrics_is_refused_without_harm() {
    let dir = TempDir::new("e2e-ops", "big-request");
    let log = dir.join("audit.log");
    append(&log, &[quiet_line()]);
    let sink = Sink::start();
    let env = base_env(&sink.url(), &log, &repo_rules(), &[]);
    let (mut a, addr) = start_with_health(&dir, "run", &env);

    for _ in 0..3 {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend_from_slice(&vec![b'a'; 1 << 20]);
        req.extend_from_slice(b"\r\n\r\n");
        // Written by another thread while this one reads: the server answers after 8 KiB and
        // may close before the whole request is sent, so the answer must be read as it comes
        // (a late close could otherwise reset the connection over an unread answer).
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&req);
        });
        let mut buf = Vec::new();
        let mut r = &s;
        let read = r.read_to_end(&mut buf);
        writer.join().unwrap();
        let reply = parse_reply(&buf)
            .unwrap_or_else(|e| panic!("no answer to a 1 MB request ({read:?}): {e}"));
        assert_eq!(reply.status, 431, "{}", reply.body);
    }
    a.assert_running();
    assert_eq!(http_get(addr, "/healthz").unwrap().status, 200);
    let toks = tokens("big-", 2 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    wait_total(&[&sink], 4, "after the big requests", &a);
    let m = metrics(addr);
    assert_eq!(
        metric(
            &m,
            "healert_agent_events_sent_total",
            &[("rule", "kubectl-exec")]
        ),
        toks.len() as f64
    );
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
}

/// Issue 5: a backend that never answers must not hold the stop past SHUTDOWN_GRACE (here with
/// HTTP_TIMEOUT=5m, so only a bounded shutdown exits within the hang guard); the request in
/// flight keeps its event behind the checkpoint, and a restart delivers everything once.
#[test]
fn a_request_hanging_past_the_grace_period_does_not_hold_the_stop() {
    let dir = TempDir::new("e2e-ops", "hung-grace");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    // 8 events.
    let toks = tokens("hung-", 8 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());

    // Accepts 3 events, then never answers the 4th request.
    let hung = Sink::builder().no_answer_once_after(3).start();
    let env = base_env(
        &hung.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp_s),
            ("SHUTDOWN_GRACE", "1s"),
            ("HTTP_TIMEOUT", "5m"),
        ],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    wait_hung_request(&hung, 4, &a);
    let err1 = a.stop();
    assert!(err1.contains("pending_left_in_log=5"), "{err1}");
    assert!(
        err1.contains("a backend request is still in flight; not waiting for it"),
        "{err1}"
    );

    let sink = Sink::start();
    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(&[&sink], 5, "after the restart", &b);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(&[&hung, &sink], &expected_exec(&toks), &err2);
}

/// Issue 5: the second SIGTERM stops at once even while a request hangs (HTTP_TIMEOUT=5m).
#[test]
fn second_sigterm_stops_at_once_while_a_request_hangs() {
    let dir = TempDir::new("e2e-ops", "hung-second");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    let toks = tokens("hung2-", 2 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let hung = Sink::builder().no_answer_once_after(0).start();
    let env = base_env(
        &hung.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp_s),
            ("SHUTDOWN_GRACE", "10m"),
            ("HTTP_TIMEOUT", "5m"),
        ],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    wait_hung_request(&hung, 1, &a);
    a.signal("TERM");
    a.wait_log("stopping: no more reading");
    a.signal("TERM");
    let st = a.wait_exit(GUARD);
    let err1 = a.stderr();
    assert_eq!(st.code(), Some(0), "{err1}");
    assert!(err1.contains("pending_left_in_log=4"), "{err1}");
    assert!(
        err1.contains("a backend request is still in flight; not waiting for it"),
        "{err1}"
    );

    let sink = Sink::start();
    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(&[&sink], 4, "after the restart", &b);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(&[&hung, &sink], &expected_exec(&toks), &err2);
}

/// Waits until the sink has received `n` POSTs (the last one left unanswered).
fn wait_hung_request(sink: &Sink, n: usize, agent: &Agent) {
    let deadline = Instant::now() + GUARD;
    while sink
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "no hung request after {GUARD:?}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// LOG_FORMAT=json holds for the refusals too: a JSON log pipeline must see why the agent did
/// not start (bad variables, invalid or missing rules), one object per line, with validate's
/// `PATH:LINE:COL: error:` text kept in the messages.
#[test]
fn json_logs_startup_refusals_are_json_lines_too() {
    let dir = TempDir::new("e2e-ops", "json-refusals");
    let log = dir.join("audit.log");
    let bad_rules = dir.join("rules.yaml");
    fs::write(&bad_rules, "rules:\n  - name: x\n    severity: hgih\n").unwrap();
    let missing = dir.join("missing.yaml");
    let cases: Vec<(&str, Env, String)> = vec![
        (
            "bad variable",
            base_env(
                "http://127.0.0.1:9",
                &log,
                &repo_rules(),
                &[("LOG_FORMAT", "json"), ("POLL_INTERVAL", "fast")],
            ),
            "POLL_INTERVAL=\\\"fast\\\"".to_string(),
        ),
        (
            "invalid rules",
            base_env(
                "http://127.0.0.1:9",
                &log,
                &bad_rules,
                &[("LOG_FORMAT", "json")],
            ),
            format!("{}:3:15: error: unknown severity", bad_rules.display()),
        ),
        (
            "missing rules",
            base_env(
                "http://127.0.0.1:9",
                &log,
                &missing,
                &[("LOG_FORMAT", "json")],
            ),
            "RULES_PATH=/etc/healert/rules.yaml".to_string(),
        ),
    ];
    for (what, env, needle) in cases {
        let (code, err) = run_to_exit(&dir, &env);
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains(&needle), "{what}: {needle:?} not in\n{err}");
        for line in err.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line:?}\n{err}"));
            for k in ["ts", "level", "msg"] {
                assert!(v[k].is_string(), "{what}: {k} missing in {line}");
            }
        }
    }
}

/// A crash (SIGKILL) mid-delivery loses nothing: the restart resends from the checkpoint
/// (at-least-once: what was accepted after the last checkpoint may arrive twice, nothing else).
#[test]
fn sigkill_mid_delivery_then_restart_loses_nothing() {
    let dir = TempDir::new("e2e-ops", "sigkill");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    let toks = tokens("kill-", 100);
    let lines: Vec<String> = toks.iter().map(|t| exec_line(t)).collect();
    append(&log, &lines);
    let slow = Sink::builder().delay(Duration::from_millis(15)).start();
    let env = base_env(
        &slow.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    // Past at least one checkpoint write (every second) with events still queued.
    let deadline = Instant::now() + GUARD;
    while !cp.exists() || slow.events().len() < 20 {
        a.assert_running();
        assert!(Instant::now() < deadline, "no checkpoint:\n{}", a.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    a.signal("KILL");
    let st = a.wait_exit(GUARD);
    assert_eq!(st.code(), None, "killed by a signal");
    let first = slow.events().len();
    // The restart resumes exactly here: it sends every event of the lines from this offset on,
    // but the first `skip_events` of the line at the offset (accepted before a clean stop).
    let at_kill = support::read_checkpoint(&cp).expect("a checkpoint before the kill");

    let sink = Sink::start();
    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(
        &[&slow, &sink],
        100 * support::EXEC_TYPES.len(),
        "after the restart",
        &b,
    );
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();

    // Where each line starts; what the restart must send, computed from the checkpoint alone.
    let mut resent = Multiset::new();
    let mut offset = 0u64;
    let mut line_starts = vec![];
    for (t, line) in toks.iter().zip(&lines) {
        line_starts.push(offset);
        let types: &[&str] = match offset.cmp(&at_kill.offset) {
            std::cmp::Ordering::Less => &[],
            std::cmp::Ordering::Equal => &support::EXEC_TYPES[at_kill.skip_events as usize..],
            std::cmp::Ordering::Greater => &support::EXEC_TYPES,
        };
        for ty in types {
            *resent.entry((actor(t), ty.to_string())).or_default() += 1;
        }
        offset += line.len() as u64 + 1;
    }
    assert!(
        line_starts.contains(&at_kill.offset) || at_kill.offset == offset,
        "the checkpoint {at_kill:?} is not at a line start"
    );
    // The restart sends only events of the lines from the checkpoint on, each at most once.
    // Those the first run had already sent are held back as repeats by the restored suppression
    // state (saved at once after a first event is accepted), except an event accepted in the
    // few milliseconds before its save: the restart may send exactly those again.
    let after = multiset(&[&sink]);
    for (k, n) in &after {
        assert!(
            *n == 1 && resent.contains_key(k),
            "the restart sent {k:?} {n} times; allowed: {resent:?}\n{err2}"
        );
    }
    for (k, _) in resent.iter().filter(|(k, _)| !after.contains_key(*k)) {
        assert!(
            multiset(&[&slow]).contains_key(k),
            "{k:?} was neither sent before the kill nor after the restart\n{err2}"
        );
    }
    // The first run sent each event at most once, and the two runs together sent every event.
    let before_kill = multiset(&[&slow]);
    assert!(before_kill.values().all(|n| *n == 1), "{before_kill:?}");
    let got = multiset(&[&slow, &sink]);
    let want = expected_exec(&toks);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{}\n{err2}",
        support::diff(&want, &got)
    );
    let repeated = got.values().filter(|n| **n > 1).count();
    eprintln!(
        "sigkill: first run delivered {first}, checkpoint at {} (+{}), {repeated} repeated after \
         the restart",
        at_kill.offset, at_kill.skip_events
    );
}

/// /readyz says the audit log is not open while it does not exist, and turns ready once it
/// appears (whose lines are all read: a file created after start is new).
#[test]
fn readyz_waits_for_the_audit_log_to_appear() {
    let dir = TempDir::new("e2e-ops", "log-appears");
    let log = dir.join("audit.log");
    let sink = Sink::start();
    let env = base_env(&sink.url(), &log, &repo_rules(), &[("START_AT", "end")]);
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    a.wait_log("(waiting for file)");
    let r = wait_http(&mut a, addr, "/readyz", |r| r.status == 503);
    assert_eq!(r.body, "audit log not open\n");
    assert_eq!(http_get(addr, "/healthz").unwrap().status, 200);
    // The scenario: the file stays missing for 25 poll intervals (POLL_INTERVAL=20ms).
    std::thread::sleep(Duration::from_millis(500));
    let toks = tokens("appear-", 2 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    wait_total(&[&sink], 4, "after the log appeared", &a);
    wait_http(&mut a, addr, "/readyz", |r| r.status == 200);
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
    // Guarantees: "the agent waits quietly (one log line, then once a minute)".
    assert_eq!(
        err.matches("waiting for the audit log to appear").count(),
        1,
        "{err}"
    );
}

/// SIGTERM while the follower is held by a full queue (QUEUE_CAPACITY=3, slow sink): the line
/// it could not queue is not acknowledged; two restarts later every event arrived exactly once
/// and the last start sends nothing again.
#[test]
fn sigterm_with_a_full_queue_then_two_restarts_deliver_exactly_once() {
    let dir = TempDir::new("e2e-ops", "full-queue");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    let toks = tokens("fullq-", 40 * 2 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let slow = Sink::builder().delay(Duration::from_millis(30)).start();
    let env = base_env(
        &slow.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp_s),
            ("QUEUE_CAPACITY", "3"),
            ("SHUTDOWN_GRACE", "300ms"),
        ],
    );
    let mut a = Agent::start(&dir, "run1", &env);
    assert!(slow.wait_for_events(5, GUARD), "{}", a.stderr());
    let err1 = a.stop();

    let sink = Sink::start();
    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s), ("QUEUE_CAPACITY", "3")],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "run2", &env2);
    wait_total(&[&slow, &sink], 80, "after the restart", &b);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(
        &[&slow, &sink],
        &expected_exec(&toks),
        &format!("{err1}\n---\n{err2}"),
    );

    // Everything was acknowledged: a third start resumes at the end and sends nothing. It has
    // read to the end and acknowledged everything once it saves a checkpoint at the end.
    let before = support::file_stamp(&cp);
    let mut c = Agent::start(&dir, "run3", &env2);
    c.wait_log(&format!(
        "(from checkpoint offset {})",
        fs::metadata(&log).unwrap().len()
    ));
    wait_caught_up(&mut c, &cp, &log, before);
    let err3 = c.stop();
    assert_eq!(sink.events().len() + slow.events().len(), 80, "{err3}");
}

// ---------------------------------------------------------------------------------------------
// Claims of the README that had no test through the real agent (issue 19, item 6).

/// Guarantees "400 / 404 / 422": a payload the backend refuses for good (here 422 and 400) is
/// logged with its `detail`, counted by status, written to `DEAD_LETTER_PATH` (one JSON line
/// each, the payload as sent) and acknowledged; every other event is delivered exactly once.
#[test]
fn refused_events_go_to_dead_letter_path_and_the_rest_is_delivered_once() {
    let dir = TempDir::new("e2e-ops", "dead-letter");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let dead = dir.join("dead-letters.jsonl");
    let toks = ["dl-ok-0", "dl-r422-1", "dl-ok-2", "dl-r400-3", "dl-ok-4"].map(String::from);
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let sink = Sink::builder()
        .reject_containing("dl-r422-", 422)
        .reject_containing("dl-r400-", 400)
        .start();
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp.display().to_string()),
            ("DEAD_LETTER_PATH", &dead.display().to_string()),
        ],
    );
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    wait_caught_up(&mut a, &cp, &log, None);
    let m = metrics(addr);
    let err = a.stop();

    let ok: Vec<String> = toks
        .iter()
        .filter(|t| t.contains("-ok-"))
        .cloned()
        .collect();
    assert_exactly_once(&[&sink], &expected_exec(&ok), &err);
    // The dead-letter file: exactly the refused payloads, in log order, as JSON lines.
    let text = fs::read_to_string(&dead).unwrap_or_else(|e| panic!("{e}\n{err}"));
    let refused: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v.as_object().unwrap().len(), 9, "a whole payload: {l}");
            (
                v["actor"].as_str().unwrap().into(),
                v["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["dl-r422-1", "dl-r400-3"]
        .iter()
        .flat_map(|t| support::EXEC_TYPES.map(|ty| (actor(t), ty.to_string())))
        .collect();
    assert_eq!(refused, want, "{err}");
    let per = support::EXEC_TYPES.len();
    let rejected = |s: &str| metric(&m, "healert_agent_events_rejected_total", &[("status", s)]);
    assert_eq!((rejected("422"), rejected("400")), (per as f64, per as f64));
    assert_eq!(
        metric(&m, "healert_agent_dead_lettered_total", &[]),
        (2 * per) as f64
    );
    assert_eq!(metric(&m, "healert_agent_queue_depth", &[]), 0.0);
    assert_eq!(metric(&m, "healert_agent_retries_total", &[]), 0.0);
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("backend refused the event; it will never accept this payload"))
        .collect();
    assert_eq!(warned.len(), 2 * per, "{err}");
    let statuses = std::iter::repeat_n("422", per).chain(std::iter::repeat_n("400", per));
    for (l, status) in warned.iter().zip(statuses) {
        assert!(l.contains(&format!("[{status}]")), "{l}");
        assert!(l.contains("detail="), "{l}");
        assert!(l.contains(&dead.display().to_string()), "{l}");
    }
}

/// Guarantees "429 / 503: MAX_EVENTS_PER_MINUTE avoids them": the agent paces its POSTs. With
/// 300 a minute (one per 200 ms) six events take at least five intervals; unpaced, they reach a
/// loopback sink within milliseconds. (A lower bound: a slow machine only makes it pass more
/// easily; one interval of margin covers the first request's own delay.)
#[test]
fn max_events_per_minute_paces_the_posts_of_the_running_agent() {
    let dir = TempDir::new("e2e-ops", "pacing");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    // Six events.
    let toks = tokens("pace-", 6 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let sink = Sink::start();
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp.display().to_string()),
            ("MAX_EVENTS_PER_MINUTE", "300"),
        ],
    );
    let mut a = Agent::start(&dir, "run", &env);
    wait_total(&[&sink], 6, "paced delivery", &a);
    wait_caught_up(&mut a, &cp, &log, None);
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
    let at: Vec<Instant> = sink
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.at)
        .collect();
    assert_eq!(at.len(), 6, "one POST per event");
    let span = at[5] - at[0];
    assert!(
        span >= Duration::from_millis(5 * 200 - 200),
        "6 POSTs within {span:?}: not paced at 300 a minute\n{err}"
    );
}

/// Guarantees "line longer than MAX_LINE_BYTES": skipped without being held, one warning with
/// its offset, counted; and /metrics counts rotations and copytruncates exactly. Two over-long
/// lines, two rename rotations and one copytruncate, each waited for: the counters are exactly
/// 2, 2 and 1, and every event of the ordinary lines arrives once.
#[test]
fn metrics_count_oversized_lines_rotations_and_truncations_exactly() {
    let dir = TempDir::new("e2e-ops", "exact-counters");
    let log = dir.join("audit.log");
    let sink = Sink::start();
    File::create(&log).unwrap();
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("MAX_LINE_BYTES", "1KiB"), ("LOG_LEVEL", "debug")],
    );
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    let long = |n: usize| format!("{{\"kind\":\"Event\",\"filler\":\"{}\"}}", "x".repeat(n));
    let mut toks = Vec::new();
    let mut batch = |prefix: &str, long_at: Option<usize>, a: &Agent| -> Option<u64> {
        let t = tokens(prefix, 2);
        let mut lines = vec![exec_line(&t[0])];
        let mut offset = None;
        if let Some(n) = long_at {
            let size = fs::metadata(&log).map_or(0, |m| m.len());
            offset = Some(size + lines[0].len() as u64 + 1);
            lines.push(long(n));
        }
        lines.push(exec_line(&t[1]));
        append(&log, &lines);
        toks.extend(t);
        wait_total(&[&sink], support::EXEC_TYPES.len() * toks.len(), prefix, a);
        offset
    };
    let first_long = batch("cnt-a-", Some(2000), &a).unwrap();
    for n in 1..=2 {
        fs::rename(&log, dir.join(&format!("audit.log.{n}"))).unwrap();
        File::create(&log).unwrap();
        batch(&format!("cnt-rot{n}-"), None, &a);
    }
    // copytruncate: copy aside, truncate in place; the next lines start at 0 again.
    fs::copy(&log, dir.join("audit.log.3")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let second_long = batch("cnt-ct-", Some(5000), &a).unwrap();
    let m = wait_http(&mut a, addr, "/metrics", |r| {
        parse_exposition(&r.body).is_ok_and(|e| {
            metric(&e, "healert_agent_queue_depth", &[]) == 0.0
                && metric(&e, "healert_agent_read_offset_bytes", &[])
                    == fs::metadata(&log).unwrap().len() as f64
        })
    });
    let m = parse_exposition(&m.body).unwrap();
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
    for (name, want) in [
        ("healert_agent_oversized_lines_total", 2.0),
        ("healert_agent_rotations_total", 2.0),
        ("healert_agent_truncations_total", 1.0),
    ] {
        assert_eq!(metric(&m, name, &[]), want, "{name}\n{err}");
    }
    // Both over-long lines were read in streaming mode (issue 14), none was dropped; with
    // LOG_LEVEL=debug each is logged with its offset and size.
    assert_eq!(
        metric(
            &m,
            "healert_agent_records_recovered_total",
            &[("how", "streamed")]
        ),
        2.0
    );
    for reason in ["malformed", "too_large", "too_deep", "over_max_line"] {
        assert_eq!(
            metric(
                &m,
                "healert_agent_lines_dropped_total",
                &[("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    let streamed: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("read an over-long line in streaming mode"))
        .collect();
    assert_eq!(streamed.len(), 2, "{err}");
    for (w, (offset, n)) in streamed
        .iter()
        .zip([(first_long, 2000), (second_long, 5000)])
    {
        let bytes = long(n).len() + 1;
        assert!(
            w.contains(&format!("offset={offset} ")) && w.contains(&format!("bytes={bytes} ")),
            "want offset={offset} bytes={bytes}: {w}"
        );
    }
}

/// Guarantees "kill -9: the checkpoint is at most ~1 s old": while events are acknowledged
/// steadily (a sink taking 20 ms per event), every checkpoint seen on disk covers at least every
/// line whose events were all accepted 2 s earlier (the documented 1 s, plus 1 s of margin for
/// a loaded 2-core machine), and it moves several times.
#[test]
fn the_checkpoint_follows_the_acknowledged_events_within_about_a_second() {
    let dir = TempDir::new("e2e-ops", "checkpoint-age");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let toks = tokens("age-", 120);
    let lines: Vec<String> = toks.iter().map(|t| exec_line(t)).collect();
    append(&log, &lines);
    // starts[i]: where line i starts; starts[n]: the end of the file.
    let mut starts = vec![0u64];
    for l in &lines {
        starts.push(starts.last().unwrap() + l.len() as u64 + 1);
    }
    let sink = Sink::builder().delay(Duration::from_millis(20)).start();
    let env = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp.display().to_string())],
    );
    const AGE: Duration = Duration::from_secs(2);
    let mut a = Agent::start(&dir, "run", &env);
    // (when, events accepted by then) and (when, lines the checkpoint on disk covers).
    let mut accepted: Vec<(Instant, usize)> = Vec::new();
    let mut covered: Vec<(Instant, usize)> = Vec::new();
    let deadline = Instant::now() + GUARD;
    let per_line = support::EXEC_TYPES.len();
    while sink.events().len() < per_line * toks.len() {
        a.assert_running();
        assert!(
            Instant::now() < deadline,
            "delivery stalled:\n{}",
            a.stderr()
        );
        let now = Instant::now();
        accepted.push((now, sink.events().len()));
        // No checkpoint yet covers nothing.
        let i = support::read_checkpoint(&cp).map_or(0, |c| {
            starts
                .iter()
                .position(|&s| s == c.offset)
                .unwrap_or_else(|| panic!("checkpoint {c:?} not at a line start"))
        });
        covered.push((now, i));
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = a.stop();
    assert_exactly_once(&[&sink], &expected_exec(&toks), &err);
    let mut checked = 0;
    for &(t, lines_covered) in &covered {
        let Some(then) = t.checked_sub(AGE) else {
            continue;
        };
        // Lines all of whose events were accepted by `then` (events arrive in log order).
        let Some(&(_, n)) = accepted.iter().rev().find(|(at, _)| *at <= then) else {
            continue;
        };
        assert!(
            lines_covered >= n / per_line,
            "the checkpoint covered {lines_covered} lines while {} were acknowledged {AGE:?} \
             earlier\n{err}",
            n / per_line
        );
        checked += 1;
    }
    let moves = covered.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert!(
        checked >= 20 && moves >= 3,
        "too short to judge: {checked} samples, {moves} checkpoint moves"
    );
}

/// Metrics: "/healthz 200 while the follower and the sender made progress in the last 30 s
/// (waiting on a full queue counts as progress)". The backend refuses connections, the queue
/// (capacity 1) is full and the follower waits on it with lines unread, for longer than 30 s:
/// /healthz answers 200 at every look.
#[test]
fn waiting_on_a_full_queue_for_over_30_s_is_progress_for_healthz() {
    let dir = TempDir::new("e2e-ops", "full-queue-health");
    let log = dir.join("audit.log");
    let toks = tokens("waiting-", 5);
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let size = fs::metadata(&log).unwrap().len() as f64;
    let down = RefusedPort::new();
    let env = base_env(&down.url(), &log, &repo_rules(), &[("QUEUE_CAPACITY", "1")]);
    let (mut a, addr) = start_with_health(&dir, "run", &env);
    let blocked = |e: &Exposition| {
        metric(e, "healert_agent_queue_depth", &[]) >= 1.0
            && metric(e, "healert_agent_read_offset_bytes", &[]) < size
    };
    wait_http(&mut a, addr, "/metrics", |r| {
        parse_exposition(&r.body).is_ok_and(|e| blocked(&e))
    });
    // The stall threshold is 30 s (metrics::STALL_AFTER_MS); look for 32 s.
    let start = Instant::now();
    let mut looks = 0;
    while start.elapsed() < Duration::from_secs(32) {
        let r = http_get(addr, "/healthz").unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "ok\n"),
            "after {:?} waiting on a full queue\n{}",
            start.elapsed(),
            a.stderr()
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = metrics(addr);
    assert!(
        blocked(&m),
        "the follower was not waiting on the full queue"
    );
    assert!(looks >= 20, "{looks} looks");
    assert_eq!(http_get(addr, "/readyz").unwrap().status, 503);
    a.stop();
}

/// Guarantees "401 / 403" for 403: the key is refused, /readyz says so (403), every event is
/// kept (nothing sent, nothing dead-lettered); a restart against a backend that accepts the
/// key delivers each event once.
#[test]
fn forbidden_403_keeps_every_event_and_a_restart_delivers_them_once() {
    let dir = TempDir::new("e2e-ops", "forbidden");
    let log = dir.join("audit.log");
    let cp = dir.join("checkpoint");
    let cp_s = cp.display().to_string();
    // Eight events.
    let toks = tokens("forbidden-", 8 / support::EXEC_TYPES.len());
    append(&log, &toks.iter().map(|t| exec_line(t)).collect::<Vec<_>>());
    let refusing = Sink::builder()
        .script(vec![crate::sink::Action::Status(403); 1000])
        .start();
    let env = base_env(
        &refusing.url(),
        &log,
        &repo_rules(),
        &[
            ("CHECKPOINT_PATH", &cp_s),
            ("HEALERT_API_KEY", "some-key-0123456789"),
            ("SHUTDOWN_GRACE", "1s"),
        ],
    );
    let (mut a, addr) = start_with_health(&dir, "forbidden", &env);
    let r = wait_http(&mut a, addr, "/readyz", |r| r.status == 503);
    assert!(
        r.body.contains("backend rejected the API key (403)") && r.body.contains("HEALERT_API_KEY"),
        "{}",
        r.body
    );
    let m = metrics(addr);
    assert_eq!(
        metric(
            &m,
            "healert_agent_backend_state",
            &[("state", "unauthorized")]
        ),
        1.0
    );
    assert_eq!(metric(&m, "healert_agent_queue_depth", &[]), 8.0);
    assert_eq!(metric(&m, "healert_agent_dead_lettered_total", &[]), 0.0);
    a.wait_log("HEALERT_API_KEY is not accepted by the backend");
    let err1 = a.stop();
    assert!(refusing.events().is_empty(), "{err1}");
    assert!(err1.contains("pending_left_in_log=8"), "{err1}");

    let sink = Sink::start();
    let env2 = base_env(
        &sink.url(),
        &log,
        &repo_rules(),
        &[("CHECKPOINT_PATH", &cp_s)],
    );
    let before = support::file_stamp(&cp);
    let mut b = Agent::start(&dir, "accepted", &env2);
    wait_total(&[&sink], 8, "after the restart", &b);
    wait_caught_up(&mut b, &cp, &log, before);
    let err2 = b.stop();
    assert_exactly_once(&[&refusing, &sink], &expected_exec(&toks), &err2);
}
