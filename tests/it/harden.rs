//! Issue 17 (hardening), the parts outside the binary, each through the real script, the real
//! binary and (for TLS) real stunnel:
//!
//! - finding 5 / item 4: `healert.sh` never writes through a link in `run/`, refuses a `run/`,
//!   log or pid file it does not own, and creates its files 0600 whatever the umask;
//! - finding 6: `stop` signals only the process it started, identified by start time and
//!   executable (`run/NAME.ident`), never by a word in a command line;
//! - findings 1, 2, 12: the NetworkPolicy and the DaemonSet (health port, backend egress,
//!   dead letters on the node), and the TLS variant `docs/examples/daemonset-tls.yaml`;
//! - item 7: TLS to the backend: agent → stunnel client (started by `healert.sh`) → TLS with a
//!   CA made here by openssl → stunnel server → the test sink, with the bytes on the TLS hop
//!   recorded by a relay; a wrong CA; the setting errors. docs/tls.md describes this test.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use crate::script::{repo, run_bounded, text, Scratch};
use crate::sink::Sink;
use crate::support::{
    bin, exec_line, expected_exec, free_port, multiset, read_lossy, wait_until, Proc, TempDir,
};

/// Hang guard for waits (a loaded 2-core CI machine is slow, not stuck).
const GUARD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `name` in PATH, if any.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The tool, or None after one loud line saying the test did not run; with
/// HEALERT_REQUIRE_SHARED=1 (CI) a missing tool fails the test instead.
fn tool_or_skip(test: &str, names: &[&str], install: &str) -> Option<PathBuf> {
    if let Some(p) = names.iter().find_map(|n| which(n)) {
        return Some(p);
    }
    let msg = format!(
        "harden::{test}: {} is not installed ({install})",
        names.join(" / ")
    );
    if std::env::var("HEALERT_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "{msg}, and HEALERT_REQUIRE_SHARED=1 requires this test to run (.ci/run installs it)"
        );
    }
    eprintln!("SKIPPED {msg}: this test did NOT run (set HEALERT_REQUIRE_SHARED=1 to make that a failure)");
    None
}

/// A process that is alive and is not the agent, though its command line names it; killed
/// on drop.
struct Bystander(Proc);

impl Bystander {
    fn start(script: &str) -> Bystander {
        let c = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bash");
        let pid = c.id();
        let b = Bystander(Proc::new(c));
        // Bounded wait until the command line is final (after bash's exec).
        wait_until(
            GUARD,
            "bystander command line",
            || {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("healert-agent"))
                    .unwrap_or(false)
            },
            String::new,
        );
        b
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().is_none()
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot).
fn start_time(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(19).unwrap().to_string()
}

fn alive_pid(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

/// Processes healert.sh started in a scratch directory, stopped on drop whatever happened:
/// `healert.sh stop`, then SIGKILL to any pid-file process whose executable is the agent or
/// stunnel (never anything else).
struct StopOnDrop<'a> {
    s: &'a Scratch,
    env: Vec<(String, String)>,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let mut c = self
            .s
            .command(&repo().join("healert.sh"), &["stop", "agent"]);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        for name in ["agent", "stunnel"] {
            let Ok(p) = std::fs::read_to_string(self.s.run_dir().join(format!("{name}.pid")))
            else {
                continue;
            };
            let Ok(pid) = p.trim().parse::<u32>() else {
                continue;
            };
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let exe = exe.to_string_lossy();
            if exe.ends_with("healert-agent") || exe.contains("stunnel") {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

/// A scratch agent directory with an empty audit log, and `healert.sh` run in it with `env`.
struct Local {
    s: Scratch,
    audit: PathBuf,
    env: Vec<(String, String)>,
}

impl Local {
    fn new(tag: &str) -> Local {
        let s = Scratch::new(tag);
        let audit = s.root().join("audit.log");
        std::fs::write(&audit, "").unwrap();
        let env = vec![
            ("AUDIT_LOG_PATH".into(), audit.display().to_string()),
            (
                "RULES_PATH".into(),
                repo().join("rules.yaml").display().to_string(),
            ),
            ("POLL_INTERVAL".into(), "50ms".into()),
        ];
        Local { s, audit, env }
    }
    fn set(&mut self, k: &str, v: impl Into<String>) {
        self.env.retain(|(n, _)| n != k);
        self.env.push((k.to_string(), v.into()));
    }
    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.s.command(&repo().join("healert.sh"), args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
    fn sh(&self, args: &[&str]) -> (Output, String) {
        let o = run_bounded(self.command(args));
        let t = text(&o);
        (o, t)
    }
    fn guard(&self) -> StopOnDrop<'_> {
        StopOnDrop {
            s: &self.s,
            env: self.env.clone(),
        }
    }
    fn run(&self, name: &str) -> PathBuf {
        self.s.run_dir().join(name)
    }
    fn append(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.audit)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 5 / item 4: run/ is never written through a link, nor when it is someone else's
// ---------------------------------------------------------------------------------------------

#[test]
fn script_never_writes_through_a_link_in_run() {
    let l = Local::new("links");
    let _g = l.guard();
    let victim = l.s.root().join("victim");
    let precious = "precious, owned by someone else\n";

    // 1. run/agent.log planted as a link to another file: refused, the file untouched.
    std::fs::create_dir_all(l.s.run_dir()).unwrap();
    std::fs::write(&victim, precious).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, l.run("agent.log")).unwrap();
    let (o, t) = l.sh(&["start", "agent"]);
    assert!(!o.status.success(), "started through a linked log: {t}");
    assert!(
        t.contains("agent.log is a symbolic link") && t.contains("never writes through a link"),
        "{t}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), precious);
    assert_eq!(mode(&victim), 0o644, "the link's target was chmod'ed");
    assert!(!l.run("agent.pid").exists(), "an agent was started anyway");
    std::fs::remove_file(l.run("agent.log")).unwrap();

    // 2. run/ itself a link to another directory: refused, nothing created there.
    std::fs::remove_dir_all(l.s.run_dir()).unwrap();
    let elsewhere = l.s.root().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, l.s.run_dir()).unwrap();
    for args in [&["start", "agent"][..], &["status"], &["stop", "agent"]] {
        let (o, t) = l.sh(args);
        assert!(!o.status.success(), "{args:?} used a linked run/: {t}");
        assert!(
            t.contains("run is a symbolic link") && t.contains("Fix: rm"),
            "{args:?}: {t}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "files were created through the linked run/"
    );
    std::fs::remove_file(l.s.run_dir()).unwrap();

    // 3. A pid file planted as a link (naming a live process through it): not trusted, the
    //    process not signalled, the target not touched; the link itself is removed.
    std::fs::create_dir_all(l.s.run_dir()).unwrap();
    let mut by = Bystander::start("exec -a healert-agent sleep 60");
    std::fs::write(&victim, format!("{}\n", by.0.pid())).unwrap();
    std::os::unix::fs::symlink(&victim, l.run("agent.pid")).unwrap();
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("not trusted") && t.contains("not running"),
        "{t}"
    );
    assert!(
        by.alive(),
        "stop signalled the process a linked pid file named"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        format!("{}\n", by.0.pid())
    );
    assert!(std::fs::symlink_metadata(l.run("agent.pid")).is_err());
}

#[test]
fn script_refuses_a_run_directory_or_file_of_another_user() {
    if !is_root() {
        eprintln!(
            "SKIPPED harden::script_refuses_a_run_directory_or_file_of_another_user: needs root \
             to chown files to another uid; this check did NOT run"
        );
        return;
    }
    let l = Local::new("owner");
    let _g = l.guard();
    let chown = |p: &Path| {
        let st = Command::new("chown")
            .arg("-h")
            .arg("4242")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    // run/ of uid 4242 (root running in a checkout another user prepared).
    std::fs::create_dir_all(l.s.run_dir()).unwrap();
    chown(&l.s.run_dir());
    let (o, t) = l.sh(&["start", "agent"]);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("belongs to uid 4242, not to you (uid 0)"), "{t}");
    assert_eq!(std::fs::read_dir(l.s.run_dir()).unwrap().count(), 0);

    // Our run/, but a log file of uid 4242 in it.
    std::fs::remove_dir_all(l.s.run_dir()).unwrap();
    std::fs::create_dir_all(l.s.run_dir()).unwrap();
    std::fs::write(l.run("agent.log"), "theirs\n").unwrap();
    chown(&l.run("agent.log"));
    let (o, t) = l.sh(&["start", "agent"]);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("agent.log belongs to uid 4242") && t.contains("refusing to write it"),
        "{t}"
    );
    assert_eq!(read_lossy(&l.run("agent.log")), "theirs\n");
    assert!(!l.run("agent.pid").exists());
}

#[test]
fn script_files_are_0600_and_run_is_0700_under_umask_000() {
    let l = Local::new("umask");
    let _g = l.guard();
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(repo().join("healert.sh"))
        .args(["start", "agent"]);
    // The scratch environment, through Scratch::command's settings.
    let base = l.command(&[]);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.current_dir(l.s.root()).stdin(Stdio::null());
    let o = run_bounded(c);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&l.s.run_dir()), 0o700);
    for f in ["agent.log", "agent.pid", "agent.ident"] {
        assert_eq!(mode(&l.run(f)), 0o600, "run/{f}");
    }
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success() && t.contains("agent stopped"), "{t}");
}

// ---------------------------------------------------------------------------------------------
// Finding 6: stop signals only the process it started
// ---------------------------------------------------------------------------------------------

#[test]
fn stop_never_signals_a_process_whose_command_line_merely_names_the_agent() {
    let l = Local::new("stopother");
    let _g = l.guard();
    std::fs::create_dir_all(l.s.run_dir()).unwrap();
    // A reused pid: the process is alive and its command line mentions healert-agent (as its
    // argv[0], or in its arguments), but it is not the agent binary.
    for script in [
        "exec -a healert-agent sleep 60",
        "sleep 60; echo healert-agent done",
    ] {
        let mut by = Bystander::start(script);
        std::fs::write(l.run("agent.pid"), format!("{}\n", by.0.pid())).unwrap();
        let (o, t) = l.sh(&["stop", "agent"]);
        assert!(o.status.success(), "{t}");
        assert!(
            t.contains("stale pid file") && t.contains("not a running agent"),
            "{script}: {t}"
        );
        assert!(by.alive(), "`stop` killed {script:?}, an unrelated process");
        assert!(!l.run("agent.pid").exists());
    }
}

#[test]
fn stop_identifies_the_agent_by_start_time_and_executable() {
    let l = Local::new("ident");
    let _g = l.guard();
    let (o, t) = l.sh(&["start", "agent"]);
    assert!(o.status.success() && t.contains("agent started"), "{t}");
    let pid: u32 = read_lossy(&l.run("agent.pid")).trim().parse().unwrap();
    let ident = read_lossy(&l.run("agent.ident"));
    let fields: Vec<&str> = ident.split_whitespace().collect();
    let exe = std::fs::canonicalize(bin()).unwrap();
    assert_eq!(fields.len(), 4, "PID START BOOT EXE: {ident:?}");
    assert_eq!(fields[0], pid.to_string());
    assert_eq!(fields[1], start_time(pid), "start time recorded");
    assert_eq!(
        fields[2],
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
    assert_eq!(Path::new(fields[3]), exe, "executable recorded");

    // The same pid with another start time is a reused pid: not signalled.
    let forged = format!("{pid} 1 {} {}\n", fields[2], fields[3]);
    std::fs::write(l.run("agent.ident"), &forged).unwrap();
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("the pid was reused") && t.contains("not running"),
        "{t}"
    );
    assert!(
        alive_pid(pid),
        "stop signalled a process whose start time differs"
    );

    // The same pid and start time with another executable: not signalled either.
    std::fs::write(l.run("agent.pid"), format!("{pid}\n")).unwrap();
    std::fs::write(
        l.run("agent.ident"),
        format!("{pid} {} {} /usr/bin/sleep\n", fields[1], fields[2]),
    )
    .unwrap();
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("ours ran /usr/bin/sleep"), "{t}");
    assert!(alive_pid(pid));

    // Both right: stopped.
    std::fs::write(l.run("agent.pid"), format!("{pid}\n")).unwrap();
    std::fs::write(l.run("agent.ident"), &ident).unwrap();
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success() && t.contains("agent stopped"), "{t}");
    wait_until(GUARD, "the agent to exit", || !alive_pid(pid), String::new);
    assert!(!l.run("agent.pid").exists() && !l.run("agent.ident").exists());
}

#[test]
fn a_pid_file_from_the_previous_script_still_stops_the_agent_it_names() {
    // healert.sh 0.2.0 wrote only the pid; an agent started by it must still be stoppable
    // after an upgrade (identified by its executable, the agent binary).
    let l = Local::new("legacy");
    let _g = l.guard();
    let (o, t) = l.sh(&["start", "agent"]);
    assert!(o.status.success(), "{t}");
    let pid: u32 = read_lossy(&l.run("agent.pid")).trim().parse().unwrap();
    std::fs::remove_file(l.run("agent.ident")).unwrap();
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success() && t.contains("agent stopped"), "{t}");
    wait_until(GUARD, "the agent to exit", || !alive_pid(pid), String::new);
}
