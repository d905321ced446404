//! `healert-agent run`: wires the threads follow → detect → deliver → acknowledge → checkpoint.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    eprintln!("run: not implemented yet");
    ExitCode::from(1)
}
