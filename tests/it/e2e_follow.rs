//! Issue 4's acceptance through the real binary: the agent follows a real audit log in a
//! temporary directory and delivers to the std-only [`Sink`]; every scenario writes known
//! matching and non-matching lines and compares the exact multiset of events the sink
//! accepted (none missing, none twice): rename rotations under a continuous writer,
//! copytruncate, a line written in pieces, a missing/deleted/recreated file, clean and
//! `kill -9` restarts with a checkpoint, rotations while the agent is down, a 64 MiB line in
//! bounded memory, and a sink slower than the writer.
//!
//! Every matching line is a `kubectl exec` by a unique human actor, which the repository's
//! rules.yaml turns into one event (`kubectl-exec`, [`support::EXEC_TYPES`]): the actor carries the
//! line's token. Non-matching lines are the same shape by a service account, or a `list` of
//! configmaps. Waits are bounded by [`HANG_GUARD`] (never timing assertions) and wait for a
//! condition on the agent's own state (its checkpoint, its /metrics on `HEALTH_ADDR=127.0.0.1:0`),
//! never a fixed time; each agent is a child killed and reaped on drop; each test's directory
//! is removed on drop.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use healert_agent::source::checkpoint;

use crate::ops::parse_exposition;
use crate::sink::Sink;
use crate::support::{self, append, audit_id, diff, Multiset, Proc, TempDir};

/// Hang guard for every wait (never a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(60);
const POLL: &str = "20ms";

/// README "Performance": a line over MAX_LINE_BYTES (16 MiB) costs at most the cap + 5 MB.
/// Margin: 1 MiB for what the test setup adds (the health server thread of HEALTH_ADDR).
const MAX_HWM_LONG_LINE_KIB: u64 = 16 * 1024 + 5_000_000 / 1024 + 1024;
/// README "Performance": peak RSS on ordinary logs at most 5 MB (measured 3.5–3.6 MB); the
/// same 1 MiB margin.
const MAX_HWM_KIB: u64 = 5_000_000 / 1024 + 1024;

// ---------------------------------------------------------------------------------------------
// Audit lines, expected events.

/// A `kubectl exec` by the human `token` (two events with rules.yaml), with its newline.
fn exec_line(token: &str) -> String {
    support::exec_line(token) + "\n"
}

/// A line no rule matches: an exec by a service account, or a `list` of configmaps.
fn quiet_line(token: &str, variant: usize) -> String {
    if variant % 2 == 0 {
        exec_line("system:serviceaccount:kube-system:foo").replace(
            "web-7d4b9c8f6-abcde",
            &format!("quiet-{}", token.replace([':', '@', '.'], "-")),
        )
    } else {
        support::list_configmaps_line(token) + "\n"
    }
}

/// Lines `prefix-i` for `i` in `range`: two of every three match. Returns the text of each
/// line and the tokens (actors) of the matching ones, in order.
fn mixed(prefix: &str, range: std::ops::Range<usize>) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    for i in range {
        let token = format!("{prefix}-{i}@example.com");
        if i % 3 == 2 {
            lines.push(quiet_line(&token, i / 3));
        } else {
            lines.push(exec_line(&token));
            tokens.push(token);
        }
    }
    (lines, tokens)
}

/// The events of the matching lines by `tokens` (the actors).
fn expected(tokens: &[String]) -> Multiset {
    support::expected_exec(tokens)
}

/// Like [`mixed`], but every matching line makes two events ([`support::BYPASS_TYPES`]), so
/// that a stop can fall between the two events of one line.
fn mixed_pairs(prefix: &str, range: std::ops::Range<usize>) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    for i in range {
        let token = format!("{prefix}-{i}@example.com");
        if i % 3 == 2 {
            lines.push(quiet_line(&token, i / 3));
        } else {
            lines.push(support::bypass_patch_line(&token) + "\n");
            tokens.push(token);
        }
    }
    (lines, tokens)
}

/// The events of the [`mixed_pairs`] lines by `tokens`.
fn expected_pairs(tokens: &[String]) -> Multiset {
    let mut m = Multiset::new();
    for t in tokens {
        for ty in support::BYPASS_TYPES {
            *m.entry((t.clone(), ty.to_string())).or_default() += 1;
        }
    }
    m
}

fn received(sink: &Sink) -> Multiset {
    support::multiset(&[sink])
}

/// Actors in arrival order, each line's two events folded into one entry.
fn actor_order(sink: &Sink) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ev in sink.events_json() {
        let a = ev["actor"].as_str().unwrap_or("").to_string();
        if out.last() != Some(&a) {
            out.push(a);
        }
    }
    out
}

fn assert_exact(sink: &Sink, want: &Multiset, agent_log: &str) {
    support::assert_exactly_once(&[sink], want, agent_log);
}

/// kube-apiserver's rotation: rename aside with a timestamp, then a new empty file.
fn rotate(dir: &TempDir, n: usize) -> PathBuf {
    let aside = dir.join(&format!(
        "audit-2026-11-25T10-{:02}-{:02}.000.log",
        n / 60,
        n % 60
    ));
    fs::rename(dir.log(), &aside).unwrap();
    File::create(dir.log()).unwrap();
    aside
}

fn wait_until(what: &str, agent: &Agent, cond: impl FnMut() -> bool) {
    support::wait_until(HANG_GUARD, what, cond, || {
        format!("--- agent log (tail) ---\n{}", agent.log_tail())
    });
}

/// Waits until the sink accepted at least `n` events.
fn wait_events(sink: &Sink, n: usize, agent: &Agent) {
    if !sink.wait_for_events(n, HANG_GUARD) {
        panic!(
            "hang guard: {} of {n} events arrived\n--- agent log (tail) ---\n{}",
            sink.events().len(),
            agent.log_tail()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The agent under test: a child process, killed and reaped on drop.

struct Agent {
    proc: Proc,
    log: PathBuf,
}

/// The last 30 lines of the agent's log at `path`.
fn log_tail_at(path: &Path) -> String {
    let t = support::read_lossy(path);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Agent {
    /// Starts `healert-agent run` on `dir`'s audit.log against `sink`, with `extra` variables
    /// on top of the test defaults (fast polling, rules.yaml of the repository, a health server
    /// on `127.0.0.1:0` for [`Agent::metric`]).
    fn start(dir: &TempDir, sink: &Sink, extra: &[(&str, &str)]) -> Agent {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = dir.join(&format!(
            "agent-{}.stderr",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new(support::bin());
        cmd.arg("run")
            .env_clear()
            .current_dir(dir.path())
            .env("HEALERT_BACKEND_URL", sink.url())
            .env("AUDIT_LOG_PATH", dir.log())
            .env("RULES_PATH", support::repo_rules())
            .env("POLL_INTERVAL", POLL)
            .env("LOG_LEVEL", "info")
            .env("HEALTH_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("cannot start healert-agent");
        let agent = Agent {
            proc: Proc::new(child),
            log,
        };
        // The banner is logged once the follower has looked at the file: from here on, what is
        // written is the agent's to read.
        wait_until("the agent's banner", &agent, || {
            agent.log_text().contains("  rules ")
        });
        agent
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn log_text(&self) -> String {
        support::read_lossy(&self.log)
    }

    fn log_tail(&self) -> String {
        log_tail_at(&self.log)
    }

    /// A value of the agent's /metrics (0 when the series is absent); panics if the health
    /// server cannot be reached.
    fn metric(&self, name: &str) -> f64 {
        let port = support::listening_port(self.pid())
            .unwrap_or_else(|| panic!("the agent listens on no port\n{}", self.log_tail()));
        let r = support::http_get(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "/metrics",
        )
        .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.log_tail()));
        assert_eq!(r.status, 200, "{}", r.body);
        parse_exposition(&r.body)
            .unwrap_or_else(|e| panic!("{e}"))
            .value(name, &[])
            .unwrap_or(0.0)
    }

    /// Waits until the agent has read every byte of the file (its `bytes_read_total` counts
    /// partial lines too) and looked at the file's size since (`file_size_bytes`).
    fn wait_read_to(&self, size: u64) {
        wait_until("the agent reads to the end of the file", self, || {
            self.metric("healert_agent_bytes_read_total") >= size as f64
                && self.metric("healert_agent_file_size_bytes") == size as f64
        });
    }

    /// Peak resident set size of the agent so far, in KiB (`VmHWM` of /proc/PID/status).
    fn vm_hwm_kib(&self) -> u64 {
        support::peak_rss_kb(self.pid()).expect("VmHWM in /proc/PID/status")
    }

    fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let log = &self.log;
        self.proc.wait_exit(HANG_GUARD, || {
            format!("--- agent log (tail) ---\n{}", log_tail_at(log))
        })
    }

    /// SIGTERM, then waits for a clean exit; returns the agent's log.
    fn stop(mut self) -> String {
        self.signal("TERM");
        let st = self.wait_exit();
        let log = self.log_text();
        assert!(st.success(), "exit status {st:?} after SIGTERM\n{log}");
        log
    }

    /// SIGKILL, then reaps it.
    fn kill9(mut self) {
        self.signal("KILL");
        self.wait_exit();
    }
}

fn env_start_beginning() -> Vec<(&'static str, &'static str)> {
    vec![("START_AT", "beginning")]
}

/// Writes a first matching line and waits for its events: the agent is then reading.
fn ready(dir: &TempDir, sink: &Sink, agent: &Agent, tokens: &mut Vec<String>, name: &str) {
    let token = format!("{name}-ready@example.com");
    append(&dir.log(), &exec_line(&token));
    tokens.push(token);
    wait_events(sink, support::EXEC_TYPES.len() * tokens.len(), agent);
}

// ---------------------------------------------------------------------------------------------
// (1) rename rotation every K lines while a writer appends continuously.

#[test]
fn e2e_rename_rotation_every_k_lines_with_a_continuous_writer() {
    const N: usize = 1800;
    const K: usize = 250;
    let dir = TempDir::new("e2e-follow", "rename");
    let sink = Sink::start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(&dir, &sink, &env_start_beginning());
    let mut tokens = Vec::new();
    ready(&dir, &sink, &agent, &mut tokens, "rename");

    let (lines, toks) = mixed("rename", 0..N);
    tokens.extend(toks);
    let mut f = OpenOptions::new().append(true).open(dir.log()).unwrap();
    let mut rotations = 0;
    for (i, line) in lines.iter().enumerate() {
        if i > 0 && i % K == 0 {
            drop(f);
            rotations += 1;
            rotate(&dir, rotations);
            f = OpenOptions::new().append(true).open(dir.log()).unwrap();
        }
        f.write_all(line.as_bytes()).unwrap();
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    drop(f);
    assert!(rotations >= 6);

    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens, "events left out of log order");
}

// ---------------------------------------------------------------------------------------------
// (2) copytruncate rotation.

#[test]
fn e2e_copytruncate_rotation_with_the_writer_paused_during_copy_and_truncate() {
    let dir = TempDir::new("e2e-follow", "copytruncate");
    let sink = Sink::start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(&dir, &sink, &env_start_beginning());
    let mut tokens = Vec::new();
    ready(&dir, &sink, &agent, &mut tokens, "ct");

    // The writer keeps its descriptor (O_APPEND) across the truncations, like a daemon.
    let mut writer = OpenOptions::new().append(true).open(dir.log()).unwrap();
    let mut next = 0;
    // Each batch is bigger than the last, so after a truncation the file soon outgrows the
    // old read offset (a rewrite the size alone does not reveal).
    for (cycle, batch) in [200usize, 500, 900].into_iter().enumerate() {
        let (lines, toks) = mixed("ct", next..next + batch);
        next += batch;
        for l in &lines {
            writer.write_all(l.as_bytes()).unwrap();
        }
        tokens.extend(toks);
        if cycle == 2 {
            break;
        }
        // The writer pauses; the agent has read what was written (the copy/truncate window
        // loses what is unread at truncation: a documented hazard of copytruncate).
        wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
        fs::copy(dir.log(), dir.join(&format!("audit.log.{}", cycle + 1))).unwrap();
        OpenOptions::new()
            .write(true)
            .open(dir.log())
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    drop(writer);

    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    assert!(
        log.contains("truncated or rewritten"),
        "the truncation was not reported:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// (3) a matching line written in three pieces with pauses between them.

#[test]
fn e2e_a_matching_line_written_in_three_pieces() {
    let dir = TempDir::new("e2e-follow", "pieces");
    let sink = Sink::start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(&dir, &sink, &env_start_beginning());
    let mut tokens = Vec::new();
    ready(&dir, &sink, &agent, &mut tokens, "pieces");

    // Two lines: one cut inside the actor name and before its closing brace, one whose last
    // piece is its newline alone.
    for (n, cut) in [
        ("pieces-a@example.com", false),
        ("pieces-b@example.com", true),
    ] {
        let (q, _) = mixed(&format!("pieces-q{n}"), 2..3);
        append(&dir.log(), &q[0]);
        let line = exec_line(n);
        let user = line.find(n).unwrap() + n.len() / 2;
        let second = if cut { line.len() - 1 } else { line.len() - 2 };
        let pieces = [&line[..user], &line[user..second], &line[second..]];
        for (i, p) in pieces.iter().enumerate() {
            append(&dir.log(), p);
            if i < 2 {
                // The agent has read the incomplete line: nothing may be emitted for it. (All
                // lines before it were delivered, so the queue is empty too.)
                let total = fs::metadata(dir.log()).unwrap().len();
                agent.wait_read_to(total);
                assert_eq!(agent.metric("healert_agent_queue_depth"), 0.0);
                let got = sink.events().len();
                assert_eq!(
                    got,
                    support::EXEC_TYPES.len() * tokens.len(),
                    "an event was sent for an incomplete line (after piece {})\n{}",
                    i + 1,
                    agent.log_tail()
                );
            }
        }
        tokens.push(n.to_string());
        wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    }
    let (lines, toks) = mixed("pieces-tail", 0..30);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);

    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
}

// ---------------------------------------------------------------------------------------------
// (4) file missing at start, created later; deleted and recreated.

#[test]
fn e2e_file_missing_at_start_then_created_deleted_and_recreated() {
    let dir = TempDir::new("e2e-follow", "missing");
    let sink = Sink::start();
    // START_AT=end (the default): a file that appears after the start is new, read from 0.
    let agent = Agent::start(&dir, &sink, &[("START_AT", "end")]);
    let mut tokens = Vec::new();

    let (lines, toks) = mixed("created", 0..120);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);

    // More lines, then the file is deleted at once and a new one created (often on the same
    // inode): the open file is drained, the new one is read from its start.
    let (lines, toks) = mixed("deleted", 0..90);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    fs::remove_file(dir.log()).unwrap();
    let (lines, toks) = mixed("recreated", 0..150);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);

    // Deleted; the agent sees the path gone (and says so) while it keeps the open file;
    // recreated.
    const GONE: &str = "the audit log path no longer exists";
    let gone_before = agent.log_text().matches(GONE).count();
    fs::remove_file(dir.log()).unwrap();
    wait_until("the agent sees the path gone", &agent, || {
        agent.log_text().matches(GONE).count() > gone_before
    });
    let (lines, toks) = mixed("again", 0..60);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);

    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
}

// ---------------------------------------------------------------------------------------------
// (5) clean restart with a checkpoint.

fn assert_checkpoint_at_end(dir: &TempDir, cp_path: &Path) {
    let cp = checkpoint::load(cp_path)
        .expect("checkpoint readable")
        .expect("checkpoint written");
    let len = fs::metadata(dir.log()).unwrap().len();
    assert_eq!(cp.path, dir.log());
    assert_eq!(
        cp.position.offset, len,
        "checkpoint is not at the end: {cp:?}"
    );
    assert_eq!(cp.skip_events, 0, "{cp:?}");
    let f = File::open(dir.log()).unwrap();
    let id = healert_agent::source::position::file_id(&f).unwrap();
    assert!(
        cp.position.file.same_file(&id),
        "checkpoint names another file: {cp:?} vs {id:?}"
    );
}

#[test]
fn e2e_clean_restart_resumes_from_the_checkpoint_without_loss_or_duplicate() {
    let dir = TempDir::new("e2e-follow", "restart");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();

    let (lines, mut tokens) = mixed("before", 0..300);
    append(&dir.log(), &lines.concat());
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "beginning"), ("CHECKPOINT_PATH", &cp)],
    );
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    agent.stop();
    assert_checkpoint_at_end(&dir, &cp_path);

    // Written while the agent is down.
    let (lines, toks) = mixed("while-down", 0..200);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    // START_AT=end: only the checkpoint can bring the lines written while down.
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    let (lines, toks) = mixed("after", 0..100);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    assert_checkpoint_at_end(&dir, &cp_path);
}

/// A clean stop with events still queued (short grace, slow sink), many times in a row, with
/// the log rotated under the backlog and again while the agent is down: each checkpoint
/// records the first unacknowledged line (in whichever file) and how many of its events were
/// accepted, so nothing is lost and nothing is sent twice.
#[test]
fn e2e_clean_stops_with_a_backlog_across_rotations_lose_and_repeat_nothing() {
    let dir = TempDir::new("e2e-follow", "restart-backlog");
    let sink = Sink::builder().delay(Duration::from_millis(15)).start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let (lines, mut tokens) = mixed_pairs("backlog-a", 0..120);
    append(&dir.log(), &lines.concat());
    let env = [
        ("START_AT", "beginning"),
        ("CHECKPOINT_PATH", cp.as_str()),
        ("SHUTDOWN_GRACE", "100ms"),
        ("QUEUE_CAPACITY", "20"),
    ];
    let mut logs = String::new();
    let (mut with_pending, mut mid_line) = (0, 0);
    let mut round = 0;
    loop {
        if round == 2 {
            // While down: the live file grows and is rotated; a new one follows.
            let (lines, toks) = mixed_pairs("backlog-c", 0..60);
            append(&dir.log(), &lines.concat());
            tokens.extend(toks);
            rotate(&dir, 2);
            let (lines, toks) = mixed_pairs("backlog-d", 0..60);
            append(&dir.log(), &lines.concat());
            tokens.extend(toks);
        }
        let agent = Agent::start(&dir, &sink, &env);
        if round == 0 {
            // Rotated while the first file's events are still queued or unread.
            rotate(&dir, 1);
            let (lines, toks) = mixed_pairs("backlog-b", 0..90);
            append(&dir.log(), &lines.concat());
            tokens.extend(toks);
        }
        let want = support::BYPASS_TYPES.len() * tokens.len();
        let got = sink.events().len();
        if round >= 3 && got >= want {
            wait_events(&sink, want, &agent);
            logs.push_str(&agent.stop());
            break;
        }
        // Stop after some more events, mid-backlog; the count varies from stop to stop so that
        // some fall between the two events of one line.
        wait_events(&sink, (got + 25 + (round * 7) % 20).min(want), &agent);
        let log = agent.stop();
        if !log.contains("pending_left_in_log=0") {
            with_pending += 1;
        }
        logs.push_str(&log);
        if let Ok(Some(c)) = checkpoint::load(&cp_path) {
            if c.skip_events > 0 {
                mid_line += 1;
            }
        }
        round += 1;
        assert!(round < 60, "no progress across restarts");
    }
    assert!(
        with_pending >= 3,
        "only {with_pending} stops left events queued"
    );
    // The resume skip was used: some stop fell between the two events of one line (the mid-line
    // resume itself is pinned deterministically by e2e_a_checkpoint_in_the_middle_of_a_line_…).
    assert!(
        mid_line > 0,
        "no stop fell between the two events of a line in {round} stops"
    );
    eprintln!(
        "clean stops: {round} stops, {with_pending} with events left queued, {mid_line} \
         checkpoint(s) between the two events of a line"
    );
    let tail: String = logs.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert_exact(&sink, &expected_pairs(&tokens), &tail);
    assert_eq!(actor_order(&sink), tokens);
    assert_checkpoint_at_end(&dir, &cp_path);
}

// ---------------------------------------------------------------------------------------------
// (6) kill -9, then restart: no loss.

/// Start offset of each line of `lines` written from offset `base`.
fn offsets(base: u64, lines: &[String]) -> Vec<u64> {
    let mut off = base;
    lines
        .iter()
        .map(|l| {
            let o = off;
            off += l.len() as u64;
            o
        })
        .collect()
}

#[test]
fn e2e_kill_9_then_restart_loses_nothing() {
    let dir = TempDir::new("e2e-follow", "kill9");
    let sink = Sink::builder().delay(Duration::from_millis(3)).start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();

    let (lines, mut tokens) = mixed("k9", 0..600);
    let line_at: BTreeMap<String, u64> = {
        let offs = offsets(0, &lines);
        let mut m = BTreeMap::new();
        for (i, off) in offs.iter().enumerate() {
            if i % 3 != 2 {
                m.insert(format!("k9-{i}@example.com"), *off);
            }
        }
        m
    };
    append(&dir.log(), &lines.concat());
    let env = [
        ("START_AT", "beginning"),
        ("CHECKPOINT_PATH", cp.as_str()),
        ("QUEUE_CAPACITY", "50"),
    ];
    let agent = Agent::start(&dir, &sink, &env);
    // Killed mid-delivery, after at least one checkpoint was written.
    wait_until(
        "a first checkpoint",
        &agent,
        || matches!(checkpoint::load(&cp_path), Ok(Some(c)) if c.position.offset > 0),
    );
    wait_events(&sink, 100 * support::EXEC_TYPES.len(), &agent);
    agent.kill9();
    let at_kill = checkpoint::load(&cp_path).unwrap().unwrap();
    let sent_before = sink.events().len();

    let (more, toks) = mixed("k9-down", 0..150);
    append(&dir.log(), &more.concat());
    tokens.extend(toks);
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    let want = expected(&tokens);
    wait_until("every event at least once", &agent, || {
        let got = received(&sink);
        want.keys().all(|k| got.contains_key(k))
    });
    let log = agent.stop();
    let got = received(&sink);
    let keys: Vec<_> = got.keys().cloned().collect();
    let want_keys: Vec<_> = want.keys().cloned().collect();
    assert_eq!(keys, want_keys, "{}\n{log}", diff(&want, &got));
    // Duplicates only for lines at or after the checkpoint saved before the kill.
    let mut duplicates = 0;
    for ((actor, ty), n) in &got {
        if *n > 1 {
            duplicates += n - 1;
            assert_eq!(*n, 2, "{actor} {ty} sent {n} times");
            let off = line_at.get(actor).copied().unwrap_or(u64::MAX);
            assert!(
                off >= at_kill.position.offset,
                "{actor} {ty} (line at {off}) repeated though acknowledged before the \
                 checkpoint {at_kill:?}"
            );
        }
    }
    eprintln!(
        "kill -9: {sent_before} events before the kill, checkpoint at {} (+{}), {duplicates} \
         duplicate(s) after restart",
        at_kill.position.offset, at_kill.skip_events
    );
}

/// `kill -9` while a backlog spans a rename rotation, then two more rotations while down: every
/// event arrives; repeats are limited to what the last checkpoint had not acknowledged.
#[test]
fn e2e_kill_9_with_a_backlog_across_rotations_loses_nothing() {
    let dir = TempDir::new("e2e-follow", "kill9-rot");
    let sink = Sink::builder().delay(Duration::from_millis(3)).start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let (lines, mut tokens) = mixed("k9r-a", 0..300);
    let first_file: BTreeMap<String, u64> = offsets(0, &lines)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
        .map(|(i, off)| (format!("k9r-a-{i}@example.com"), off))
        .collect();
    append(&dir.log(), &lines.concat());
    let first_id =
        healert_agent::source::position::file_id(&File::open(dir.log()).unwrap()).unwrap();
    let env = [
        ("START_AT", "beginning"),
        ("CHECKPOINT_PATH", cp.as_str()),
        ("QUEUE_CAPACITY", "50"),
    ];
    let agent = Agent::start(&dir, &sink, &env);
    rotate(&dir, 1);
    let (lines, toks) = mixed("k9r-b", 0..300);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    wait_until(
        "a first checkpoint",
        &agent,
        || matches!(checkpoint::load(&cp_path), Ok(Some(c)) if c.position.offset > 0),
    );
    wait_events(&sink, 75 * support::EXEC_TYPES.len(), &agent);
    agent.kill9();
    let at_kill = checkpoint::load(&cp_path).unwrap().unwrap();
    let sent_before = sink.events().len();

    // Never read before the kill: can never be repeated.
    let mut unseen = Vec::new();
    for (n, name) in [(2, "k9r-c"), (3, "k9r-d")] {
        let (lines, toks) = mixed(name, 0..100);
        append(&dir.log(), &lines.concat());
        unseen.extend(toks.iter().cloned());
        tokens.extend(toks);
        rotate(&dir, n);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (lines, toks) = mixed("k9r-e", 0..100);
    append(&dir.log(), &lines.concat());
    unseen.extend(toks.iter().cloned());
    tokens.extend(toks);

    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    let want = expected(&tokens);
    wait_until("every event at least once", &agent, || {
        let got = received(&sink);
        want.keys().all(|k| got.contains_key(k))
    });
    let log = agent.stop();
    let got = received(&sink);
    let keys: Vec<_> = got.keys().cloned().collect();
    let want_keys: Vec<_> = want.keys().cloned().collect();
    assert_eq!(keys, want_keys, "{}\n{log}", diff(&want, &got));
    let mut duplicates = 0;
    for ((actor, ty), n) in &got {
        if *n > 1 {
            duplicates += n - 1;
            assert_eq!(*n, 2, "{actor} {ty} sent {n} times");
            assert!(
                !unseen.contains(actor),
                "{actor} {ty} repeated: never read before the kill"
            );
            if at_kill.position.file.same_file(&first_id) {
                let off = first_file.get(actor).copied().unwrap_or(u64::MAX);
                assert!(
                    off >= at_kill.position.offset,
                    "{actor} {ty} (line at {off}) repeated though acknowledged before the \
                     checkpoint {at_kill:?}"
                );
            } else {
                assert!(
                    !first_file.contains_key(actor),
                    "{actor} {ty} repeated though the checkpoint had moved past its file"
                );
            }
        }
    }
    eprintln!(
        "kill -9 across rotations: {sent_before} events before the kill, checkpoint at {} (+{}) \
         in the {} file, {duplicates} duplicate(s) after restart",
        at_kill.position.offset,
        at_kill.skip_events,
        if at_kill.position.file.same_file(&first_id) {
            "first"
        } else {
            "second"
        }
    );
}

// ---------------------------------------------------------------------------------------------
// (7) rotation while the agent is down: the rotated file is drained first.

#[test]
fn e2e_rotations_while_down_are_drained_first_in_order() {
    let dir = TempDir::new("e2e-follow", "rotated-down");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "beginning"), ("CHECKPOINT_PATH", cp.as_str())];

    let (lines, mut tokens) = mixed("first", 0..150);
    append(&dir.log(), &lines.concat());
    let agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    agent.stop();
    assert_checkpoint_at_end(&dir, &cp_path);

    // While down: the checkpointed file grows and is rotated, the next one too.
    for (n, name) in [(1, "tail-of-first"), (2, "second")] {
        let (lines, toks) = mixed(name, 0..120);
        append(&dir.log(), &lines.concat());
        tokens.extend(toks);
        rotate(&dir, n);
        // Distinct modification times for the rotated files (coarse file clocks).
        std::thread::sleep(Duration::from_millis(20));
    }
    let (lines, toks) = mixed("live", 0..120);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);

    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(
        actor_order(&sink),
        tokens,
        "rotated files were not drained first, in order"
    );
}

// ---------------------------------------------------------------------------------------------
// (8) a 64 MiB line without matching content between two matching lines.

#[test]
fn e2e_a_64_mib_line_between_two_matching_lines_in_bounded_memory() {
    let dir = TempDir::new("e2e-follow", "bigline");
    let sink = Sink::start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(&dir, &sink, &env_start_beginning());
    let mut tokens = vec!["big-before@example.com".to_string()];
    append(&dir.log(), &exec_line(&tokens[0]));

    // Written in 1 MiB chunks while the agent reads (the test holds 1 MiB, not 64).
    {
        let mut f = OpenOptions::new().append(true).open(dir.log()).unwrap();
        let head = format!(
            "{{\"kind\":\"Event\",\"auditID\":\"{}\",\"stage\":\"ResponseComplete\",\"filler\":\"",
            audit_id()
        );
        f.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\"}\n").unwrap();
    }
    tokens.push("big-after@example.com".to_string());
    append(&dir.log(), &exec_line(&tokens[1]));

    wait_events(&sink, 2 * support::EXEC_TYPES.len(), &agent);
    let hwm = agent.vm_hwm_kib();
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    eprintln!("64 MiB line: agent VmHWM {hwm} KiB");
    assert!(
        hwm <= MAX_HWM_LONG_LINE_KIB,
        "agent peak RSS {hwm} KiB for a 64 MiB line (MAX_LINE_BYTES 16 MiB): over {MAX_HWM_LONG_LINE_KIB} KiB"
    );
}

// ---------------------------------------------------------------------------------------------
// (9) a sink slower than the writer: backpressure.

#[test]
fn e2e_a_slow_sink_backpressures_without_loss_in_bounded_memory() {
    let dir = TempDir::new("e2e-follow", "backpressure");
    let sink = Sink::builder().delay(Duration::from_millis(5)).start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "beginning"), ("QUEUE_CAPACITY", "5")],
    );
    let mut tokens = Vec::new();
    ready(&dir, &sink, &agent, &mut tokens, "bp");

    // Far faster than the sink (5 ms per event): the follower stalls on the full queue while
    // the log is rotated twice under it.
    let mut all = Vec::new();
    for (part, n) in [(0usize, 0..200), (1, 200..400), (2, 400..600)] {
        if part > 0 {
            rotate(&dir, part);
        }
        let (lines, toks) = mixed("bp", n);
        append(&dir.log(), &lines.concat());
        all.extend(toks);
    }
    tokens.extend(all);
    assert!(
        sink.events().len() < support::EXEC_TYPES.len() * tokens.len(),
        "the sink kept up: no backpressure"
    );

    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let hwm = agent.vm_hwm_kib();
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    eprintln!("backpressure: agent VmHWM {hwm} KiB");
    assert!(
        hwm <= MAX_HWM_KIB,
        "agent peak RSS {hwm} KiB with QUEUE_CAPACITY=5: over {MAX_HWM_KIB} KiB"
    );
}

/// Whether the agent holds the file now at `path` open (its inode among /proc/PID/fd).
fn agent_holds(agent: &Agent, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = fs::metadata(path) else {
        return false;
    };
    let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", agent.pid())) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::metadata(fd.path()).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
    })
}

/// Backpressure while kube-apiserver rotates and deletes old backups (maxbackup=1): every
/// rotated file the agent has opened stays readable until drained, even once deleted.
#[test]
fn e2e_backpressure_with_rotations_and_old_backups_deleted() {
    let dir = TempDir::new("e2e-follow", "maxbackup");
    let sink = Sink::builder().delay(Duration::from_millis(4)).start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "beginning"), ("QUEUE_CAPACITY", "5")],
    );
    let mut tokens = Vec::new();
    ready(&dir, &sink, &agent, &mut tokens, "mb");
    let mut backups: Vec<PathBuf> = Vec::new();
    for part in 0..5usize {
        if part > 0 {
            backups.push(rotate(&dir, part));
            // Like kube-apiserver, only after the new file exists; the agent must have seen
            // it (it watches the path while stalled) for the old one to be found again.
            wait_until("the agent opens the new file", &agent, || {
                agent_holds(&agent, &dir.log())
            });
            // It opened it while still behind on the old one (the queue holds 5 events, so
            // more missing at the sink means lines of the old file were unread): it watches
            // the path during the stall instead of finding the new file only after draining.
            let behind = 2 * tokens.len() - sink.events().len();
            assert!(
                behind > 5,
                "the new file was opened only {behind} events short of the old one's end: \
                 the path is not watched while the queue is full\n{}",
                agent.log_tail()
            );
            while backups.len() > 1 {
                fs::remove_file(backups.remove(0)).unwrap();
            }
        }
        let (lines, toks) = mixed(&format!("mb{part}"), 0..120);
        append(&dir.log(), &lines.concat());
        tokens.extend(toks);
    }
    assert!(
        sink.events().len() < support::EXEC_TYPES.len() * tokens.len(),
        "the sink kept up: no backpressure"
    );
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
}

/// A line half-written at a clean stop is read whole after the restart, once.
#[test]
fn e2e_a_line_completed_after_a_restart_is_delivered_once() {
    let dir = TempDir::new("e2e-follow", "half-line");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "beginning"), ("CHECKPOINT_PATH", cp.as_str())];
    let (lines, mut tokens) = mixed("half", 0..30);
    append(&dir.log(), &lines.concat());
    let agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let line = exec_line("half-split@example.com");
    let cut = line.find("half-split").unwrap() + 4;
    append(&dir.log(), &line[..cut]);
    // The agent has read the first half: the stop comes while it waits for the newline.
    agent.wait_read_to(fs::metadata(dir.log()).unwrap().len());
    agent.stop();
    let saved = checkpoint::load(&cp_path).unwrap().unwrap();
    assert_eq!(
        saved.position.offset,
        (fs::metadata(dir.log()).unwrap().len() - cut as u64),
        "the checkpoint must stop before the incomplete line"
    );
    append(&dir.log(), &line[cut..]);
    tokens.push("half-split@example.com".into());
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    let (lines, toks) = mixed("half-after", 0..30);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    assert_checkpoint_at_end(&dir, &cp_path);
}

/// A clean stop in the middle of a 64 MiB line still being written: the restart skips the rest
/// of it (it began before the checkpoint) and delivers the next matching line once, with both
/// agents' memory bounded.
#[test]
fn e2e_a_restart_in_the_middle_of_a_64_mib_line() {
    let dir = TempDir::new("e2e-follow", "bigline-restart");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "beginning"), ("CHECKPOINT_PATH", cp.as_str())];
    let mut tokens = vec!["bigr-before@example.com".to_string()];
    append(&dir.log(), &exec_line(&tokens[0]));
    let agent = Agent::start(&dir, &sink, &env);
    let chunk = vec![b'b'; 1 << 20];
    let mut f = OpenOptions::new().append(true).open(dir.log()).unwrap();
    f.write_all(
        format!(
            "{{\"kind\":\"Event\",\"auditID\":\"{}\",\"x\":\"",
            audit_id()
        )
        .as_bytes(),
    )
    .unwrap();
    for _ in 0..32 {
        f.write_all(&chunk).unwrap();
    }
    wait_events(&sink, support::EXEC_TYPES.len(), &agent);
    // Let the agent reach the end of what exists of the long line.
    wait_until("the agent reads the long line's first half", &agent, || {
        fs::read_to_string(format!("/proc/{}/io", agent.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("rchar: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .is_some_and(|r| r >= 32 << 20)
    });
    let hwm1 = agent.vm_hwm_kib();
    agent.stop();
    for _ in 0..32 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\"}\n").unwrap();
    drop(f);
    tokens.push("bigr-after@example.com".into());
    append(&dir.log(), &exec_line(&tokens[1]));
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    wait_events(&sink, 2 * support::EXEC_TYPES.len(), &agent);
    let hwm2 = agent.vm_hwm_kib();
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    eprintln!("64 MiB line across a restart: VmHWM {hwm1} KiB then {hwm2} KiB");
    assert!(
        hwm1 <= MAX_HWM_LONG_LINE_KIB && hwm2 <= MAX_HWM_LONG_LINE_KIB,
        "{hwm1} / {hwm2} KiB: over {MAX_HWM_LONG_LINE_KIB} KiB"
    );
    assert_checkpoint_at_end(&dir, &cp_path);
}

/// A tiny maxsize: many rotations between two looks at the path (default POLL_INTERVAL,
/// 250 ms). The files renamed aside in between are found in the directory and read in order.
#[test]
fn e2e_many_rotations_between_two_looks_with_the_default_poll_interval() {
    let dir = TempDir::new("e2e-follow", "rapid");
    let sink = Sink::start();
    File::create(dir.log()).unwrap();
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "beginning"), ("POLL_INTERVAL", "250ms")],
    );
    let mut tokens = Vec::new();
    ready(&dir, &sink, &agent, &mut tokens, "rapid");
    for round in 0..3usize {
        for part in 0..6usize {
            let (lines, toks) = mixed(&format!("rapid{round}-{part}"), 0..40);
            append(&dir.log(), &lines.concat());
            tokens.extend(toks);
            rotate(&dir, 1 + round * 6 + part);
        }
        let (lines, toks) = mixed(&format!("rapid{round}-live"), 0..40);
        append(&dir.log(), &lines.concat());
        tokens.extend(toks);
        wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    }
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
}

/// copytruncate while the agent is down (the writer pausing during copy+truncate): the lines
/// written after the checkpoint but before the copy live only in the copy, which is read from
/// the checkpoint offset before the truncated file is read from its start.
#[test]
fn e2e_copytruncate_while_down_reads_the_copy_from_the_checkpoint() {
    let dir = TempDir::new("e2e-follow", "ct-down");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "beginning"), ("CHECKPOINT_PATH", cp.as_str())];
    let (lines, mut tokens) = mixed("ctd-a", 0..60);
    append(&dir.log(), &lines.concat());
    let agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    agent.stop();

    let (lines, toks) = mixed("ctd-b", 0..30);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    fs::copy(dir.log(), dir.join("audit.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(dir.log())
        .unwrap()
        .set_len(0)
        .unwrap();
    let (lines, toks) = mixed("ctd-c", 0..20);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);

    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    let (lines, toks) = mixed("ctd-d", 0..20);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
    assert!(log.contains("copytruncate"), "{log}");
    assert_checkpoint_at_end(&dir, &cp_path);
}

/// The checkpoint names an empty file (just rotated in) which is deleted and recreated while
/// the agent is down: the new file is read from its start, and no older rotated file is
/// mistaken for a copy of the empty one (an empty fingerprint matches anything).
#[test]
fn e2e_empty_checkpointed_file_replaced_while_down_repeats_no_old_file() {
    let dir = TempDir::new("e2e-follow", "empty-cp");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "beginning"), ("CHECKPOINT_PATH", cp.as_str())];
    let (lines, mut tokens) = mixed("empty-old", 0..60);
    append(&dir.log(), &lines.concat());
    let agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    rotate(&dir, 1);
    let new_id = healert_agent::source::position::file_id(&File::open(dir.log()).unwrap()).unwrap();
    wait_until(
        "the checkpoint moves to the new empty file",
        &agent,
        || matches!(checkpoint::load(&cp_path), Ok(Some(c)) if c.position.file.same_file(&new_id)),
    );
    agent.stop();

    // Deleted; its inode may be reused at once by other files of the directory (neither is
    // an audit log to read, though both hold matching lines), and by the agent's stderr file.
    fs::remove_file(dir.log()).unwrap();
    let (lines, _) = mixed("must-not-be-read", 0..9);
    append(&dir.join("notes.txt"), &lines.concat());
    append(
        &dir.join("audit-2026-11-25T09-00-00.000.log.gz"),
        &lines.concat(),
    );
    // Replaced by another inode (written beside it, renamed over it).
    let (lines, toks) = mixed("empty-new", 0..30);
    append(&dir.join("replacement"), &lines.concat());
    fs::rename(dir.join("replacement"), dir.log()).unwrap();
    tokens.extend(toks);
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
}

/// Rotations in quick succession while running (backups last written within the same second),
/// then one more while down with nothing appended to the checkpointed file: after the restart
/// only the new lines are sent; the older backups, already delivered, are not read again.
#[test]
fn e2e_quick_rotations_then_one_while_down_repeat_no_backup() {
    let dir = TempDir::new("e2e-follow", "quick-down");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "beginning"), ("CHECKPOINT_PATH", cp.as_str())];
    File::create(dir.log()).unwrap();
    let agent = Agent::start(&dir, &sink, &env);
    let mut tokens = Vec::new();
    for part in 0..3usize {
        if part > 0 {
            rotate(&dir, part);
        }
        let (lines, toks) = mixed(&format!("quick{part}"), 0..30);
        append(&dir.log(), &lines.concat());
        tokens.extend(toks);
    }
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let live = healert_agent::source::position::file_id(&File::open(dir.log()).unwrap()).unwrap();
    wait_until(
        "the checkpoint reaches the end of the live file",
        &agent,
        || {
            matches!(checkpoint::load(&cp_path), Ok(Some(c))
            if c.position.file.same_file(&live)
                && c.position.offset == fs::metadata(dir.log()).unwrap().len())
        },
    );
    agent.stop();

    rotate(&dir, 3);
    let (lines, toks) = mixed("quick-after", 0..30);
    append(&dir.log(), &lines.concat());
    tokens.extend(toks);
    let agent = Agent::start(
        &dir,
        &sink,
        &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
    );
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    // Anything read twice would arrive right behind: wait for the agent to be idle at the end.
    wait_until(
        "the checkpoint reaches the end of the new file",
        &agent,
        || {
            matches!(checkpoint::load(&cp_path), Ok(Some(c))
            if c.position.offset == fs::metadata(dir.log()).unwrap().len())
        },
    );
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_eq!(actor_order(&sink), tokens);
}

/// Stopped while the log did not exist yet; created while the agent is down: the restart
/// (START_AT=end) reads it from its start, since all of it was written after the checkpoint.
#[test]
fn e2e_file_created_while_down_after_a_checkpoint_without_file() {
    let dir = TempDir::new("e2e-follow", "created-down");
    let sink = Sink::start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [("START_AT", "end"), ("CHECKPOINT_PATH", cp.as_str())];
    let agent = Agent::start(&dir, &sink, &env);
    wait_until("a checkpoint", &agent, || {
        matches!(checkpoint::load(&cp_path), Ok(Some(_)))
    });
    agent.stop();
    let (lines, tokens) = mixed("created-down", 0..45);
    append(&dir.log(), &lines.concat());
    let agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &log);
    assert_checkpoint_at_end(&dir, &cp_path);
}

/// A second SIGTERM during the shutdown grace stops at once, with events still queued; the
/// checkpoint still covers them: the restart sends each exactly once.
#[test]
fn e2e_second_sigterm_stops_at_once_and_the_restart_repeats_nothing() {
    let dir = TempDir::new("e2e-follow", "double-term");
    let sink = Sink::builder().delay(Duration::from_millis(15)).start();
    let cp_path = dir.join("checkpoint");
    let cp = cp_path.to_str().unwrap().to_string();
    let env = [
        ("START_AT", "beginning"),
        ("CHECKPOINT_PATH", cp.as_str()),
        ("QUEUE_CAPACITY", "50"),
    ];
    let (lines, tokens) = mixed("double", 0..150);
    append(&dir.log(), &lines.concat());
    let mut agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, 21, &agent);
    agent.signal("TERM");
    wait_until("the shutdown starts", &agent, || {
        agent.log_text().contains("stopping")
    });
    agent.signal("TERM");
    let st = agent.wait_exit();
    assert!(st.success(), "{st:?}\n{}", agent.log_text());
    let first = agent.log_text();
    assert!(first.contains("second signal"), "{first}");
    assert!(
        sink.events().len() < support::EXEC_TYPES.len() * tokens.len(),
        "everything was sent before the second signal"
    );
    drop(agent);
    let agent = Agent::start(&dir, &sink, &env);
    wait_events(&sink, support::EXEC_TYPES.len() * tokens.len(), &agent);
    let log = agent.stop();
    assert_exact(&sink, &expected(&tokens), &format!("{first}\n{log}"));
    assert_eq!(actor_order(&sink), tokens);
    assert_checkpoint_at_end(&dir, &cp_path);
}

/// The mid-line resume, deterministically: a checkpoint written by hand (the format of
/// ARCHITECTURE.md) names the start of a line with two events and says `skip_events` of them
/// were accepted; the file has grown past the fingerprinted prefix since (so the stored
/// fingerprint is shorter than the file's now, the case of 75e741b). Through the real binary,
/// exactly the remaining events of that line are delivered, then the lines after it.
#[test]
fn e2e_a_checkpoint_in_the_middle_of_a_line_resumes_with_its_remaining_events() {
    for skip in [0u32, 1, 2] {
        let dir = TempDir::new("e2e-follow", &format!("mid-line-{skip}"));
        let sink = Sink::start();
        let cp_path = dir.join("checkpoint");
        let cp = cp_path.to_str().unwrap().to_string();
        // Before the checkpoint: a line without events, then the line it points into.
        let quiet = quiet_line("mid-quiet@example.com", 1);
        let mid = "mid-line@example.com".to_string();
        append(&dir.log(), &quiet);
        append(&dir.log(), &(support::bypass_patch_line(&mid) + "\n"));
        let at = quiet.len() as u64;
        let size = fs::metadata(dir.log()).unwrap().len();
        assert!(
            size < 1024,
            "the fingerprint must cover the whole file ({size} bytes)"
        );
        support::write_checkpoint(&cp_path, &dir.log(), at, skip);
        // Written after the checkpoint: the file grows past 1 KiB.
        let (lines, after) = mixed("mid-after", 0..6);
        append(&dir.log(), &lines.concat());
        assert!(fs::metadata(dir.log()).unwrap().len() > 1024);

        let before = support::file_stamp(&cp_path);
        // START_AT=end: without the checkpoint nothing of this file would be read.
        let agent = Agent::start(
            &dir,
            &sink,
            &[("START_AT", "end"), ("CHECKPOINT_PATH", &cp)],
        );
        assert!(
            agent
                .log_text()
                .contains(&format!("(from checkpoint offset {at})")),
            "{}",
            agent.log_text()
        );
        wait_until("the checkpoint reaches the end of the file", &agent, || {
            support::checkpoint_at_end(&cp_path, &dir.log(), before)
        });
        let log = agent.stop();
        let mut want = Multiset::new();
        for ty in &support::BYPASS_TYPES[skip as usize..] {
            *want.entry((mid.clone(), ty.to_string())).or_default() += 1;
        }
        want.extend(expected(&after));
        assert_exact(&sink, &want, &log);
        // In log order: what is left of the line at the checkpoint comes first.
        let types: Vec<String> = sink
            .events_json()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["actor"].as_str().unwrap(),
                    e["type"].as_str().unwrap()
                )
            })
            .collect();
        let mut order: Vec<String> = support::BYPASS_TYPES[skip as usize..]
            .iter()
            .map(|t| format!("{mid} {t}"))
            .collect();
        for a in &after {
            order.extend(support::EXEC_TYPES.iter().map(|t| format!("{a} {t}")));
        }
        assert_eq!(types, order, "skip_events={skip}");
    }
}
