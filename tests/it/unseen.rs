//! Issue 14, "nothing unseen", through the real binary: a request body cannot blind the agent
//! (lone surrogates, broken bodies), every skipped or damaged line is logged and counted, and no
//! line or document is too big to evaluate (over-long lines and EventLists streamed in bounded
//! memory, in `run` and in `replay`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sink::Sink;
use crate::support::{
    bin, free_port, http_get, peak_rss_kb, read_lossy, repo_rules, wait_until, Proc, TempDir,
};

const GUARD: Duration = Duration::from_secs(120);
/// The bound the issue sets for `run` and `replay` whatever the line or document size.
const RSS_BOUND_KB: u64 = 24 * 1024;

/// An audit event (no newline) by `user` on `resource/name` in `ns`, with `body` spliced in as
/// extra members (e.g. a `requestObject`).
fn event(verb: &str, resource: &str, sub: &str, name: &str, user: &str, body: &str) -> String {
    let sub = if sub.is_empty() {
        String::new()
    } else {
        format!(",\"subresource\":\"{sub}\"")
    };
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"RequestResponse\",\
         \"auditID\":\"id-{name}-{user}\",\"stage\":\"ResponseComplete\",\"verb\":\"{verb}\",\
         \"user\":{{\"username\":\"{user}\",\"groups\":[\"system:authenticated\"]}},\
         \"objectRef\":{{\"resource\":\"{resource}\",\"namespace\":\"shop\",\"name\":\"{name}\"{sub}}}{body},\
         \"requestReceivedTimestamp\":\"2026-11-25T10:00:00.000000Z\"}}"
    )
}

/// `get pods/exec` (kubectl ≥ 1.30): only `kubectl-exec` fires for it.
fn exec(user: &str, body: &str) -> String {
    event("get", "pods", "exec", "web-0", user, body)
}

/// A request body of about `bytes` bytes of JSON no rule reads.
fn big_body(bytes: usize) -> String {
    let chunk = "{\"k\":\"v\",\"n\":[1,2.5e3,true,null],\"s\":\"x\\\"y\\\\z\\u00e9\"},";
    let n = bytes / chunk.len() + 1;
    let mut s = String::with_capacity(n * chunk.len() + 64);
    s.push_str(",\"responseObject\":{\"kind\":\"PodList\",\"items\":[");
    for _ in 0..n {
        s.push_str(chunk);
    }
    s.push_str("{}]}");
    s
}

struct Run {
    proc: Proc,
    stderr: PathBuf,
    health: std::net::SocketAddr,
}

impl Run {
    fn start(dir: &TempDir, log: &Path, sink: &Sink) -> Run {
        let stderr = dir.join("agent.stderr");
        let port = free_port();
        let child = Command::new(bin())
            .env_clear()
            .env("HEALERT_BACKEND_URL", sink.url())
            .env("AUDIT_LOG_PATH", log)
            .env("RULES_PATH", repo_rules())
            .env("START_AT", "beginning")
            .env("POLL_INTERVAL", "20ms")
            .env("HEALTH_ADDR", format!("127.0.0.1:{port}"))
            .env("CHECKPOINT_PATH", dir.join("checkpoint"))
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Run {
            proc: Proc::new(child),
            stderr,
            health: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    fn log(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// SIGTERM, then a clean exit.
    fn stop(&mut self) {
        self.proc.signal("TERM");
        let path = self.stderr.clone();
        let st = self.proc.wait_exit(GUARD, || read_lossy(&path));
        assert_eq!(st.code(), Some(0), "{}", self.log());
    }

    /// The value of one sample of /metrics.
    fn metric(&self, sample: &str) -> Option<f64> {
        let body = http_get(self.health, "/metrics").ok()?.body;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    fn wait_metric(&self, sample: &str, want: f64) {
        wait_until(
            GUARD,
            sample,
            || self.metric(sample) == Some(want),
            || {
                format!(
                    "{sample} = {:?}, want {want}\n{}",
                    self.metric(sample),
                    self.log()
                )
            },
        );
    }
}

/// The (type, actor) of every event the sink accepted, sorted.
fn got(sink: &Sink) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = sink
        .events_json()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["actor"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_lone_surrogate_cannot_hide_a_policy_bypass() {
    let dir = TempDir::new("unseen", "surrogate");
    let log = dir.join("audit.log");
    // The patch of the issue: accepted by the API server, logged verbatim.
    let body = r#","requestObject":{"metadata":{"annotations":{"policy.admission.k8s.io/bypass":"true","x":"\udc00"}}}"#;
    let patch = event("patch", "deployments", "", "api", "mallory", body);
    let lone_in_user = exec("al\\ud800ice", "");
    std::fs::write(&log, format!("{patch}\n{lone_in_user}\n")).unwrap();
    let sink = Sink::start();
    let mut run = Run::start(&dir, &log, &sink);
    assert!(sink.wait_for_events(3, GUARD), "{}", run.log());
    run.wait_metric("healert_agent_queue_depth", 0.0);
    assert_eq!(
        got(&sink),
        pairs(&[
            ("pipeline-skip", "mallory"),
            ("config-drift", "mallory"),
            ("kubectl-exec", "al\u{FFFD}ice"),
        ])
    );
    assert_eq!(run.metric("healert_agent_malformed_lines_total"), Some(0.0));
    run.stop();
}

#[test]
fn run_logs_and_counts_every_damaged_or_skipped_line() {
    let dir = TempDir::new("unseen", "damaged");
    let log = dir.join("audit.log");
    let damaged = exec(
        "dora",
        r#","requestObject":{"a":tru, 01 "metadata":{"annotations":{}}}"#,
    );
    let good = exec("gina", "");
    let cut = exec("carl", "");
    let cut = &cut[..cut.len() - 40];
    let text = format!("{damaged}\n{cut}\n{good}\n");
    let cut_offset = damaged.len() + 1;
    std::fs::write(&log, &text).unwrap();
    let sink = Sink::start();
    let mut run = Run::start(&dir, &log, &sink);
    assert!(sink.wait_for_events(2, GUARD), "{}", run.log());
    run.wait_metric(
        "healert_agent_lines_dropped_total{reason=\"malformed\"}",
        1.0,
    );
    run.wait_metric(
        "healert_agent_records_recovered_total{how=\"damaged\"}",
        1.0,
    );
    assert_eq!(run.metric("healert_agent_malformed_lines_total"), Some(1.0));
    assert_eq!(
        got(&sink),
        pairs(&[("kubectl-exec", "dora"), ("kubectl-exec", "gina")])
    );
    let stderr = run.log();
    let damaged_line = stderr
        .lines()
        .find(|l| l.contains("damaged where no rule looks"))
        .unwrap_or_else(|| panic!("no damaged-line record:\n{stderr}"));
    assert!(
        damaged_line.contains(&format!("{} offset 0", log.display()))
            && damaged_line.contains("auditID=id-web-0-dora"),
        "{damaged_line}"
    );
    let dropped = stderr
        .lines()
        .find(|l| l.contains("could not be evaluated"))
        .unwrap_or_else(|| panic!("no dropped-line record:\n{stderr}"));
    assert!(
        dropped.contains(&format!("{} offset {cut_offset}", log.display()))
            && dropped.contains("auditID=id-web-0-carl")
            && dropped.contains("input ends inside a value"),
        "{dropped}"
    );
    run.stop();
}

#[test]
fn over_long_matching_lines_are_delivered_by_run_in_bounded_memory() {
    let dir = TempDir::new("unseen", "long-run");
    let log = dir.join("audit.log");
    let mut f = File::create(&log).unwrap();
    for (user, mb) in [("twenty", 20), ("hundred", 100)] {
        writeln!(f, "{}", exec(user, &big_body(mb << 20))).unwrap();
    }
    // An annotation map over the 1 MiB kept-fields cap cannot be evaluated: skipped, counted.
    let huge_annotations = format!(r#","annotations":{{"a":"{}"}}"#, "z".repeat(2 << 20));
    writeln!(
        f,
        "{}",
        exec(
            "toolarge",
            &format!("{huge_annotations}{}", big_body(17 << 20))
        )
    )
    .unwrap();
    writeln!(f, "{}", exec("after", "")).unwrap();
    drop(f);
    let sink = Sink::start();
    let mut run = Run::start(&dir, &log, &sink);
    assert!(sink.wait_for_events(3, GUARD), "{}", run.log());
    run.wait_metric("healert_agent_oversized_lines_total", 3.0);
    run.wait_metric(
        "healert_agent_lines_dropped_total{reason=\"too_large\"}",
        1.0,
    );
    assert_eq!(
        run.metric("healert_agent_records_recovered_total{how=\"streamed\"}"),
        Some(2.0)
    );
    assert_eq!(
        got(&sink),
        pairs(&[
            ("kubectl-exec", "after"),
            ("kubectl-exec", "hundred"),
            ("kubectl-exec", "twenty"),
        ])
    );
    let stderr = run.log();
    assert!(
        stderr.contains("kind=too_large") && stderr.contains("auditID=id-web-0-toolarge"),
        "{stderr}"
    );
    let rss = peak_rss_kb(run.proc.pid()).unwrap_or(0);
    assert!(
        rss > 0 && rss < RSS_BOUND_KB,
        "peak RSS {rss} kB with 100 MB lines (bound {RSS_BOUND_KB} kB)"
    );
    run.stop();
}

/// `replay` of `input` on stdin: (exit code, stdout, stderr).
fn replay(input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .env_clear()
        .args(["replay", "--rules"])
        .arg(repo_rules())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.starts_with("summary "))?;
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}="))?.parse().ok())
}

fn actors(stdout: &str) -> Vec<String> {
    let mut v: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}:{}",
                v["type"].as_str().unwrap(),
                v["actor"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn replay_streams_over_long_lines_in_bounded_memory() {
    let mut input = Vec::new();
    for (user, mb) in [("twenty", 20), ("hundred", 100)] {
        input.extend_from_slice(exec(user, &big_body(mb << 20)).as_bytes());
        input.push(b'\n');
    }
    let (code, stdout, stderr) = replay(&input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        actors(&stdout),
        ["kubectl-exec:hundred", "kubectl-exec:twenty"]
    );
    assert_eq!(summary(&stderr, "oversized"), Some(2), "{stderr}");
    let rss = summary(&stderr, "peak_rss_kb").unwrap_or(u64::MAX);
    assert!(
        rss < RSS_BOUND_KB,
        "peak RSS {rss} kB (bound {RSS_BOUND_KB} kB)"
    );
}

/// `n` items, every `every`-th an exec by `user-<i>`, the rest events no rule matches.
fn items(n: usize, every: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % every == 0 {
                exec(&format!("user-{i}"), "")
            } else {
                event(
                    "get",
                    "configmaps",
                    "",
                    "cm",
                    &format!("sa-{i}"),
                    &big_body(600),
                )
            }
        })
        .collect()
}

#[test]
fn a_compact_event_list_over_the_cap_gives_the_events_of_its_items_as_ndjson() {
    let items = items(30_000, 500);
    let list = format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[{}]}}\n",
        items.join(",")
    );
    assert!(list.len() > 30_000_000, "{}", list.len());
    let (code, from_list, stderr) = replay(list.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let ndjson: String = items.iter().map(|i| format!("{i}\n")).collect();
    let (code, from_lines, _) = replay(ndjson.as_bytes());
    assert_eq!(code, 0);
    assert_eq!(actors(&from_list), actors(&from_lines));
    assert_eq!(from_list.lines().count(), 60, "{stderr}");
    let rss = summary(&stderr, "peak_rss_kb").unwrap_or(u64::MAX);
    assert!(
        rss < RSS_BOUND_KB,
        "peak RSS {rss} kB (bound {RSS_BOUND_KB} kB)"
    );
}

#[test]
fn a_pretty_printed_event_list_of_200_mb_is_streamed_item_by_item() {
    let items = items(200_000, 1000);
    let mut doc = String::with_capacity(230 << 20);
    doc.push_str(
        "{\n  \"kind\": \"EventList\",\n  \"apiVersion\": \"audit.k8s.io/v1\",\n  \"items\": [\n",
    );
    for (i, it) in items.iter().enumerate() {
        doc.push_str("    ");
        doc.push_str(it);
        doc.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
    }
    doc.push_str("  ]\n}\n");
    assert!(doc.len() > 200_000_000, "{}", doc.len());
    let (code, stdout, stderr) = replay(doc.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..200_000)
            .filter(|i| i % 1000 == 0)
            .map(|i| format!("kubectl-exec:user-{i}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(actors(&stdout), want);
    assert!(
        stderr.contains("EventList documents: 1 (200000 items)"),
        "{stderr}"
    );
    let rss = summary(&stderr, "peak_rss_kb").unwrap_or(u64::MAX);
    assert!(
        rss < RSS_BOUND_KB,
        "peak RSS {rss} kB (bound {RSS_BOUND_KB} kB)"
    );
}

#[test]
fn replay_exits_1_when_it_evaluated_nothing_but_skipped_something() {
    let cut = exec("carl", "");
    let (code, stdout, stderr) = replay(format!("{}\nnot json\n", &cut[..50]).as_bytes());
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("    line 2: invalid JSON at 1:1: malformed literal"),
        "{stderr}"
    );
    assert!(
        stderr.contains("replay: nothing was evaluated and 2 lines were skipped (see above): this is not a log without friction"),
        "{stderr}"
    );
    // Nothing skipped, nothing matched: a log without friction.
    let (code, stdout, _) = replay(event("get", "configmaps", "", "c", "ann", "").as_bytes());
    assert_eq!((code, stdout.as_str()), (0, ""));
}
