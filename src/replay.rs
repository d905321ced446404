//! `healert-agent replay`: evaluate a whole audit log offline with the agent's own engine
//! (issue 3); `--send` delivers through the agent's own delivery path (issue 5).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `healert-agent replay`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayArgs {
    pub rules: Option<PathBuf>,
    pub send: bool,
    /// A path, or "-" for stdin.
    pub input: String,
}

pub fn run(_args: ReplayArgs) -> ExitCode {
    eprintln!("replay: not implemented yet");
    ExitCode::from(1)
}
