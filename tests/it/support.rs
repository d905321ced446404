//! Test support shared by the integration tests: paths of the binary and of shared test
//! material, temporary directories removed on drop, audit lines, the agent as a child process
//! guard, raw HTTP to the health server, and the `(actor, type)` multiset of what a sink
//! accepted.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sink::Sink;

/// Path of the built binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_healert-agent"))
}

/// `../shared` beside the repository: another project's material (the Go agent's rules files,
/// the Python reference generator). It exists on the developers' machines and in CI, never in a
/// user's fresh clone: a test that needs it gets it from [`shared_or_skip`].
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The variable that turns a skip for want of `../shared` into a failure (`.ci/run` sets it).
pub const REQUIRE_SHARED: &str = "HEALERT_REQUIRE_SHARED";

/// `../shared` if it is there. If not, a test that needs it for `what` prints one line saying
/// what was skipped and why (straight to stderr, so it shows in a passing run too) and gets
/// `None` (it then returns, passing) — unless `HEALERT_REQUIRE_SHARED=1`, where it fails.
pub fn shared_or_skip(what: &str) -> Option<PathBuf> {
    let dir = shared();
    if dir.is_dir() {
        return Some(dir);
    }
    let why = format!(
        "{} is absent (a fresh clone has no ../shared beside it)",
        dir.display()
    );
    if std::env::var(REQUIRE_SHARED).is_ok_and(|v| v == "1") {
        panic!("{what}: {why}, and {REQUIRE_SHARED}=1 requires it");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {what}: {why}; set {REQUIRE_SHARED}=1 to make this a failure"
    );
    None
}

/// The repository's rules.yaml.
pub fn repo_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules.yaml")
}

/// `tests/data/rules-all-enabled.yaml`: rules.yaml with its optional rules enabled (the `# `
/// prefixes of the optional block removed; `rules::rules_all_enabled_is_rules_yaml_uncommented`
/// keeps it so). The rules file with every rule of ours, for the goldens and the loaders.
pub fn rules_all_enabled() -> PathBuf {
    data().join("rules-all-enabled.yaml")
}

/// `tests/data`.
pub fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The vendored real audit logs, `tests/data/audit-samples` (see its README.md).
pub fn audit_samples() -> PathBuf {
    data().join("audit-samples")
}

// ---------------------------------------------------------------------------------------------
// Files.

/// A unique, empty temporary directory, removed (with everything in it) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/healert-<module>-<name>-<pid>-<n>`, `n` counting the directories of this
    /// process. A leftover of an earlier process that had the same pid is removed first.
    pub fn new(module: &str, name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "healert-{module}-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `audit.log` in the directory (the log the agent tests follow).
    pub fn log(&self) -> PathBuf {
        self.join("audit.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Appends `text` to `path` (created if missing) with a descriptor of its own, as a separate
/// writer would.
pub fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The text of `path`, invalid UTF-8 replaced (never hidden); empty if it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Audit lines.

/// A unique audit ID (UUID-shaped: the pid, then a counter shared by every module).
pub fn audit_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n)
}

/// One audit event (no newline): `kubectl exec` into pod `shop/web-7d4b9c8f6-abcde` by
/// `username`. With the repository's rules.yaml a human's exec yields [`EXEC_TYPES`]; a
/// service account's yields nothing.
pub fn exec_line(username: &str) -> String {
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Metadata\",\
         \"auditID\":\"{id}\",\"stage\":\"ResponseComplete\",\
         \"requestURI\":\"/api/v1/namespaces/shop/pods/web-7d4b9c8f6-abcde/exec?command=sh\",\
         \"verb\":\"create\",\"user\":{{\"username\":\"{username}\"}},\
         \"objectRef\":{{\"resource\":\"pods\",\"namespace\":\"shop\",\"name\":\"web-7d4b9c8f6-abcde\",\
         \"apiVersion\":\"v1\",\"subresource\":\"exec\"}},\"responseStatus\":{{\"code\":101}},\
         \"requestReceivedTimestamp\":\"2026-11-25T10:00:00.000000Z\"}}",
        id = audit_id()
    )
}

/// One audit event (no newline) no rule of rules.yaml matches: `username` lists the
/// configmaps of namespace `shop`.
pub fn list_configmaps_line(username: &str) -> String {
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Metadata\",\
         \"auditID\":\"{id}\",\"stage\":\"ResponseComplete\",\
         \"requestURI\":\"/api/v1/namespaces/shop/configmaps\",\"verb\":\"list\",\
         \"user\":{{\"username\":\"{username}\"}},\
         \"objectRef\":{{\"resource\":\"configmaps\",\"namespace\":\"shop\",\"apiVersion\":\"v1\"}},\
         \"responseStatus\":{{\"code\":200}},\
         \"requestReceivedTimestamp\":\"2026-11-25T10:00:00.000000Z\"}}",
        id = audit_id()
    )
}

/// The event types rules.yaml makes of one [`exec_line`] by a human.
pub const EXEC_TYPES: [&str; 2] = ["kubectl-exec", "config-drift"];

// ---------------------------------------------------------------------------------------------
// Events at the sink, as a multiset.

/// `(actor, type)` → how many times.
pub type Multiset = BTreeMap<(String, String), usize>;

/// What the `sinks` together accepted; a missing field counts as `"?"`.
pub fn multiset(sinks: &[&Sink]) -> Multiset {
    let mut m = Multiset::new();
    for s in sinks {
        for ev in s.events_json() {
            let actor = ev["actor"].as_str().unwrap_or("?").to_string();
            let ty = ev["type"].as_str().unwrap_or("?").to_string();
            *m.entry((actor, ty)).or_default() += 1;
        }
    }
    m
}

/// Each of `actors` once with each of [`EXEC_TYPES`] (what their exec lines must yield).
pub fn expected_exec<S: AsRef<str>>(actors: impl IntoIterator<Item = S>) -> Multiset {
    let mut m = Multiset::new();
    for a in actors {
        for ty in EXEC_TYPES {
            *m.entry((a.as_ref().to_string(), ty.to_string()))
                .or_default() += 1;
        }
    }
    m
}

/// What differs between two multisets, shortly: missing and extra (or repeated) entries with
/// their counts, and the sizes.
pub fn diff(want: &Multiset, got: &Multiset) -> String {
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    for (k, &n) in want {
        let g = got.get(k).copied().unwrap_or(0);
        if g < n {
            missing.push(format!("{k:?} x{}", n - g));
        } else if g > n {
            extra.push(format!("{k:?} x{}", g - n));
        }
    }
    for (k, &g) in got {
        if !want.contains_key(k) {
            extra.push(format!("{k:?} x{g}"));
        }
    }
    format!(
        "got {} distinct ({} total), want {} distinct ({} total); \
         {} missing (first: {:?}), {} extra/duplicated (first: {:?})",
        got.len(),
        got.values().sum::<usize>(),
        want.len(),
        want.values().sum::<usize>(),
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    )
}

/// Asserts that the `sinks` together accepted exactly `want`: nothing missing, nothing twice,
/// nothing else. `agent_log` is shown on failure.
pub fn assert_exactly_once(sinks: &[&Sink], want: &Multiset, agent_log: &str) {
    let got = multiset(sinks);
    assert!(
        &got == want,
        "events at the sink differ from the lines written: {}\n--- agent log ---\n{agent_log}",
        diff(want, &got)
    );
}

// ---------------------------------------------------------------------------------------------
// Waiting.

/// Polls `cond` every 10 ms until it holds; a hang guard (never a timing assertion) panics
/// after `guard`, naming `what` and showing `context()` (an agent's log, say).
pub fn wait_until(
    guard: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + guard;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "hang guard: {what} (not within {guard:?})\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A child process, killed (SIGKILL) and reaped on drop unless it was seen to exit.
pub struct Proc {
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn new(child: Child) -> Proc {
        Proc {
            child,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -SIG pid`; panics if that fails or the process was already seen to exit (its
    /// pid may belong to another process by now).
    pub fn signal(&self, sig: &str) {
        assert!(
            self.status.is_none(),
            "kill -{sig}: the process already exited ({:?})",
            self.status
        );
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// The exit status if the process has exited (remembered once seen).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Waits for the process to exit; a hang guard panics after `guard`, showing `context()`
    /// (the process's log, say).
    pub fn wait_exit(&mut self, guard: Duration, context: impl Fn() -> String) -> ExitStatus {
        let mut status = None;
        wait_until(
            guard,
            "the process did not exit",
            || {
                status = self.try_wait();
                status.is_some()
            },
            context,
        );
        status.unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Peak resident set size of process `pid` so far, in KiB (`VmHWM` of /proc/PID/status), if
/// /proc tells.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP to the health server.

/// A loopback port nobody listens on (bound then released: another process may take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A parsed HTTP answer.
pub struct Reply {
    pub status: u16,
    /// Status line and headers, without the blank line.
    pub head: String,
    pub body: String,
}

/// Sends `raw` and reads the whole answer (the health server always closes). Hang guard:
/// 10 s for the connect and each read and write.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_reply(&buf)
}

/// One `GET path` (see [`exchange`]); Err if the server cannot be reached.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Splits a whole answer into status, head and body; Err without a blank line or a status.
pub fn parse_reply(buf: &[u8]) -> std::io::Result<Reply> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}
