//! The `healert-agent` command line: parse the arguments, dispatch to a subcommand, map its
//! result to an exit code. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use healert_agent::{agent, config, explain, fixtures, replay, validate, VERSION};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Command::Run) => agent::run(),
        Ok(Command::Validate(path)) => validate::run(path),
        Ok(Command::Replay(r)) => replay::run(r),
        Ok(Command::Explain(e)) => explain::run(e),
        Ok(Command::Test(t)) => fixtures::run(t),
        Ok(Command::Version) => {
            println!("healert-agent {VERSION}");
            ExitCode::SUCCESS
        }
        Ok(Command::Help) => {
            print!("{}", help());
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("healert-agent: {msg}\n\n{}", usage());
            eprintln!("Run `healert-agent --help` for every subcommand and environment variable.");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, PartialEq)]
enum Command {
    Run,
    Validate(Option<PathBuf>),
    Replay(replay::ReplayArgs),
    Explain(explain::ExplainArgs),
    Test(fixtures::TestArgs),
    Version,
    Help,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let Some(first) = args.first() else {
        return Ok(Command::Run);
    };
    let rest = &args[1..];
    let shown = |s: &str| healert_agent::operate::log::sanitize(s, 80);
    match first.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-V" | "--version" | "version" => match rest.first() {
            None => Ok(Command::Version),
            Some(a) => Err(format!("`version` takes no arguments (got `{}`)", shown(a))),
        },
        "run" => match rest.first() {
            None => Ok(Command::Run),
            Some(a) if a == "-h" || a == "--help" => Ok(Command::Help),
            Some(a) => Err(format!(
                "`run` takes no arguments (got `{}`); it is configured through environment variables",
                shown(a)
            )),
        },
        "validate" => match rest {
            [] => Ok(Command::Validate(None)),
            [a] if a == "-h" || a == "--help" => Ok(Command::Help),
            [a] if a.starts_with('-') && a != "-" => Err(format!("unknown flag `{}` for validate", shown(a))),
            [p] => Ok(Command::Validate(Some(PathBuf::from(p)))),
            _ => Err("validate takes at most one PATH".into()),
        },
        "replay" => {
            let mut out = replay::ReplayArgs::default();
            let mut input = None;
            let mut i = 0;
            while i < rest.len() {
                let a = rest[i].as_str();
                match a {
                    "-h" | "--help" => return Ok(Command::Help),
                    "--send" => out.send = true,
                    "--no-suppress" => out.no_suppress = true,
                    "--rules" => {
                        i += 1;
                        let p = rest.get(i).ok_or("--rules needs a PATH")?;
                        out.rules = Some(PathBuf::from(p));
                    }
                    _ if a.starts_with("--rules=") => out.rules = Some(PathBuf::from(&a[8..])),
                    "-" => input = Some("-".to_string()),
                    _ if a.starts_with('-') => return Err(format!("unknown flag `{}` for replay", shown(a))),
                    _ if input.is_some() => return Err("replay reads one FILE (or - for stdin)".into()),
                    _ => input = Some(a.to_string()),
                }
                i += 1;
            }
            out.input = input.ok_or("replay needs a FILE (or - for stdin)")?;
            Ok(Command::Replay(out))
        }
        "explain" => {
            let mut out = explain::ExplainArgs::default();
            let mut input = None;
            let mut i = 0;
            while i < rest.len() {
                let a = rest[i].as_str();
                match a {
                    "-h" | "--help" => return Ok(Command::Help),
                    "--json" => out.json = true,
                    "--fixture" => out.fixture = true,
                    "--rules" => {
                        i += 1;
                        let p = rest.get(i).ok_or("--rules needs a PATH")?;
                        out.rules = Some(PathBuf::from(p));
                    }
                    _ if a.starts_with("--rules=") => out.rules = Some(PathBuf::from(&a[8..])),
                    "--line" => {
                        i += 1;
                        let n = rest.get(i).ok_or("--line needs a record number N (1 = the first)")?;
                        out.line = Some(record_number(n)?);
                    }
                    _ if a.starts_with("--line=") => out.line = Some(record_number(&a[7..])?),
                    "-" => input = Some("-".to_string()),
                    _ if a.starts_with('-') => return Err(format!("unknown flag `{}` for explain", shown(a))),
                    _ if input.is_some() => return Err("explain reads one FILE (or - for stdin)".into()),
                    _ => input = Some(a.to_string()),
                }
                i += 1;
            }
            out.input = input.ok_or("explain needs a FILE (or - for stdin)")?;
            Ok(Command::Explain(out))
        }
        "test" => {
            let mut out = fixtures::TestArgs::default();
            let mut i = 0;
            while i < rest.len() {
                let a = rest[i].as_str();
                match a {
                    "-h" | "--help" => return Ok(Command::Help),
                    "--rules" => {
                        i += 1;
                        let p = rest.get(i).ok_or("--rules needs a PATH")?;
                        out.rules = Some(PathBuf::from(p));
                    }
                    _ if a.starts_with("--rules=") => out.rules = Some(PathBuf::from(&a[8..])),
                    _ if a.starts_with('-') => return Err(format!("unknown flag `{}` for test", shown(a))),
                    _ => out.fixtures.push(PathBuf::from(a)),
                }
                i += 1;
            }
            Ok(Command::Test(out))
        }
        other if other.starts_with('-') => Err(format!("unknown flag `{}`", shown(other))),
        other => Err(format!("unknown subcommand `{}`", shown(other))),
    }
}

/// `--line N`: a record number, 1 or more.
fn record_number(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "--line wants a record number from 1 (the first line), not `{}`",
            healert_agent::operate::log::sanitize(s, 40)
        )),
    }
}

fn usage() -> String {
    "usage: healert-agent [run]
       healert-agent validate [PATH]
       healert-agent replay [--rules PATH] [--send] [--no-suppress] FILE|-
       healert-agent explain [--rules PATH] [--line N] [--json] [--fixture] FILE|-
       healert-agent test [--rules PATH] [FIXTURES...]
       healert-agent version
       healert-agent --help"
        .to_string()
}

fn help() -> String {
    let mut s = format!(
        "healert-agent {VERSION} — follows the Kubernetes audit log and reports platform friction
to the Healert backend.

{}

Subcommands:
  run (default)   Follow AUDIT_LOG_PATH, detect friction with RULES_PATH, deliver every event to
                  HEALERT_BACKEND_URL/events. Survives rotation, restarts (CHECKPOINT_PATH) and
                  backend outages. SIGTERM/SIGINT: drain and stop; SIGHUP: reload rules.
                  AUDIT_SOURCE=webhook serves kube-apiserver's audit webhook instead (spooled
                  to SPOOL_PATH before each 200); AUDIT_SOURCE=stdin (or AUDIT_LOG_PATH=-)
                  reads stdin to its end: audit lines or a cloud CLI's output (AUDIT_FORMAT).
  validate [PATH] Check a rules file (default: $RULES_PATH, then ./rules.yaml) and list its rules.
                  Exit 0 valid (warnings allowed), 1 invalid, 2 unreadable.
  replay FILE|-   Evaluate a whole audit log (NDJSON, an EventList document, or EKS/GKE/AKS
                  log output, see AUDIT_FORMAT; - for stdin) and print each friction event as
                  one JSON line on stdout, a summary on stderr.
                    --rules PATH  rules file (default: $RULES_PATH, then ./rules.yaml)
                    --send        also deliver the events to the backend (back-filling)
                    --no-suppress every match, as detection sees it
                  Repeats are suppressed as `run` would (SUPPRESS_WINDOW, a rule's suppress:,
                  on audit time) unless --no-suppress; a progress line is drawn on a terminal.
  explain FILE|-  For each audit record (or only --line N): stage, actor and its class,
                  namespace exclusions, every rule's conditions with the value found and
                  pass/fail, and the payload that would be sent (or why none). --json: one JSON
                  object per audit event; --fixture: also print the record as a rule fixture.
  test            Run every rule against its fixtures (`fixtures:` under each rule, also those
                  of the commented-out optional rules, and FIXTURES files). Exit 0 all pass,
                  1 a fixture fails, 2 a file cannot be read.
  version         Print the version.

Environment (run reads all; replay, explain and test read RULES_PATH, ENTITY_NAMESPACE,
K8S_NAMESPACE, MAX_LINE_BYTES, SUPPRESS_WINDOW, AUDIT_FORMAT, and replay --send also the
backend, delivery and log ones):
",
        usage()
    );
    let width = config::VARS.iter().map(|v| v.0.len()).max().unwrap_or(0);
    for (name, default, meaning) in config::VARS {
        s.push_str(&format!(
            "  {name:<width$}  {meaning} [default: {default}]\n"
        ));
    }
    s.push_str(
        "
Exit codes: 0 success; 1 invalid input (rules, configuration); 2 usage error or unreadable file.
",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Command, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn subcommands() {
        assert_eq!(p(&[]), Ok(Command::Run));
        assert_eq!(p(&["run"]), Ok(Command::Run));
        assert_eq!(p(&["validate"]), Ok(Command::Validate(None)));
        assert_eq!(
            p(&["validate", "x.yaml"]),
            Ok(Command::Validate(Some("x.yaml".into())))
        );
        assert_eq!(p(&["version"]), Ok(Command::Version));
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        let Ok(Command::Replay(r)) = p(&["replay", "--rules", "r.yaml", "--send", "-"]) else {
            panic!("replay")
        };
        assert_eq!(
            (r.rules, r.send, r.input.as_str()),
            (Some("r.yaml".into()), true, "-")
        );
    }

    #[test]
    fn explain_and_test_arguments() {
        let Ok(Command::Explain(e)) =
            p(&["explain", "--line", "3", "--json", "--rules=r.yaml", "-"])
        else {
            panic!("explain")
        };
        assert_eq!(
            (e.line, e.json, e.fixture, e.rules, e.input.as_str()),
            (Some(3), true, false, Some("r.yaml".into()), "-")
        );
        assert!(p(&["explain"]).unwrap_err().contains("needs a FILE"));
        assert!(p(&["explain", "--line", "x", "f"])
            .unwrap_err()
            .contains("record number from 1"));
        assert!(p(&["explain", "a", "b"]).unwrap_err().contains("one FILE"));
        let Ok(Command::Test(t)) = p(&["test", "--rules", "r.yaml", "a.yaml", "b.yaml"]) else {
            panic!("test")
        };
        assert_eq!(t.rules, Some("r.yaml".into()));
        assert_eq!(t.fixtures.len(), 2);
        assert!(p(&["test", "--frob"]).unwrap_err().contains("unknown flag"));
    }

    #[test]
    fn usage_errors() {
        assert!(p(&["frobnicate"])
            .unwrap_err()
            .contains("unknown subcommand"));
        assert!(p(&["--frob"]).unwrap_err().contains("unknown flag"));
        assert!(p(&["replay"]).unwrap_err().contains("needs a FILE"));
        assert!(p(&["replay", "--rules"])
            .unwrap_err()
            .contains("needs a PATH"));
        assert!(p(&["replay", "--bogus", "f"])
            .unwrap_err()
            .contains("unknown flag"));
        assert!(p(&["validate", "a", "b"])
            .unwrap_err()
            .contains("at most one"));
        assert!(p(&["run", "x"]).unwrap_err().contains("environment"));
    }

    #[test]
    fn help_lists_every_variable() {
        let h = help();
        for (name, _, _) in config::VARS {
            assert!(h.contains(name), "{name} missing from --help");
        }
    }
}
