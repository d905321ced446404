//! The shipped files users meet first: `healert.sh` (driven as a user would, in a temporary
//! HOME/agent directory, against the built binary), `daemonset.yaml` (parsed and checked for the
//! invariants the issue asks for, and for its embedded copy of rules.yaml), the audit policy
//! (evaluated against what every rule needs), and `.env.example` / docs/configuration.md against
//! `config::VARS`. The end-to-end run (start agent → status → test → stop) lives in
//! `script_e2e.rs`, which needs the test sink.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use healert_agent::config::{self, VARS};
use yaml_rust2::{Yaml, YamlLoader};

use crate::sink::{Action, Sink};
use crate::support::{bin, free_port, rules_all_enabled, Proc, TempDir};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The rules file the ConfigMap must carry.
fn rules_source() -> PathBuf {
    repo().join("rules.yaml")
}

// ---------------------------------------------------------------------------------------------
// A scratch HOME with an agent and a backend directory, and healert.sh run inside it.
// ---------------------------------------------------------------------------------------------

/// Removed on drop.
pub struct Scratch {
    dir: TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = TempDir::new("script", tag);
        std::fs::create_dir_all(dir.join("agent")).unwrap();
        Scratch { dir }
    }
    /// The scratch HOME.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn agent_dir(&self) -> PathBuf {
        self.root().join("agent")
    }
    pub fn backend_dir(&self) -> PathBuf {
        self.root().join("backend")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.agent_dir().join("run")
    }

    /// `healert.sh ARGS` with a clean environment: nothing from the developer's shell that
    /// the agent or the script reads, no colours, no kubectl.
    pub fn command(&self, script: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(script);
        c.args(args)
            .current_dir(self.root())
            .env("HOME", self.root())
            .env("HEALERT_AGENT_DIR", self.agent_dir())
            .env("HEALERT_BACKEND_DIR", self.backend_dir())
            .env("HEALERT_AGENT_BIN", bin())
            .env("KUBECTL", "/nonexistent/kubectl")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (name, _, _) in VARS {
            c.env_remove(name);
        }
        for name in [
            "HEALERT_HOST",
            "HEALERT_PORT",
            "HEALERT_RULES_SOURCE",
            "KUBECONFIG",
        ] {
            c.env_remove(name);
        }
        // A port nothing listens on, so "backend reachable?" checks fail fast and offline.
        c.env("HEALERT_BACKEND_URL", "http://127.0.0.1:9");
        c
    }

    pub fn sh(&self, args: &[&str]) -> Output {
        run_bounded(self.command(&repo().join("healert.sh"), args))
    }
}

/// Runs a command to completion, killing it after a minute (a hang guard, not a timing assert).
pub fn run_bounded(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within 60 s: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A process that is alive but is not the agent, killed on drop.
struct Bystander(Proc);

impl Bystander {
    /// `argv0` becomes the process's command line, as a pid-file check sees it.
    fn start(argv0: &str) -> Bystander {
        let c = Command::new("bash")
            .arg("-c")
            .arg(format!("exec -a {argv0} sleep 60"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        // Wait (bounded) until the exec has happened, so the command line is final.
        let cmdline = format!("/proc/{}/cmdline", c.id());
        for _ in 0..250 {
            if std::fs::read(&cmdline)
                .map(|b| b.starts_with(argv0.as_bytes()))
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Bystander(Proc::new(c))
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().is_none()
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn env_value(file: &Path, name: &str) -> Option<String> {
    read(file)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
}

// ---------------------------------------------------------------------------------------------
// healert.sh
// ---------------------------------------------------------------------------------------------

#[test]
fn help_lists_every_command_of_the_go_script() {
    let s = Scratch::new("help");
    let o = s.sh(&["help"]);
    assert!(o.status.success(), "{}", text(&o));
    let h = text(&o);
    for cmd in [
        "init",
        "deps",
        "setup",
        "setup rotate",
        "configure [--audit-log PATH] [--rules PATH] [--namespace NS]",
        "configure scoring [--threshold N] [--half-life N] [--retention N] [--reset]",
        "start [backend|agent|kubernetes]",
        "stop [backend|agent|kubernetes]",
        "update kubernetes",
        "restart",
        "validate",
        "reset [--confirm]",
        "status",
        "logs",
        "test",
        "version",
    ] {
        assert!(h.contains(cmd), "help lacks `{cmd}`:\n{h}");
    }
}

#[test]
fn version_names_script_and_agent() {
    let s = Scratch::new("version");
    let o = s.sh(&["version"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("healert.sh "), "{t}");
    assert!(
        t.contains(&format!("healert-agent {}", healert_agent::VERSION)),
        "{t}"
    );
}

#[test]
fn unknown_command_and_bad_flags_are_usage_errors() {
    let s = Scratch::new("usage");
    for args in [
        &["frobnicate"][..],
        &["start", "everything"],
        &["configure", "--colour", "red"],
        &["update", "galaxy"],
        &["reset", "--yes"],
    ] {
        let o = s.sh(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("help"), "{args:?}: {}", text(&o));
    }
}

#[test]
fn validate_is_the_agents_own_validate() {
    // Whatever the agent's validator says about a file (valid, invalid, unreadable), the
    // script says the same, with the same exit code: there is one parser.
    let s = Scratch::new("validate");
    let broken = s.root().join("broken.yaml");
    std::fs::write(&broken, "rules:\n  - name: [unclosed\n").unwrap();
    let missing = s.root().join("missing.yaml");
    let all_rules = rules_all_enabled();
    for path in [all_rules.as_path(), broken.as_path(), missing.as_path()] {
        let p = path.to_str().unwrap();
        let agent = run_bounded({
            let mut c = Command::new(bin());
            c.args(["validate", p]).stdin(Stdio::null());
            c
        });
        let script = s.sh(&["validate", p]);
        assert_eq!(
            script.status.code(),
            agent.status.code(),
            "{p}: script {} vs agent {}",
            text(&script),
            text(&agent)
        );
        let a_out = String::from_utf8_lossy(&agent.stdout);
        let a_err = String::from_utf8_lossy(&agent.stderr);
        assert!(String::from_utf8_lossy(&script.stdout).contains(a_out.trim()));
        assert!(String::from_utf8_lossy(&script.stderr).contains(a_err.trim()));
        let via_flag = s.sh(&["validate", "--rules", p]);
        assert_eq!(via_flag.status.code(), agent.status.code(), "--rules {p}");
    }
}

#[test]
fn status_without_agent_says_stopped_and_removes_stale_pid_files() {
    let s = Scratch::new("status");
    let o = s.sh(&["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("Agent") && t.contains("stopped"), "{t}");
    assert!(t.contains("not set"), "no key yet: {t}");

    // A pid file naming a live process that is not the agent (pid reuse after a reboot).
    std::fs::create_dir_all(s.run_dir()).unwrap();
    let pidfile = s.run_dir().join("agent.pid");
    let mut other = Bystander::start("not-the-agent");
    std::fs::write(&pidfile, format!("{}\n", other.0.pid())).unwrap();
    let o = s.sh(&["status"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("stale pid file"), "{t}");
    assert!(t.contains("stopped"), "{t}");
    assert!(!pidfile.exists(), "stale pid file kept");
    assert!(
        other.alive(),
        "status must never signal a process it did not start"
    );

    // A pid file naming a process that no longer exists; `stop agent` cleans it up too.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();
    let o = s.sh(&["stop", "agent"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("stale pid file") && t.contains("not running"),
        "{t}"
    );
    assert!(!pidfile.exists());

    // Garbage in a pid file is stale as well, never passed to kill.
    std::fs::write(&pidfile, "-1 0\n").unwrap();
    let o = s.sh(&["stop", "agent"]);
    assert!(
        o.status.success() && text(&o).contains("stale"),
        "{}",
        text(&o)
    );
    assert!(other.alive());
}

#[test]
fn setup_writes_the_key_mode_600_and_never_prints_it() {
    let s = Scratch::new("setup");
    std::fs::create_dir_all(s.backend_dir()).unwrap();
    let o = s.sh(&["setup"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let agent_env = s.agent_dir().join(".env");
    let backend_env = s.backend_dir().join(".env");
    assert_eq!(mode(&agent_env), 0o600);
    assert_eq!(mode(&backend_env), 0o600);
    let key = env_value(&agent_env, "HEALERT_API_KEY").expect("key in agent .env");
    assert!(key.len() >= 32, "key too short: {} chars", key.len());
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a bearer key must be one token"
    );
    assert_eq!(
        env_value(&backend_env, "HEALERT_API_KEY").as_deref(),
        Some(key.as_str())
    );
    assert!(!t.contains(&key), "setup printed the key");
    assert!(t.contains(&format!("{} chars", key.len())), "{t}");

    // Not silently replaced: without a terminal, setup refuses and names `setup rotate`.
    let o = s.sh(&["setup"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("setup rotate"), "{}", text(&o));
    assert_eq!(
        env_value(&agent_env, "HEALERT_API_KEY").as_deref(),
        Some(key.as_str())
    );

    let o = s.sh(&["setup", "rotate"]);
    assert!(o.status.success(), "{}", text(&o));
    let rotated = env_value(&agent_env, "HEALERT_API_KEY").unwrap();
    assert_ne!(rotated, key);
    assert_eq!(
        env_value(&backend_env, "HEALERT_API_KEY").as_deref(),
        Some(rotated.as_str())
    );
    assert!(!text(&o).contains(&rotated));

    // configure edits settings in place and keeps the key and the mode.
    let o = s.sh(&[
        "configure",
        "--audit-log",
        "/var/log/kubernetes/audit/audit.log",
        "--namespace",
        "platform",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&agent_env), 0o600);
    assert_eq!(
        env_value(&agent_env, "ENTITY_NAMESPACE").as_deref(),
        Some("platform")
    );
    assert_eq!(
        env_value(&agent_env, "HEALERT_API_KEY").as_deref(),
        Some(rotated.as_str())
    );
    let o = s.sh(&["configure", "--namespace", "no spaces/allowed"]);
    assert!(!o.status.success(), "{}", text(&o));

    // status shows the key's length only.
    let o = s.sh(&["status"]);
    let t = text(&o);
    assert!(t.contains(&format!("{} chars", rotated.len())), "{t}");
    assert!(!t.contains(&rotated));

    // A .env readable by others is tightened back to 600 on the next command.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent_env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = s.sh(&["status"]);
    assert!(o.status.success());
    assert!(text(&o).contains("changed to 600"), "{}", text(&o));
    assert_eq!(mode(&agent_env), 0o600);
}

/// `status` names the source the agent reads: the audit log, or the webhook's address, whether
/// a token is set (never the token) and the spool.
#[test]
fn status_names_the_webhook_source_and_never_its_token() {
    let s = Scratch::new("status-webhook");
    let env = s.agent_dir().join(".env");
    let token = "tok-9Qw2Zx7Lm4Rt";
    std::fs::write(
        &env,
        format!("AUDIT_SOURCE=webhook\nAUDIT_WEBHOOK_ADDR=127.0.0.1:8765\nAUDIT_WEBHOOK_TOKEN={token}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = s.sh(&["status"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("source:     audit webhook on 127.0.0.1:8765 (token set)"),
        "{t}"
    );
    assert!(t.contains("spool:") && t.contains("run/spool"), "{t}");
    assert!(!t.contains("audit log:"), "{t}");
    assert!(!t.contains(token), "{t}");
}

#[test]
fn env_file_is_data_not_code() {
    // healert.sh parses .env; a line that would run a command when `source`d must not.
    let s = Scratch::new("envdata");
    let marker = s.root().join("pwned");
    let env = s.agent_dir().join(".env");
    std::fs::write(
        &env,
        format!(
            "ENTITY_NAMESPACE=team-a\n$(touch {m})\nLOG_LEVEL=`touch {m}`\nNOT_A_HEALERT_VAR=1\n",
            m = marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = s.sh(&["status"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!marker.exists(), ".env content was executed");
    let t = text(&o);
    assert!(
        t.contains("NOT_A_HEALERT_VAR is not a variable healert reads"),
        "{t}"
    );
    assert!(t.contains("not NAME=value"), "{t}");
}

#[test]
fn restart_with_invalid_rules_leaves_the_running_agent_alone() {
    let s = Scratch::new("restart");
    let audit = s.root().join("audit.log");
    std::fs::write(&audit, "").unwrap();
    let sh = |args: &[&str], rules: &Path| {
        let mut c = s.command(&repo().join("healert.sh"), args);
        c.env("RULES_PATH", rules).env("AUDIT_LOG_PATH", &audit);
        run_bounded(c)
    };
    // A real agent (stop identifies it by start time and executable, not by its name).
    let o = sh(&["start", "agent"], &repo().join("rules.yaml"));
    assert!(o.status.success(), "{}", text(&o));
    let pidfile = s.run_dir().join("agent.pid");
    let pid = read(&pidfile).trim().to_string();
    let alive = || Path::new(&format!("/proc/{pid}/exe")).exists();
    let rules = s.root().join("rules.yaml");
    std::fs::write(&rules, "rules:\n  - name: [this is not valid\n").unwrap();
    let o = sh(&["restart"], &rules);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("restart aborted"), "{t}");
    assert!(alive(), "restart signalled the agent despite invalid rules");
    assert_eq!(read(&pidfile).trim(), pid, "pid file changed");
    let o = sh(&["stop", "agent"], &repo().join("rules.yaml"));
    assert!(
        o.status.success() && text(&o).contains("agent stopped"),
        "{}",
        text(&o)
    );
}

#[test]
fn start_agent_refuses_unreadable_rules_and_logs() {
    let s = Scratch::new("startbad");
    let mut c = s.command(&repo().join("healert.sh"), &["start", "agent"]);
    c.env("RULES_PATH", s.root().join("nope.yaml"));
    let o = run_bounded(c);
    assert!(!o.status.success());
    assert!(text(&o).contains("rules file not found"), "{}", text(&o));
    assert!(!s.run_dir().join("agent.pid").exists());
}

#[test]
fn healert_sh_reads_exactly_the_agents_variables() {
    let script = read(&repo().join("healert.sh"));
    let start = script.find("AGENT_VARS=(").expect("AGENT_VARS array") + "AGENT_VARS=(".len();
    let end = start + script[start..].find(')').unwrap();
    let listed: BTreeSet<&str> = script[start..end].split_whitespace().collect();
    let vars: BTreeSet<&str> = VARS.iter().map(|v| v.0).collect();
    assert_eq!(
        listed, vars,
        "healert.sh AGENT_VARS differs from config::VARS"
    );
}

// ---------------------------------------------------------------------------------------------
// .env.example and docs/configuration.md against config::VARS
// ---------------------------------------------------------------------------------------------

#[test]
fn env_example_lists_every_variable_with_default_and_meaning() {
    let text = read(&repo().join(".env.example"));
    let lines: Vec<&str> = text.lines().collect();
    for (name, default, meaning) in VARS {
        let at = lines
            .iter()
            .position(|l| {
                l.strip_prefix('#')
                    .unwrap_or(l)
                    .starts_with(&format!("{name}="))
            })
            .unwrap_or_else(|| panic!(".env.example lacks {name}="));
        let value = lines[at].split_once('=').unwrap().1;
        if default.starts_with("(none") {
            assert_eq!(value, "", "{name}: no default, so no value");
        } else {
            assert_eq!(value, *default, "{name}: value differs from its default");
        }
        let comments = &lines[at.saturating_sub(2)..at];
        assert!(
            comments.contains(&format!("# default: {default}").as_str()),
            "{name}: `# default: {default}` missing above it"
        );
        assert!(
            comments.contains(&format!("# {meaning}").as_str()),
            "{name}: its meaning is missing above it"
        );
    }
    // Nothing else, except what the script itself reads.
    let script = read(&repo().join("healert.sh"));
    for l in &lines {
        let body = l.strip_prefix('#').unwrap_or(l);
        if let Some((name, _)) = body.split_once('=') {
            if name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') && !name.is_empty() {
                let known = VARS.iter().any(|v| v.0 == name) || script_var(&script, name);
                assert!(known, ".env.example names {name}, which nothing reads");
            }
        }
    }
}

fn script_var(script: &str, name: &str) -> bool {
    script
        .lines()
        .find(|l| l.starts_with("SCRIPT_VARS=("))
        .map(|l| {
            l.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .any(|w| w == name)
        })
        .unwrap_or(false)
}

#[test]
fn configuration_doc_table_lists_every_variable_with_its_default_and_meaning() {
    // The table moved from the README to docs/configuration.md (linked from the README).
    let doc = read(&repo().join("docs/configuration.md"));
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
    for (name, default, meaning) in VARS {
        let row = rows
            .iter()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no table row for {name}"));
        assert!(
            row.contains(default),
            "docs/configuration.md row for {name} lacks `{default}`: {row}"
        );
        assert!(
            row.contains(&meaning.replace('|', "\\|")),
            "docs/configuration.md row for {name} lacks its meaning `{meaning}`: {row}"
        );
    }
    assert_eq!(
        rows.len(),
        VARS.len(),
        "a row for a variable the agent does not read"
    );
    let readme = read(&repo().join("README.md"));
    assert!(
        readme.contains("(docs/configuration.md)"),
        "README must link the table"
    );
}

// ---------------------------------------------------------------------------------------------
// daemonset.yaml
// ---------------------------------------------------------------------------------------------

fn manifest() -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(&repo().join("daemonset.yaml")))
        .expect("daemonset.yaml parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn object<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("daemonset.yaml has no {kind}"))
}

fn strs(y: &Yaml) -> Vec<&str> {
    y.as_vec()
        .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn configmap_carries_rules_yaml_exactly_with_its_checksum() {
    let docs = manifest();
    let cm = object(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["name"].as_str(), Some("healert-rules"));
    let embedded = cm["data"]["rules.yaml"].as_str().expect("data.rules.yaml");
    let source = rules_source();
    let want = read(&source);
    assert!(
        embedded == want,
        "the ConfigMap's rules.yaml differs from {}: run ./healert.sh update manifest",
        source.display()
    );
    let ds = object(&docs, "DaemonSet");
    let sum = ds["spec"]["template"]["metadata"]["annotations"]["healert.io/rules-sha256"]
        .as_str()
        .expect("rules checksum annotation");
    assert_eq!(
        sum,
        sha256_hex(want.as_bytes()),
        "checksum annotation is stale"
    );
}

#[test]
fn update_manifest_round_trips_any_rules_file_and_check_detects_drift() {
    // A private copy of the script and manifest, so the repository's file is not touched.
    let s = Scratch::new("manifest");
    let dir = s.root().join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["healert.sh", "daemonset.yaml"] {
        std::fs::copy(repo().join(f), dir.join(f)).unwrap();
    }
    let script = dir.join("healert.sh");
    let rules = s.root().join("edited.yaml");
    let content = "# edited rules: quotes \"x\" 'y', colons: a: b, unicode Ø, a tab\there\n\nrules:\n  - name: kubectl-exec   # trailing comment\n    description: \"exec on {name} by {actor}\"\n\n\n    severity: high\n";
    std::fs::write(&rules, content).unwrap();
    let run = |args: &[&str]| {
        let mut c = s.command(&script, args);
        c.env("HEALERT_RULES_SOURCE", &rules);
        run_bounded(c)
    };
    let o = run(&["update", "manifest", "--check"]);
    assert!(!o.status.success(), "drift not detected: {}", text(&o));
    assert!(text(&o).contains("out of date"), "{}", text(&o));
    let o = run(&["update", "manifest"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["update", "manifest", "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    let docs: Vec<Yaml> = YamlLoader::load_from_str(&read(&dir.join("daemonset.yaml"))).unwrap();
    let cm = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    assert_eq!(cm["data"]["rules.yaml"].as_str(), Some(content));
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap();
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["healert.io/rules-sha256"].as_str(),
        Some(sha256_hex(content.as_bytes()).as_str())
    );
    // Content a YAML literal block cannot reproduce is refused, with the line.
    std::fs::write(&rules, "rules:\n   \n").unwrap();
    let o = run(&["update", "manifest"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("line 2 has only whitespace"),
        "{}",
        text(&o)
    );
    std::fs::write(&rules, "rules: []").unwrap();
    let o = run(&["update", "manifest"]);
    assert!(
        !o.status.success() && text(&o).contains("newline"),
        "{}",
        text(&o)
    );
}

#[test]
fn daemonset_is_locked_down_and_consistent_with_the_agent() {
    let docs = manifest();
    for kind in ["ServiceAccount", "ConfigMap", "NetworkPolicy", "DaemonSet"] {
        assert_eq!(
            object(&docs, kind)["metadata"]["namespace"].as_str(),
            Some("healert-system"),
            "{kind}"
        );
    }
    assert_eq!(
        object(&docs, "Namespace")["metadata"]["name"].as_str(),
        Some("healert-system")
    );
    assert_eq!(
        object(&docs, "ServiceAccount")["automountServiceAccountToken"].as_bool(),
        Some(false)
    );

    let ds = object(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );

    // Control-plane nodes only, whichever label name and value the distribution uses.
    let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_vec()
        .expect("required node affinity");
    let keys: BTreeSet<String> = terms
        .iter()
        .flat_map(|t| t["matchExpressions"].as_vec().cloned().unwrap_or_default())
        .map(|e| {
            format!(
                "{} {}",
                e["key"].as_str().unwrap_or(""),
                e["operator"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(keys.contains("node-role.kubernetes.io/control-plane Exists"));
    assert!(keys.contains("node-role.kubernetes.io/master Exists"));
    let tolerated: BTreeSet<&str> = pod["tolerations"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(tolerated.contains("node-role.kubernetes.io/control-plane"));
    assert!(tolerated.contains("node-role.kubernetes.io/master"));

    // Non-root, no capabilities, read-only root, seccomp; reads the log via a group.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(psc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(
        psc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let groups: Vec<i64> = psc["supplementalGroups"]
        .as_vec()
        .expect("supplementalGroups")
        .iter()
        .filter_map(|g| g.as_i64())
        .collect();
    assert_eq!(
        groups,
        vec![64535],
        "the healert-audit gid of docs/daemonset.md"
    );
    let doc = read(&repo().join("docs/daemonset.md"));
    assert!(
        doc.contains("--gid 64535"),
        "docs/daemonset.md must document gid 64535"
    );

    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let csc = &c["securityContext"];
    assert_eq!(csc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(csc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strs(&csc["capabilities"]["drop"]), vec!["ALL"]);
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].as_str().is_some(), "{r}.memory");
        assert!(c["resources"][r]["cpu"].as_str().is_some(), "{r}.cpu");
    }

    // Every variable set is one the agent reads.
    let env = c["env"].as_vec().unwrap();
    let value = |name: &str| -> &Yaml {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("env {name} missing"))
    };
    for e in env {
        let n = e["name"].as_str().unwrap();
        assert!(
            VARS.iter().any(|v| v.0 == n),
            "env {n} is not read by the agent"
        );
    }
    assert_eq!(
        value("K8S_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.namespace")
    );
    assert_eq!(
        value("HEALERT_API_KEY")["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("healert-api-key")
    );
    let backend = value("HEALERT_BACKEND_URL")["value"].as_str().unwrap();
    assert!(
        backend.contains("REPLACE"),
        "the backend URL is a marked placeholder"
    );
    let backend_port: i64 = backend.rsplit(':').next().unwrap().parse().unwrap();

    // Termination grace leaves the agent its whole SHUTDOWN_GRACE.
    let grace = config::parse_duration(value("SHUTDOWN_GRACE")["value"].as_str().unwrap()).unwrap();
    let term = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert_eq!(term, 30);
    assert!(
        grace.as_secs() + 5 <= term as u64,
        "grace {grace:?} vs {term}s"
    );

    // Mounts: the log's directory (read-only, rotations visible), the checkpoint's directory on
    // the host (writable), the rules ConfigMap.
    let mounts = c["volumeMounts"].as_vec().unwrap();
    let volumes = pod["volumes"].as_vec().unwrap();
    let mount_of = |file: &str| -> (&Yaml, &Yaml) {
        let dir = Path::new(file).parent().unwrap().to_str().unwrap();
        let m = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .unwrap_or_else(|| panic!("no volume mounted at {dir} (for {file})"));
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == m["name"].as_str())
            .unwrap();
        (m, v)
    };
    let audit = value("AUDIT_LOG_PATH")["value"].as_str().unwrap();
    let (m, v) = mount_of(audit);
    assert_eq!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(v["hostPath"]["type"].as_str(), Some("Directory"));
    assert_eq!(
        v["hostPath"]["path"].as_str(),
        Path::new(audit).parent().unwrap().to_str()
    );
    let checkpoint = value("CHECKPOINT_PATH")["value"].as_str().unwrap();
    let (m, v) = mount_of(checkpoint);
    assert_ne!(m["readOnly"].as_bool(), Some(true));
    assert_eq!(
        v["hostPath"]["path"].as_str(),
        Some("/var/lib/healert-agent")
    );
    assert_eq!(v["hostPath"]["type"].as_str(), Some("DirectoryOrCreate"));
    let (_, v) = mount_of(value("RULES_PATH")["value"].as_str().unwrap());
    assert_eq!(v["configMap"]["name"].as_str(), Some("healert-rules"));

    // Probes on the health port, which is HEALTH_ADDR's port and the only ingress port.
    let health_port: i64 = value("HEALTH_ADDR")["value"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let port = c["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("health"))
        .expect("port named health");
    assert_eq!(port["containerPort"].as_i64(), Some(health_port));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["port"].as_str(),
        Some("health")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("health")
    );

    let np = &object(&docs, "NetworkPolicy")["spec"];
    assert_eq!(strs(&np["policyTypes"]), vec!["Ingress", "Egress"]);
    let ports = |rules: &Yaml| -> BTreeSet<(String, i64)> {
        rules
            .as_vec()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_vec().cloned().unwrap_or_default())
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    p["port"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        ports(&np["ingress"]),
        BTreeSet::from([("TCP".to_string(), health_port)])
    );
    assert_eq!(
        ports(&np["egress"]),
        BTreeSet::from([
            ("TCP".to_string(), backend_port),
            ("UDP".to_string(), 53),
            ("TCP".to_string(), 53)
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// The audit policy, evaluated like kube-apiserver does (first matching rule wins)
// ---------------------------------------------------------------------------------------------

struct Request<'a> {
    user: &'a str,
    groups: &'a [&'a str],
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: Option<&'a str>,
    namespace: &'a str,
}

const LEVELS: [&str; 4] = ["None", "Metadata", "Request", "RequestResponse"];

fn rank(level: &str) -> usize {
    LEVELS
        .iter()
        .position(|l| *l == level)
        .unwrap_or_else(|| panic!("unknown level {level}"))
}

/// k8s.io/apiserver/pkg/audit/policy checker semantics for resource requests.
fn policy_level(policy: &Yaml, r: &Request) -> &'static str {
    let list = |y: &Yaml| -> Option<Vec<String>> {
        y.as_vec().map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
    };
    for rule in policy["rules"].as_vec().expect("rules") {
        if let Some(users) = list(&rule["users"]) {
            if !users.iter().any(|u| u == r.user) {
                continue;
            }
        }
        if let Some(groups) = list(&rule["userGroups"]) {
            if !groups.iter().any(|g| r.groups.contains(&g.as_str())) {
                continue;
            }
        }
        if let Some(verbs) = list(&rule["verbs"]) {
            if !verbs.iter().any(|v| v == r.verb) {
                continue;
            }
        }
        if let Some(ns) = list(&rule["namespaces"]) {
            if !ns.iter().any(|n| n == r.namespace) {
                continue;
            }
        }
        if !rule["nonResourceURLs"].is_badvalue() && rule["resources"].is_badvalue() {
            continue; // a non-resource rule never matches a resource request
        }
        if let Some(grs) = rule["resources"].as_vec() {
            let combined = match r.subresource {
                Some(s) => format!("{}/{s}", r.resource),
                None => r.resource.to_string(),
            };
            let hit = grs.iter().any(|gr| {
                if gr["group"].as_str().unwrap_or("") != r.group {
                    return false;
                }
                match list(&gr["resources"]) {
                    None => true,
                    Some(rs) if rs.is_empty() => true,
                    Some(rs) => rs.iter().any(|p| {
                        p == "*"
                            || *p == combined
                            || r.subresource
                                .is_some_and(|s| p.strip_prefix("*/") == Some(s))
                            || p.strip_suffix("/*") == Some(r.resource)
                    }),
                }
            });
            if !hit {
                continue;
            }
        }
        return LEVELS[rank(rule["level"].as_str().expect("level"))];
    }
    "None"
}

fn api_group(resource: &str) -> &'static str {
    match resource {
        "pods" | "secrets" | "configmaps" | "namespaces" | "nodes" | "persistentvolumes"
        | "services" => "",
        "deployments" | "statefulsets" | "daemonsets" | "replicasets" => "apps",
        "jobs" | "cronjobs" => "batch",
        "horizontalpodautoscalers" => "autoscaling",
        "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings" => {
            "rbac.authorization.k8s.io"
        }
        "ingresses" | "networkpolicies" => "networking.k8s.io",
        other => panic!("add the API group of `{other}` to this test"),
    }
}

fn cluster_scoped(resource: &str) -> bool {
    matches!(
        resource,
        "namespaces" | "nodes" | "persistentvolumes" | "clusterroles" | "clusterrolebindings"
    )
}

const WORKLOADS: [&str; 7] = [
    "pods",
    "deployments",
    "statefulsets",
    "daemonsets",
    "replicasets",
    "jobs",
    "cronjobs",
];

#[test]
fn audit_policy_records_what_every_rule_needs_and_no_secret_bodies() {
    let policy = &YamlLoader::load_from_str(&read(&repo().join("example.audit-policy.yaml")))
        .expect("policy parses")[0];
    assert_eq!(policy["apiVersion"].as_str(), Some("audit.k8s.io/v1"));
    assert_eq!(policy["kind"].as_str(), Some("Policy"));
    assert_eq!(strs(&policy["omitStages"]), vec!["RequestReceived"]);

    // Every rule of rules.yaml, the 11 optional ones enabled (16 rules).
    let rules_doc = &YamlLoader::load_from_str(&read(&rules_all_enabled())).unwrap()[0];
    let rules = rules_doc["rules"].as_vec().unwrap();
    assert_eq!(rules.len(), 16);

    let human = ("alice@example.com", &["system:authenticated"][..]);
    let controller = (
        "system:serviceaccount:kube-system:clusterrole-aggregation-controller",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ][..],
    );
    let manager = (
        "system:kube-controller-manager",
        &["system:authenticated"][..],
    );
    let mut checked = 0;
    for rule in rules {
        let name = rule["name"].as_str().unwrap();
        let m = &rule["match"];
        let mut resources: Vec<&str> = strs(&m["resources"]);
        resources.extend(m["resource"].as_str());
        if resources.is_empty() {
            resources = WORKLOADS.to_vec();
        }
        let mut verbs: Vec<&str> = strs(&m["verbs"]);
        verbs.extend(m["verb"].as_str());
        if verbs.is_empty() {
            verbs = vec!["get", "create", "update", "patch", "delete"];
        }
        let namespace = m["namespace_contains"].as_str().unwrap_or("payments");
        let mut actors = vec![human];
        if rule["ignore_system"].as_bool() == Some(false) {
            actors.extend([controller, manager]);
        }
        let needs = if m["annotation"].as_str().is_some() {
            "Request"
        } else {
            "Metadata"
        };
        for resource in &resources {
            for verb in &verbs {
                for (user, groups) in &actors {
                    let req = Request {
                        user,
                        groups,
                        verb,
                        group: api_group(resource),
                        resource,
                        subresource: m["subresource"].as_str(),
                        namespace: if cluster_scoped(resource) {
                            ""
                        } else {
                            namespace
                        },
                    };
                    let got = policy_level(policy, &req);
                    assert!(
                        rank(got) >= rank(needs),
                        "rule {name}: {user} {verb} {resource}/{:?} is recorded at {got}, needs {needs}",
                        m["subresource"].as_str()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} cases");

    // Never a secret's (or configmap's) body, whoever asks and however.
    for resource in ["secrets", "configmaps"] {
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            for (user, groups) in [human, controller, manager] {
                let req = Request {
                    user,
                    groups,
                    verb,
                    group: "",
                    resource,
                    subresource: None,
                    namespace: "payments",
                };
                assert!(
                    rank(policy_level(policy, &req)) <= rank("Metadata"),
                    "{user} {verb} {resource} would log a body"
                );
            }
        }
    }

    // The noise is dropped: kubelet reads, lease heartbeats, kube-proxy watches.
    let node = (
        "system:node:cp-1",
        &["system:nodes", "system:authenticated"][..],
    );
    for (who, verb, group, resource) in [
        (node, "get", "", "pods"),
        (node, "update", "coordination.k8s.io", "leases"),
        (
            ("system:kube-proxy", &["system:authenticated"][..]),
            "watch",
            "",
            "services",
        ),
        (manager, "list", "apps", "deployments"),
    ] {
        let req = Request {
            user: who.0,
            groups: who.1,
            verb,
            group,
            resource,
            subresource: None,
            namespace: "kube-system",
        };
        assert_eq!(
            policy_level(policy, &req),
            "None",
            "{} {verb} {resource}",
            who.0
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), for the checksum annotation; std only.
// ---------------------------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_and_base64_match_the_standard_vectors() {
    assert_eq!(base64(b"Man"), "TWFu");
    assert_eq!(base64(b"Ma"), "TWE=");
    assert_eq!(base64(b"M"), "TQ==");
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    assert_eq!(
        sha256_hex(b"The quick brown fox jumps over the lazy dog"),
        "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: validate → start agent → status → (a live event) → test → restart → stop
// ---------------------------------------------------------------------------------------------

fn exec_line(actor: &str, pod: &str) -> String {
    format!(
        concat!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"e2e-{pod}","#,
            r#""stage":"ResponseComplete","requestURI":"/api/v1/namespaces/payments/pods/{pod}/exec?command=sh","#,
            r#""verb":"create","user":{{"username":"{actor}","groups":["system:authenticated"]}},"#,
            r#""sourceIPs":["127.0.0.1"],"objectRef":{{"resource":"pods","namespace":"payments","name":"{pod}","#,
            r#""apiVersion":"v1","subresource":"exec"}},"responseStatus":{{"metadata":{{}},"code":101}},"#,
            r#""requestReceivedTimestamp":"2026-01-01T00:00:00.000000Z","stageTimestamp":"2026-01-01T00:00:00.100000Z"}}"#,
            "\n"
        ),
        actor = actor,
        pod = pod
    )
}

#[test]
fn end_to_end_validate_start_status_test_restart_stop() {
    const KEY: &str = "e2e-key-0123456789abcdef0123456789";
    let sink = Sink::builder().api_key(KEY).start();
    let s = Scratch::new("e2e");
    let audit = s.root().join("audit.log");
    std::fs::write(&audit, "").unwrap();
    let health_port = free_port();
    let sh = |args: &[&str]| {
        let mut c = s.command(&repo().join("healert.sh"), args);
        c.env("HEALERT_BACKEND_URL", sink.url())
            .env("HEALERT_API_KEY", KEY)
            .env("AUDIT_LOG_PATH", &audit)
            .env("RULES_PATH", repo().join("rules.yaml"))
            .env("HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
            .env("POLL_INTERVAL", "50ms");
        let o = run_bounded(c);
        let t = text(&o);
        assert!(!t.contains(KEY), "`healert.sh {args:?}` printed the key");
        (o.status.success(), t)
    };
    let pidfile = s.run_dir().join("agent.pid");
    // Whatever happens below, never leave an agent running.
    struct StopOnDrop(PathBuf);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            if let Ok(p) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").arg("-KILL").arg(p.trim()).status();
            }
        }
    }
    let _guard = StopOnDrop(pidfile.clone());

    let (ok, t) = sh(&["validate"]);
    assert!(ok && t.contains("kubectl-exec"), "{t}");

    let (ok, t) = sh(&["start", "agent"]);
    assert!(ok && t.contains("agent started"), "{t}");
    assert!(t.contains("agent ready"), "readiness via HEALTH_ADDR: {t}");
    let pid = read(&pidfile).trim().to_string();

    let (ok, t) = sh(&["status"]);
    assert!(
        ok && t.contains("running") && t.contains(&format!("PID {pid}")),
        "{t}"
    );
    assert!(t.contains("ready:"), "{t}");
    assert!(t.contains(&format!("{} chars", KEY.len())), "{t}");

    // The running agent follows the log and delivers with the key from the environment.
    let line = exec_line("alice@example.com", "payments-api-7d9f8b6c5-x2k4p");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&audit)
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    assert!(
        sink.wait_for_events(1, Duration::from_secs(30)),
        "the running agent delivered nothing; log:\n{}",
        read(&s.run_dir().join("agent.log"))
    );
    assert!(sink.events()[0].contains("alice@example.com"));

    let (ok, t) = sh(&["test"]);
    assert!(ok && t.contains("backend stored it"), "{t}");
    assert!(
        sink.events().iter().any(|e| e.contains("selftest-")),
        "{:?}",
        sink.events()
    );

    let (ok, t) = sh(&["restart"]);
    assert!(ok && t.contains("agent started"), "{t}");
    let new_pid = read(&pidfile).trim().to_string();
    assert_ne!(new_pid, pid, "restart kept the old process");

    let (ok, t) = sh(&["stop", "agent"]);
    assert!(ok && t.contains("agent stopped"), "{t}");
    assert!(!pidfile.exists());
    assert!(
        !Path::new(&format!("/proc/{new_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{new_pid}/status"))
                .map(|s| s.contains("State:\tZ"))
                .unwrap_or(true),
        "agent {new_pid} still running after stop"
    );
    let (ok, t) = sh(&["status"]);
    assert!(ok && t.contains("stopped"), "{t}");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes mode against a recording kubectl: the key goes by stdin, never argv
// ---------------------------------------------------------------------------------------------

/// A kubectl stand-in: appends its argv (one line per call) to `calls`, and the stdin of
/// `apply -f -` to `stdin`; answers `apply -f -` with `secret/healert-api-key <SECRET_VERB>`.
const FAKE_KUBECTL: &str = r#"#!/usr/bin/env bash
d=$(dirname "$0")
printf '%s\n' "$*" >> "$d/calls"
if [[ "$1 $2 $3" == "apply -f -" ]]; then
  cat >> "$d/stdin"
  echo "secret/healert-api-key ${SECRET_VERB:-created}"
fi
exit 0
"#;

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn kubernetes_mode_pipes_the_key_and_refuses_the_placeholder_url() {
    use std::os::unix::fs::PermissionsExt;
    const KEY: &str = "k8s-key-abcdefghijklmnopqrstuvwxyz012345";
    let s = Scratch::new("kube");
    let dir = s.root().join("repo");
    let fake = s.root().join("kube");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&fake).unwrap();
    for f in ["healert.sh", "daemonset.yaml", "rules.yaml"] {
        std::fs::copy(repo().join(f), dir.join(f)).unwrap();
    }
    let kubectl = fake.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str], verb: &str| {
        let mut c = s.command(&dir.join("healert.sh"), args);
        c.env("KUBECTL", &kubectl)
            .env("HEALERT_API_KEY", KEY)
            .env("SECRET_VERB", verb);
        run_bounded(c)
    };

    // The shipped manifest still has the placeholder: nothing is applied.
    let o = run(&["start", "kubernetes"], "created");
    assert!(!o.status.success());
    assert!(text(&o).contains("placeholder"), "{}", text(&o));
    assert!(!read(&fake.join("calls")).contains("apply"));

    let manifest = dir.join("daemonset.yaml");
    let edited = read(&manifest).replace(
        "http://REPLACE-WITH-BACKEND-HOST:8000",
        "http://healert-backend.healert.svc:8000",
    );
    std::fs::write(&manifest, edited).unwrap();
    let o = run(&["start", "kubernetes"], "created");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!t.contains(KEY), "printed the key: {t}");
    let calls = read(&fake.join("calls"));
    assert!(
        !calls.contains(KEY),
        "the key was on a kubectl command line:\n{calls}"
    );
    assert!(
        calls.contains(&format!("apply -f {}", manifest.display())),
        "{calls}"
    );
    assert!(
        calls.contains("rollout status daemonset/healert-agent -n healert-system"),
        "{calls}"
    );
    let secret = read(&fake.join("stdin"));
    assert!(secret.contains("kind: Secret") && secret.contains("namespace: healert-system"));
    assert!(
        secret.contains(&format!("HEALERT_API_KEY: {}", base64(KEY.as_bytes()))),
        "{secret}"
    );

    // update kubernetes: an unchanged Secret rolls nothing by hand (a rules change rolls the
    // pods through the checksum); a changed Secret restarts the pods to pick up the new key.
    std::fs::remove_file(fake.join("calls")).unwrap();
    let o = run(&["update", "kubernetes"], "unchanged");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!read(&fake.join("calls")).contains("rollout restart"));
    std::fs::remove_file(fake.join("calls")).unwrap();
    let o = run(&["update", "kubernetes"], "configured");
    assert!(o.status.success(), "{}", text(&o));
    let calls = read(&fake.join("calls"));
    assert!(
        calls.contains("rollout restart daemonset/healert-agent -n healert-system"),
        "{calls}"
    );
    assert!(!calls.contains(KEY));
}

// ---------------------------------------------------------------------------------------------
// The backend commands, against a stand-in uvicorn that answers GET /health
// ---------------------------------------------------------------------------------------------

/// Runs like `uvicorn main:app --app-dir D --host H --port P ...` (a Python script, as the real
/// console script is, so its command line names it): serves 200 on every GET, and records the
/// length of the API key it was given through the environment.
const FAKE_UVICORN: &str = r#"#!/usr/bin/env python3
import http.server, os, sys
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "..", "key_len"), "w") as f:
    f.write(str(len(os.environ.get("HEALERT_API_KEY", ""))))
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')
http.server.HTTPServer((host, port), H).serve_forever()
"#;

#[test]
fn backend_start_status_reset_stop() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("backend");
    let venv = s.backend_dir().join("venv/bin");
    std::fs::create_dir_all(&venv).unwrap();
    std::fs::write(s.backend_dir().join("main.py"), "app = None\n").unwrap();
    let uvicorn = venv.join("uvicorn");
    std::fs::write(&uvicorn, FAKE_UVICORN).unwrap();
    std::fs::set_permissions(&uvicorn, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port().to_string();
    let run = |args: &[&str]| {
        let mut c = s.command(&repo().join("healert.sh"), args);
        c.env("HEALERT_HOST", "127.0.0.1")
            .env("HEALERT_PORT", &port);
        run_bounded(c)
    };
    let pidfile = s.run_dir().join("backend.pid");
    struct KillOnDrop(PathBuf);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(p) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").arg("-KILL").arg(p.trim()).status();
            }
        }
    }
    let _guard = KillOnDrop(pidfile.clone());

    assert!(run(&["setup"]).status.success());
    let o = run(&["start", "backend"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("backend healthy"), "{t}");
    let key_len = read(&s.backend_dir().join("key_len"));
    let key = env_value(&s.backend_dir().join(".env"), "HEALERT_API_KEY").unwrap();
    assert_eq!(
        key_len.trim(),
        key.len().to_string(),
        "the backend got its key by environment"
    );
    let pid = read(&pidfile).trim().to_string();

    let o = run(&["status"]);
    let t = text(&o);
    assert!(t.contains(&format!("PID {pid}")), "{t}");
    assert!(
        t.contains("(reachable)") || t.contains("Backend   ● running"),
        "{t}"
    );

    let db = s.backend_dir().join("healert.db");
    std::fs::write(&db, "events").unwrap();
    let o = run(&["reset"]);
    assert!(
        !o.status.success(),
        "reset without a terminal needs --confirm"
    );
    assert!(db.exists());
    let o = run(&["reset", "--confirm"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!db.exists());
    assert!(t.contains("backend healthy"), "restarted after reset: {t}");
    assert_ne!(read(&pidfile).trim(), pid, "a new backend process");

    let o = run(&["stop", "backend"]);
    assert!(
        o.status.success() && text(&o).contains("backend stopped"),
        "{}",
        text(&o)
    );
    assert!(!pidfile.exists());
}

// ---------------------------------------------------------------------------------------------
// `healert.sh test` always ends, and says why it failed while it happens (issue 18)
// ---------------------------------------------------------------------------------------------

/// `healert.sh test` against `backend` (a URL) with `key`, `timeout` seconds of deadline.
fn selftest(s: &Scratch, backend: &str, key: Option<&str>, timeout: &str) -> (bool, String) {
    let mut c = s.command(&repo().join("healert.sh"), &["test"]);
    c.env("HEALERT_BACKEND_URL", backend)
        .env("RULES_PATH", repo().join("rules.yaml"))
        .env("HEALERT_TEST_TIMEOUT", timeout);
    if let Some(k) = key {
        c.env("HEALERT_API_KEY", k);
    }
    let o = run_bounded(c);
    (o.status.success(), text(&o))
}

#[test]
fn test_with_a_wrong_or_missing_key_stops_at_the_first_401_with_the_fix() {
    // The agent retries a 401 every 30 s forever; the script must stop it at the first one.
    // The deadline is set far beyond run_bounded's one-minute guard: only the 401 can end it.
    let sink = Sink::builder()
        .api_key("the-backends-key-0123456789abcdef")
        .start();
    let s = Scratch::new("test401");
    let (ok, t) = selftest(&s, &sink.url(), Some("not-the-key-0123456789abcdef"), "600");
    assert!(!ok, "{t}");
    assert!(
        t.contains("agent: ") && t.contains("backend answered 401"),
        "the agent's own line, as it happened: {t}"
    );
    assert!(
        t.contains("refused the API key (401)") && t.contains("setup rotate"),
        "{t}"
    );
    assert!(!t.contains("not-the-key"), "the key was printed: {t}");
    assert!(sink.events().is_empty());

    let (ok, t) = selftest(&s, &sink.url(), None, "600");
    assert!(!ok, "{t}");
    assert!(
        t.contains("HEALERT_API_KEY is not set") && t.contains("./healert.sh setup"),
        "{t}"
    );
}

#[test]
fn test_against_an_unreachable_backend_says_so_at_once() {
    let s = Scratch::new("testdown");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (ok, t) = selftest(&s, &dead, Some("k-0123456789abcdef0123456789"), "600");
    assert!(!ok, "{t}");
    assert!(
        t.contains("no answer from") && t.contains("cannot connect"),
        "{t}"
    );
    assert!(
        t.contains("not reachable") && t.contains("start backend"),
        "{t}"
    );
}

#[test]
fn test_ends_at_its_deadline_and_names_the_agents_last_reason() {
    // A backend that answers /health but 503 to every event: the agent retries (as it should);
    // the test shows each retry as it comes and gives up at HEALERT_TEST_TIMEOUT.
    let sink = Sink::builder()
        .script(vec![Action::Status(503); 10_000])
        .start();
    let s = Scratch::new("testdeadline");
    let (ok, t) = selftest(&s, &sink.url(), Some("k-0123456789abcdef0123456789"), "3");
    assert!(!ok, "{t}");
    assert!(t.contains("gives up after 3s"), "{t}");
    assert!(t.contains("not delivered within 3s"), "{t}");
    assert!(t.contains("last word:") && t.contains("503"), "{t}");
    assert!(!sink.statuses().is_empty(), "nothing was tried");

    // A backend that never answers an event: nothing to show but the deadline.
    let silent = Sink::builder().script(vec![Action::NoAnswer]).start();
    let (ok, t) = selftest(&s, &silent.url(), Some("k-0123456789abcdef0123456789"), "2");
    assert!(!ok, "{t}");
    assert!(t.contains("not delivered within 2s"), "{t}");

    // A refused payload (4xx) ends the wait too: it will never be accepted.
    let picky = Sink::builder().reject_containing("selftest-", 422).start();
    let (ok, t) = selftest(&s, &picky.url(), None, "600");
    assert!(!ok, "{t}");
    assert!(
        t.contains("refused the event for good") && t.contains("422"),
        "{t}"
    );

    // The deadline is a variable like any other: a bad value names itself.
    let (ok, t) = selftest(&s, &sink.url(), None, "soon");
    assert!(!ok, "{t}");
    assert!(
        t.contains(r#"HEALERT_TEST_TIMEOUT="soon""#)
            && t.contains("example: HEALERT_TEST_TIMEOUT=30"),
        "{t}"
    );
}

#[test]
fn test_passes_against_a_backend_that_keeps_events_30_days() {
    // The self-test's event is timestamped now, so a backend that only shows the last 30 days
    // (HEALERT_RETENTION_DAYS) shows it.
    const KEY: &str = "k-0123456789abcdef0123456789";
    let sink = Sink::builder().api_key(KEY).retention_days(30).start();
    let s = Scratch::new("testok");
    let (ok, t) = selftest(&s, &sink.url(), Some(KEY), "30");
    assert!(ok, "{t}");
    assert!(
        t.contains("agent: ") && t.contains("[200] type=kubectl-exec"),
        "{t}"
    );
    assert!(t.contains("backend stored it"), "{t}");
}

// ---------------------------------------------------------------------------------------------
// `start backend` only says "healthy" about the process it started (issue 18)
// ---------------------------------------------------------------------------------------------

/// A scratch backend directory whose `venv/bin/uvicorn` is `script`.
fn fake_backend(s: &Scratch, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let venv = s.backend_dir().join("venv/bin");
    std::fs::create_dir_all(&venv).unwrap();
    std::fs::write(s.backend_dir().join("main.py"), "app = None\n").unwrap();
    let uvicorn = venv.join("uvicorn");
    std::fs::write(&uvicorn, script).unwrap();
    std::fs::set_permissions(&uvicorn, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn start_backend_on(s: &Scratch, port: u16, args: &[&str]) -> (bool, String) {
    let mut c = s.command(&repo().join("healert.sh"), args);
    c.env("HEALERT_HOST", "127.0.0.1")
        .env("HEALERT_PORT", port.to_string());
    let o = run_bounded(c);
    (o.status.success(), text(&o))
}

/// Kills the process named in a pid file on drop (a backend a failed test left running).
struct KillPidFile(PathBuf);

impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg("-KILL").arg(p.trim()).status();
        }
    }
}

#[test]
fn start_backend_refuses_a_port_that_another_server_holds() {
    let s = Scratch::new("portbusy");
    fake_backend(&s, FAKE_UVICORN);
    let _guard = KillPidFile(s.run_dir().join("backend.pid"));

    // Another server that answers /health like a backend (an old one, not started here).
    let other = Sink::start();
    let (ok, t) = start_backend_on(&s, other.addr().port(), &["start", "backend"]);
    assert!(!ok, "claimed success on a taken port: {t}");
    assert!(!t.contains("backend healthy"), "{t}");
    assert!(t.contains("already in use") && t.contains("answers"), "{t}");
    assert!(
        t.contains(&format!("PID {}", std::process::id())),
        "names the holder: {t}"
    );
    assert!(
        t.contains("HEALERT_PORT="),
        "says how to use another port: {t}"
    );
    assert!(!s.run_dir().join("backend.pid").exists(), "{t}");
    assert!(
        !s.backend_dir().join("key_len").exists(),
        "uvicorn was started anyway"
    );

    // Any program on the port, HTTP or not.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (ok, t) = start_backend_on(
        &s,
        plain.local_addr().unwrap().port(),
        &["start", "backend"],
    );
    assert!(!ok, "{t}");
    assert!(t.contains("already in use"), "{t}");
    assert!(!t.contains("answers"), "{t}");
}

/// Serves /health from a forked child and never listens itself: "something answers", but not
/// the process the script started. The child's pid goes to ../../child.pid.
const FAKE_UVICORN_NOT_LISTENING: &str = r#"#!/usr/bin/env python3
import http.server, os, sys, time
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
here = os.path.dirname(os.path.abspath(__file__))
child = os.fork()
if child == 0:
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
    http.server.HTTPServer((host, port), H).serve_forever()
with open(os.path.join(here, "..", "..", "child.pid"), "w") as f:
    f.write(str(child))
time.sleep(120)
"#;

/// Exits at once the way uvicorn does when the port was taken between the check and its bind.
const FAKE_UVICORN_ADDRESS_IN_USE: &str = "#!/bin/sh\necho 'ERROR:    [Errno 98] error while attempting to bind on address: address already in use' >&2\nexit 1\n";

#[test]
fn start_backend_is_healthy_only_when_its_own_process_answers() {
    let s = Scratch::new("notours");
    let port = free_port();
    let _guard = KillPidFile(s.run_dir().join("backend.pid"));
    let _child = KillPidFile(s.backend_dir().join("child.pid"));

    fake_backend(&s, FAKE_UVICORN_NOT_LISTENING);
    let (ok, t) = start_backend_on(&s, port, &["start", "backend"]);
    assert!(!ok, "claimed success for a server it did not start: {t}");
    assert!(!t.contains("backend healthy"), "{t}");
    assert!(t.contains("not from the backend started here"), "{t}");
    assert!(!s.run_dir().join("backend.pid").exists(), "{t}");

    fake_backend(&s, FAKE_UVICORN_ADDRESS_IN_USE);
    let (ok, t) = start_backend_on(&s, free_port(), &["start", "backend"]);
    assert!(!ok, "{t}");
    assert!(
        t.contains("exited at start") && t.contains("address already in use"),
        "{t}"
    );
    assert!(
        !s.run_dir().join("backend.pid").exists(),
        "a stale pid file was left: {t}"
    );
}

#[test]
fn start_backend_reports_a_stale_pid_file_then_starts_and_verifies() {
    let s = Scratch::new("stalebackend");
    fake_backend(&s, FAKE_UVICORN);
    let pidfile = s.run_dir().join("backend.pid");
    let _guard = KillPidFile(pidfile.clone());
    std::fs::create_dir_all(s.run_dir()).unwrap();
    // The pid of a backend that died (uvicorn's "address already in use" left it behind).
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();

    let port = free_port();
    let (ok, t) = start_backend_on(&s, port, &["status"]);
    assert!(
        ok && t.contains("stale pid file") && t.contains(&dead_pid.to_string()),
        "{t}"
    );

    std::fs::write(&pidfile, format!("{dead_pid}\n")).unwrap();
    let (ok, t) = start_backend_on(&s, port, &["start", "backend"]);
    assert!(ok, "{t}");
    assert!(t.contains("stale pid file"), "{t}");
    let pid = read(&pidfile).trim().to_string();
    assert!(
        t.contains(&format!(
            "backend healthy at http://127.0.0.1:{port} (PID {pid} listens on port {port})"
        )),
        "{t}"
    );
    let (ok, t) = start_backend_on(&s, port, &["stop", "backend"]);
    assert!(ok && t.contains("backend stopped"), "{t}");
}

#[test]
fn init_saves_directories_that_later_commands_use() {
    let s = Scratch::new("init");
    let agent = s.root().join("elsewhere/agent");
    let backend = s.root().join("elsewhere/backend");
    let o = s.sh(&[
        "init",
        "--backend-dir",
        backend.to_str().unwrap(),
        "--agent-dir",
        agent.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg = s.root().join(".healert-config");
    assert_eq!(mode(&cfg), 0o600);
    assert!(agent.is_dir());
    let mut c = s.command(&repo().join("healert.sh"), &["status"]);
    c.env_remove("HEALERT_AGENT_DIR")
        .env_remove("HEALERT_BACKEND_DIR");
    let o = run_bounded(c);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains(&format!("{}/run/agent.log", agent.display())),
        "status ignored ~/.healert-config: {t}"
    );
    let o = s.sh(&["init", "--agent-dir", "relative/path"]);
    assert!(!o.status.success(), "{}", text(&o));
}
