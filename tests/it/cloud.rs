//! Audit events on stdin in the shapes cloud CLIs print them (`AUDIT_SOURCE=stdin`,
//! `AUDIT_FORMAT`, issue 15), through the real binary: each format, built around real-shaped
//! audit lines with serde_json (an oracle independent of `src/`), must yield at the sink exactly
//! the events the same audit lines yield as plain NDJSON; the vendored samples
//! (tests/data/cloud, see its README) read as their formats; gcloud's array is read element by
//! element while it is still being written; records of no format, of another category, or
//! truncated are counted and logged; actors and entities are right on every source.
//! See docs/cloud.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::sink::Sink;
use crate::support::{self, wait_until, Proc, TempDir};
use crate::webhook::{payload_diff, payloads, write_rules, Payloads, HANG_GUARD};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The real-shaped audit lines every format is built around (they fire every rule of
/// [`crate::webhook::RULES`]).
fn base_lines() -> Vec<String> {
    support::read_lossy(&data().join("sample/audit.ndjson"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// `healert-agent run` on stdin: writes `input`, closes it, waits for the agent to deliver
/// and exit. Its exit status and log.
fn run_stdin(
    dir: &TempDir,
    sink: &Sink,
    rules: &Path,
    input: Vec<u8>,
    extra: &[(&str, &str)],
) -> (ExitStatus, String) {
    let log = dir.join("agent.stderr");
    let mut cmd = Command::new(support::bin());
    cmd.arg("run")
        .env_clear()
        .env("HEALERT_BACKEND_URL", sink.url())
        .env("RULES_PATH", rules)
        .env("AUDIT_SOURCE", "stdin")
        .env("POLL_INTERVAL", "20ms")
        .env("SUPPRESS_WINDOW", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut proc = Proc::new(child);
    let st = proc.wait_exit(HANG_GUARD, || support::read_lossy(&log));
    writer.join().unwrap();
    (st, support::read_lossy(&log))
}

/// The events `run` delivers for `input` on stdin (a sink of its own), asserting a clean exit.
fn events_of(
    dir: &TempDir,
    rules: &Path,
    input: Vec<u8>,
    extra: &[(&str, &str)],
) -> (Payloads, String) {
    let sink = Sink::start();
    let (st, log) = run_stdin(dir, &sink, rules, input, extra);
    assert!(st.success(), "exit {st:?}\n{log}");
    (payloads(sink.events()), log)
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const STREAM: &str = "kube-apiserver-audit-0123456789abcdef0123456789abcdef";
const BOM: &str = "\u{feff}";

/// `aws logs tail` (default `detailed` format): `<time> <stream> <event>`; `colour`: as with
/// `--color on` (ANSI codes around the time and the stream).
fn tail_detailed(lines: &[String], colour: bool) -> String {
    lines
        .iter()
        .map(|l| {
            if colour {
                format!(
                    "\x1b[32m2025-12-09T12:57:46.000000+00:00\x1b[0m \x1b[36m{STREAM}\x1b[0m {l}\n"
                )
            } else {
                format!("2025-12-09T12:57:46.000000+00:00 {STREAM} {l}\n")
            }
        })
        .collect()
}

/// `aws logs tail --format short`: `<time> <event>`.
fn tail_short(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("2025-12-09T12:57:46 {l}\n"))
        .collect()
}

/// `aws logs tail --format json`: the event indented over many lines after the prefix.
fn tail_json(lines: &[String]) -> String {
    parse(lines)
        .iter()
        .map(|v| {
            format!(
                "2025-12-09T12:57:46.000000+00:00 {STREAM} {}\n",
                serde_json::to_string_pretty(v).unwrap()
            )
        })
        .collect()
}

/// `aws logs filter-log-events` output: one indented document, `events[].message`.
fn filter_log_events(lines: &[String]) -> String {
    let events: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({"logStreamName": STREAM, "timestamp": 1_700_000_000_000u64 + i as u64,
                   "message": l, "ingestionTime": 1_700_000_000_500u64, "eventId": i.to_string()})
        })
        .collect();
    serde_json::to_string_pretty(&json!({"events": events, "searchedLogStreams": []})).unwrap()
        + "\n"
}

/// CloudWatch subscription records (after base64 -d | gunzip), one per line, 20 events each,
/// and a control message.
fn subscription(lines: &[String]) -> String {
    let mut out = serde_json::to_string(&json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs",
        "logGroup": "", "logStream": "", "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": 1_700_000_000_000u64,
                       "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}))
    .unwrap()
        + "\n";
    for chunk in lines.chunks(20) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|l| json!({"id": "0", "timestamp": 1_700_000_000_000u64, "message": l}))
            .collect();
        out += &serde_json::to_string(
            &json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/example/cluster", "logStream": STREAM,
            "subscriptionFilters": ["f"], "logEvents": events}),
        )
        .unwrap();
        out.push('\n');
    }
    out
}

/// One Azure diagnostic record of category `kube-audit`; `object`: `properties.log` as an
/// object instead of a string (some exports).
fn aks_record(line: &str, object: bool) -> Value {
    let log = if object {
        serde_json::from_str(line).unwrap()
    } else {
        Value::String(format!("{line}\n"))
    };
    json!({"operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
           "category": "kube-audit", "ccpNamespace": "5eb120ce57f96500011bde2d",
           "resourceId": "/SUBSCRIPTIONS/X/RESOURCEGROUPS/Y/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/Z",
           "properties": {"log": log, "stream": "stdout", "pod": "kube-apiserver-6d7b9f5b9c-2xk8p"}})
}

/// A record of another category (klog text, not an audit event).
fn aks_other() -> Value {
    json!({"category": "kube-apiserver", "properties": {"log": "I1209 12:57:46.000000 1 trace.go:205] Trace[1]\n"}})
}

/// Event Hubs bodies: `{"records":[…]}` of 22 records, one body per line, BOM-prefixed.
fn aks_bodies(lines: &[String]) -> String {
    lines
        .chunks(22)
        .map(|c| {
            let mut records: Vec<Value> = c.iter().map(|l| aks_record(l, false)).collect();
            records.push(aks_other());
            format!(
                "{BOM}{}\n",
                serde_json::to_string(&json!({"records": records})).unwrap()
            )
        })
        .collect()
}

/// A storage-account export: one record per line.
fn aks_lines(lines: &[String], object: bool) -> String {
    lines
        .iter()
        .map(|l| serde_json::to_string(&aks_record(l, object)).unwrap() + "\n")
        .collect()
}

/// An `EventList` pretty-printed (kubectl, jq).
fn event_list_pretty(lines: &[String]) -> String {
    serde_json::to_string_pretty(
        &json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
        "metadata": {}, "items": parse(lines)}),
    )
    .unwrap()
        + "\n"
}

/// The audit lines a GKE entry can say (GKE logs completed requests on resources only).
fn gke_able(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["stage"] == "ResponseComplete" && v["objectRef"]["resource"].as_str().is_some()
        })
        .cloned()
        .collect()
}

/// The Cloud Audit Log entry GKE writes for an audit event, as the samples' README describes
/// it (written here independently of `src/`'s mapping back).
fn gke_entry(line: &str) -> Value {
    let e: Value = serde_json::from_str(line).unwrap();
    let o = &e["objectRef"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let group = match s(&o["apiGroup"]) {
        g if g.is_empty() => "core".to_string(),
        g => g,
    };
    let version = match s(&o["apiVersion"]) {
        v if v.is_empty() => "v1".to_string(),
        v => v,
    };
    let (resource, sub, ns, name) = (
        s(&o["resource"]),
        s(&o["subresource"]),
        s(&o["namespace"]),
        s(&o["name"]),
    );
    let mut method = format!("io.k8s.{group}.{version}.{resource}");
    if !sub.is_empty() {
        method += &format!(".{sub}");
    }
    method += &format!(".{}", s(&e["verb"]));
    let mut rn = format!("{group}/{version}");
    if !ns.is_empty() {
        rn += &format!("/namespaces/{ns}");
    }
    rn += &format!("/{resource}");
    if !name.is_empty() {
        rn += &format!("/{name}");
        if !sub.is_empty() {
            rn += &format!("/{sub}");
        }
    }
    let mut proto = json!({
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": s(&e["user"]["username"])},
        "authorizationInfo": [{"granted": true, "permission": method, "resource": rn}],
        "methodName": method, "resourceName": rn, "serviceName": "k8s.io",
        "requestMetadata": {"callerIp": "10.0.0.1", "callerSuppliedUserAgent": s(&e["userAgent"])},
    });
    if e.get("requestObject").is_some() {
        proto["request"] = e["requestObject"].clone();
    }
    if e.get("responseObject").is_some() {
        proto["response"] = e["responseObject"].clone();
    }
    let mut entry = json!({
        "insertId": s(&e["auditID"]),
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Factivity",
        "protoPayload": proto,
        "receiveTimestamp": s(&e["stageTimestamp"]),
        "resource": {"labels": {"cluster_name": "c", "location": "europe-west1", "project_id": "p"}, "type": "k8s_cluster"},
        "severity": "NOTICE",
        "timestamp": s(&e["requestReceivedTimestamp"]),
    });
    if e.get("annotations").is_some() {
        entry["labels"] = e["annotations"].clone();
    }
    entry
}

fn gke_lines(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| serde_json::to_string(&gke_entry(l)).unwrap() + "\n")
        .collect()
}

/// `gcloud logging read … --format=json`: one array, 2-space indent, sorted keys.
fn gke_array(lines: &[String]) -> String {
    let entries: Vec<Value> = lines.iter().map(|l| gke_entry(l)).collect();
    serde_json::to_string_pretty(&entries).unwrap() + "\n"
}

/// Each format's input and the audit lines it must read as.
fn formats(base: &[String]) -> Vec<(&'static str, &'static str, String, Vec<String>)> {
    let gke = gke_able(base);
    let b = base.to_vec();
    vec![
        (
            "aws logs tail",
            "eks",
            tail_detailed(base, false),
            b.clone(),
        ),
        (
            "aws logs tail --color on",
            "eks",
            tail_detailed(base, true),
            b.clone(),
        ),
        (
            "aws logs tail --format short",
            "eks",
            tail_short(base),
            b.clone(),
        ),
        (
            "aws logs tail --format json",
            "eks",
            tail_json(base),
            b.clone(),
        ),
        (
            "aws logs filter-log-events",
            "eks",
            filter_log_events(base),
            b.clone(),
        ),
        (
            "CloudWatch subscription records",
            "eks",
            subscription(base),
            b.clone(),
        ),
        ("AKS Event Hubs bodies", "aks", aks_bodies(base), b.clone()),
        (
            "AKS export, log as a string",
            "aks",
            aks_lines(base, false),
            b.clone(),
        ),
        (
            "AKS export, log as an object",
            "aks",
            aks_lines(base, true),
            b.clone(),
        ),
        (
            "GKE entries one per line",
            "gke",
            gke_lines(&gke),
            gke.clone(),
        ),
        ("gcloud --format=json", "gke", gke_array(&gke), gke.clone()),
        (
            "EventList, pretty-printed",
            "audit",
            event_list_pretty(base),
            b,
        ),
    ]
}

#[test]
fn each_cloud_format_on_stdin_yields_the_events_of_its_audit_lines() {
    let dir = TempDir::new("cloud", "formats");
    let rules = write_rules(&dir);
    let base = base_lines();
    let (plain, _) = events_of(&dir, &rules, (base.join("\n") + "\n").into_bytes(), &[]);
    let (plain_gke, _) = events_of(
        &dir,
        &rules,
        (gke_able(&base).join("\n") + "\n").into_bytes(),
        &[],
    );
    assert!(plain.values().sum::<usize>() >= 10, "{plain:?}");
    assert!(plain_gke.values().sum::<usize>() >= 5, "{plain_gke:?}");
    let mut all = Vec::new();
    let mut want_all = Payloads::new();
    for (name, format, input, lines) in formats(&base) {
        let want = if lines.len() == base.len() {
            &plain
        } else {
            &plain_gke
        };
        // Decided per record (auto), and with the format named.
        for f in ["auto", format] {
            let (got, log) = events_of(
                &dir,
                &rules,
                input.clone().into_bytes(),
                &[("AUDIT_FORMAT", f)],
            );
            assert!(
                &got == want,
                "{name} (AUDIT_FORMAT={f}): {}\n{log}",
                payload_diff(want, &got)
            );
            assert!(!log.contains("matches no input format"), "{name}: {log}");
        }
        for (k, n) in want {
            *want_all.entry(k.clone()).or_default() += n;
        }
        all.push(input);
    }
    // Every format in one stream, one after the other: each record is decided by itself.
    let (got, log) = events_of(&dir, &rules, all.concat().into_bytes(), &[]);
    assert!(
        got == want_all,
        "all formats in one stream: {}\n{log}",
        payload_diff(&want_all, &got)
    );
}

#[test]
fn a_format_other_than_the_one_asked_for_is_logged_with_its_first_bytes_and_skipped() {
    let dir = TempDir::new("cloud", "other-format");
    let rules = write_rules(&dir);
    let base = base_lines();
    let gke = gke_able(&base);
    let input = gke_lines(&gke[..3]);
    let sink = Sink::start();
    let (st, log) = run_stdin(
        &dir,
        &sink,
        &rules,
        input.into_bytes(),
        &[("AUDIT_FORMAT", "aks")],
    );
    assert!(st.success(), "{log}");
    assert!(sink.events().is_empty());
    assert!(
        log.contains("a record matches no input format the agent reads; it is skipped")
            && log.contains("matches no input format of AUDIT_FORMAT=aks; it starts with `{")
            && log.contains("more_of_this_kind_last_minute"),
        "{log}"
    );
    // Rate-limited: one line for three records.
    assert_eq!(
        log.matches("matches no input format of").count(),
        1,
        "{log}"
    );
}

#[test]
fn truncated_unknown_and_non_audit_records_are_counted_and_said_never_guessed() {
    let dir = TempDir::new("cloud", "skipped");
    let rules = write_rules(&dir);
    let exec = support::exec_line("cut@example.com");
    let id: Value = serde_json::from_str(&exec).unwrap();
    let id = id["auditID"].as_str().unwrap().to_string();
    let mut input = String::new();
    // A message CloudWatch cut at 256 KB, as `aws logs tail` prints it.
    input += &format!(
        "2025-12-09T12:57:46 {STREAM} {}[Truncated...]\n",
        &exec[..exec.len() - 90]
    );
    // The same inside filter-log-events output.
    input += &serde_json::to_string(
        &json!({"events": [{"message": format!("{}[Truncated...]", &exec[..200])}]}),
    )
    .unwrap();
    input += "\n{\"foo\":\"bar\",\"n\":1}\n";
    input += &(serde_json::to_string(&aks_other()).unwrap() + "\n");
    input += &(serde_json::to_string(&json!({"protoPayload": {"methodName": "v1.compute.instances.insert", "serviceName": "compute.googleapis.com"}})).unwrap() + "\n");
    // And one event that is read.
    input += &(support::exec_line("whole@example.com") + "\n");
    let sink = Sink::start();
    let (st, log) = run_stdin(&dir, &sink, &rules, input.clone().into_bytes(), &[]);
    assert!(st.success(), "{log}");
    assert_eq!(support::multiset(&[&sink]).len(), 1, "{log}");
    assert!(
        log.contains("the log service truncated the message (it ends in `[Truncated...]`)")
            && log.contains(&format!("auditID={id}")),
        "{log}"
    );
    assert!(
        log.contains("it starts with `{\\\"foo\\\":\\\"bar\\\",\\\"n\\\":1}`")
            || log.contains("it starts with `{\"foo\":\"bar\",\"n\":1}`"),
        "{log}"
    );
    assert!(
        log.contains("records that are not audit events are skipped")
            && log.contains("not an audit event: an AKS record of category `kube-apiserver`"),
        "{log}"
    );
    // replay reads the same, and counts each reason.
    let out = replay(&rules, input.as_bytes(), &[]);
    assert!(
        out.contains("not evaluated: not_audit 2, truncated 2, unknown_format 1"),
        "{out}"
    );
}

/// `replay --rules RULES -` of `input`: its stderr (the summary).
fn replay(rules: &Path, input: &[u8], env: &[(&str, &str)]) -> String {
    String::from_utf8_lossy(&support::replay_stdin(rules, input, env).stderr).into_owned()
}

/// The `summary k=v` line of a replay's stderr, as a map.
fn summary(stderr: &str) -> std::collections::BTreeMap<String, String> {
    stderr
        .lines()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary in {stderr}"))
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_vendored_cloud_samples_read_as_their_formats() {
    let dir = TempDir::new("cloud", "samples");
    let rules = write_rules(&dir);
    let cloud = data().join("cloud");
    let oracle_events = |lines: Vec<String>| -> Payloads {
        crate::webhook::replay_payloads(&rules, lines.join("\n").as_bytes(), &[])
    };
    let without_time = |p: Payloads| -> Payloads {
        p.into_iter()
            .map(|(k, n)| {
                let mut v: Value = serde_json::from_str(&k).unwrap();
                v.as_object_mut().unwrap().remove("timestamp");
                (v.to_string(), n)
            })
            .collect()
    };
    // (file, AUDIT_FORMAT, records evaluated + stage-skipped, the audit lines it holds per
    // serde_json when there is an oracle)
    let eks_event = || {
        let d: Value = serde_json::from_str(&support::read_lossy(
            &cloud.join("eks__DERIVED__aws-logs-filter-log-events__output.json"),
        ))
        .unwrap();
        vec![d["events"][0]["message"].as_str().unwrap().to_string()]
    };
    let aks_unwrap = |records: Vec<Value>| -> Vec<String> {
        records
            .into_iter()
            .filter(|r| r["category"] == "kube-audit")
            .map(|r| match &r["properties"]["log"] {
                Value::String(s) => s.trim().to_string(),
                v => v.to_string(),
            })
            .collect()
    };
    let read_json = |name: &str| -> Value {
        let t = support::read_lossy(&cloud.join(name));
        serde_json::from_str(t.trim_start_matches(BOM)).unwrap()
    };
    let aks_body = aks_unwrap(
        read_json("aks__sysdiglabs-aks-audit-log__event.json")["records"]
            .as_array()
            .unwrap()
            .clone(),
    );
    let aks_storage = aks_unwrap(
        support::read_lossy(&cloud.join("aks__DERIVED__storage-account-PT1H.jsonl"))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    );
    let webhook_items: Vec<String> =
        read_json("webhook__DERIVED__EventList-body-from-aks-events.json")["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
    let panther_gke_8: Vec<String> =
        support::read_lossy(&cloud.join("gke__panther-analysis__rule-test-logs.DERIVED.ndjson"))
            .lines()
            .take(8)
            .map(str::to_string)
            .collect();
    let cases: Vec<(&str, &str, u64, Option<Vec<String>>)> = vec![
        (
            "eks__DERIVED__aws-logs-tail__format-detailed.txt",
            "eks",
            1,
            Some(eks_event()),
        ),
        (
            "eks__DERIVED__aws-logs-tail__format-short.txt",
            "eks",
            1,
            Some(eks_event()),
        ),
        (
            "eks__DERIVED__aws-logs-tail__format-json.txt",
            "eks",
            1,
            Some(eks_event()),
        ),
        (
            "eks__DERIVED__aws-logs-filter-log-events__output.json",
            "eks",
            1,
            Some(eks_event()),
        ),
        (
            "eks__DERIVED__cloudwatch-subscription__DATA_MESSAGE.decoded.json",
            "eks",
            1,
            Some(eks_event()),
        ),
        (
            "eks__panther-analysis__rule-test-logs.DERIVED.ndjson",
            "eks",
            188,
            None,
        ),
        (
            "gke__DERIVED__gcloud-logging-read__format-json.txt",
            "gke",
            8,
            Some(panther_gke_8),
        ),
        (
            "gke__panther-analysis__rule-test-logs.DERIVED.ndjson",
            "gke",
            51,
            None,
        ),
        (
            "aks__sysdiglabs-aks-audit-log__event.json",
            "aks",
            22,
            Some(aks_body),
        ),
        (
            "aks__DERIVED__storage-account-PT1H.jsonl",
            "aks",
            22,
            Some(aks_storage),
        ),
        (
            "aks__sysdiglabs-aks-audit-log__sample_EventHubs_event.json",
            "aks",
            1,
            None,
        ),
        (
            "aks__sysdiglabs-aks-audit-log__sample_KubeAuditLog_event.json",
            "audit",
            1,
            None,
        ),
        (
            "aks__panther-analysis__rule-test-logs.DERIVED.ndjson",
            "aks",
            34,
            None,
        ),
        (
            "webhook__DERIVED__EventList-body-from-aks-events.json",
            "audit",
            22,
            Some(webhook_items),
        ),
    ];
    for (name, format, records, oracle) in cases {
        let bytes = std::fs::read(cloud.join(name)).unwrap();
        for f in ["auto", format] {
            let err = replay(&rules, &bytes, &[("AUDIT_FORMAT", f)]);
            let s = summary(&err);
            let n: u64 = s["evaluated"].parse::<u64>().unwrap()
                + s["skipped_stages"].parse::<u64>().unwrap();
            assert_eq!(n, records, "{name} (AUDIT_FORMAT={f}): {err}");
            assert_eq!(
                (s["malformed"].as_str(), s["dropped"].as_str()),
                ("0", "0"),
                "{name}: {err}"
            );
        }
        if let Some(lines) = oracle {
            let got = without_time(crate::webhook::replay_payloads(&rules, &bytes, &[]));
            let want = without_time(oracle_events(lines));
            assert!(got == want, "{name}: {}", payload_diff(&want, &got));
        }
    }
    // The Event Hubs body piped into `run` too: the same events as its records' audit lines.
    let (got, log) = events_of(
        &dir,
        &rules,
        std::fs::read(cloud.join("aks__sysdiglabs-aks-audit-log__event.json")).unwrap(),
        &[],
    );
    let want = crate::webhook::replay_payloads(
        &rules,
        aks_unwrap(
            read_json("aks__sysdiglabs-aks-audit-log__event.json")["records"]
                .as_array()
                .unwrap()
                .clone(),
        )
        .join("\n")
        .as_bytes(),
        &[],
    );
    assert!(got == want, "{}\n{log}", payload_diff(&want, &got));
}

#[test]
fn a_gcloud_array_written_slowly_in_small_chunks_is_read_element_by_element() {
    let dir = TempDir::new("cloud", "gcloud-slow");
    let rules = write_rules(&dir);
    let gke = gke_able(&base_lines());
    let (want, _) = events_of(&dir, &rules, (gke.join("\n") + "\n").into_bytes(), &[]);
    let n = want.values().sum::<usize>();
    let doc = gke_array(&gke);
    let (body, close) = doc.split_at(doc.rfind(']').unwrap());
    let sink = Sink::start();
    let log = dir.join("slow.stderr");
    let mut child = Command::new(support::bin())
        .arg("run")
        .env_clear()
        .env("HEALERT_BACKEND_URL", sink.url())
        .env("RULES_PATH", &rules)
        .env("AUDIT_SOURCE", "stdin")
        .env("AUDIT_FORMAT", "gke")
        .env("POLL_INTERVAL", "20ms")
        .env("SUPPRESS_WINDOW", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut proc = Proc::new(child);
    // As gcloud prints it: a little at a time (the pauses pace the writer; nothing is timed).
    for chunk in body.as_bytes().chunks(37) {
        stdin.write_all(chunk).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    // Every element's events arrive before the closing `]` (gcloud prints it when it exits).
    wait_until(
        HANG_GUARD,
        "the events of every element before `]`",
        || sink.events().len() >= n,
        || support::read_lossy(&log),
    );
    assert!(proc.try_wait().is_none(), "the agent must still be reading");
    stdin.write_all(close.as_bytes()).unwrap();
    drop(stdin);
    let st = proc.wait_exit(HANG_GUARD, || support::read_lossy(&log));
    let text = support::read_lossy(&log);
    assert!(st.success(), "{text}");
    let got = payloads(sink.events());
    assert!(got == want, "{}\n{text}", payload_diff(&want, &got));
    assert!(
        text.contains("the input ended; delivering what is queued"),
        "{text}"
    );
    assert!(
        text.contains("source      stdin  (AUDIT_FORMAT=gke"),
        "{text}"
    );
}

/// A minimal audit event by `user` (with `uid`) on `resource[/sub]` `ns/name`.
fn event(
    user: &str,
    uid: &str,
    verb: &str,
    resource: &str,
    sub: &str,
    ns: &str,
    name: &str,
) -> String {
    let mut o = json!({"resource": resource, "namespace": ns, "name": name, "apiVersion": "v1"});
    if !sub.is_empty() {
        o["subresource"] = json!(sub);
    }
    json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
           "auditID": support::audit_id(), "stage": "ResponseComplete",
           "verb": verb, "user": {"username": user, "uid": uid, "groups": ["system:authenticated"]},
           "objectRef": o, "requestReceivedTimestamp": "2026-01-05T10:00:00.000000Z",
           "stageTimestamp": "2026-01-05T10:00:00.100000Z"})
    .to_string()
}

#[test]
fn actors_and_entities_are_right_on_every_source() {
    let dir = TempDir::new("cloud", "actors");
    // The repository's own rules: exec logged as `get` (kubectl 1.30+) and as `create` must
    // both be kubectl-exec.
    let rules = support::repo_rules();
    let eks = [
        event(
            "kubernetes-admin",
            "aws-iam-authenticator:123456789012:AIDAEXAMPLE",
            "create",
            "pods",
            "exec",
            "shop",
            "web-7d4b9c8f6-abcde",
        ),
        event(
            "arn:aws:sts::123456789012:assumed-role/Admin/alice",
            "aws-iam-authenticator:123456789012:AROAEXAMPLE",
            "get",
            "pods",
            "exec",
            "shop",
            "api-0",
        ),
        event(
            "eks:addon-manager",
            "aws-iam-authenticator:12341234",
            "get",
            "secrets",
            "",
            "shop",
            "db",
        ),
        event(
            "system:serviceaccount:shop:ci",
            "",
            "create",
            "pods",
            "exec",
            "shop",
            "web-7d4b9c8f6-abcde",
        ),
    ];
    let gke = [
        event(
            "alice@example.com",
            "",
            "get",
            "pods",
            "exec",
            "payments",
            "visa-6b8f7d9c4-x2k9q",
        ),
        event(
            "bob@example.com",
            "",
            "create",
            "pods",
            "exec",
            "payments",
            "ledger-1",
        ),
        event(
            "robot@my-project.iam.gserviceaccount.com",
            "",
            "get",
            "secrets",
            "",
            "payments",
            "db",
        ),
    ];
    let aks = [
        event(
            "masterclient",
            "",
            "create",
            "pods",
            "exec",
            "web",
            "front-5c9d8b7f6-qwert",
        ),
        event("aksService", "", "get", "secrets", "", "web", "tls"),
    ];
    let mut input = tail_detailed(&eks, true);
    input += &gke_lines(&gke);
    input += &aks_bodies(&aks);
    let (got, log) = events_of(&dir, &rules, input.into_bytes(), &[]);
    let execs: Vec<(String, String, String)> = got
        .keys()
        .map(|k| serde_json::from_str::<Value>(k).unwrap())
        .filter(|v| v["type"] != "config-drift")
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["actor"].as_str().unwrap().to_string(),
                v["entity_ref"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        (
            "kubectl-exec",
            "alice@example.com",
            "component:payments/visa",
        ),
        (
            "kubectl-exec",
            "arn:aws:sts::123456789012:assumed-role/Admin/alice",
            "component:shop/api",
        ),
        (
            "kubectl-exec",
            "bob@example.com",
            "component:payments/ledger",
        ),
        ("kubectl-exec", "kubernetes-admin", "component:shop/web"),
        ("kubectl-exec", "masterclient", "component:web/front"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    let mut execs = execs;
    execs.sort();
    assert_eq!(execs, want, "{log}");
}

#[test]
fn replay_reads_the_cloud_formats_from_files_and_honours_audit_format() {
    let dir = TempDir::new("cloud", "replay-files");
    let rules = write_rules(&dir);
    let base = base_lines();
    let file = dir.join("subscription.json");
    std::fs::write(&file, subscription(&base)).unwrap();
    let out = Command::new(support::bin())
        .args(["replay", "--rules"])
        .arg(&rules)
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let plain = crate::webhook::replay_payloads(&rules, base.join("\n").as_bytes(), &[]);
    let got = payloads(String::from_utf8_lossy(&out.stdout).lines());
    assert!(got == plain, "{}", payload_diff(&plain, &got));
    // A bad AUDIT_FORMAT stops replay like run.
    let out = Command::new(support::bin())
        .args(["replay", "--rules"])
        .arg(&rules)
        .arg(&file)
        .env_clear()
        .env("AUDIT_FORMAT", "splunk")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AUDIT_FORMAT=\"splunk\": must be auto, audit, eks, gke or aks (example: AUDIT_FORMAT=eks)"), "{err}");
}

#[test]
fn audit_log_path_dash_means_stdin_and_the_banner_says_so() {
    let dir = TempDir::new("cloud", "dash");
    let rules = write_rules(&dir);
    let sink = Sink::start();
    let line = support::exec_line("dash@example.com") + "\n";
    let log = dir.join("agent.stderr");
    let mut cmd = Command::new(support::bin());
    cmd.arg("run")
        .env_clear()
        .env("HEALERT_BACKEND_URL", sink.url())
        .env("RULES_PATH", &rules)
        .env("AUDIT_LOG_PATH", "-")
        .env("CHECKPOINT_PATH", dir.join("cp"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let mut proc = Proc::new(child);
    let st = proc.wait_exit(HANG_GUARD, || support::read_lossy(&log));
    let text = support::read_lossy(&log);
    assert!(st.success(), "{text}");
    assert_eq!(sink.events().len(), 1, "{text}");
    assert!(text.contains("source      stdin"), "{text}");
    assert!(
        text.contains("CHECKPOINT_PATH is ignored with AUDIT_SOURCE=stdin"),
        "{text}"
    );
    assert!(!dir.join("cp").exists());
}

#[test]
fn events_read_from_stdin_but_not_delivered_make_the_exit_status_say_so() {
    let dir = TempDir::new("cloud", "undelivered");
    let rules = write_rules(&dir);
    let log = dir.join("agent.stderr");
    let port = support::free_port();
    let mut child = Command::new(support::bin())
        .arg("run")
        .env_clear()
        .env("HEALERT_BACKEND_URL", format!("http://127.0.0.1:{port}"))
        .env("RULES_PATH", &rules)
        .env("AUDIT_SOURCE", "stdin")
        .env("POLL_INTERVAL", "20ms")
        .env("SHUTDOWN_GRACE", "0s")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all((support::exec_line("lost@example.com") + "\n").as_bytes())
        .unwrap();
    drop(stdin);
    let mut proc = Proc::new(child);
    // The backend is down: at the end of the input the agent keeps trying, until told to stop.
    wait_until(
        HANG_GUARD,
        "the end of the input",
        || support::read_lossy(&log).contains("the input ended; delivering what is queued"),
        || support::read_lossy(&log),
    );
    assert!(proc.try_wait().is_none(), "{}", support::read_lossy(&log));
    proc.signal("TERM");
    let st = proc.wait_exit(HANG_GUARD, || support::read_lossy(&log));
    let text = support::read_lossy(&log);
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(
        text.contains("events read from the input were not delivered (there is no log to read them again from)")
            && text.contains("pending=1"),
        "{text}"
    );
}

/// The suppression window on stdin: a stream has no state file to keep open windows in, so
/// repeats are counted while it is read and, once it ends, every open window is summarised
/// before the agent exits: 5 execs by one person into one workload give the first event and
/// one summary of the 4 others; another person's exec is sent on its own.
#[test]
fn on_stdin_repeats_are_suppressed_and_summarised_when_the_input_ends() {
    let dir = TempDir::new("cloud", "suppress");
    let rules = support::repo_rules();
    let mut input = String::new();
    for _ in 0..5 {
        input.push_str(&support::exec_line("alice@example.com"));
        input.push('\n');
    }
    input.push_str(&support::exec_line("bob@example.com"));
    input.push('\n');
    let sink = Sink::start();
    let (st, log) = run_stdin(
        &dir,
        &sink,
        &rules,
        input.into_bytes(),
        &[("SUPPRESS_WINDOW", "10m")],
    );
    assert!(st.success(), "exit {st:?}\n{log}");
    let got: Vec<(String, String)> = sink
        .events_json()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_string(),
                e["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let alice: Vec<&String> = got
        .iter()
        .filter(|(a, _)| a == "alice@example.com")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(alice.len(), 2, "{got:?}\n{log}");
    assert!(!alice[0].contains("more times"), "{got:?}");
    assert!(alice[1].ends_with("(4 more times in 10m)"), "{got:?}");
    assert_eq!(
        got.iter().filter(|(a, _)| a == "bob@example.com").count(),
        1,
        "{got:?}"
    );
    assert!(log.contains("suppression 10m"), "{log}");
}
