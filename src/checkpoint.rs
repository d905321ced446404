//! Positions in the audit log and the checkpoint file that survives restarts.
//!
//! A [`Position`] names a byte in one particular file ([`FileId`]: device, inode and a
//! fingerprint of the first bytes, so a reused inode is not mistaken for the old file).
//! The checkpoint stores the first position not yet acknowledged by the backend.

use std::path::PathBuf;

/// Identity of one audit log file, independent of its current name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Hash of the first `fingerprint_len` bytes of the file (0 bytes: empty file so far).
    pub fingerprint: u64,
    pub fingerprint_len: u32,
}

/// A byte offset in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub file: FileId,
    pub offset: u64,
}

/// What the checkpoint file records: resume reading `path`/`file` at `offset`, skipping the
/// first `skip_events` friction events of the line that starts there (they were already
/// accepted by the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub position: Position,
    pub skip_events: u32,
}
