//! The checkpoint file that survives restarts: the first [`Position`] not yet acknowledged by
//! the backend, and how many events of the line there were already accepted.
//!
//! This module owns the on-disk format (a small versioned `key=value` text with an FNV-1a
//! checksum, see [`encode`]), its strict bounded parser ([`parse`], a fuzz target) and the
//! atomic store ([`save`]: temp file → fsync → rename → fsync of the directory). What a
//! position and a file's identity are lives in [`crate::source::position`].

use std::fmt;

use crate::source::position::{fnv1a64, FileId, Position, FINGERPRINT_MAX};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// What the checkpoint file records: resume reading `path`/`file` at `offset`, skipping the
/// first `skip_events` friction events of the line that starts there (they were already
/// accepted by the backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub position: Position,
    pub skip_events: u32,
}

/// A checkpoint is a few hundred bytes; anything bigger is not ours and is not read whole.
pub const MAX_CHECKPOINT_BYTES: usize = 16 * 1024;

/// First line of every checkpoint file.
pub const HEADER: &str = "healert-agent checkpoint v1";

const KEYS: [&str; 7] = [
    "path",
    "dev",
    "ino",
    "fingerprint",
    "fingerprint_len",
    "offset",
    "skip_events",
];

/// Why a checkpoint file was not used. The agent reports it and ignores the file (it is
/// rewritten at the next save); it is never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointError {
    /// The checkpoint file, when known (`parse` alone does not know it; `load` sets it).
    pub path: Option<PathBuf>,
    pub kind: CheckpointErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointErrorKind {
    /// Reading the file failed (not "not found": that is simply no checkpoint yet).
    Io(String),
    /// More than [`MAX_CHECKPOINT_BYTES`]: not a checkpoint.
    TooLarge {
        limit: usize,
    },
    Empty,
    /// The first line is not [`HEADER`]: some other file is at CHECKPOINT_PATH.
    Foreign {
        first_line: String,
    },
    /// A `healert-agent checkpoint vN` from another version of the agent.
    UnsupportedVersion {
        found: String,
    },
    /// The file ends before its `checksum=` line (torn write, disk full).
    Truncated,
    /// The content does not match its checksum (corrupted on disk, edited by hand).
    BadChecksum {
        stored: String,
        computed: String,
    },
    /// A line that is not `key=value`, or not UTF-8.
    BadLine {
        line: usize,
        column: usize,
        why: &'static str,
    },
    UnknownKey {
        line: usize,
        key: String,
    },
    DuplicateKey {
        line: usize,
        key: String,
    },
    MissingKey {
        key: &'static str,
    },
    BadValue {
        line: usize,
        column: usize,
        key: &'static str,
        why: String,
    },
    /// Text after the `checksum=` line.
    TrailingData {
        line: usize,
    },
}

impl CheckpointError {
    fn new(kind: CheckpointErrorKind) -> CheckpointError {
        CheckpointError { path: None, kind }
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointErrorKind as K;
        match &self.path {
            Some(p) => write!(f, "checkpoint CHECKPOINT_PATH={}: ", p.display())?,
            None => f.write_str("checkpoint: ")?,
        }
        match &self.kind {
            K::Io(e) => write!(f, "cannot be read: {e}")?,
            K::TooLarge { limit } => write!(
                f,
                "larger than {limit} bytes, so it is not a healert-agent checkpoint"
            )?,
            K::Empty => f.write_str("the file is empty (a write was interrupted)")?,
            K::Foreign { first_line } => write!(
                f,
                "first line is {first_line:?}, expected {HEADER:?}: another file is at this path \
                 (point CHECKPOINT_PATH at a file of its own)"
            )?,
            K::UnsupportedVersion { found } => write!(
                f,
                "written by another agent version ({found:?}); this agent reads {HEADER:?}"
            )?,
            K::Truncated => f.write_str(
                "ends before its checksum line (a write was torn, e.g. by a full disk)",
            )?,
            K::BadChecksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored}, content hashes to {computed}): the file was \
                 corrupted or edited"
            )?,
            K::BadLine { line, column, why } => write!(f, "line {line}:{column}: {why}")?,
            K::UnknownKey { line, key } => write!(
                f,
                "line {line}:1: unknown key {key:?} (expected one of {})",
                KEYS.join(", ")
            )?,
            K::DuplicateKey { line, key } => {
                write!(f, "line {line}:1: key {key:?} appears a second time")?
            }
            K::MissingKey { key } => write!(f, "the key {key:?} is missing")?,
            K::BadValue {
                line,
                column,
                key,
                why,
            } => write!(f, "line {line}:{column}: bad value for {key}: {why}")?,
            K::TrailingData { line } => write!(f, "line {line}:1: text after the checksum line")?,
        }
        f.write_str(
            "; the checkpoint is ignored and reading starts as START_AT says (the file is \
             rewritten at the next save; delete it if this repeats)",
        )
    }
}

impl std::error::Error for CheckpointError {}

/// Encodes a checkpoint as text:
///
/// ```text
/// healert-agent checkpoint v1
/// path=/var/log/kubernetes/audit/audit.log
/// dev=2049
/// ino=1835021
/// fingerprint=9f1c0a5e7d3b2c41
/// fingerprint_len=1024
/// offset=52428800
/// skip_events=0
/// checksum=0b5e2f4c1a9d8e73
/// ```
///
/// `path` is percent-encoded (bytes outside printable ASCII, and `%`, become `%XX`) so any
/// Unix path fits on one line. `checksum` is FNV-1a 64 of every byte before the `checksum=`
/// line, in hex.
pub fn encode(cp: &Checkpoint) -> Vec<u8> {
    let mut body = String::with_capacity(256);
    body.push_str(HEADER);
    body.push('\n');
    body.push_str("path=");
    for &b in cp.path.as_os_str().as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            body.push(b as char);
        } else {
            body.push_str(&format!("%{b:02X}"));
        }
    }
    let p = &cp.position;
    body.push_str(&format!(
        "\ndev={}\nino={}\nfingerprint={:016x}\nfingerprint_len={}\noffset={}\nskip_events={}\n",
        p.file.dev,
        p.file.ino,
        p.file.fingerprint,
        p.file.fingerprint_len,
        p.offset,
        cp.skip_events
    ));
    let sum = fnv1a64(body.as_bytes());
    body.push_str(&format!("checksum={sum:016x}\n"));
    body.into_bytes()
}

/// Parses what [`encode`] wrote. Strict: every key exactly once, nothing unknown, checksum
/// verified, at most [`MAX_CHECKPOINT_BYTES`]. Never panics on any input.
pub fn parse(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    use CheckpointErrorKind as K;
    let err = |k| Err(CheckpointError::new(k));
    if bytes.len() > MAX_CHECKPOINT_BYTES {
        return err(K::TooLarge {
            limit: MAX_CHECKPOINT_BYTES,
        });
    }
    if bytes.is_empty() {
        return err(K::Empty);
    }
    let first_end = bytes.iter().position(|&b| b == b'\n');
    let first = &bytes[..first_end.unwrap_or(bytes.len())];
    if first != HEADER.as_bytes() {
        let shown = crate::operate::log::sanitize(&String::from_utf8_lossy(first), 60);
        if first.starts_with(b"healert-agent checkpoint ") {
            return err(K::UnsupportedVersion { found: shown });
        }
        return err(K::Foreign { first_line: shown });
    }
    // The checksum line must end with '\n' (a torn write usually cuts it).
    let Some(sum_at) = find_checksum_line(bytes) else {
        return err(K::Truncated);
    };
    let sum_line = &bytes[sum_at..];
    let Some(nl) = sum_line.iter().position(|&b| b == b'\n') else {
        return err(K::Truncated);
    };
    let body = &bytes[..sum_at];
    let sum_line_no = body.iter().filter(|&&b| b == b'\n').count() + 1;
    if nl + 1 != sum_line.len() {
        return err(K::TrailingData {
            line: sum_line_no + 1,
        });
    }
    let stored = &sum_line[b"checksum=".len()..nl];
    let computed = format!("{:016x}", fnv1a64(body));
    if stored != computed.as_bytes() {
        return err(K::BadChecksum {
            stored: crate::operate::log::sanitize(&String::from_utf8_lossy(stored), 40),
            computed,
        });
    }

    let mut values: [Option<(usize, &[u8])>; 7] = [None; 7];
    // Body lines after the header; the body ends with '\n' (checked by find_checksum_line).
    let mut line_no = 1;
    for raw in body[HEADER.len() + 1..].split(|&b| b == b'\n') {
        line_no += 1;
        if line_no >= sum_line_no {
            break; // the empty piece after the body's last '\n'
        }
        let Some(eq) = raw.iter().position(|&b| b == b'=') else {
            return err(K::BadLine {
                line: line_no,
                column: raw.len() + 1,
                why: "expected key=value",
            });
        };
        let key = &raw[..eq];
        let Some(slot) = KEYS.iter().position(|k| k.as_bytes() == key) else {
            return err(K::UnknownKey {
                line: line_no,
                key: crate::operate::log::sanitize(&String::from_utf8_lossy(key), 40),
            });
        };
        if values[slot].is_some() {
            return err(K::DuplicateKey {
                line: line_no,
                key: KEYS[slot].to_string(),
            });
        }
        values[slot] = Some((line_no, &raw[eq + 1..]));
    }
    let mut get = |i: usize| match values[i].take() {
        Some(v) => Ok(v),
        None => Err(CheckpointError::new(K::MissingKey { key: KEYS[i] })),
    };
    let (pl, path) = get(0)?;
    let path = decode_path(path).map_err(|(column, why)| {
        CheckpointError::new(K::BadValue {
            line: pl,
            column: column + 6,
            key: "path",
            why: why.to_string(),
        })
    })?;
    let dev = number(get(1)?, "dev", 10, u64::MAX)?;
    let ino = number(get(2)?, "ino", 10, u64::MAX)?;
    let fp = get(3)?;
    if fp.1.len() != 16 {
        return Err(CheckpointError::new(K::BadValue {
            line: fp.0,
            column: "fingerprint=".len() + 1,
            key: "fingerprint",
            why: "expected 16 hex digits".into(),
        }));
    }
    let fingerprint = number(fp, "fingerprint", 16, u64::MAX)?;
    let fingerprint_len =
        number(get(4)?, "fingerprint_len", 10, u64::from(FINGERPRINT_MAX))? as u32;
    let offset = number(get(5)?, "offset", 10, u64::MAX)?;
    let skip_events = number(get(6)?, "skip_events", 10, u64::from(u32::MAX))? as u32;
    Ok(Checkpoint {
        path,
        position: Position {
            file: FileId {
                dev,
                ino,
                fingerprint,
                fingerprint_len,
            },
            offset,
        },
        skip_events,
    })
}

/// Start of the `checksum=` line. No value can contain a raw newline (the path is escaped),
/// so the first `\nchecksum=` is it; what follows its line is trailing data.
fn find_checksum_line(bytes: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"\nchecksum=";
    bytes
        .windows(NEEDLE.len())
        .position(|w| w == NEEDLE)
        .map(|i| i + 1)
}

fn number(
    (line, v): (usize, &[u8]),
    key: &'static str,
    radix: u32,
    max: u64,
) -> Result<u64, CheckpointError> {
    let column = key.len() + 2;
    let bad = |why: String| {
        CheckpointError::new(CheckpointErrorKind::BadValue {
            line,
            column,
            key,
            why,
        })
    };
    let shown = || crate::operate::log::sanitize(&String::from_utf8_lossy(v), 40);
    if v.is_empty() || !v.iter().all(|b| (*b as char).is_digit(radix)) {
        let what = if radix == 16 {
            "hex digits"
        } else {
            "a decimal number"
        };
        return Err(bad(format!("{:?} is not {what}", shown())));
    }
    // All ASCII digits, so from_utf8 cannot fail; overflow is reported.
    let s = std::str::from_utf8(v).unwrap_or("");
    match u64::from_str_radix(s, radix) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(bad(format!("{:?} is larger than {max}", shown()))),
    }
}

/// Undoes the percent-encoding of `encode`; the error is (0-based column, why).
fn decode_path(v: &[u8]) -> Result<PathBuf, (usize, &'static str)> {
    if v.is_empty() {
        return Err((0, "empty path"));
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        if b == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .ok_or((i, "% must be followed by 2 hex digits"))?;
            let s = std::str::from_utf8(hex).map_err(|_| (i, "bad %XX escape"))?;
            let n = u8::from_str_radix(s, 16).map_err(|_| (i, "bad %XX escape"))?;
            out.push(n);
            i += 3;
        } else if (0x21..=0x7e).contains(&b) {
            out.push(b);
            i += 1;
        } else {
            return Err((i, "unescaped space or control byte"));
        }
    }
    if out.contains(&0) {
        return Err((0, "path contains a NUL byte"));
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Reads the checkpoint at `path`. `Ok(None)`: no checkpoint yet (file absent).
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let with_path = |kind| CheckpointError {
        path: Some(path.to_path_buf()),
        kind,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(CheckpointErrorKind::Io(e.to_string()))),
    };
    let mut bytes = Vec::with_capacity(512);
    // One byte over the limit is enough to know it is too large; never read a huge file whole.
    file.take(MAX_CHECKPOINT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| with_path(CheckpointErrorKind::Io(e.to_string())))?;
    parse(&bytes).map(Some).map_err(|e| with_path(e.kind))
}

/// Writes the checkpoint atomically: `<path>.tmp` is written and fsynced, renamed over `path`,
/// and the directory is fsynced so the rename itself survives a power cut. A reader sees the
/// old or the new checkpoint, never a mix.
pub fn save(path: &Path, cp: &Checkpoint) -> io::Result<()> {
    write_atomically(path, &encode(cp))
}

/// The atomic store behind [`save`], for files that must change together with the checkpoint
/// (the suppression state): `<path>.tmp` written and fsynced, renamed over `path`, directory
/// fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        // A temporary file left by a crash between create and rename must not block saving;
        // whatever is there (a planted symlink included) is removed, never followed, and the
        // new one is created exclusively, 0600.
        crate::operate::files::remove_stale(&tmp)?;
        let mut f = crate::operate::files::create_new_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            path: PathBuf::from("/var/log/kubernetes/audit/audit.log"),
            position: Position {
                file: FileId {
                    dev: 2049,
                    ino: 1835021,
                    fingerprint: 0x9f1c_0a5e_7d3b_2c41,
                    fingerprint_len: 1024,
                },
                offset: 52_428_800,
            },
            skip_events: 2,
        }
    }

    /// Re-encodes a body with a valid checksum, to reach the errors behind the checksum.
    fn with_sum(body: &str) -> Vec<u8> {
        format!("{body}checksum={:016x}\n", fnv1a64(body.as_bytes())).into_bytes()
    }

    fn kind(bytes: &[u8]) -> CheckpointErrorKind {
        parse(bytes).unwrap_err().kind
    }

    const BODY: &str = "healert-agent checkpoint v1\npath=/a\ndev=1\nino=2\n\
                        fingerprint=00000000000000ff\nfingerprint_len=3\noffset=4\nskip_events=5\n";

    #[test]
    fn round_trip_sample_and_text_shape() {
        let cp = sample();
        let bytes = encode(&cp);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("healert-agent checkpoint v1\npath=/var/log/kubernetes/"));
        assert!(text.contains("\noffset=52428800\n"));
        assert_eq!(parse(&bytes).unwrap(), cp);
        let p = parse(&with_sum(BODY)).unwrap();
        assert_eq!(p.path, PathBuf::from("/a"));
        assert_eq!(p.position.file.fingerprint, 0xff);
        assert_eq!((p.position.offset, p.skip_events), (4, 5));
    }

    #[test]
    fn odd_paths_are_escaped() {
        let mut cp = sample();
        cp.path = PathBuf::from(std::ffi::OsString::from_vec(
            b"/tmp/a b%c\n\xff/\xc3\xa9".to_vec(),
        ));
        let bytes = encode(&cp);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 9);
        assert!(String::from_utf8(bytes.clone())
            .unwrap()
            .contains("a%20b%25c%0A%FF"));
        assert_eq!(parse(&bytes).unwrap(), cp);
    }

    #[test]
    fn every_error_kind_and_message() {
        use CheckpointErrorKind as K;
        let good = encode(&sample());
        let cases: Vec<(Vec<u8>, K, &str)> = vec![
            (vec![], K::Empty, "empty"),
            (
                vec![b'x'; MAX_CHECKPOINT_BYTES + 1],
                K::TooLarge {
                    limit: MAX_CHECKPOINT_BYTES,
                },
                "larger than 16384 bytes",
            ),
            (
                b"{\"offset\": 3}\n".to_vec(),
                K::Foreign {
                    first_line: "{\"offset\": 3}".into(),
                },
                "another file is at this path",
            ),
            (
                b"healert-agent checkpoint v9\n".to_vec(),
                K::UnsupportedVersion {
                    found: "healert-agent checkpoint v9".into(),
                },
                "another agent version",
            ),
            (good[..good.len() - 20].to_vec(), K::Truncated, "torn"),
            (good[..good.len() - 1].to_vec(), K::Truncated, "torn"),
            (
                {
                    let mut b = good.clone();
                    b.extend_from_slice(b"x\n");
                    b
                },
                K::TrailingData { line: 10 },
                "line 10:1: text after the checksum",
            ),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replace("offset=52428800", "offset=52428801")
                    .into_bytes(),
                K::BadChecksum {
                    stored: format!("{:016x}", fnv1a64(&good[..good.len() - 26])),
                    computed: format!(
                        "{:016x}",
                        fnv1a64(
                            String::from_utf8(good[..good.len() - 26].to_vec())
                                .unwrap()
                                .replace("offset=52428800", "offset=52428801")
                                .as_bytes()
                        )
                    ),
                },
                "checksum mismatch",
            ),
            (
                with_sum(&BODY.replace("dev=1\n", "dev 1\n")),
                K::BadLine {
                    line: 3,
                    column: 6,
                    why: "expected key=value",
                },
                "line 3:6: expected key=value",
            ),
            (
                with_sum(&BODY.replace("dev=1\n", "device=1\n")),
                K::UnknownKey {
                    line: 3,
                    key: "device".into(),
                },
                "unknown key \"device\"",
            ),
            (
                with_sum(&BODY.replace("ino=2\n", "dev=2\n")),
                K::DuplicateKey {
                    line: 4,
                    key: "dev".into(),
                },
                "line 4:1: key \"dev\" appears a second time",
            ),
            (
                with_sum(&BODY.replace("ino=2\n", "")),
                K::MissingKey { key: "ino" },
                "the key \"ino\" is missing",
            ),
            (
                with_sum(&BODY.replace("offset=4", "offset=-4")),
                K::BadValue {
                    line: 7,
                    column: 8,
                    key: "offset",
                    why: "\"-4\" is not a decimal number".into(),
                },
                "line 7:8: bad value for offset",
            ),
            (
                with_sum(&BODY.replace("offset=4", "offset=99999999999999999999")),
                K::BadValue {
                    line: 7,
                    column: 8,
                    key: "offset",
                    why: "\"99999999999999999999\" is larger than 18446744073709551615".into(),
                },
                "is larger than",
            ),
            (
                with_sum(&BODY.replace("fingerprint_len=3", "fingerprint_len=1025")),
                K::BadValue {
                    line: 6,
                    column: 17,
                    key: "fingerprint_len",
                    why: "\"1025\" is larger than 1024".into(),
                },
                "bad value for fingerprint_len",
            ),
            (
                with_sum(&BODY.replace("00000000000000ff", "ff")),
                K::BadValue {
                    line: 5,
                    column: 13,
                    key: "fingerprint",
                    why: "expected 16 hex digits".into(),
                },
                "expected 16 hex digits",
            ),
            (
                with_sum(&BODY.replace("path=/a", "path=/a%zz")),
                K::BadValue {
                    line: 2,
                    column: 8,
                    key: "path",
                    why: "bad %XX escape".into(),
                },
                "line 2:8: bad value for path: bad %XX escape",
            ),
            (
                with_sum(&BODY.replace("path=/a", "path=/a%00")),
                K::BadValue {
                    line: 2,
                    column: 6,
                    key: "path",
                    why: "path contains a NUL byte".into(),
                },
                "NUL",
            ),
        ];
        for (bytes, want, msg) in cases {
            let e = parse(&bytes).unwrap_err();
            assert_eq!(e.kind, want);
            let shown = e.to_string();
            assert!(shown.contains(msg), "{shown:?} lacks {msg:?}");
            assert!(shown.starts_with("checkpoint: "), "{shown}");
            assert!(shown.contains("is ignored"), "{shown}");
        }
        let io = CheckpointError {
            path: Some("/x/cp".into()),
            kind: K::Io("Permission denied (os error 13)".into()),
        };
        assert!(io
            .to_string()
            .starts_with("checkpoint CHECKPOINT_PATH=/x/cp: cannot be read: Permission denied"));
        // Without its checksum line a body is a torn write, whatever it contains.
        assert!(matches!(kind(BODY.as_bytes()), K::Truncated));
    }

    #[test]
    fn save_and_load_atomically() {
        let dir = std::env::temp_dir().join(format!("healert-cp-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint");
        assert_eq!(load(&path).unwrap(), None);
        let mut cp = sample();
        save(&path, &cp).unwrap();
        assert_eq!(load(&path).unwrap(), Some(cp.clone()));
        cp.position.offset += 1;
        save(&path, &cp).unwrap();
        assert_eq!(load(&path).unwrap(), Some(cp));
        assert!(!dir.join("checkpoint.tmp").exists());
        std::fs::write(&path, vec![b'a'; 1 << 20]).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.path.as_deref(), Some(path.as_path()));
        assert!(matches!(e.kind, CheckpointErrorKind::TooLarge { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 17 finding 7: a stale `<checkpoint>.tmp` (a crash) does not block saving, a
    /// symlink planted there is not followed, and the checkpoint is 0600.
    #[test]
    fn a_leftover_or_planted_temp_file_neither_blocks_nor_redirects_the_save() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("healert-cp-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint");
        let tmp = dir.join("checkpoint.tmp");
        std::fs::write(&tmp, "half-written by a crashed run").unwrap();
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        save(&path, &sample()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let md = std::fs::symlink_metadata(&path).unwrap();
        assert!(md.file_type().is_file());
        assert_eq!(md.mode() & 0o777, 0o600);
        assert!(std::fs::symlink_metadata(&tmp).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn save_into_a_missing_directory_fails_cleanly() {
        let p = std::env::temp_dir()
            .join(format!("healert-cp-missing-{}", std::process::id()))
            .join("sub/checkpoint");
        let e = save(&p, &sample()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn encode_parse_round_trip(
            path in proptest::collection::vec(1u8..=255, 1..200),
            dev: u64, ino: u64, fingerprint: u64,
            fingerprint_len in 0u32..=FINGERPRINT_MAX,
            offset: u64, skip_events: u32,
        ) {
            let cp = Checkpoint {
                path: PathBuf::from(std::ffi::OsString::from_vec(path)),
                position: Position {
                    file: FileId { dev, ino, fingerprint, fingerprint_len },
                    offset,
                },
                skip_events,
            };
            prop_assert_eq!(parse(&encode(&cp)).unwrap(), cp);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_single_byte_flip_is_detected(at in 0usize..200, bit in 0u8..8) {
            let good = encode(&sample());
            let mut bad = good.clone();
            let i = at % bad.len();
            bad[i] ^= 1 << bit;
            prop_assert!(parse(&bad).is_err());
        }
    }
}
