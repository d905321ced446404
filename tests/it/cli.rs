//! The commands read one parsed configuration (`config::Config`): `replay` refuses exactly the
//! bad values `run` refuses, for the variables it uses, and ignores the others; `validate`
//! needs only RULES_PATH.

use std::process::Command;

use crate::support::{bin, repo_rules, TempDir};

const EXEC: &str = r#"{"kind":"Event","stage":"ResponseComplete","verb":"create","user":{"username":"alice"},"objectRef":{"resource":"pods","namespace":"shop","name":"web-0","subresource":"exec"},"requestReceivedTimestamp":"2026-01-01T00:00:00Z"}"#;

fn replay(env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = TempDir::new("cli", "replay");
    let log = dir.join("audit.log");
    std::fs::write(&log, format!("{EXEC}\n")).unwrap();
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("replay")
        .arg("--rules")
        .arg(repo_rules())
        .arg(&log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_refusal(env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("run");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn replay_refuses_the_namespace_run_refuses_with_the_same_words() {
    let bad = [("ENTITY_NAMESPACE", "team/a")];
    let (code, stdout, stderr) = replay(&bad);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    let want = "ENTITY_NAMESPACE=\"team/a\": must be letters, digits, '-' or '_' (it becomes part of entity refs) (example: ENTITY_NAMESPACE=default)";
    assert!(
        stderr.contains(&format!("replay: invalid configuration: {want}")),
        "{stderr}"
    );
    assert!(run_refusal(&bad).contains(want));
    let bad = [("MAX_LINE_BYTES", "12 apples")];
    let (code, _, stderr) = replay(&bad);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("MAX_LINE_BYTES=\"12 apples\": unknown unit"),
        "{stderr}"
    );
}

#[test]
fn replay_ignores_bad_values_of_variables_it_does_not_read() {
    let (code, stdout, stderr) = replay(&[
        ("POLL_INTERVAL", "fast"),
        ("HEALTH_ADDR", "nowhere"),
        ("HEALERT_BACKEND_URL", "ftp://x"),
        ("ENTITY_NAMESPACE", "team-a"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "kubectl-exec only (one act, one event): {stdout}"
    );
    assert!(stdout.contains("\"namespace\":\"shop\""));
    // With --send the backend URL is read, and refused like `run` refuses it.
    let dir = TempDir::new("cli", "send");
    let log = dir.join("audit.log");
    std::fs::write(&log, format!("{EXEC}\n")).unwrap();
    let out = Command::new(bin())
        .env_clear()
        .env("HEALERT_BACKEND_URL", "ftp://x")
        .args(["replay", "--send", "--rules"])
        .arg(repo_rules())
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("HEALERT_BACKEND_URL=\"ftp://x\": unsupported scheme"),
        "{stderr}"
    );
}

#[test]
fn validate_needs_only_rules_path() {
    let out = Command::new(bin())
        .env_clear()
        .env("RULES_PATH", repo_rules())
        .env("POLL_INTERVAL", "fast")
        .arg("validate")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK:"), "{stdout}");
}
