//! Issue 16 through the real binary: `explain` (a matching, a non-matching and an excluded
//! record, text and `--json`, `--fixture` round-tripping through `test`), `test` (our rules.yaml
//! passes its fixtures, a broken fixture fails with exit 1 and says why, a rule without a
//! fixture is warned about), one act = one event, and the suppression window: 1 000 identical
//! exec lines reach the backend as exactly two events (the first and one summary), also across
//! a clean restart and a `kill -9` inside the window. Every wait is on a real condition (the
//! sink's count, /metrics, the checkpoint file), never a fixed sleep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sink::Sink;
use crate::support::{
    self, append, bin, free_port, http_get, repo_rules, wait_until, Proc, TempDir,
};

const GUARD: Duration = Duration::from_secs(60);

fn line(verb: &str, user: &str, ns: &str, sub: &str, ts: &str) -> String {
    format!(
        "{{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"auditID\":\"{id}\",\"stage\":\"ResponseComplete\",\
         \"verb\":\"{verb}\",\"user\":{{\"username\":\"{user}\"}},\
         \"objectRef\":{{\"resource\":\"pods\",\"namespace\":\"{ns}\",\"name\":\"web-7d4b9c8f6-abcde\",\"subresource\":\"{sub}\"}},\
         \"requestReceivedTimestamp\":\"{ts}\"}}",
        id = support::audit_id()
    )
}

fn exec(user: &str) -> String {
    line(
        "create",
        user,
        "shop",
        "exec",
        "2026-11-25T10:00:00.000000Z",
    )
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn agent(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn rules_arg() -> String {
    repo_rules().display().to_string()
}

// ---------------------------------------------------------------------------------------------
// explain

fn three_records(dir: &TempDir) -> PathBuf {
    let log = dir.join("audit.log");
    let lines = [
        exec("alice@example.com"),
        // Nothing in rules.yaml reads configmaps.
        support::list_configmaps_line("bob@example.com"),
        // kube-system is in config.ignore_namespaces.
        line(
            "create",
            "carol@example.com",
            "kube-system",
            "exec",
            "2026-11-25T10:00:01Z",
        ),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    log
}

#[test]
fn explain_says_why_each_record_fired_or_not_in_text() {
    let dir = TempDir::new("explain", "text");
    let log = three_records(&dir);
    let o = agent(
        &["explain", "--rules", &rules_arg(), log.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        !o.stdout.contains('\x1b'),
        "no colour on a pipe: {}",
        o.stdout
    );
    let records: Vec<&str> = o.stdout.split("\nrecord ").collect();
    assert_eq!(records.len(), 3, "{}", o.stdout);
    // 1: a human's exec: kubectl-exec matches on every condition, config-drift does not
    // (one act, one event), and the payload is shown.
    let r1 = records[0];
    for want in [
        "stage      ResponseComplete  ✓",
        "actor      alice@example.com (human)",
        "  MATCH",
        "✓ subresource        wants exec, found \"exec\"",
        "✗ subresources       wants one of [\"\", scale], found \"exec\"",
        "event kubectl-exec: sent at once (first of its rule, entity and actor in the window)",
        "\"type\":\"kubectl-exec\"",
    ] {
        assert!(r1.contains(want), "{want:?} missing from:\n{r1}");
    }
    assert!(!r1.contains("event config-drift"), "{r1}");
    // 2: nothing matches, and each rule shows its failing condition with the value found.
    let r2 = records[1];
    for want in [
        "actor      bob@example.com (human)",
        "✗ resource           wants pods, found \"configmaps\"",
        "✗ verb               wants get, found \"list\"",
        "no event: no rule matched",
    ] {
        assert!(r2.contains(want), "{want:?} missing from:\n{r2}");
    }
    // 3: excluded before any rule.
    let r3 = records[2];
    assert!(
        r3.contains("namespace  kube-system  excluded")
            && r3.contains("excluded from every rule by config.ignore_namespaces"),
        "{r3}"
    );
    assert!(!r3.contains("rule kubectl-exec"), "{r3}");
    // One record only.
    let o = agent(
        &[
            "explain",
            "--line",
            "2",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.starts_with("record 2 ") && !o.stdout.contains("record 1 "),
        "{}",
        o.stdout
    );
    let o = agent(
        &[
            "explain",
            "--line",
            "9",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("the input has 3 records; there is no record 9"),
        "{}",
        o.stderr
    );
    let o = agent(&["explain", "--line", "0", "x"], &[]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("--line wants a record number from 1"),
        "{}",
        o.stderr
    );
}

#[test]
fn explain_json_is_one_object_per_audit_event() {
    let dir = TempDir::new("explain", "json");
    let log = three_records(&dir);
    // Also the agent's own namespace, excluded like config.ignore_namespaces.
    let o = agent(
        &[
            "explain",
            "--json",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[("K8S_NAMESPACE", "shop")],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0]["excluded"]["by"], "K8S_NAMESPACE");
    assert_eq!(v[0]["events"].as_array().unwrap().len(), 0);
    let o = agent(
        &[
            "explain",
            "--json",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    let v: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (v[0]["record"].as_u64(), v[0]["start"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(v[0]["actor_class"], "human");
    assert_eq!(v[0]["events"][0]["payload"]["type"], "kubectl-exec");
    assert_eq!(v[0]["events"][0]["suppression"], "sent");
    let exec_rule = &v[0]["rules"][0];
    assert_eq!(
        (exec_rule["name"].as_str(), exec_rule["matched"].as_bool()),
        (Some("kubectl-exec"), Some(true))
    );
    assert!(exec_rule["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["pass"] == true));
    let drift = v[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "config-drift")
        .unwrap();
    let failed: Vec<_> = drift["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| (c["key"].as_str().unwrap(), c["found"].as_str().unwrap()))
        .collect();
    assert_eq!(failed, [("subresources", "exec")]);
    assert_eq!(v[1]["events"].as_array().unwrap().len(), 0);
    assert!(v[1]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["matched"] == false));
    assert_eq!(v[2]["excluded"]["by"], "config.ignore_namespaces");
    assert_eq!(v[2]["excluded"]["namespace"], "kube-system");
    // A service account: ignore_system skips the rule, and says so.
    std::fs::write(&log, exec("system:serviceaccount:ci:deployer") + "\n").unwrap();
    let o = agent(
        &[
            "explain",
            "--json",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["actor_class"], "service account");
    assert_eq!(v["rules"][0]["skipped_actor"], true);
    // Not an audit event: the scanner's reason.
    std::fs::write(&log, "{\"kind\":\n").unwrap();
    let o = agent(
        &[
            "explain",
            "--json",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert!(v["malformed"].as_str().unwrap().contains("1:"), "{v}");
}

#[test]
fn explain_prints_a_fixture_that_test_accepts() {
    let dir = TempDir::new("explain", "fixture");
    let log = dir.join("audit.log");
    std::fs::write(&log, exec("dave@example.com") + "\n").unwrap();
    let o = agent(
        &[
            "explain",
            "--fixture",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let start = o.stdout.find("fixture for rule kubectl-exec").unwrap();
    let block: Vec<&str> = o.stdout[start..].lines().skip(1).take(4).collect();
    assert!(
        block[0].trim_start().starts_with("- record: '{"),
        "{block:?}"
    );
    let rules = format!(
        "rules:\n  - name: my-exec\n    description: \"kubectl exec on {{resource}}/{{name}} (ns:{{namespace}}) by {{actor}}\"\n    severity: high\n    workflow: deploy\n    match:\n      subresource: exec\n    fixtures:\n{}\n",
        block.join("\n")
    );
    // The rule's name differs: the description and entity must still be what explain said.
    let path = dir.join("rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let o = agent(&["test", "--rules", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("ok    my-exec  1 fixture"),
        "{}",
        o.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// test

#[test]
fn our_rules_pass_their_fixtures_enabled_and_optional() {
    let o = agent(&["test", "--rules", &rules_arg()], &[]);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert!(
        !o.stdout.contains("FAIL") && !o.stdout.contains("warn "),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("ok    pv-deletion               2 fixtures  (optional, commented out)"),
        "{}",
        o.stdout
    );
    let last = o.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("PASS: 16 rules, ")
            && last.ends_with("0 failed; 0 rules without a fixture"),
        "{last}"
    );
    // And validate has no warning about them.
    let o = agent(&["validate", &rules_arg()], &[]);
    assert!(
        o.stdout
            .contains("OK: 5 rules, 8 ignored namespaces, 0 warnings"),
        "{}",
        o.stdout
    );
}

const RULE: &str = "rules:
  - name: pod-create
    description: \"create {resource}/{name} by {actor}\"
    severity: low
    workflow: debug
    match:
      resource: pods
      verb: create
      subresource: \"\"
    fixtures:
";

fn fixture(rec: &str, rest: &str) -> String {
    format!("      - record: '{rec}'\n{rest}")
}

#[test]
fn a_broken_fixture_fails_with_the_reason() {
    let dir = TempDir::new("test", "fail");
    let path = dir.join("rules.yaml");
    let get = line(
        "get",
        "erin@example.com",
        "shop",
        "",
        "2026-11-25T10:00:00Z",
    )
    .replace(",\"subresource\":\"\"", "");
    let create = get.replace("\"verb\":\"get\"", "\"verb\":\"create\"");
    let text = format!(
        "{RULE}{}{}{}{}",
        // Passes: create of the pod itself.
        fixture(&create, "        expect: event\n        description: \"create pods/web-7d4b9c8f6-abcde by erin@example.com\"\n        entity: component:shop/web\n"),
        // Fails: a get is no create.
        fixture(&get, "        expect: event\n"),
        // Fails: wrong description.
        fixture(&create, "        expect: event\n        description: \"something else\"\n"),
        // Fails: the record is not an audit event.
        fixture("{\"kind\":", "        expect: no event\n"),
    );
    std::fs::write(&path, text).unwrap();
    let o = agent(&["test", "--rules", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
    for want in [
        "FAIL  pod-create  3 of 4 fixtures",
        ":15: expected an event, got none: verb wants create, found \"get\"",
        ":17: description is \"create pods/web-7d4b9c8f6-abcde by erin@example.com\", expected \"something else\"",
        ":20: the record is not an audit event: ",
        "FAIL: 1 rules, 4 fixtures: 1 passed, 3 failed",
    ] {
        assert!(o.stdout.contains(want), "{want:?} missing from:\n{}", o.stdout);
    }
    // A FIXTURES file: fixtures kept beside the rules, each naming its rule.
    let only = format!("{RULE}{}", fixture(&create, "        expect: event\n"));
    std::fs::write(&path, only).unwrap();
    let extra = dir.join("more.yaml");
    std::fs::write(
        &extra,
        format!(
            "fixtures:\n  - rule: pod-create\n    record: '{get}'\n    expect: no event\n  - rule: no-such-rule\n    record: '{get}'\n    expect: no event\n"
        ),
    )
    .unwrap();
    let o = agent(
        &[
            "test",
            "--rules",
            path.to_str().unwrap(),
            extra.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stdout.contains("ok    pod-create  2 fixtures"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("FAIL  no-such-rule  ") && o.stdout.contains("no rule of this name"),
        "{}",
        o.stdout
    );
    // Unreadable files: exit 2.
    let o = agent(&["test", "--rules", "/nonexistent/rules.yaml"], &[]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr
            .contains("test: cannot read rules file /nonexistent/rules.yaml"),
        "{}",
        o.stderr
    );
    // A broken fixture's shape is a rules-file error, with line:column.
    std::fs::write(
        &path,
        format!("{RULE}      - record: 'x'\n        expect: maybe\n"),
    )
    .unwrap();
    let o = agent(&["test", "--rules", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains(":12:17: error: `expect` must be `event` or `no event`, not `maybe`"),
        "{}",
        o.stderr
    );
}

#[test]
fn rules_without_fixtures_are_warned_about_and_optional_rules_are_tested() {
    let dir = TempDir::new("test", "warn");
    let path = dir.join("rules.yaml");
    let create = line(
        "create",
        "erin@example.com",
        "shop",
        "",
        "2026-11-25T10:00:00Z",
    )
    .replace(",\"subresource\":\"\"", "");
    let text = format!(
        "{RULE}{}  - name: pod-delete\n    severity: low\n    workflow: debug\n    match:\n      resource: pods\n      verb: delete\n  # >>> optional rules\n  ## A note stays a comment.\n  # - name: pod-create-2\n  #   severity: low\n  #   workflow: debug\n  #   match:\n  #     resource: pods\n  #     verb: delete\n  #   fixtures:\n  #     - record: '{create}'\n  #       expect: event\n  # <<< optional rules\n",
        fixture(&create, "        expect: event\n"),
    );
    std::fs::write(&path, &text).unwrap();
    let o = agent(&["test", "--rules", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 1, "the optional rule's fixture fails: {}", o.stdout);
    assert!(
        o.stdout.contains("warn  pod-delete    no fixture"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("FAIL  pod-create-2  1 of 1 fixtures  (optional, commented out)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("verb wants delete, found \"create\""),
        "{}",
        o.stdout
    );
    std::fs::write(
        &path,
        text.replace("#     verb: delete", "#     verb: create"),
    )
    .unwrap();
    let o = agent(&["test", "--rules", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stdout
            .ends_with("PASS: 3 rules, 2 fixtures: 2 passed, 0 failed; 1 rule without a fixture\n"),
        "{}",
        o.stdout
    );
    let o = agent(&["validate", path.to_str().unwrap()], &[]);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout
            .contains(":13:1: warning: 1 rule without a fixture: pod-delete"),
        "{}",
        o.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// One act, one event; the suppression window offline.

#[test]
fn replay_sends_one_event_for_an_exec_pair_and_summarises_a_flood() {
    let dir = TempDir::new("suppress", "replay");
    let log = dir.join("audit.log");
    // kubectl 1.30+ falling back: get, then create half a second later: one exec.
    let pair = [
        line(
            "get",
            "frank@example.com",
            "shop",
            "exec",
            "2026-11-25T10:00:00.296Z",
        ),
        line(
            "create",
            "frank@example.com",
            "shop",
            "exec",
            "2026-11-25T10:00:00.770Z",
        ),
    ];
    std::fs::write(&log, pair.join("\n") + "\n").unwrap();
    let o = agent(
        &["replay", "--rules", &rules_arg(), log.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("1 merged as the same act"),
        "{}",
        o.stderr
    );
    // A flood of 1 000 identical execs: the first, then one summary with the count.
    let flood: Vec<String> = (0..1000).map(|_| exec("grace@example.com")).collect();
    std::fs::write(&log, flood.join("\n") + "\n").unwrap();
    let o = agent(
        &["replay", "--rules", &rules_arg(), log.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 2, "{}", o.stdout);
    assert_eq!(
        out[1]["description"],
        "kubectl exec on pods/web-7d4b9c8f6-abcde (ns:shop) by grace@example.com (999 more times in 10m)"
    );
    assert!(
        o.stderr
            .contains("replay: 2 events would be sent: 999 repeats suppressed into 1 summaries"),
        "{}",
        o.stderr
    );
    // Off: every match.
    let o = agent(
        &["replay", "--rules", &rules_arg(), log.to_str().unwrap()],
        &[("SUPPRESS_WINDOW", "0")],
    );
    assert_eq!(
        o.stdout.lines().count(),
        2,
        "the rule's own suppress: wins over SUPPRESS_WINDOW"
    );
    let o = agent(
        &[
            "replay",
            "--no-suppress",
            "--rules",
            &rules_arg(),
            log.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.stdout.lines().count(), 1000, "every match");
    // Nothing of the progress line on a pipe.
    assert!(!o.stderr.contains('\r'), "{}", o.stderr);
    let o = agent(
        &["replay", "--rules", &rules_arg(), log.to_str().unwrap()],
        &[("SUPPRESS_WINDOW", "soon")],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("SUPPRESS_WINDOW=\"soon\": not a duration"),
        "{}",
        o.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// The suppression window in `run`, across restarts.

/// Our kubectl-exec rule with a short window, so a test sees it close.
fn short_window_rules(dir: &TempDir, window: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_rules())
        .unwrap()
        .replace("    suppress: 10m\n", &format!("    suppress: {window}\n"));
    let p = dir.join("rules.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Agent {
    proc: Proc,
    err: PathBuf,
    health: SocketAddr,
}

impl Agent {
    fn start(dir: &TempDir, name: &str, sink: &Sink, rules: &Path) -> Agent {
        let err = dir.join(&format!("{name}.err"));
        let port = free_port();
        let health: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HEALERT_BACKEND_URL", sink.url())
            .env("AUDIT_LOG_PATH", dir.log())
            .env("RULES_PATH", rules)
            .env("CHECKPOINT_PATH", dir.join("checkpoint"))
            .env("START_AT", "beginning")
            .env("POLL_INTERVAL", "20ms")
            .env("HEALTH_ADDR", health.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Agent {
            proc: Proc::new(child),
            err,
            health,
        }
    }

    fn log(&self) -> String {
        support::read_lossy(&self.err)
    }

    /// A sample of /metrics (0 when absent or the server is not up yet).
    fn metric(&self, sample: &str) -> f64 {
        http_get(self.health, "/metrics")
            .ok()
            .and_then(|r| {
                r.body.lines().find_map(|l| {
                    l.strip_prefix(sample)
                        .and_then(|v| v.strip_prefix(' '))
                        .and_then(|v| v.parse().ok())
                })
            })
            .unwrap_or(0.0)
    }

    fn wait_metric(&self, sample: &str, want: f64) {
        wait_until(
            GUARD,
            &format!("{sample} = {want}"),
            || self.metric(sample) == want,
            || self.log(),
        );
    }
}

const REPEATS: &str =
    "healert_agent_events_suppressed_total{rule=\"kubectl-exec\",reason=\"repeat\"}";
const OPEN: &str = "healert_agent_suppress_windows_open";
const DEPTH: &str = "healert_agent_queue_depth";

fn flood(dir: &TempDir, n: usize) {
    let lines: Vec<String> = (0..n).map(|_| exec("mallory@example.com")).collect();
    append(&dir.log(), &(lines.join("\n") + "\n"));
}

/// Waits until nothing more can be sent: no window open, nothing queued, the checkpoint at the
/// end of the log.
fn settled(a: &Agent, dir: &TempDir) {
    let size = std::fs::metadata(dir.log()).unwrap().len();
    wait_until(
        GUARD,
        "no open window, an empty queue and the checkpoint at the end of the log",
        || a.metric(OPEN) == 0.0 && a.metric(DEPTH) == 0.0 && checkpoint_offset(dir) == Some(size),
        || a.log(),
    );
}

fn checkpoint_offset(dir: &TempDir) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("checkpoint")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("offset=")?.parse().ok())
}

fn summary_of(sink: &Sink) -> Vec<String> {
    sink.events_json()
        .iter()
        .map(|e| e["description"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_flood_of_1000_execs_is_two_deliveries() {
    let dir = TempDir::new("suppress", "flood");
    std::fs::write(dir.log(), "").unwrap();
    let sink = Sink::start();
    let rules = short_window_rules(&dir, "5s");
    let a = Agent::start(&dir, "run", &sink, &rules);
    flood(&dir, 1000);
    assert!(sink.wait_for_events(1, GUARD), "{}", a.log());
    a.wait_metric(REPEATS, 999.0);
    assert!(sink.wait_for_events(2, GUARD), "no summary:\n{}", a.log());
    settled(&a, &dir);
    let got = summary_of(&sink);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[1],
        "kubectl exec on pods/web-7d4b9c8f6-abcde (ns:shop) by mallory@example.com (999 more times in 5s)"
    );
    assert_eq!(
        a.metric("healert_agent_suppress_summaries_total{rule=\"kubectl-exec\"}"),
        1.0
    );
}

/// Restart inside the window: the state file carries the open window, so after the restart no
/// second "first" event is sent (one more exec is counted, not sent) and the summary counts the
/// repeats of both lives exactly once. The first life runs our rules.yaml (a 10 minute window:
/// no stall of the machine can end it before the stop); the second a copy with `suppress: 1s`,
/// which the open window takes on with the next repeat, so its summary comes at once.
fn restart_inside_the_window(sig: &str) {
    let dir = TempDir::new("suppress", &format!("restart-{sig}"));
    std::fs::write(dir.log(), "").unwrap();
    let sink = Sink::start();
    let mut a = Agent::start(&dir, "run1", &sink, &repo_rules());
    flood(&dir, 1000);
    assert!(sink.wait_for_events(1, GUARD), "{}", a.log());
    a.wait_metric(REPEATS, 999.0);
    // Everything read is acknowledged and saved (the state file is written just before the
    // checkpoint, with it inside).
    let size = std::fs::metadata(dir.log()).unwrap().len();
    wait_until(
        GUARD,
        "the checkpoint at the end of the log",
        || checkpoint_offset(&dir) == Some(size),
        || a.log(),
    );
    a.proc.signal(sig);
    let err = a.err.clone();
    a.proc.wait_exit(GUARD, || support::read_lossy(&err));
    let first_life = a.log();
    assert_eq!(sink.events().len(), 1, "{first_life}");
    let state = std::fs::read_to_string(dir.join("checkpoint.suppress")).unwrap();
    assert!(state.contains(" 600000 999 0 "), "{state}");

    // The same exec once more while the window is open, then the second life.
    flood(&dir, 1);
    let rules = short_window_rules(&dir, "1s");
    let b = Agent::start(&dir, "run2", &sink, &rules);
    b.wait_metric(REPEATS, 1.0);
    assert!(
        b.log().contains("suppression state restored"),
        "{}",
        b.log()
    );
    assert!(sink.wait_for_events(2, GUARD), "no summary:\n{}", b.log());
    settled(&b, &dir);
    let got = summary_of(&sink);
    assert_eq!(got.len(), 2, "{got:?}\n{first_life}\n{}", b.log());
    assert_eq!(
        got[1],
        "kubectl exec on pods/web-7d4b9c8f6-abcde (ns:shop) by mallory@example.com (1000 more times in 1s)"
    );
}

#[test]
fn the_window_survives_a_clean_restart() {
    restart_inside_the_window("TERM");
}

#[test]
fn the_window_survives_kill_9() {
    restart_inside_the_window("KILL");
}
