//! The audit webhook (`AUDIT_SOURCE=webhook`, issue 15) through the real binary and the sink:
//! batches of 1 and 400 events, concurrent posts, a malformed body, a wrong token, a body over
//! the cap, a batch posted twice, kill -9 after a 200, a full spool answered 429, and every
//! event of the real OpenShift logs delivered exactly once across a kill -9. See
//! docs/webhook.md. Waits are on real conditions (events at the sink, the checkpoint on disk),
//! never fixed sleeps; the hang guards are not timing assertions.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sink::Sink;
use crate::support::{self, wait_until, Proc, TempDir};

pub const HANG_GUARD: Duration = Duration::from_secs(60);
pub const TOKEN: &str = "webhook-test-token-5f1c";

/// The rules every test of issue 15 uses: fixed here, so that a change of rules.yaml (its
/// suppression windows, for one) does not change what these tests count.
pub const RULES: &str = r#"config:
  ignore_namespaces:
    - kube-system
rules:
  - name: kubectl-exec
    description: "kubectl exec on {resource}/{name} (ns:{namespace}) by {actor}"
    severity: high
    workflow: deploy
    ignore_system: true
    match:
      resource: pods
      subresource: exec
  - name: emergency-access
    description: "Direct secret access: {name} in {namespace} by {actor}"
    severity: medium
    workflow: incident
    ignore_system: true
    match:
      resource: secrets
      verb: get
  - name: config-drift
    description: "Direct {verb} on {resource}/{name} (ns:{namespace}) by {actor}"
    severity: high
    workflow: deploy
    ignore_system: true
    match:
      resources: [deployments, statefulsets, daemonsets, replicasets, jobs, cronjobs]
      verbs: [create, update, patch]
  - name: pipeline-skip
    description: "Policy gate bypassed on {resource}/{name} (ns:{namespace}) by {actor}"
    severity: high
    workflow: deploy
    ignore_system: true
    match:
      verbs: [patch, update, create]
      annotation: "policy.admission.k8s.io/bypass=true"
  - name: rbac-change
    description: "RBAC modified: {resource}/{name} by {actor}"
    severity: high
    workflow: deploy
    ignore_system: false
    match:
      resources: [clusterroles, clusterrolebindings, roles, rolebindings]
      verbs: [create, update, patch, delete]
"#;

/// `rules.yaml` in `dir` holding [`RULES`].
pub fn write_rules(dir: &TempDir) -> PathBuf {
    let p = dir.join("rules.yaml");
    fs::write(&p, RULES).unwrap();
    p
}

/// Payload → how many times.
pub type Payloads = BTreeMap<String, usize>;

pub fn payloads<S: AsRef<str>>(events: impl IntoIterator<Item = S>) -> Payloads {
    let mut m = Payloads::new();
    for e in events {
        *m.entry(e.as_ref().trim().to_string()).or_default() += 1;
    }
    m
}

/// Missing and extra payloads, shortly.
pub fn payload_diff(want: &Payloads, got: &Payloads) -> String {
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, _)| k.clone())
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, n)| want.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    format!(
        "want {} events, got {}; missing {} (first {:?}); extra or repeated {} (first {:?})",
        want.values().sum::<usize>(),
        got.values().sum::<usize>(),
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    )
}

/// What `replay` of `lines` with `rules` prints: the events the agent's engine makes of them.
pub fn replay_payloads(rules: &Path, input: &[u8], env: &[(&str, &str)]) -> Payloads {
    let out = support::replay_stdin(rules, input, env);
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    payloads(String::from_utf8_lossy(&out.stdout).lines())
}

/// The real OpenShift-shaped audit logs (tests/data/audit-samples when vendored, else
/// ../shared/audit-samples): their lines, or None after one loud line saying the test did not
/// run (a failure with HEALERT_REQUIRE_SHARED=1).
pub fn openshift_lines(what: &str) -> Option<Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        root.join("tests/data/audit-samples"),
        support::shared().join("audit-samples"),
    ];
    let Some(dir) = dirs.iter().find(|d| d.is_dir()) else {
        let why = "neither tests/data/audit-samples nor ../shared/audit-samples exists";
        if std::env::var("HEALERT_REQUIRE_SHARED").as_deref() == Ok("1") {
            panic!("{what}: {why}, and HEALERT_REQUIRE_SHARED=1 requires it");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {what}: {why}; set HEALERT_REQUIRE_SHARED=1 to make this a failure"
        );
        return None;
    };
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".ndjson") && (n.starts_with("openshift-") || n.contains("ocp-audit"))
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 4,
        "OpenShift logs in {}: {names:?}",
        dir.display()
    );
    let mut lines = Vec::new();
    for n in names {
        for l in support::read_lossy(&n).lines() {
            if !l.trim().is_empty() {
                lines.push(l.to_string());
            }
        }
    }
    Some(lines)
}

/// An `EventList` as kube-apiserver posts it: items without `kind` and `apiVersion`.
pub fn event_list(items: &[String]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": items,
    }))
    .unwrap()
}

/// A reply of the webhook.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `POST /audit?timeout=30s` of `body` (`Connection: close`).
pub fn post(addr: SocketAddr, token: Option<&str>, body: &[u8]) -> Answer {
    let mut head = format!(
        "POST /audit?timeout=30s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    raw(addr, head.as_bytes(), body)
}

/// Sends `head` then `body` and reads the answer to its end.
pub fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.set_write_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(head).unwrap();
    // The server may answer (and close) before the body: that is fine.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = support::parse_reply(&buf).unwrap_or_else(|e| panic!("no HTTP answer: {e}"));
    Answer {
        status: r.status,
        head: r.head,
        body: r.body,
    }
}

/// An agent with `AUDIT_SOURCE=webhook`, killed on drop.
pub struct Agent {
    proc: Proc,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Agent {
    /// Starts `healert-agent run` with the webhook on a loopback port of its choice, its spool
    /// in `dir/spool`, the rules of [`RULES`], the backend at `backend`; `extra` on top.
    pub fn start(dir: &TempDir, backend: &str, extra: &[(&str, &str)]) -> Agent {
        static N: AtomicU64 = AtomicU64::new(0);
        let rules = write_rules(dir);
        let log = dir.join(&format!(
            "agent-{}.stderr",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new(support::bin());
        cmd.arg("run")
            .env_clear()
            .current_dir(dir.path())
            .env("HEALERT_BACKEND_URL", backend)
            .env("RULES_PATH", &rules)
            .env("AUDIT_SOURCE", "webhook")
            .env("AUDIT_WEBHOOK_ADDR", "127.0.0.1:0")
            .env("AUDIT_WEBHOOK_TOKEN", TOKEN)
            .env("SPOOL_PATH", dir.join("spool"))
            .env("POLL_INTERVAL", "20ms")
            .env("HTTP_TIMEOUT", "2s")
            .env("SUPPRESS_WINDOW", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut proc = Proc::new(cmd.spawn().expect("cannot start healert-agent"));
        let mut addr = None;
        wait_until(
            HANG_GUARD,
            "the webhook's address in the banner",
            || {
                if let Some(st) = proc.try_wait() {
                    panic!(
                        "the agent exited at start ({st:?}):\n{}",
                        support::read_lossy(&log)
                    );
                }
                let text = support::read_lossy(&log);
                addr = text
                    .split("webhook on http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
                addr.is_some() && text.contains("  rules ")
            },
            || support::read_lossy(&log),
        );
        Agent {
            proc,
            log,
            addr: addr.unwrap(),
        }
    }

    pub fn log_text(&self) -> String {
        support::read_lossy(&self.log)
    }

    /// SIGTERM and a clean exit; the agent's log.
    pub fn stop(mut self) -> String {
        self.proc.signal("TERM");
        let log = self.log.clone();
        let st = self
            .proc
            .wait_exit(HANG_GUARD, || support::read_lossy(&log));
        let text = self.log_text();
        assert!(st.success(), "exit {st:?}\n{text}");
        text
    }

    /// SIGKILL, reaped.
    pub fn kill9(mut self) {
        self.proc.signal("KILL");
        self.proc.wait_exit(HANG_GUARD, String::new);
    }
}

/// A human's exec into `shop/web-…` (one kubectl-exec event under [`RULES`]).
fn exec(user: &str) -> String {
    support::exec_line(user)
}

/// An audit event no rule matches.
fn quiet(user: &str) -> String {
    support::list_configmaps_line(user)
}

/// `(actor, type)` of what the sink accepted.
fn kinds(sink: &Sink) -> BTreeMap<(String, String), usize> {
    support::multiset(&[sink])
}

fn execs(actors: &[String]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for a in actors {
        *m.entry((a.clone(), "kubectl-exec".to_string()))
            .or_default() += 1;
    }
    m
}

/// Waits until the sink holds `n` events.
fn wait_events(sink: &Sink, n: usize, agent: &Agent) {
    wait_until(
        HANG_GUARD,
        &format!("{n} events at the sink"),
        || sink.events().len() >= n,
        || format!("got {}\n{}", sink.events().len(), agent.log_text()),
    );
}

/// Waits until the saved checkpoint is at the end of the spool file: everything spooled was
/// delivered and that is on disk.
fn wait_checkpoint_at_end(dir: &TempDir, agent: &Agent) {
    let spool = dir.join("spool").join("spool.ndjson");
    let cp = dir.join("spool").join("checkpoint");
    wait_until(
        HANG_GUARD,
        "the checkpoint at the end of the spool",
        || {
            let size = fs::metadata(&spool).map(|m| m.len()).unwrap_or(u64::MAX);
            let text = support::read_lossy(&cp);
            let offset = text
                .lines()
                .find_map(|l| l.strip_prefix("offset="))
                .and_then(|o| o.parse::<u64>().ok());
            offset == Some(size)
        },
        || format!("{}\n{}", support::read_lossy(&cp), agent.log_text()),
    );
}

#[test]
fn batches_of_1_and_400_events_are_delivered_once_each() {
    let dir = TempDir::new("webhook", "batches");
    let sink = Sink::start();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    let one = "one@example.com".to_string();
    let a = post(agent.addr, Some(TOKEN), &event_list(&[exec(&one)]));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body.trim(),
        r#"{"received":1,"spooled":1,"duplicates":0}"#
    );
    // 400 events, one matching (0.25 %), as kube-apiserver batches them.
    let many = "many@example.com".to_string();
    let mut items: Vec<String> = (0..399)
        .map(|i| quiet(&format!("u{i}@example.com")))
        .collect();
    items.insert(200, exec(&many));
    let a = post(agent.addr, Some(TOKEN), &event_list(&items));
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body.trim(),
        r#"{"received":400,"spooled":1,"duplicates":0}"#
    );
    wait_events(&sink, 2, &agent);
    // Only the matching events went to the spool.
    let spooled = support::read_lossy(&dir.join("spool/spool.ndjson"));
    assert_eq!(spooled.lines().count(), 2, "{spooled}");
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&[one, many]), "{log}");
    assert!(
        log.contains("source      webhook on http://127.0.0.1:"),
        "{log}"
    );
}

#[test]
fn concurrent_posts_are_each_delivered_once() {
    let dir = TempDir::new("webhook", "concurrent");
    let sink = Sink::start();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    let addr = agent.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut actors = Vec::new();
                for b in 0..5 {
                    let actor = format!("t{t}-b{b}@example.com");
                    let mut items: Vec<String> = (0..50)
                        .map(|i| quiet(&format!("q{i}@example.com")))
                        .collect();
                    items.push(exec(&actor));
                    let a = post(addr, Some(TOKEN), &event_list(&items));
                    assert_eq!(a.status, 200, "{a:?}");
                    actors.push(actor);
                }
                actors
            })
        })
        .collect();
    let actors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    wait_events(&sink, actors.len(), &agent);
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&actors), "{log}");
}

#[test]
fn a_wrong_token_a_malformed_body_and_a_body_over_the_cap_are_refused_and_nothing_kept() {
    let dir = TempDir::new("webhook", "refused");
    let sink = Sink::start();
    let agent = Agent::start(&dir, &sink.url(), &[("AUDIT_WEBHOOK_MAX_BODY", "64KiB")]);
    let body = event_list(&[exec("intruder@example.com")]);
    // No token, a wrong one, another scheme.
    for token in [None, Some("wrong"), Some("")] {
        let a = post(agent.addr, token, &body);
        assert_eq!(a.status, 401, "{token:?}: {a:?}");
        assert!(a.head.contains("WWW-Authenticate: Bearer"), "{a:?}");
        assert!(a
            .body
            .contains("missing or wrong bearer token (AUDIT_WEBHOOK_TOKEN)"));
    }
    let basic = raw(
        agent.addr,
        format!(
            "POST / HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        &body,
    );
    assert_eq!(basic.status, 401);
    // Not an EventList: 400, and nothing of it kept (its first item matches).
    let mut broken = event_list(&[exec("broken@example.com"), exec("broken@example.com")]);
    broken.truncate(broken.len() - 40);
    broken.extend_from_slice(b"]]}");
    let a = post(agent.addr, Some(TOKEN), &broken);
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.starts_with("not an EventList: "), "{a:?}");
    assert!(a.body.contains("nothing of this batch was kept"), "{a:?}");
    for bad in [&b""[..], b"[]", b"{\"kind\":\"EventList\",\"items\":[{}"] {
        assert_eq!(post(agent.addr, Some(TOKEN), bad).status, 400);
    }
    // Over AUDIT_WEBHOOK_MAX_BODY: refused from its Content-Length, not read.
    let mut items: Vec<String> = (0..200)
        .map(|i| quiet(&format!("big{i}@example.com")))
        .collect();
    items.push(exec("big@example.com"));
    let big = event_list(&items);
    assert!(big.len() > 64 << 10);
    let a = post(agent.addr, Some(TOKEN), &big);
    assert_eq!(a.status, 413, "{a:?}");
    assert!(
        a.body.contains("over AUDIT_WEBHOOK_MAX_BODY (65536 bytes)"),
        "{a:?}"
    );
    // Only POST; only Content-Length bodies.
    let a = raw(agent.addr, b"GET /audit HTTP/1.1\r\n\r\n", b"");
    assert_eq!(a.status, 405);
    assert!(a.head.contains("Allow: POST"));
    let a = raw(
        agent.addr,
        format!("POST / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
        b"5\r\n{}{}{\r\n0\r\n\r\n",
    );
    assert_eq!(a.status, 411, "{a:?}");
    assert!(a.body.contains("send Content-Length"));
    let a = raw(
        agent.addr,
        format!("POST / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
        b"",
    );
    assert_eq!(a.status, 411);
    // Still serving: a good batch after all of that.
    let a = post(
        agent.addr,
        Some(TOKEN),
        &event_list(&[exec("after@example.com")]),
    );
    assert_eq!(a.status, 200, "{a:?}");
    wait_events(&sink, 1, &agent);
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&["after@example.com".into()]), "{log}");
    assert!(!log.contains(TOKEN), "the token must never be logged");
}

#[test]
fn keep_alive_batches_and_100_continue_on_one_connection() {
    let dir = TempDir::new("webhook", "keepalive");
    let sink = Sink::start();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    let mut s = TcpStream::connect(agent.addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut actors = Vec::new();
    for i in 0..3 {
        let actor = format!("ka{i}@example.com");
        let body = event_list(&[exec(&actor)]);
        actors.push(actor);
        let expect = if i == 1 {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        write!(
            s,
            "POST /audit?timeout=30s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n{expect}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        if i == 1 {
            let mut line = [0u8; 25];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        s.write_all(&body).unwrap();
        // One answer: the head, then Content-Length bytes.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Connection: keep-alive"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
    }
    wait_events(&sink, 3, &agent);
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&actors), "{log}");
}

#[test]
fn the_same_batch_posted_twice_is_delivered_once() {
    let dir = TempDir::new("webhook", "twice");
    let sink = Sink::start();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    let actors: Vec<String> = (0..5).map(|i| format!("twice{i}@example.com")).collect();
    let mut items: Vec<String> = actors.iter().map(|a| exec(a)).collect();
    items.extend((0..20).map(|i| quiet(&format!("q{i}@example.com"))));
    let body = event_list(&items);
    let a = post(agent.addr, Some(TOKEN), &body);
    assert_eq!(
        a.body.trim(),
        r#"{"received":25,"spooled":5,"duplicates":0}"#
    );
    // kube-apiserver re-sends a batch whose 200 it did not get: nothing twice.
    let a = post(agent.addr, Some(TOKEN), &body);
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body.trim(),
        r#"{"received":25,"spooled":0,"duplicates":5}"#
    );
    wait_events(&sink, 5, &agent);
    // A marker batch after the repeat: once it arrived, the repeat would have too.
    let a = post(
        agent.addr,
        Some(TOKEN),
        &event_list(&[exec("marker@example.com")]),
    );
    assert_eq!(a.status, 200);
    wait_events(&sink, 6, &agent);
    let log = agent.stop();
    let mut want = actors.clone();
    want.push("marker@example.com".into());
    assert_eq!(kinds(&sink), execs(&want), "{log}");
}

#[test]
fn kill_9_after_a_200_then_restart_loses_nothing_and_doubles_nothing() {
    let dir = TempDir::new("webhook", "kill9");
    // The backend is down while the batches are accepted: they wait in the spool.
    let port = support::free_port();
    let backend = format!("http://127.0.0.1:{port}");
    let agent = Agent::start(&dir, &backend, &[]);
    let mut actors = Vec::new();
    let mut bodies = Vec::new();
    for b in 0..4 {
        let mut items: Vec<String> = (0..30)
            .map(|i| quiet(&format!("q{b}-{i}@example.com")))
            .collect();
        for k in 0..3 {
            let a = format!("k9-{b}-{k}@example.com");
            items.insert(k * 10, exec(&a));
            actors.push(a);
        }
        let body = event_list(&items);
        let a = post(agent.addr, Some(TOKEN), &body);
        assert_eq!(a.status, 200, "{a:?}");
        bodies.push(body);
    }
    agent.kill9();
    // Restarted with the backend up: the spool is delivered from the start.
    let sink = Sink::builder().port(port).start();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    // kube-apiserver re-sends the batch whose 200 it may not have seen before the kill.
    let a = post(agent.addr, Some(TOKEN), bodies.last().unwrap());
    assert_eq!(a.status, 200);
    assert!(a.body.contains("\"spooled\":0,\"duplicates\":3"), "{a:?}");
    wait_events(&sink, actors.len(), &agent);
    // Everything delivered and checkpointed; then kill -9 again and restart: nothing more.
    wait_checkpoint_at_end(&dir, &agent);
    agent.kill9();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    let late = "late@example.com".to_string();
    let a = post(agent.addr, Some(TOKEN), &event_list(&[exec(&late)]));
    assert_eq!(a.status, 200);
    actors.push(late);
    wait_events(&sink, actors.len(), &agent);
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&actors), "{log}");
}

#[test]
fn a_full_queue_and_spool_answer_429_with_retry_after_until_delivery_catches_up() {
    let dir = TempDir::new("webhook", "full");
    let port = support::free_port();
    let backend = format!("http://127.0.0.1:{port}");
    let agent = Agent::start(
        &dir,
        &backend,
        &[("QUEUE_CAPACITY", "1"), ("SPOOL_MAX_BYTES", "64KiB")],
    );
    // Batches of matching events until the spool refuses one (the first may overshoot).
    let mut accepted = Vec::new();
    let mut refused = None;
    for b in 0..50 {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("full-{b}-{i}@example.com"))
            .collect();
        let items: Vec<String> = batch.iter().map(|a| exec(a)).collect();
        let a = post(agent.addr, Some(TOKEN), &event_list(&items));
        match a.status {
            200 => accepted.extend(batch),
            429 => {
                refused = Some(a);
                break;
            }
            s => panic!("status {s}: {a:?}"),
        }
    }
    let a = refused.expect("never answered 429");
    assert!(a.head.contains("Retry-After: 5"), "{a:?}");
    assert!(a.body.starts_with("spool full ("), "{a:?}");
    assert!(!accepted.is_empty());
    // The backend comes up: everything accepted is delivered, and batches are taken again.
    let sink = Sink::builder().port(port).start();
    wait_events(&sink, accepted.len(), &agent);
    let again = "again@example.com".to_string();
    let last = std::cell::Cell::new(0);
    wait_until(
        HANG_GUARD,
        "a batch accepted again",
        || {
            let a = post(agent.addr, Some(TOKEN), &event_list(&[exec(&again)]));
            last.set(a.status);
            a.status == 200
        },
        || format!("last status {}\n{}", last.get(), agent.log_text()),
    );
    accepted.push(again);
    wait_events(&sink, accepted.len(), &agent);
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&accepted), "{log}");
}

#[test]
fn every_event_of_the_openshift_logs_in_batches_of_400_reaches_the_backend_once_across_kill_9() {
    let Some(lines) = openshift_lines(
        "webhook::every_event_of_the_openshift_logs_in_batches_of_400_reaches_the_backend_once_across_kill_9",
    ) else {
        return;
    };
    let dir = TempDir::new("webhook", "openshift");
    let rules = write_rules(&dir);
    let want = replay_payloads(
        &rules,
        lines.join("\n").as_bytes(),
        &[("SUPPRESS_WINDOW", "0")],
    );
    assert!(want.values().sum::<usize>() >= 15, "{want:?}");
    let batches: Vec<Vec<u8>> = lines.chunks(400).map(event_list).collect();
    let half = batches.len() / 2;
    let sink = Sink::start();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    for b in &batches[..half] {
        let a = post(agent.addr, Some(TOKEN), b);
        assert_eq!(a.status, 200, "{a:?}");
    }
    // Delivered and checkpointed, then killed: the next start resumes there.
    wait_checkpoint_at_end(&dir, &agent);
    agent.kill9();
    let agent = Agent::start(&dir, &sink.url(), &[]);
    // The last batch before the kill again (a retry), then the rest.
    for b in &batches[half - 1..] {
        let a = post(agent.addr, Some(TOKEN), b);
        assert_eq!(a.status, 200, "{a:?}");
    }
    let n = want.values().sum::<usize>();
    wait_events(&sink, n, &agent);
    wait_checkpoint_at_end(&dir, &agent);
    let log = agent.stop();
    let got = payloads(sink.events());
    assert!(got == want, "{}\n{log}", payload_diff(&want, &got));
}

#[test]
fn the_token_is_required_unless_opted_out_and_the_opt_out_warns() {
    let dir = TempDir::new("webhook", "token");
    let rules = write_rules(&dir);
    let out = Command::new(support::bin())
        .arg("run")
        .env_clear()
        .env("RULES_PATH", &rules)
        .env("AUDIT_SOURCE", "webhook")
        .env("SPOOL_PATH", dir.join("spool"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("AUDIT_WEBHOOK_TOKEN=\"\": is required with AUDIT_SOURCE=webhook")
            && err.contains("AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true"),
        "{err}"
    );
    let sink = Sink::start();
    let agent = Agent::start(
        &dir,
        &sink.url(),
        &[
            ("AUDIT_WEBHOOK_TOKEN", ""),
            ("AUDIT_WEBHOOK_INSECURE_NO_TOKEN", "true"),
        ],
    );
    let a = post(agent.addr, None, &event_list(&[exec("open@example.com")]));
    assert_eq!(a.status, 200, "{a:?}");
    wait_events(&sink, 1, &agent);
    let log = agent.stop();
    assert!(
        log.contains("AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true: the webhook accepts batches without a bearer token"),
        "{log}"
    );
    assert!(log.contains("NO TOKEN"), "{log}");
}

#[test]
fn an_unwritable_spool_stops_the_agent_at_start_with_the_reason() {
    let dir = TempDir::new("webhook", "unwritable");
    let rules = write_rules(&dir);
    // A file where the directory should be.
    fs::write(dir.join("spool"), "not a directory").unwrap();
    let out = Command::new(support::bin())
        .arg("run")
        .env_clear()
        .env("RULES_PATH", &rules)
        .env("AUDIT_SOURCE", "webhook")
        .env("AUDIT_WEBHOOK_TOKEN", TOKEN)
        .env("AUDIT_WEBHOOK_ADDR", "127.0.0.1:0")
        .env("SPOOL_PATH", dir.join("spool"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not started: cannot open the spool"), "{err}");
    assert!(err.contains("SPOOL_PATH="), "{err}");
}

#[test]
fn a_taken_webhook_port_stops_the_agent_at_start_with_a_hint() {
    let dir = TempDir::new("webhook", "taken");
    let rules = write_rules(&dir);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(support::bin())
        .arg("run")
        .env_clear()
        .env("RULES_PATH", &rules)
        .env("AUDIT_SOURCE", "webhook")
        .env("AUDIT_WEBHOOK_TOKEN", TOKEN)
        .env("AUDIT_WEBHOOK_ADDR", &addr)
        .env("SPOOL_PATH", dir.join("spool"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not started: cannot serve the audit webhook")
            && err.contains(&format!("AUDIT_WEBHOOK_ADDR=\\\"{addr}\\\": cannot listen"))
            && err.contains("another process listens there; pick a free port"),
        "{err}"
    );
    assert!(!err.contains(TOKEN));
}

#[test]
fn healert_sh_starts_the_agent_in_webhook_mode() {
    use crate::script::{run_bounded, text, Scratch};
    let s = Scratch::new("webhook");
    let sink = Sink::start();
    let rules = s.root().join("rules.yaml");
    fs::write(&rules, RULES).unwrap();
    let port = support::free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("healert.sh");
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut c = s.command(&script, args);
        c.env("HEALERT_BACKEND_URL", sink.url())
            .env("RULES_PATH", &rules)
            .env("AUDIT_SOURCE", "webhook")
            .env("AUDIT_WEBHOOK_ADDR", format!("127.0.0.1:{port}"))
            .env("POLL_INTERVAL", "20ms");
        for (k, v) in extra {
            c.env(k, v);
        }
        run_bounded(c)
    };
    // Without a token: not started, and the fix is named.
    let o = run(&["start", "agent"], &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("AUDIT_SOURCE=webhook needs AUDIT_WEBHOOK_TOKEN"),
        "{}",
        text(&o)
    );
    // stdin makes no sense for a background agent.
    let o = run(&["start", "agent"], &[("AUDIT_SOURCE", "stdin")]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("AUDIT_SOURCE=stdin reads a pipe"),
        "{}",
        text(&o)
    );
    let o = run(&["start", "agent"], &[("AUDIT_WEBHOOK_TOKEN", TOKEN)]);
    assert!(o.status.success(), "{}", text(&o));
    let spool = s.run_dir().join("spool");
    assert!(
        text(&o).contains(&format!(
            "webhook:    http://127.0.0.1:{port} (spool: {})",
            spool.display()
        )),
        "{}",
        text(&o)
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let a = post(addr, Some(TOKEN), &event_list(&[exec("local@example.com")]));
    assert_eq!(a.status, 200, "{a:?}");
    wait_until(
        HANG_GUARD,
        "the event at the sink",
        || sink.events().len() == 1,
        || support::read_lossy(&s.run_dir().join("agent.log")),
    );
    assert!(spool.join("spool.ndjson").is_file());
    let o = run(&["stop", "agent"], &[("AUDIT_WEBHOOK_TOKEN", TOKEN)]);
    assert!(o.status.success(), "{}", text(&o));
    // The checkpoint is the spool's, beside it.
    wait_until(
        HANG_GUARD,
        "the spool's checkpoint",
        || spool.join("checkpoint").is_file(),
        || support::read_lossy(&s.run_dir().join("agent.log")),
    );
    assert!(!s.run_dir().join("checkpoint").exists());
    assert_eq!(kinds(&sink), execs(&["local@example.com".into()]));
}

/// docs/examples/webhook.yaml: what the agent reads is what it sets, and nothing of the node.
#[test]
fn the_webhook_manifest_is_consistent_with_the_agent_and_needs_no_node_access() {
    use yaml_rust2::YamlLoader;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = support::read_lossy(&root.join("docs/examples/webhook.yaml"));
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for node_access in [
        "hostPath",
        "hostNetwork",
        "privileged",
        "nodeSelector",
        "tolerations",
    ] {
        assert!(
            !code.contains(node_access),
            "{node_access} in the webhook variant"
        );
    }
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolumeClaim",
            "NetworkPolicy",
            "Deployment",
            "Service"
        ]
    );
    let find = |k: &str| docs.iter().find(|d| d["kind"].as_str() == Some(k)).unwrap();
    let cm = find("ConfigMap");
    assert_eq!(
        cm["data"]["rules.yaml"].as_str(),
        Some(support::read_lossy(&support::repo_rules()).as_str()),
        "the rules ConfigMap is rules.yaml (./healert.sh update manifest)"
    );
    let dep = find("Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env: Vec<(String, Option<String>)> = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().map(str::to_string),
            )
        })
        .collect();
    let vars: Vec<&str> = healert_agent::config::VARS.iter().map(|v| v.0).collect();
    for (name, _) in &env {
        assert!(
            vars.contains(&name.as_str()),
            "{name} is not a variable the agent reads"
        );
    }
    let get = |n: &str| env.iter().find(|e| e.0 == n).and_then(|e| e.1.clone());
    assert_eq!(get("AUDIT_SOURCE").as_deref(), Some("webhook"));
    assert!(env.iter().any(|e| e.0 == "AUDIT_WEBHOOK_TOKEN"));
    let port: i64 = get("AUDIT_WEBHOOK_ADDR")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = c["ports"].as_vec().unwrap();
    assert!(ports.iter().any(
        |p| p["name"].as_str() == Some("webhook") && p["containerPort"].as_i64() == Some(port)
    ));
    let svc = find("Service");
    assert_eq!(svc["spec"]["ports"][0]["port"].as_i64(), Some(port));
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"].as_str(),
        Some("webhook")
    );
    // The spool is on the claim, under the mount; the pod is as locked down as "restricted".
    let spool = get("SPOOL_PATH").unwrap();
    let mounts = c["volumeMounts"].as_vec().unwrap();
    assert!(mounts
        .iter()
        .any(|m| spool.starts_with(m["mountPath"].as_str().unwrap())
            && m["name"].as_str() == Some("state")));
    assert!(pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some("healert-agent-spool")));
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(dep["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(dep["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
}

#[test]
fn rotated_spool_files_are_delivered_first_even_without_a_checkpoint() {
    let dir = TempDir::new("webhook", "rotated");
    let port = support::free_port();
    let agent = Agent::start(
        &dir,
        &format!("http://127.0.0.1:{port}"),
        &[("SPOOL_MAX_BYTES", "256KiB")],
    );
    // Past 64 KiB the spool file is rotated: write until it was, twice.
    let mut actors = Vec::new();
    let mut b = 0;
    while !dir.join("spool/spool.ndjson.2").exists() {
        let batch: Vec<String> = (0..50)
            .map(|i| format!("rot-{b}-{i}@example.com"))
            .collect();
        let a = post(
            agent.addr,
            Some(TOKEN),
            &event_list(&batch.iter().map(|a| exec(a)).collect::<Vec<_>>()),
        );
        assert_eq!(a.status, 200, "{a:?}");
        actors.extend(batch);
        b += 1;
        assert!(b < 100, "never rotated\n{}", agent.log_text());
    }
    agent.kill9();
    // As if the agent had died before its first checkpoint.
    let _ = fs::remove_file(dir.join("spool/checkpoint"));
    let sink = Sink::builder().port(port).start();
    let agent = Agent::start(&dir, &sink.url(), &[("SPOOL_MAX_BYTES", "256KiB")]);
    wait_events(&sink, actors.len(), &agent);
    wait_checkpoint_at_end(&dir, &agent);
    // Delivered and passed by the checkpoint: the rotated files are deleted.
    wait_until(
        HANG_GUARD,
        "the delivered spool files deleted",
        || {
            let a = post(
                agent.addr,
                Some(TOKEN),
                &event_list(&[quiet("tick@example.com")]),
            );
            a.status == 200 && !dir.join("spool/spool.ndjson.1").exists()
        },
        || agent.log_text(),
    );
    let log = agent.stop();
    assert_eq!(kinds(&sink), execs(&actors), "{log}");
}

/// A webhook flood cannot starve the probes: they have their own server; and /readyz and
/// /metrics name the source.
#[test]
fn probes_answer_while_every_webhook_connection_is_taken_and_name_the_source() {
    let dir = TempDir::new("webhook", "probes");
    let sink = Sink::start();
    let health = format!("127.0.0.1:{}", support::free_port());
    let agent = Agent::start(&dir, &sink.url(), &[("HEALTH_ADDR", &health)]);
    let health: SocketAddr = health.parse().unwrap();
    // Every webhook connection held by a client sending a body slowly (a slow-loris).
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut s = TcpStream::connect(agent.addr).unwrap();
        write!(
            s,
            "POST /audit HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"kind\":"
        )
        .unwrap();
        held.push(s);
    }
    // One more is told to come back, at once.
    let a = post(
        agent.addr,
        Some(TOKEN),
        &event_list(&[exec("late@example.com")]),
    );
    assert_eq!(a.status, 429, "{a:?}");
    for path in ["/healthz", "/readyz"] {
        let r = support::http_get(health, path).unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(
        support::http_get(health, "/readyz").unwrap().body,
        "ready (source: webhook)\n"
    );
    // The slow clients give up: each of their requests is answered (400, the body cut short)
    // and its connection slot freed.
    drop(held);
    wait_until(
        HANG_GUARD,
        "the 32 cut-short bodies answered",
        || {
            support::http_get(health, "/metrics").is_ok_and(|r| {
                r.body
                    .contains("healert_agent_webhook_requests_total{code=\"400\"} 32\n")
            })
        },
        || agent.log_text(),
    );
    // (A slot is freed a moment after its answer: a 429 meanwhile is retried, as the
    // apiserver does.)
    let last = std::cell::Cell::new(0);
    wait_until(
        HANG_GUARD,
        "a batch accepted",
        || {
            let a = post(
                agent.addr,
                Some(TOKEN),
                &event_list(&[exec("after@example.com")]),
            );
            last.set(a.status);
            a.status == 200
        },
        || format!("last status {}\n{}", last.get(), agent.log_text()),
    );
    wait_events(&sink, 1, &agent);
    let m = support::http_get(health, "/metrics").unwrap().body;
    let refused: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("healert_agent_webhook_requests_total{code=\"429\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "{m}");
    for want in [
        "healert_agent_audit_source{source=\"webhook\"} 1\n",
        "healert_agent_audit_source{source=\"file\"} 0\n",
        "healert_agent_webhook_requests_total{code=\"200\"} 1\n",
        "healert_agent_webhook_events_received_total 1\n",
        "healert_agent_webhook_events_spooled_total 1\n",
        "healert_agent_webhook_duplicates_total 0\n",
        "healert_agent_events_sent_total{rule=\"kubectl-exec\"} 1\n",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    agent.stop();
}

/// The suppression window with the webhook: repeats are counted, and the open windows are kept
/// beside the spool's checkpoint (`SPOOL_PATH/checkpoint.suppress`), so a restart neither
/// sends a repeat as a first event nor forgets the count.
#[test]
fn repeats_are_suppressed_and_their_window_survives_a_restart() {
    let dir = TempDir::new("webhook", "suppress");
    let sink = Sink::start();
    let window = [("SUPPRESS_WINDOW", "1h")];
    let agent = Agent::start(&dir, &sink.url(), &window);
    let alice = "alice@example.com";
    let items: Vec<String> = (0..3).map(|_| exec(alice)).collect();
    let a = post(agent.addr, Some(TOKEN), &event_list(&items));
    assert_eq!(a.status, 200, "{a:?}");
    wait_events(&sink, 1, &agent);
    wait_checkpoint_at_end(&dir, &agent);
    let log = agent.stop();
    let state = dir.join("spool").join("checkpoint.suppress");
    assert!(
        state.exists(),
        "no suppression state beside the checkpoint\n{log}"
    );

    let agent = Agent::start(&dir, &sink.url(), &window);
    let mut items: Vec<String> = (0..2).map(|_| exec(alice)).collect();
    items.push(exec("bob@example.com"));
    let a = post(agent.addr, Some(TOKEN), &event_list(&items));
    assert_eq!(a.status, 200, "{a:?}");
    // Bob's event comes after Alice's repeats: once it arrived, they were judged.
    wait_events(&sink, 2, &agent);
    let log = agent.stop();
    assert!(log.contains("suppression state restored"), "{log}");
    assert_eq!(
        kinds(&sink),
        execs(&[alice.to_string(), "bob@example.com".to_string()]),
        "{log}"
    );
}
