//! Test support shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// Path of the built binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_healert-agent"))
}

/// `../shared` beside the repository (read-only test material).
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}
