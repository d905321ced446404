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
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sink::Sink;

/// Path of the built binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_healert-agent"))
}

/// `../shared` beside the repository: another project's material (the Go agent's rules files,
/// the Python reference generator). It exists on the developers' machines and in CI, never in a
/// user's fresh clone: a test that needs it gets it from [`shared_or_skip`]. `HEALERT_SHARED_DIR`
/// names it elsewhere: `.ci/run` tests a clone of the repository (which has no `../shared`
/// beside it) and points this variable at the real one for the run that needs it.
pub fn shared() -> PathBuf {
    match std::env::var_os("HEALERT_SHARED_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
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

/// `replay --rules RULES -` with `input` on its stdin (written from a thread, so a large input
/// cannot deadlock against the output), in an environment of only `env`: its whole output.
pub fn replay_stdin(rules: &Path, input: &[u8], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(["replay", "--rules"])
        .arg(rules)
        .arg("-")
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
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

/// One audit event (no newline) that rules.yaml makes two events of ([`BYPASS_TYPES`]): a
/// `patch` of deployment `shop/web` by `username` carrying the policy-bypass annotation.
pub fn bypass_patch_line(username: &str) -> String {
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Request\",\
         \"auditID\":\"{id}\",\"stage\":\"ResponseComplete\",\
         \"requestURI\":\"/apis/apps/v1/namespaces/shop/deployments/web\",\"verb\":\"patch\",\
         \"user\":{{\"username\":\"{username}\"}},\
         \"objectRef\":{{\"resource\":\"deployments\",\"namespace\":\"shop\",\"name\":\"web\",\
         \"apiGroup\":\"apps\",\"apiVersion\":\"v1\"}},\"responseStatus\":{{\"code\":200}},\
         \"requestObject\":{{\"metadata\":{{\"annotations\":{{\"policy.admission.k8s.io/bypass\":\"true\"}}}}}},\
         \"requestReceivedTimestamp\":\"2026-11-25T10:00:00.000000Z\"}}",
        id = audit_id()
    )
}

/// The event types rules.yaml makes of one [`bypass_patch_line`], in order.
pub const BYPASS_TYPES: [&str; 2] = ["pipeline-skip", "config-drift"];

/// The event types rules.yaml makes of one [`exec_line`] by a human: one act, one event
/// (`config-drift` matches the object itself or its scale, not pods/exec).
pub const EXEC_TYPES: [&str; 1] = ["kubectl-exec"];

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

// ---------------------------------------------------------------------------------------------
// Ports that cannot collide.

/// A loopback port that refuses connections (nothing listens) and that no other process can
/// listen on while this value lives: it is the local port of a loopback connection of our own,
/// which makes any `bind` of it fail. Use it for a backend that is down; [`RefusedPort::release_to`]
/// frees it for a listener of the test's own (a backend coming up on the address the agent was
/// given), to be bound at once.
pub struct RefusedPort {
    port: u16,
    client: TcpStream,
    server: TcpStream,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        drop(l);
        let port = client.local_addr().unwrap().port();
        let probe = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        );
        assert!(
            probe
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
            "port {port} should refuse connections: {probe:?}"
        );
        RefusedPort {
            port,
            client,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Frees the port and has `bind` listen on it: our connection is closed (our side first),
    /// and `bind` is retried while the port is still in use by that closing connection (its
    /// last ACK, microseconds on loopback). Panics, naming the port, if it is still taken after
    /// 10 s: then another process took it in that window.
    pub fn release_to<T>(self, mut bind: impl FnMut(u16) -> std::io::Result<T>) -> T {
        let RefusedPort {
            port,
            mut client,
            server,
        } = self;
        let _ = server.shutdown(std::net::Shutdown::Both);
        drop(server);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = client.read(&mut [0u8; 1]);
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match bind(port) {
                Ok(t) => return t,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("cannot listen on port {port}, held until just now: {e}"),
            }
        }
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        RefusedPort::new()
    }
}

/// The loopback port process `pid` listens on, read from /proc (its socket inodes among
/// /proc/PID/fd, in LISTEN state in /proc/PID/net/tcp or tcp6). Lets an agent bind
/// `HEALTH_ADDR=127.0.0.1:0` (no port can collide) and the test find where.
pub fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = std::collections::BTreeSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(n.to_string());
            }
        }
    }
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next()?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The checkpoint file, read and written here independently of src/ (format: ARCHITECTURE.md).

/// FNV-1a, 64 bit (the checkpoint's fingerprint and checksum).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a checkpoint file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// `path=` as written (percent-encoded).
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub fingerprint: u64,
    pub fingerprint_len: u32,
    pub offset: u64,
    pub skip_events: u32,
}

/// The checkpoint at `path`, if there is one and its checksum holds.
pub fn read_checkpoint(path: &Path) -> Option<SavedCheckpoint> {
    let text = fs::read_to_string(path).ok()?;
    let at = text.find("\nchecksum=")? + 1;
    let (body, sum) = text.split_at(at);
    let sum = u64::from_str_radix(sum.strip_prefix("checksum=")?.trim_end(), 16).ok()?;
    if fnv1a64(body.as_bytes()) != sum {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != "healert-agent checkpoint v1" {
        return None;
    }
    let kv: BTreeMap<&str, &str> = lines.filter_map(|l| l.split_once('=')).collect();
    Some(SavedCheckpoint {
        path: kv.get("path")?.to_string(),
        dev: kv.get("dev")?.parse().ok()?,
        ino: kv.get("ino")?.parse().ok()?,
        fingerprint: u64::from_str_radix(kv.get("fingerprint")?, 16).ok()?,
        fingerprint_len: kv.get("fingerprint_len")?.parse().ok()?,
        offset: kv.get("offset")?.parse().ok()?,
        skip_events: kv.get("skip_events")?.parse().ok()?,
    })
}

/// Writes a checkpoint by hand, as the agent would: `log` (its device, inode and the
/// fingerprint of its first min(size, 1024) bytes, now), resume at `offset`, the first
/// `skip_events` events of the line there already accepted. `log` must be plain ASCII.
pub fn write_checkpoint(path: &Path, log: &Path, offset: u64, skip_events: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(log).unwrap();
    let head = fs::read(log).unwrap();
    let head = &head[..head.len().min(1024)];
    let shown = log.to_str().unwrap();
    assert!(
        shown
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'%'),
        "write_checkpoint: {shown} needs percent-encoding"
    );
    let body = format!(
        "healert-agent checkpoint v1\npath={shown}\ndev={}\nino={}\nfingerprint={:016x}\n\
         fingerprint_len={}\noffset={offset}\nskip_events={skip_events}\n",
        meta.dev(),
        meta.ino(),
        fnv1a64(head),
        head.len()
    );
    let sum = fnv1a64(body.as_bytes());
    fs::write(path, format!("{body}checksum={sum:016x}\n")).unwrap();
}

/// The identity of the file at `path` now (inode and modification time): the agent replaces
/// its checkpoint file on each save, so a different stamp later means a save happened since.
pub fn file_stamp(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
}

/// Whether the checkpoint at `cp` was saved since `before` (its [`file_stamp`] then) and records the very end of `log`, nothing of its last line pending: the
/// agent read all of `log` and the backend acknowledged every event of it. This is the real
/// condition to wait for before asserting that nothing more arrives.
pub fn checkpoint_at_end(cp: &Path, log: &Path, before: Option<(u64, i64, i64)>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Some(c), Ok(meta)) = (read_checkpoint(cp), fs::metadata(log)) else {
        return false;
    };
    file_stamp(cp) != before
        && c.dev == meta.dev()
        && c.ino == meta.ino()
        && c.offset == meta.len()
        && c.skip_events == 0
}
