//! `healert-agent validate [PATH]`: load a rules file through the agent's own loader and
//! report (issue 2).

use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(_path: Option<PathBuf>) -> ExitCode {
    eprintln!("validate: not implemented yet");
    ExitCode::from(1)
}
