//! The README's "Try it on your laptop" walkthrough, run as written: its commands are read from
//! README.md itself (between the `<!-- walkthrough -->` markers), so the page and the test cannot
//! drift apart. Each command runs with `bash -e -o pipefail` in a scratch copy of the checkout
//! with a scratch HOME, in order, and must succeed; a `# → a … b` line after a command names
//! fragments its output must contain (a `curl` is asked again until they appear, as a reader
//! would refresh).
//!
//! Three deviations, all outside what the reader types: `HEALERT_AGENT_BIN` points at the binary
//! `cargo test` just built (instead of `start agent` building it again), `HEALERT_PORT` and the
//! `:8000` in URLs become a free loopback port, and `KUBECTL` points nowhere (so `setup` never
//! reaches a developer's cluster). The backend steps (`git clone`, `deps --install`,
//! `start backend`) need the network and Python; unless `HEALERT_WALKTHROUGH_BACKEND` names a
//! checkout of healert-io/backend with its `venv`, they are replaced by the loopback sink
//! (tests/it/sink.rs, the backend's read API and 30-day retention included), which takes its key
//! from `~/healert-backend/.env` as the backend would.
//!
//! Also here: every page under docs/ is linked from the README, every relative link and anchor
//! in README.md and docs/ resolves, the README stays short, and the Rust versions it states are
//! those the build and the locked test dependencies declare.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use healert_agent::config::VARS;

use crate::script::{repo, run_bounded, text};
use crate::sink::Sink;
use crate::support::{bin, free_port, TempDir};

/// One command of the walkthrough and the fragments its output must show.
#[derive(Debug)]
struct Step {
    cmd: String,
    expect: Vec<String>,
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The commands of the ```sh blocks between the walkthrough markers: `\` continues a line, a
/// here-document runs to its delimiter, `# →` lines are expectations, other comments are prose.
fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("<!-- walkthrough")
        .expect("README.md has no <!-- walkthrough --> marker");
    let end = readme[start..]
        .find("<!-- /walkthrough -->")
        .map(|e| start + e)
        .expect("README.md has no <!-- /walkthrough --> marker");
    let mut steps: Vec<Step> = Vec::new();
    let (mut in_sh, mut open, mut heredoc) = (false, false, None::<String>);
    for line in readme[start..end].lines() {
        if !in_sh {
            in_sh = line.trim() == "```sh";
            continue;
        }
        if let Some(delim) = &heredoc {
            let done = line.trim() == delim;
            let last = steps.last_mut().unwrap();
            last.cmd.push('\n');
            last.cmd.push_str(line);
            if done {
                heredoc = None;
            }
            continue;
        }
        let t = line.trim();
        if t == "```" {
            in_sh = false;
            continue;
        }
        if let Some(e) = t.strip_prefix("# →") {
            let last = steps.last_mut().expect("`# →` before any command");
            last.expect.extend(
                e.split('…')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(str::to_string),
            );
            continue;
        }
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if open {
            let last = steps.last_mut().unwrap();
            last.cmd.push('\n');
            last.cmd.push_str(line);
        } else {
            steps.push(Step {
                cmd: line.to_string(),
                expect: Vec::new(),
            });
        }
        open = t.ends_with('\\');
        if let Some(i) = t.find("<<") {
            let word: String = t[i + 2..]
                .trim_start_matches('-')
                .trim()
                .chars()
                .take_while(|c| !c.is_whitespace())
                .filter(|c| *c != '\'' && *c != '"')
                .collect();
            assert!(!word.is_empty(), "here-document without a delimiter: {t}");
            heredoc = Some(word);
        }
    }
    assert!(
        heredoc.is_none(),
        "unterminated here-document in the walkthrough"
    );
    steps
}

/// The command as typed, without a trailing comment (for recognising it, not for running it).
fn bare(cmd: &str) -> &str {
    cmd.split("  #").next().unwrap_or(cmd).trim()
}

/// Kills whatever the walkthrough's pid files name, if a step failed before `stop`.
struct StopAll(PathBuf);

impl Drop for StopAll {
    fn drop(&mut self) {
        for name in ["agent.pid", "backend.pid"] {
            if let Ok(p) = std::fs::read_to_string(self.0.join(name)) {
                let _ = Command::new("kill").arg("-KILL").arg(p.trim()).status();
            }
        }
    }
}

/// A healert-io/backend checkout to run the backend steps against, if the environment names one.
fn real_backend() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("HEALERT_WALKTHROUGH_BACKEND")?);
    assert!(
        dir.join("main.py").is_file() && dir.join("venv/bin/uvicorn").is_file(),
        "HEALERT_WALKTHROUGH_BACKEND={}: not a healert-io/backend checkout with venv/bin/uvicorn",
        dir.display()
    );
    Some(dir)
}

/// `git clone` without the network: the checkout's files, its venv linked (never its .env or
/// database).
fn copy_backend(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == "venv" {
            std::os::unix::fs::symlink(e.path(), to.join("venv")).unwrap();
        } else if e.file_type().unwrap().is_file() && n != ".env" && !n.starts_with("healert.db") {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let steps = steps(&read(&repo().join("README.md")));
    let typed: Vec<&str> = steps.iter().map(|s| bare(&s.cmd)).collect();
    for needed in [
        "git clone https://github.com/healert-io/backend ~/healert-backend",
        "./healert.sh deps --install",
        "./healert.sh setup",
        "./healert.sh start backend",
        "./healert.sh start agent",
        "./healert.sh test",
        "./healert.sh stop",
    ] {
        assert!(
            typed.contains(&needed),
            "the walkthrough lost `{needed}`: {typed:#?}"
        );
    }
    for path in ["/events", "/friction/"] {
        assert!(
            steps
                .iter()
                .any(|s| s.cmd.starts_with("curl") && s.cmd.contains(path) && !s.expect.is_empty()),
            "the walkthrough must show the event at GET {path} (a curl with a `# →` line)"
        );
    }

    let real = real_backend();
    match &real {
        Some(d) => eprintln!("walkthrough: backend steps against the real backend in {}", d.display()),
        None => eprintln!(
            "walkthrough: backend steps (git clone, deps --install, start backend) replaced by the \
             loopback sink; set HEALERT_WALKTHROUGH_BACKEND=<healert-io/backend checkout with venv> \
             to run them for real"
        ),
    }

    let home = TempDir::new("walkthrough", "home");
    let checkout = home.join("healert-agent");
    std::fs::create_dir_all(&checkout).unwrap();
    for f in ["healert.sh", "rules.yaml", ".env.example"] {
        std::fs::copy(repo().join(f), checkout.join(f)).unwrap();
    }
    let run_dir = checkout.join("run");
    let _stop = StopAll(run_dir.clone());
    let backend_dir = home.join("healert-backend");
    let port = free_port();
    let mut sink: Option<Sink> = None;

    for step in &steps {
        let typed = bare(&step.cmd);
        if typed.starts_with("git clone https://github.com/healert-io/backend") {
            match &real {
                Some(d) => copy_backend(d, &backend_dir),
                None => std::fs::create_dir_all(&backend_dir).unwrap(),
            }
            continue;
        }
        if real.is_none() && typed == "./healert.sh deps --install" {
            continue;
        }
        if real.is_none() && typed == "./healert.sh start backend" {
            let env = read(&backend_dir.join(".env"));
            let key = env
                .lines()
                .find_map(|l| l.strip_prefix("HEALERT_API_KEY="))
                .expect("setup wrote the backend's key");
            sink = Some(
                Sink::builder()
                    .api_key(key)
                    .retention_days(30)
                    .port(port)
                    .start(),
            );
            continue;
        }

        let cmd = step
            .cmd
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"))
            .replace("localhost:8000", &format!("127.0.0.1:{port}"));
        let run = || {
            let mut c = Command::new("bash");
            c.args(["-e", "-o", "pipefail", "-c", &cmd])
                .current_dir(&checkout)
                .env("HOME", home.path())
                .env("HEALERT_AGENT_BIN", bin())
                .env("HEALERT_PORT", port.to_string())
                .env("KUBECTL", "/nonexistent/kubectl")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null());
            for (name, _, _) in VARS {
                c.env_remove(name);
            }
            for name in [
                "HEALERT_AGENT_DIR",
                "HEALERT_BACKEND_DIR",
                "HEALERT_HOST",
                "HEALERT_RULES_SOURCE",
                "HEALERT_TEST_TIMEOUT",
                "KUBECONFIG",
            ] {
                c.env_remove(name);
            }
            run_bounded(c)
        };
        let retry = cmd.starts_with("curl");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let o = run();
            let out = text(&o);
            assert!(o.status.success(), "walkthrough step failed: {cmd}\n{out}");
            if let Some(key) = read_key(&checkout.join(".env")) {
                assert!(!out.contains(&key), "`{cmd}` printed the API key");
            }
            let missing: Vec<&String> = step
                .expect
                .iter()
                .filter(|f| !out.contains(f.as_str()))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                retry && Instant::now() < until,
                "walkthrough step `{cmd}` did not show {missing:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    assert!(
        !run_dir.join("agent.pid").exists() && !run_dir.join("backend.pid").exists(),
        "`./healert.sh stop` left a pid file"
    );
    if let Some(sink) = &sink {
        let events = sink.events_json();
        let by = |actor: &str, kind: &str| {
            events
                .iter()
                .filter(|e| {
                    e["type"] == kind && e["actor"].as_str().is_some_and(|a| a.starts_with(actor))
                })
                .count()
        };
        assert_eq!(by("alice@example.com", "kubectl-exec"), 1, "{events:?}");
        // One act, one event: the exec is not also a direct change of the pod.
        assert_eq!(by("alice@example.com", "config-drift"), 0, "{events:?}");
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(by("selftest-", "kubectl-exec"), 1, "{events:?}");
    }
}

fn read_key(env: &Path) -> Option<String> {
    std::fs::read_to_string(env)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("HEALERT_API_KEY=").map(str::to_string))
}

// ---------------------------------------------------------------------------------------------
// docs/: every page linked from the README, every relative link and anchor resolves
// ---------------------------------------------------------------------------------------------

/// GitHub's heading anchor: lower case, spaces to `-`, other punctuation except `-`/`_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn anchors(md: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for l in md.lines() {
        if l.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code && l.starts_with('#') {
            out.insert(slug(l.trim_start_matches('#')));
        }
    }
    out
}

/// `(target, anchor)` of every inline link `[text](target)` outside code.
fn links(md: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for l in md.lines() {
        if l.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = l;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(j) = after.find(')') else { break };
            let target = &after[..j];
            rest = &after[j..];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f.to_string(), Some(a.to_string())),
                None => (target.to_string(), None),
            };
            out.push((file, anchor));
        }
    }
    out
}

fn doc_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_docs_page_is_linked_from_the_readme_and_every_link_resolves() {
    let readme_path = repo().join("README.md");
    let readme = read(&readme_path);
    let pages = doc_pages();
    assert!(pages.len() >= 8, "docs/ pages: {pages:?}");
    let linked: BTreeSet<String> = links(&readme).into_iter().map(|(f, _)| f).collect();
    for p in &pages {
        let rel = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
        assert!(linked.contains(&rel), "README.md does not link {rel}");
    }
    let mut files = vec![readme_path];
    files.extend(pages);
    for file in &files {
        let md = read(file);
        for (target, anchor) in links(&md) {
            let dest = if target.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(&target)
            };
            assert!(
                dest.exists(),
                "{}: link to {target}, which does not exist",
                file.display()
            );
            if let Some(a) = anchor {
                let have = anchors(&read(&dest));
                assert!(
                    have.contains(&a),
                    "{}: link to {target}#{a}, but {} has no such heading (has {have:?})",
                    file.display(),
                    dest.display()
                );
            }
        }
    }
}

#[test]
fn readme_leads_and_stays_short() {
    let readme = read(&repo().join("README.md"));
    let n = readme.lines().count();
    assert!(
        n <= 170,
        "README.md has {n} lines: reference material belongs in docs/ (linked from the README)"
    );
    // The two commands that open it work on a fresh clone with nothing beside it.
    let first = readme.find("```sh").expect("a first command block");
    let block = &readme[first..first + readme[first..].find("\n```\n").unwrap()];
    assert!(block.contains(
        "cargo run --release -- replay --rules rules.yaml tests/data/sample/audit.ndjson"
    ));
    assert!(block.contains("cargo test --release --locked "));
    assert!(
        readme.find("<!-- walkthrough").unwrap() > first,
        "the walkthrough follows the two commands"
    );
}

/// Every row of the README's guarantee table names at least one test, and every test it names
/// exists (`module::name` → `fn name` in `tests/it/module.rs`), so a renamed or deleted test
/// cannot leave a guarantee pinned by nothing.
#[test]
fn every_guarantee_names_a_test_that_exists() {
    let readme = read(&repo().join("README.md"));
    let start = readme
        .find("| event | what happens | loss | duplicates | pinned by")
        .expect("the guarantee table with its 'pinned by' column");
    let rows: Vec<&str> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() >= 10, "{} guarantee rows", rows.len());
    for row in rows {
        let last = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or_default();
        let named: Vec<&str> = last
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| t.contains("::"))
            .collect();
        assert!(!named.is_empty(), "a guarantee pinned by no test: {row}");
        for t in named {
            let (module, name) = t.split_once("::").unwrap_or_default();
            let src = read(&repo().join("tests/it").join(format!("{module}.rs")));
            assert!(
                src.contains(&format!("fn {name}()")),
                "README names {t}, but tests/it/{module}.rs has no fn {name}"
            );
        }
    }
}

#[test]
fn slug_matches_githubs_anchors() {
    for (h, want) in [
        ("The API key", "the-api-key"),
        ("`healert.sh test`", "healertsh-test"),
        ("What `start backend` checks", "what-start-backend-checks"),
        ("Metrics, probes and logs", "metrics-probes-and-logs"),
    ] {
        assert_eq!(slug(h), want);
    }
}

// ---------------------------------------------------------------------------------------------
// The Rust versions the README states are what Cargo.toml and Cargo.lock say
// ---------------------------------------------------------------------------------------------

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn readme_rust_versions_match_the_build_and_the_locked_test_dependencies() {
    let host = Command::new("rustc")
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        })
        .expect("rustc -vV names the host");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Offline and locked: what `cargo test` just built from Cargo.lock, for this platform.
    let o = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .expect("cargo metadata");
    assert!(
        o.status.success(),
        "cargo metadata --offline failed (are the dev-dependencies fetched?): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let packages = m["packages"].as_array().unwrap();
    let root_id = m["resolve"]["root"].as_str().unwrap();
    let root = packages.iter().find(|p| p["id"] == root_id).unwrap();
    let build = root["rust_version"]
        .as_str()
        .expect("rust-version in Cargo.toml");
    // The build needs no crate: the root's only dependencies are dev-dependencies.
    let node = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == root_id)
        .unwrap();
    for d in node["deps"].as_array().unwrap() {
        for k in d["dep_kinds"].as_array().unwrap() {
            assert_eq!(k["kind"], "dev", "a non-dev dependency: {d}");
        }
    }
    let deps: Vec<&serde_json::Value> = packages.iter().filter(|p| p["id"] != root_id).collect();
    let newest = deps
        .iter()
        .filter_map(|p| p["rust_version"].as_str().map(|v| (version_key(v), v, *p)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .expect("dev-dependencies with a rust-version");
    let (tests, pkg) = (newest.1.trim_end_matches(".0"), newest.2);

    let readme = read(&repo().join("README.md"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for claim in [
        format!("Building needs Rust {build}+"),
        format!("(Rust {build}+, no crates)"),
        format!("[Rust](https://rustup.rs) {build}+"),
        format!("The test suite needs Rust {tests}+"),
        format!(
            "{} {}",
            pkg["name"].as_str().unwrap(),
            pkg["version"].as_str().unwrap()
        ),
        format!("downloads {} crates", deps.len()),
    ] {
        assert!(readme.contains(&claim), "README.md should say `{claim}`");
    }
}
