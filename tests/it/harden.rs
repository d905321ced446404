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

/// One line on the real stderr, past libtest's capture (which hides a passing test's output):
/// a test that cannot run its check says so where the person running the tests sees it.
fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
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
    loud(&format!("SKIPPED {msg}: this test did NOT run (set HEALERT_REQUIRE_SHARED=1 to make that a failure)"));
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
        loud(
            "SKIPPED harden::script_refuses_a_run_directory_or_file_of_another_user: needs root \
             to chown files to another uid; this check did NOT run",
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

// ---------------------------------------------------------------------------------------------
// Item 7: TLS to the backend through stunnel, end to end
// ---------------------------------------------------------------------------------------------

/// A loopback TCP relay that records every byte it passes (client→server and server→client
/// separately): the test's view of what crosses the network on the TLS hop. Stops on drop.
struct Relay {
    addr: SocketAddr,
    up: Arc<Mutex<Vec<u8>>>,
    down: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let up = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (u, d, st, ps) = (up.clone(), down.clone(), stop.clone(), pumps.clone());
        let accept = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let mut g = ps.lock().unwrap();
                g.push(pump(client, server, u.clone(), st.clone()));
                g.push(pump(s2, c2, d.clone(), st.clone()));
            }
        });
        Relay {
            addr,
            up,
            down,
            stop,
            accept: Some(accept),
            pumps,
        }
    }
    fn up(&self) -> Vec<u8> {
        self.up.lock().unwrap().clone()
    }
    fn down(&self) -> Vec<u8> {
        self.down.lock().unwrap().clone()
    }
}

/// Copies `from` → `to`, appending what passes to `log`, until EOF, an error or `stop`.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    log: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 16384];
        while !stop.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for t in std::mem::take(&mut *self.pumps.lock().unwrap()) {
            let _ = t.join();
        }
    }
}

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(openssl: &Path, dir: &Path, args: &[&str]) {
    let o = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for IP 127.0.0.1 and a client certificate signed by it, and an
/// unrelated "wrong" CA: ca.pem, server.pem/.key, client.pem/.key, wrong-ca.pem in `dir`.
fn make_pki(ossl: &Path, dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (ca, cn) in [("ca", "healert-test-ca"), ("wrong-ca", "someone-else-ca")] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={cn}"),
        );
        let mut a = vec!["req", "-x509", "-days", "2", "-subj", &subj];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &pem]);
        openssl(ossl, dir, &a);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, cn) in [("server", "127.0.0.1"), ("client", "healert-agent-test")] {
        let (key, csr, pem, ext, subj) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
            format!("/CN={cn}"),
        );
        let mut a = vec!["req", "-new", "-subj", &subj];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr]);
        openssl(ossl, dir, &a);
        openssl(
            ossl,
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

/// stunnel as a child (killed on drop) with `conf` written to `dir/name.conf`, its log in
/// `dir/name.log`; returns once it has read its configuration and accepts on `port`.
fn stunnel_child(stunnel: &Path, dir: &Path, name: &str, conf: &str, port: u16) -> (Proc, PathBuf) {
    let conf_path = dir.join(format!("{name}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let mut p = Proc::new(
        Command::new(stunnel)
            .arg(&conf_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap(),
    );
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(
        GUARD,
        &format!("stunnel {name} to listen on {at}"),
        || {
            assert!(
                p.try_wait().is_none(),
                "stunnel {name} exited:\n{}",
                read_lossy(&log)
            );
            read_lossy(&log).contains("Configuration successful") && TcpStream::connect(at).is_ok()
        },
        || read_lossy(&log),
    );
    (p, log)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn tls_chain_agent_stunnel_tls_stunnel_backend_key_never_in_clear_events_exactly_once() {
    const TEST: &str =
        "tls_chain_agent_stunnel_tls_stunnel_backend_key_never_in_clear_events_exactly_once";
    let Some(stunnel) = tool_or_skip(TEST, &["stunnel", "stunnel4"], "apt install stunnel4") else {
        return;
    };
    let Some(ossl) = tool_or_skip(TEST, &["openssl"], "apt install openssl") else {
        return;
    };
    const KEY: &str = "tls-e2e-key-5f0c2a9e7b1d43f8a6c0e2b4d6f81357";
    let pki = TempDir::new("harden", "pki");
    make_pki(&ossl, pki.path());
    let p = |f: &str| pki.join(f).display().to_string();

    // The backend: the test sink behind a stunnel server that requires a client certificate
    // of the same CA (mutual TLS), behind a relay that records the TLS hop.
    let sink = Sink::builder().api_key(KEY).start();
    let tls_port = free_port();
    let server_conf = format!(
        "foreground = yes\npid =\nsyslog = no\n[backend]\naccept = 127.0.0.1:{tls_port}\n\
         connect = {}\ncert = {}\nkey = {}\nverifyChain = yes\nCAfile = {}\nrequireCert = yes\n",
        sink.addr(),
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
    );
    let (_server, server_log) =
        stunnel_child(&stunnel, pki.path(), "server", &server_conf, tls_port);
    let relay = Relay::start(format!("127.0.0.1:{tls_port}").parse().unwrap());

    let mut l = Local::new("tls");
    let local_port = free_port();
    l.set("HEALERT_BACKEND_URL", format!("https://{}", relay.addr));
    l.set("HEALERT_API_KEY", KEY);
    l.set("HEALERT_TLS_CA", p("ca.pem"));
    l.set("HEALERT_TLS_CERT", p("client.pem"));
    l.set("HEALERT_TLS_KEY", p("client.key"));
    l.set("HEALERT_TLS_LOCAL_PORT", local_port.to_string());
    l.set("HEALERT_STUNNEL", stunnel.display().to_string());
    let _g = l.guard();

    // 1. healert.sh starts stunnel, checks the backend through it, then the agent.
    let (o, t) = l.sh(&["start", "agent"]);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains(&format!("TLS to 127.0.0.1:{} verified", relay.addr.port())),
        "{t}"
    );
    assert!(t.contains("agent started"), "{t}");
    assert!(!t.contains(KEY), "healert.sh printed the key: {t}");
    let pid: u32 = read_lossy(&l.run("agent.pid")).trim().parse().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let want = format!("HEALERT_BACKEND_URL=http://127.0.0.1:{local_port}");
    assert!(
        environ.split(|b| *b == 0).any(|v| v == want.as_bytes()),
        "the agent must be given the local tunnel, plain http: {want}"
    );
    let stunnel_pid = read_lossy(&l.run("stunnel.pid")).trim().to_string();
    // healert.sh's stunnel options are the Kubernetes sidecar's (docs/examples/daemonset-tls.yaml),
    // except how the name is checked (an IP here) and the client certificate (set here).
    let local = stunnel_options(&read_lossy(&l.run("stunnel.conf")));
    let side = stunnel_options(&stunnel_conf_of(&tls_manifest()));
    for k in [
        "foreground",
        "pid",
        "syslog",
        "client",
        "delay",
        "sslVersionMin",
        "verifyChain",
    ] {
        assert_eq!(
            local.get(k),
            side.get(k),
            "stunnel option {k}: healert.sh vs the sidecar"
        );
    }
    let keys =
        |m: &std::collections::BTreeMap<String, String>, drop: &[&str]| -> BTreeSet<String> {
            m.keys()
                .filter(|k| !drop.contains(&k.as_str()))
                .cloned()
                .collect()
        };
    assert_eq!(
        keys(&local, &["checkIP", "cert", "key"]),
        keys(&side, &["checkHost", "sni"]),
        "healert.sh and the sidecar set different stunnel options"
    );
    assert_eq!(local.get("checkIP").map(String::as_str), Some("127.0.0.1"));
    let (o, t) = l.sh(&["status"]);
    assert!(
        o.status.success()
            && t.contains(&format!(
                "PID {stunnel_pid}  stunnel: 127.0.0.1:{local_port}"
            )),
        "{t}"
    );

    // 2. Events written to the audit log arrive, through the chain, exactly once.
    let actors: Vec<String> = (0..5)
        .map(|i| format!("tls-user-{i}@example.com"))
        .collect();
    for a in &actors {
        l.append(&exec_line(a));
    }
    let want = expected_exec(&actors);
    let n: usize = want.values().sum();
    assert!(
        sink.wait_for_events(n, GUARD),
        "{} of {n} events arrived; agent log:\n{}\nstunnel client log:\n{}\nserver log:\n{}",
        sink.events().len(),
        read_lossy(&l.run("agent.log")),
        read_lossy(&l.run("stunnel.log")),
        read_lossy(&server_log)
    );
    // stop drains the agent through the tunnel, then stops stunnel.
    let (o, t) = l.sh(&["stop", "agent"]);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("agent stopped") && t.contains("stunnel stopped"),
        "{t}"
    );
    assert!(!l.run("stunnel.pid").exists());
    let got = multiset(&[&sink]);
    assert_eq!(got, want, "not exactly once");
    for r in sink.requests().iter().filter(|r| r.method == "POST") {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }

    // 3. On the TLS hop: TLS records both ways, and neither the key nor any event in clear.
    let (up, down) = (relay.up(), relay.down());
    assert!(
        !up.is_empty() && !down.is_empty(),
        "nothing crossed the relay"
    );
    assert_eq!(
        up[0], 0x16,
        "the client's first byte is not a TLS handshake record"
    );
    assert_eq!(
        down[0], 0x16,
        "the server's first byte is not a TLS handshake record"
    );
    for (dir, bytes) in [("to the backend", &up), ("from the backend", &down)] {
        for needle in [
            KEY,
            "Bearer",
            "POST /events",
            "HTTP/1.1",
            "kubectl-exec",
            actors[0].as_str(),
        ] {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{needle:?} crossed the TLS hop in clear ({dir})"
            );
        }
    }

    // 4. A wrong CA: healert.sh shows stunnel's verification error and starts nothing.
    let before = sink.events().len();
    let mut wrong = Local {
        s: Scratch::new("tls-wrong"),
        audit: l.audit.clone(),
        env: l.env.clone(),
    };
    wrong.set("HEALERT_TLS_CA", p("wrong-ca.pem"));
    let _g2 = wrong.guard();
    let (o, t) = wrong.sh(&["start", "agent"]);
    assert!(
        !o.status.success(),
        "started with a CA that did not sign the backend: {t}"
    );
    assert!(
        t.contains("certificate verify failed") && t.contains("CERT: Pre-verification error"),
        "stunnel's own words are shown: {t}"
    );
    assert!(
        t.contains("the agent was not started") && t.contains("HEALERT_TLS_CA"),
        "{t}"
    );
    assert!(!wrong.run("agent.pid").exists() && !wrong.run("stunnel.pid").exists());
    assert_eq!(sink.events().len(), before, "something was delivered");

    // 5. The Kubernetes variant's sidecar (docs/examples/daemonset-tls.yaml): its stunnel.conf,
    //    with the placeholders and mount paths pointed at this test's files, carries the agent's
    //    events (mutual TLS, the backend checked by name: localhost); with the wrong CA in the
    //    Secret's place the agent reports the backend unreachable and stunnel's log says why.
    let docs = tls_manifest();
    let side_conf = stunnel_conf_of(&docs);
    let agent_url = env_value(agent_container(&docs), "HEALERT_BACKEND_URL");
    assert_eq!(
        agent_url, "http://127.0.0.1:8000",
        "the agent talks to the sidecar"
    );
    let tls_dir = pki.join("healert-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("client.pem", "tls.crt"),
        ("client.key", "tls.key"),
    ] {
        std::fs::copy(pki.join(from), tls_dir.join(to)).unwrap();
    }
    let side_port = free_port();
    let mut conf = side_conf.clone();
    for (from, to) in [
        (
            "REPLACE-WITH-BACKEND-HOST:443".to_string(),
            format!("localhost:{}", relay.addr.port()),
        ),
        (
            "REPLACE-WITH-BACKEND-HOST".to_string(),
            "localhost".to_string(),
        ),
        (
            "/etc/healert-tls/".to_string(),
            format!("{}/", tls_dir.display()),
        ),
        ("; cert = ".to_string(), "cert = ".to_string()),
        ("; key = ".to_string(), "key = ".to_string()),
        (
            "accept = 127.0.0.1:8000".to_string(),
            format!("accept = 127.0.0.1:{side_port}"),
        ),
    ] {
        assert!(
            conf.contains(&from),
            "the sidecar's stunnel.conf has no {from:?}:\n{side_conf}"
        );
        conf = conf.replace(&from, &to);
    }
    let side_dir = TempDir::new("harden", "sidecar");
    let sidecar_agent = |tag: &str, actor: &str| -> (Proc, PathBuf) {
        let audit = side_dir.join(&format!("{tag}.audit.log"));
        std::fs::write(&audit, format!("{}\n", exec_line(actor))).unwrap();
        let log = side_dir.join(&format!("{tag}.agent.stderr"));
        let mut c = Command::new(bin());
        for (name, _, _) in healert_agent::config::VARS {
            c.env_remove(name);
        }
        let agent = Proc::new(
            c.arg("run")
                .env(
                    "HEALERT_BACKEND_URL",
                    agent_url.replace(":8000", &format!(":{side_port}")),
                )
                .env("HEALERT_API_KEY", KEY)
                .env("AUDIT_LOG_PATH", &audit)
                .env("START_AT", "beginning")
                .env("RULES_PATH", repo().join("rules.yaml"))
                .current_dir(side_dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .unwrap(),
        );
        (agent, log)
    };
    {
        let (_sidecar, side_log) =
            stunnel_child(&stunnel, side_dir.path(), "sidecar", &conf, side_port);
        let (mut agent, agent_log) = sidecar_agent("right", "sidecar-user@example.com");
        let mut actors_all = actors.clone();
        actors_all.push("sidecar-user@example.com".into());
        let want = expected_exec(&actors_all);
        let n: usize = want.values().sum();
        assert!(
            sink.wait_for_events(n, GUARD),
            "the sidecar's config delivered nothing; agent:\n{}\nsidecar:\n{}",
            read_lossy(&agent_log),
            read_lossy(&side_log)
        );
        agent.signal("TERM");
        agent.wait_exit(GUARD, || read_lossy(&agent_log));
        assert_eq!(
            multiset(&[&sink]),
            want,
            "not exactly once through the sidecar"
        );
    }
    std::fs::copy(pki.join("wrong-ca.pem"), tls_dir.join("ca.crt")).unwrap();
    let before = sink.events().len();
    let (_sidecar, side_log) =
        stunnel_child(&stunnel, side_dir.path(), "sidecar-wrong", &conf, side_port);
    let (_agent, agent_log) = sidecar_agent("wrong", "wrong-ca-user@example.com");
    wait_until(
        GUARD,
        "the agent to report the backend unreachable, and stunnel why",
        || {
            read_lossy(&agent_log).contains("not reachable")
                && read_lossy(&side_log).contains("certificate verify failed")
        },
        || {
            format!(
                "agent:\n{}\nsidecar:\n{}",
                read_lossy(&agent_log),
                read_lossy(&side_log)
            )
        },
    );
    assert_eq!(
        sink.events().len(),
        before,
        "delivered despite the wrong CA"
    );
}

#[test]
fn tls_settings_errors_name_the_variable_and_the_fix() {
    let l = Local::new("tlserr");
    let _g = l.guard();
    let ca = l.s.root().join("ca.pem");
    std::fs::write(&ca, "not really a CA, but readable\n").unwrap();
    let ca = ca.display().to_string();
    let missing = l.s.root().join("missing.pem").display().to_string();
    let https = "https://127.0.0.1:9443";
    let cases: Vec<(Vec<(&str, String)>, String)> = vec![
        (
            vec![
                ("HEALERT_STUNNEL", "/nonexistent/stunnel".into()),
                ("HEALERT_TLS_CA", ca.clone()),
            ],
            "HEALERT_STUNNEL=/nonexistent/stunnel is not an executable file".into(),
        ),
        (
            vec![("HEALERT_TLS_CA", missing.clone())],
            format!("HEALERT_TLS_CA={missing} is not a readable file"),
        ),
        (
            vec![
                ("HEALERT_TLS_CA", ca.clone()),
                ("HEALERT_TLS_CERT", ca.clone()),
            ],
            "HEALERT_TLS_CERT and HEALERT_TLS_KEY go together".into(),
        ),
        (
            vec![
                ("HEALERT_TLS_CA", ca.clone()),
                ("HEALERT_TLS_LOCAL_PORT", "99999".into()),
            ],
            "HEALERT_TLS_LOCAL_PORT=99999: must be a port number 1..65535 (example: 18000)".into(),
        ),
        (
            vec![
                ("HEALERT_TLS_CA", ca.clone()),
                (
                    "HEALERT_BACKEND_URL",
                    "https://user:hunter2@backend.example".into(),
                ),
            ],
            "credentials in the URL are not allowed".into(),
        ),
        (
            vec![
                ("HEALERT_TLS_CA", ca.clone()),
                ("HEALERT_BACKEND_URL", "https://backend example".into()),
            ],
            "cannot read HOST[:PORT]".into(),
        ),
    ];
    for (env, want) in cases {
        let mut c = l.command(&["start", "agent"]);
        c.env("HEALERT_BACKEND_URL", https);
        for (k, v) in &env {
            c.env(k, v);
        }
        let o = run_bounded(c);
        let t = text(&o);
        assert!(!o.status.success(), "{env:?}: {t}");
        assert!(t.contains(&want), "{env:?}: want {want:?} in:\n{t}");
        assert!(!t.contains("hunter2"), "the URL's password was echoed: {t}");
        assert!(
            !l.run("agent.pid").exists(),
            "{env:?}: an agent was started"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The manifests: findings 1, 2, 12 and the TLS variant
// ---------------------------------------------------------------------------------------------

fn load(rel: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn tls_manifest() -> Vec<Yaml> {
    load("docs/examples/daemonset-tls.yaml")
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod_spec(docs: &[Yaml]) -> &Yaml {
    &find(docs, "DaemonSet", "healert-agent")["spec"]["template"]["spec"]
}

fn agent_container(docs: &[Yaml]) -> &Yaml {
    pod_spec(docs)["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .expect("container agent")
}

fn env_value(container: &Yaml, name: &str) -> String {
    container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("env {name} has no value"))
        .to_string()
}

fn stunnel_conf_of(docs: &[Yaml]) -> String {
    find(docs, "ConfigMap", "healert-stunnel")["data"]["stunnel.conf"]
        .as_str()
        .expect("stunnel.conf")
        .to_string()
}

/// `key = value` lines of a stunnel configuration (comments and sections left out).
fn stunnel_options(conf: &str) -> std::collections::BTreeMap<String, String> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The volume mounted at `path`'s directory in `container`, as (mount, volume).
fn volume_of<'a>(docs: &'a [Yaml], container: &'a Yaml, path: &str) -> (&'a Yaml, &'a Yaml) {
    let dir = Path::new(path).parent().unwrap().to_str().unwrap();
    let m = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let v = pod_spec(docs)["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap();
    (m, v)
}

#[test]
fn daemonsets_dead_letter_on_the_node_beside_the_checkpoint() {
    for rel in ["daemonset.yaml", "docs/examples/daemonset-tls.yaml"] {
        let docs = load(rel);
        let c = agent_container(&docs);
        let dead = env_value(c, "DEAD_LETTER_PATH");
        let checkpoint = env_value(c, "CHECKPOINT_PATH");
        assert_eq!(
            Path::new(&dead).parent(),
            Path::new(&checkpoint).parent(),
            "{rel}: dead letters beside the checkpoint"
        );
        assert_ne!(dead, checkpoint);
        let (m, v) = volume_of(&docs, c, &dead);
        assert_ne!(m["readOnly"].as_bool(), Some(true), "{rel}: writable");
        assert_eq!(
            v["hostPath"]["path"].as_str(),
            Some("/var/lib/healert-agent"),
            "{rel}: on the node, so it survives the pod"
        );
    }
}

/// Each peer of a NetworkPolicy rule selects pods by namespace AND labels (both in one peer),
/// never "everything".
fn selected_peers(rule: &Yaml, key: &str, what: &str) {
    let peers = rule[key]
        .as_vec()
        .unwrap_or_else(|| panic!("{what}: a rule without `{key}` admits every source"));
    assert!(!peers.is_empty(), "{what}: empty `{key}`");
    for p in peers {
        let ns = p["namespaceSelector"]["matchLabels"].as_hash();
        let pods = p["podSelector"]["matchLabels"].as_hash();
        assert!(
            ns.is_some_and(|h| !h.is_empty()) && pods.is_some_and(|h| !h.is_empty()),
            "{what}: each peer names a namespace and pod labels: {p:?}"
        );
    }
}

#[test]
fn network_policies_admit_only_the_node_and_a_named_prometheus_and_reach_only_the_backend() {
    for (rel, backend_port) in [
        ("daemonset.yaml", 8000),
        ("docs/examples/daemonset-tls.yaml", 443),
    ] {
        let docs = load(rel);
        let np = &find(&docs, "NetworkPolicy", "healert-agent")["spec"];
        let health = env_value(agent_container(&docs), "HEALTH_ADDR");
        let health: i64 = health.rsplit(':').next().unwrap().parse().unwrap();
        for r in np["ingress"].as_vec().unwrap() {
            selected_peers(r, "from", &format!("{rel} ingress"));
            let ports: Vec<i64> = r["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .filter_map(|p| p["port"].as_i64())
                .collect();
            assert_eq!(
                ports,
                vec![health],
                "{rel}: ingress only to the health port"
            );
        }
        let mut backend_rules = 0;
        for r in np["egress"].as_vec().unwrap() {
            let ports: BTreeSet<i64> = r["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .filter_map(|p| p["port"].as_i64())
                .collect();
            if ports == BTreeSet::from([53]) {
                continue; // DNS, to whatever resolver the cluster runs
            }
            assert_eq!(ports, BTreeSet::from([backend_port]), "{rel}: egress");
            selected_peers(r, "to", &format!("{rel} egress to the backend"));
            backend_rules += 1;
        }
        assert_eq!(backend_rules, 1, "{rel}");
    }
    // The TLS variant's backend port is the one stunnel connects to.
    let side = stunnel_options(&stunnel_conf_of(&tls_manifest()));
    assert!(side["connect"].ends_with(":443"), "{side:?}");
}

#[test]
fn tls_variant_is_daemonset_yaml_plus_the_sidecar_and_nothing_else() {
    let base = load("daemonset.yaml");
    let tls = tls_manifest();
    for (kind, name) in [
        ("Namespace", "healert-system"),
        ("ServiceAccount", "healert-agent"),
        ("ConfigMap", "healert-rules"),
    ] {
        assert_eq!(
            find(&base, kind, name),
            find(&tls, kind, name),
            "{kind} {name} differs"
        );
    }
    assert_eq!(
        base.len() + 1,
        tls.len(),
        "the TLS variant adds exactly one object (the healert-stunnel ConfigMap)"
    );
    // NetworkPolicy: the same but the backend's port (TLS 443 instead of 8000).
    let np = |d: &[Yaml]| {
        let mut s = format!("{:?}", find(d, "NetworkPolicy", "healert-agent"));
        s = s
            .replace("Integer(8000)", "BACKEND")
            .replace("Integer(443)", "BACKEND");
        s
    };
    assert_eq!(
        np(&base),
        np(&tls),
        "NetworkPolicy differs beyond the backend port"
    );
    // DaemonSet: the same but the agent's backend URL, the sidecar and its two volumes.
    let normalize = |d: &[Yaml]| -> Yaml {
        let mut ds = find(d, "DaemonSet", "healert-agent").clone();
        let Yaml::Hash(ref mut top) = ds else {
            unreachable!()
        };
        let spec = top.get_mut(&Yaml::String("spec".into())).unwrap();
        let Yaml::Hash(spec) = spec else {
            unreachable!()
        };
        let tpl = spec.get_mut(&Yaml::String("template".into())).unwrap();
        let Yaml::Hash(tpl) = tpl else { unreachable!() };
        let ps = tpl.get_mut(&Yaml::String("spec".into())).unwrap();
        let Yaml::Hash(ps) = ps else { unreachable!() };
        ps.remove(&Yaml::String("initContainers".into()));
        if let Some(Yaml::Array(vols)) = ps.get_mut(&Yaml::String("volumes".into())) {
            vols.retain(|v| !matches!(v["name"].as_str(), Some("stunnel-config" | "backend-tls")));
        }
        if let Some(Yaml::Array(cs)) = ps.get_mut(&Yaml::String("containers".into())) {
            for c in cs {
                if let Yaml::Hash(c) = c {
                    if let Some(Yaml::Array(env)) = c.get_mut(&Yaml::String("env".into())) {
                        env.retain(|e| e["name"].as_str() != Some("HEALERT_BACKEND_URL"));
                    }
                }
            }
        }
        ds
    };
    assert_eq!(
        normalize(&base),
        normalize(&tls),
        "DaemonSet differs beyond the TLS additions"
    );

    // The sidecar: a native sidecar (starts first, stops last), locked down like the agent,
    // its two volumes read-only, the Secret in it only.
    let ps = pod_spec(&tls);
    let init = ps["initContainers"].as_vec().expect("initContainers");
    assert_eq!(init.len(), 1);
    let side = &init[0];
    assert_eq!(
        side["restartPolicy"].as_str(),
        Some("Always"),
        "native sidecar"
    );
    assert_eq!(
        side["securityContext"],
        agent_container(&tls)["securityContext"]
    );
    for c in ["requests", "limits"] {
        assert!(side["resources"][c]["memory"].as_str().is_some(), "{c}");
    }
    let conf_path = side["args"][0].as_str().unwrap();
    let (m, v) = volume_of(&tls, side, conf_path);
    assert_eq!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(v["configMap"]["name"].as_str(), Some("healert-stunnel"));
    let opts = stunnel_options(&stunnel_conf_of(&tls));
    let (m, v) = volume_of(&tls, side, &opts["CAfile"]);
    assert_eq!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(
        v["secret"]["secretName"].as_str(),
        Some("healert-backend-tls")
    );
    let agent_mounts = format!("{:?}", agent_container(&tls)["volumeMounts"]);
    assert!(
        !agent_mounts.contains("backend-tls"),
        "the agent must not mount the TLS Secret"
    );
    // The agent's URL is the sidecar's loopback listener, plain http.
    let url = env_value(agent_container(&tls), "HEALERT_BACKEND_URL");
    assert_eq!(format!("http://{}", opts["accept"]), url);
    assert!(
        opts["accept"].starts_with("127.0.0.1:"),
        "loopback only: no other pod may use it"
    );
    assert_eq!(opts.get("verifyChain").map(String::as_str), Some("yes"));
}

#[test]
fn every_docs_reference_in_the_shipped_files_names_an_existing_section() {
    // "docs/NAME.md → Section" in the manifests and the script must lead somewhere.
    let mut seen = 0;
    for rel in [
        "daemonset.yaml",
        "docs/examples/daemonset-tls.yaml",
        "healert.sh",
        "docs/examples/stunnel.Dockerfile",
    ] {
        // Comments wrap: join the lines, without their indentation and comment marks.
        let text: String = std::fs::read_to_string(repo().join(rel))
            .unwrap()
            .lines()
            .map(|l| l.trim_start().trim_start_matches(['#', ';']).trim())
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("docs/") {
            rest = &rest[i..];
            let Some(end) = rest.find(".md") else { break };
            let doc = &rest[..end + 3];
            let after = &rest[end + 3..];
            if doc.contains(char::is_whitespace) || doc.len() > 40 {
                rest = &rest[5..];
                continue;
            }
            let body = std::fs::read_to_string(repo().join(doc))
                .unwrap_or_else(|e| panic!("{rel} names {doc}: {e}"));
            if let Some(sec) = after.strip_prefix(" → ") {
                let sec: String = sec
                    .split([')', ',', ';', '"', '\n'])
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let heading = body.lines().any(|l| {
                    l.starts_with('#') && l.trim_start_matches('#').trim().starts_with(sec.as_str())
                });
                assert!(
                    heading,
                    "{rel} names {doc} → {sec}, which has no such heading"
                );
            }
            seen += 1;
            rest = after;
        }
    }
    assert!(
        seen >= 8,
        "only {seen} references found: is the scan broken?"
    );
}

#[test]
fn update_manifest_keeps_the_tls_variant_current_too() {
    // Private copies, so the repository's files are not touched.
    let s = Scratch::new("tlsmanifest");
    let dir = s.root().join("repo");
    std::fs::create_dir_all(dir.join("docs/examples")).unwrap();
    for f in [
        "healert.sh",
        "daemonset.yaml",
        "docs/examples/daemonset-tls.yaml",
    ] {
        std::fs::copy(repo().join(f), dir.join(f)).unwrap();
    }
    let rules = s.root().join("edited.yaml");
    let content = "rules:\n  - name: only-in-this-test\n";
    std::fs::write(&rules, content).unwrap();
    let run = |args: &[&str]| {
        let mut c = s.command(&dir.join("healert.sh"), args);
        c.env("HEALERT_RULES_SOURCE", &rules);
        let o = run_bounded(c);
        (o.status.success(), text(&o))
    };
    let (ok, t) = run(&["update", "manifest"]);
    assert!(ok, "{t}");
    assert!(
        t.contains("docs/examples/daemonset-tls.yaml updated from"),
        "{t}"
    );
    let (ok, t) = run(&["update", "manifest", "--check"]);
    assert!(ok, "{t}");
    let tls = YamlLoader::load_from_str(&read_lossy(&dir.join("docs/examples/daemonset-tls.yaml")))
        .unwrap();
    assert_eq!(
        find(&tls, "ConfigMap", "healert-rules")["data"]["rules.yaml"].as_str(),
        Some(content)
    );
    // A stale copy in the TLS variant alone is caught by --check, and named.
    let path = dir.join("docs/examples/daemonset-tls.yaml");
    let stale = read_lossy(&path).replace("only-in-this-test", "stale-name");
    std::fs::write(&path, stale).unwrap();
    let (ok, t) = run(&["update", "manifest", "--check"]);
    assert!(!ok, "{t}");
    assert!(
        t.contains("docs/examples/daemonset-tls.yaml is out of date"),
        "{t}"
    );
}
