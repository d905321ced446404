//! The webhook's spool: where an accepted batch's friction-producing audit events are made
//! durable before kube-apiserver gets its 200, and from where the file follower delivers them.
//!
//! `SPOOL_PATH` is a directory (created `0700` if missing) holding `spool.ndjson` (`0600`): one
//! pruned audit event per line, appended and `fdatasync`ed under a lock, so a batch is on disk
//! whole or not at all (a failed write is cut back). The agent follows `spool.ndjson` exactly
//! like an audit log — the same follower, checkpoint, queue and sender — so delivery,
//! acknowledgement and restarts behave as they do for the file source.
//!
//! **Rotation.** Past a size, `spool.ndjson` is hard-linked to `spool.ndjson.N` and replaced by
//! a new empty file in one `rename` (the path always names a file): the follower drains the old
//! one and moves on, as after kube-apiserver's own rotation. A rotated file is deleted once the
//! checkpoint on disk names a newer file (everything in it was delivered and the saved
//! checkpoint is past it).
//!
//! **Backlog.** The bytes not yet passed by the saved checkpoint; at `SPOOL_MAX_BYTES` new
//! batches are refused (429) until delivery catches up. One batch may overshoot the cap, so a
//! batch larger than the cap is not refused forever.
//!
//! **Duplicates.** kube-apiserver re-sends a batch whose answer it did not get. An event is
//! spooled unless every `(auditID, rule)` it produces is among the most recent
//! [`RECENT_KEYS`] spooled (a set rebuilt from the spool files at start). Events without an
//! `auditID` are always spooled.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::detect::audit::extract;
use crate::detect::Detector;
use crate::operate::metrics::Metrics;
use crate::source::checkpoint;
use crate::source::position::{self, Position};

/// The followed spool file's name in `SPOOL_PATH`.
pub const SPOOL_FILE: &str = "spool.ndjson";
/// How many `(auditID, rule)` keys are remembered against re-sent batches.
pub const RECENT_KEYS: usize = 100_000;
/// The saved checkpoint is read again at most this often.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// One audit event of a batch that produced friction events: its line for the spool (a pruned
/// event, no newline) and the `(auditID, rule)` keys of its events.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub line: Vec<u8>,
    pub keys: Vec<u64>,
}

impl Candidate {
    /// `item` (a pruned audit event) and the rules that matched it.
    pub fn new(item: &[u8], rules: impl IntoIterator<Item = impl AsRef<str>>) -> Candidate {
        let audit_id = extract(item)
            .map(|f| f.audit_id.into_owned())
            .unwrap_or_default();
        let keys = if audit_id.is_empty() {
            Vec::new()
        } else {
            rules
                .into_iter()
                .map(|r| key(&audit_id, r.as_ref()))
                .collect()
        };
        // One line: a pretty-printed body's kept parts may hold newlines (as whitespace only:
        // JSON strings cannot).
        let line = item
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
            .collect();
        Candidate { line, keys }
    }
}

/// FNV-1a 64 of `auditID`, a separator and the rule name.
fn key(audit_id: &str, rule: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in audit_id.bytes().chain([0xff]).chain(rule.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub spooled: u64,
    pub duplicates: u64,
    pub bytes: u64,
}

/// Why a batch was not spooled.
#[derive(Debug)]
pub enum AppendError {
    /// The backlog is at `SPOOL_MAX_BYTES`: answer 429.
    Full { backlog: u64 },
    /// Writing or syncing failed (cut back: nothing of the batch is kept): answer 500.
    Io(io::Error),
}

/// The most recent keys, bounded.
#[derive(Debug, Default)]
struct Recent {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Recent {
    fn contains(&self, k: &u64) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: u64) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > RECENT_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A rotated spool file still on disk.
#[derive(Debug)]
struct Rotated {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
}

struct State {
    file: File,
    dev: u64,
    ino: u64,
    size: u64,
    /// Oldest first.
    rotated: Vec<Rotated>,
    next_seq: u64,
    recent: Recent,
    /// The saved checkpoint's (dev, ino, offset), when it names the spool.
    ack: Option<(u64, u64, u64)>,
    ack_read: Option<Instant>,
}

/// The spool. See the module documentation.
pub struct Spool {
    dir: PathBuf,
    path: PathBuf,
    checkpoint: PathBuf,
    max_bytes: u64,
    rotate_bytes: u64,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl Spool {
    /// Opens (creating it if missing) the spool in `dir`; `checkpoint` is the file the agent
    /// saves the follower's acknowledged position in. The duplicate keys are rebuilt from the
    /// spool files with `detector`.
    pub fn open(
        dir: &Path,
        checkpoint: &Path,
        max_bytes: u64,
        detector: &Detector,
        metrics: Arc<Metrics>,
    ) -> io::Result<Spool> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
                })?;
            sync_dir(dir.parent().unwrap_or(Path::new("/")));
        }
        let path = dir.join(SPOOL_FILE);
        let mut rotated = Vec::new();
        let prefix = format!("{SPOOL_FILE}.");
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let m = e.metadata()?;
            if m.is_file() {
                rotated.push((seq, e.path(), m));
            }
        }
        rotated.sort_by_key(|r| r.0);
        let next_seq = rotated.last().map_or(1, |r| r.0 + 1);
        let file = open_spool_file(&path)?;
        let m = file.metadata()?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            path,
            checkpoint: checkpoint.to_path_buf(),
            max_bytes,
            rotate_bytes: (max_bytes / 4).clamp(64 << 10, 64 << 20),
            metrics,
            state: Mutex::new(State {
                dev: m.dev(),
                ino: m.ino(),
                size: m.len(),
                file,
                rotated: rotated
                    .into_iter()
                    .map(|(_, path, m)| Rotated {
                        path,
                        dev: m.dev(),
                        ino: m.ino(),
                        size: m.len(),
                    })
                    .collect(),
                next_seq,
                recent: Recent::default(),
                ack: None,
                ack_read: None,
            }),
        };
        spool.rebuild(detector)?;
        spool.checkpoint_the_oldest()?;
        Ok(spool)
    }

    /// Without a checkpoint the follower starts at the beginning of `spool.ndjson`: when
    /// rotated files are still there (never delivered: the agent stopped before its first
    /// checkpoint), a checkpoint at the start of the oldest makes it read them first.
    fn checkpoint_the_oldest(&mut self) -> io::Result<()> {
        if !matches!(checkpoint::load(&self.checkpoint), Ok(None)) {
            return Ok(());
        }
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let Some(oldest) = st.rotated.first() else {
            return Ok(());
        };
        let file = position::file_id(&File::open(&oldest.path)?)?;
        checkpoint::save(
            &self.checkpoint,
            &checkpoint::Checkpoint {
                path: self.path.clone(),
                position: Position { file, offset: 0 },
                skip_events: 0,
            },
        )
    }

    /// The file the follower follows.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the open spool file with a read-only handle, so every append fails (tests of
    /// the error path).
    #[cfg(test)]
    pub(crate) fn break_writes(&self) {
        if let Ok(f) = File::open(&self.path) {
            self.lock().file = f;
        }
    }

    /// The duplicate keys of the events still in the spool files, oldest first.
    fn rebuild(&mut self, detector: &Detector) -> io::Result<()> {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut files: Vec<PathBuf> = st.rotated.iter().map(|r| r.path.clone()).collect();
        files.push(self.path.clone());
        let mut events = Vec::new();
        for f in files {
            let Ok(file) = File::open(&f) else { continue };
            for line in BufReader::new(file).split(b'\n') {
                let line = line?;
                events.clear();
                detector.detect(&line, &mut events);
                let c = Candidate::new(&line, events.iter().map(|e| e.kind.as_str()));
                for k in c.keys {
                    st.recent.insert(k);
                }
            }
        }
        Ok(())
    }

    /// Whether a batch would be refused now (the backlog is at the cap), and the backlog.
    pub fn full(&self) -> (bool, u64) {
        let mut st = self.lock();
        let b = self.backlog(&mut st);
        (b >= self.max_bytes, b)
    }

    /// Reads the saved checkpoint again (at most every [`CHECKPOINT_EVERY`]), deletes the
    /// rotated files it has passed, and updates the backlog gauge.
    pub fn tidy(&self) {
        let mut st = self.lock();
        self.backlog(&mut st);
    }

    fn backlog(&self, st: &mut State) -> u64 {
        if st
            .ack_read
            .map_or(true, |t| t.elapsed() >= CHECKPOINT_EVERY)
        {
            st.ack_read = Some(Instant::now());
            st.ack = match checkpoint::load(&self.checkpoint) {
                Ok(Some(cp)) if cp.path == self.path => Some((
                    cp.position.file.dev,
                    cp.position.file.ino,
                    cp.position.offset,
                )),
                _ => None,
            };
            self.delete_passed(st);
        }
        let all: u64 = st.rotated.iter().map(|r| r.size).sum::<u64>() + st.size;
        let b = match st.ack {
            Some((dev, ino, off)) if (dev, ino) == (st.dev, st.ino) => st.size.saturating_sub(off),
            Some((dev, ino, off)) => {
                match st.rotated.iter().position(|r| (r.dev, r.ino) == (dev, ino)) {
                    Some(i) => {
                        let before: u64 = st.rotated[..i].iter().map(|r| r.size).sum();
                        all.saturating_sub(before).saturating_sub(off)
                    }
                    None => all,
                }
            }
            None => all,
        };
        self.metrics.spool_backlog_bytes.store(b, Ordering::Relaxed);
        b
    }

    /// Deletes the rotated files older than the one the saved checkpoint names.
    fn delete_passed(&self, st: &mut State) {
        let Some((dev, ino, _)) = st.ack else { return };
        let upto = if (dev, ino) == (st.dev, st.ino) {
            st.rotated.len()
        } else {
            match st.rotated.iter().position(|r| (r.dev, r.ino) == (dev, ino)) {
                Some(i) => i,
                None => return,
            }
        };
        for r in st.rotated.drain(..upto) {
            if let Err(e) = fs::remove_file(&r.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    crate::warn!("cannot delete a delivered spool file", "file" => r.path.display(), "error" => e);
                }
            }
        }
    }

    /// Appends the candidates not seen before and syncs them to disk. Nothing is written (and
    /// no sync made) when every candidate is a duplicate or there are none.
    pub fn append(&self, batch: &[Candidate]) -> Result<Appended, AppendError> {
        let mut st = self.lock();
        let backlog = self.backlog(&mut st);
        if backlog >= self.max_bytes && !batch.is_empty() {
            return Err(AppendError::Full { backlog });
        }
        let mut out = Appended::default();
        let mut buf = Vec::new();
        let mut keys: HashSet<u64> = HashSet::new();
        for c in batch {
            if !c.keys.is_empty()
                && c.keys
                    .iter()
                    .all(|k| st.recent.contains(k) || keys.contains(k))
            {
                out.duplicates += 1;
                continue;
            }
            buf.extend_from_slice(&c.line);
            buf.push(b'\n');
            keys.extend(c.keys.iter().copied());
            out.spooled += 1;
        }
        if buf.is_empty() {
            return Ok(out);
        }
        if st.size > 0 && st.size + buf.len() as u64 > self.rotate_bytes {
            self.rotate(&mut st).map_err(AppendError::Io)?;
        }
        let size = st.size;
        let written = st.file.write_all(&buf).and_then(|()| st.file.sync_data());
        if let Err(e) = written {
            // Never leave part of a batch: the next line would be glued to it.
            let _ = st.file.set_len(size);
            let _ = st.file.sync_data();
            return Err(AppendError::Io(e));
        }
        st.size += buf.len() as u64;
        for k in keys {
            st.recent.insert(k);
        }
        out.bytes = buf.len() as u64;
        Ok(out)
    }

    /// `spool.ndjson` becomes `spool.ndjson.N` (a hard link, so the path never goes missing),
    /// and a new empty file takes the path in one rename.
    fn rotate(&self, st: &mut State) -> io::Result<()> {
        let seq = st.next_seq;
        let rotated = self.dir.join(format!("{SPOOL_FILE}.{seq}"));
        fs::hard_link(&self.path, &rotated)?;
        let tmp = self.dir.join(format!("{SPOOL_FILE}.next.tmp"));
        let _ = fs::remove_file(&tmp);
        let file = open_spool_file(&tmp)?;
        fs::rename(&tmp, &self.path)?;
        sync_dir(&self.dir);
        let m = file.metadata()?;
        st.rotated.push(Rotated {
            path: rotated,
            dev: st.dev,
            ino: st.ino,
            size: st.size,
        });
        st.next_seq = seq + 1;
        st.file = file;
        st.dev = m.dev();
        st.ino = m.ino();
        st.size = 0;
        Ok(())
    }
}

fn open_spool_file(path: &Path) -> io::Result<File> {
    // Never through a link, never a device: the agent may run as root.
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ))
        }
        _ => {}
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    // An existing file keeps its mode unless it is looser than ours.
    if let Ok(m) = f.metadata() {
        if !m.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        if m.permissions().mode() & 0o077 != 0 {
            let _ = f.set_permissions(fs::Permissions::from_mode(0o600));
        }
    }
    f.sync_all()?;
    if let Some(d) = path.parent() {
        sync_dir(d);
    }
    Ok(f)
}

/// Makes a directory's entries durable (best effort: not every filesystem allows it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing;

    fn detector() -> Detector {
        testing::detector(vec![testing::exec_rule()])
    }

    fn exec(id: &str) -> Candidate {
        let line = format!(
            r#"{{"auditID":"{id}","stage":"ResponseComplete","verb":"create","user":{{"username":"a"}},"objectRef":{{"resource":"pods","name":"p","subresource":"exec"}}}}"#
        );
        Candidate::new(line.as_bytes(), ["kubectl-exec"])
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("healert-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn appends_once_per_key_across_reopen_and_rotates() {
        let d = dir("once");
        let m = Arc::new(Metrics::new());
        let cp = d.join("checkpoint");
        let s = Spool::open(&d.join("spool"), &cp, 1 << 20, &detector(), Arc::clone(&m)).unwrap();
        let mode = fs::metadata(d.join("spool")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let a = s.append(&[exec("1"), exec("2"), exec("1")]).unwrap();
        assert_eq!((a.spooled, a.duplicates), (2, 1));
        let a = s.append(&[exec("2"), exec("3")]).unwrap();
        assert_eq!((a.spooled, a.duplicates), (1, 1));
        let mode = fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(s);
        // Reopened: the keys are rebuilt from the file.
        let s = Spool::open(&d.join("spool"), &cp, 1 << 20, &detector(), Arc::clone(&m)).unwrap();
        let a = s.append(&[exec("1"), exec("3"), exec("4")]).unwrap();
        assert_eq!((a.spooled, a.duplicates), (1, 2));
        let text = fs::read_to_string(s.path()).unwrap();
        assert_eq!(text.lines().count(), 4);
        // No checkpoint: everything is backlog.
        assert_eq!(s.full(), (false, text.len() as u64));
        // Events without an auditID are always spooled.
        let anon = Candidate::new(br#"{"stage":"x"}"#, ["kubectl-exec"]);
        assert!(anon.keys.is_empty());
        assert_eq!(s.append(&[anon.clone(), anon]).unwrap().spooled, 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_write_that_fails_keeps_nothing_and_a_planted_link_is_refused() {
        let d = dir("fails");
        let s = Spool::open(
            &d,
            &d.join("checkpoint"),
            1 << 20,
            &detector(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        s.lock().file = File::open(s.path()).unwrap();
        assert!(matches!(s.append(&[exec("x")]), Err(AppendError::Io(_))));
        // Not remembered as spooled: the retry is not taken for a duplicate.
        s.lock().file = open_spool_file(s.path()).unwrap();
        assert_eq!(s.append(&[exec("x")]).unwrap().spooled, 1);
        assert_eq!(fs::read_to_string(s.path()).unwrap().lines().count(), 1);
        drop(s);
        // The spool file is never a link or a device.
        fs::remove_file(d.join(SPOOL_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.join(SPOOL_FILE)).unwrap();
        let e = Spool::open(
            &d,
            &d.join("checkpoint"),
            1 << 20,
            &detector(),
            Arc::new(Metrics::new()),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("is not a regular file"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn full_past_the_cap_and_rotation_keeps_the_path() {
        let d = dir("full");
        let m = Arc::new(Metrics::new());
        let s = Spool::open(&d, &d.join("checkpoint"), 64 << 10, &detector(), m).unwrap();
        let ino = fs::metadata(s.path()).unwrap().ino();
        let mut n = 0;
        let mut refused = false;
        for i in 0..2000 {
            match s.append(&[exec(&format!("k{i}"))]) {
                Ok(a) => n += a.spooled,
                Err(AppendError::Full { backlog }) => {
                    assert!(backlog >= 64 << 10);
                    refused = true;
                    break;
                }
                Err(AppendError::Io(e)) => panic!("{e}"),
            }
        }
        assert!(refused, "never refused after {n} events");
        // Rotated at a quarter of the cap (the 64 KiB floor): the path still names a file.
        assert_ne!(fs::metadata(s.path()).unwrap().ino(), ino);
        assert!(d.join("spool.ndjson.1").is_file());
        // Reopened without a checkpoint: one now names the oldest rotated file, at 0.
        drop(s);
        let _ = Spool::open(
            &d,
            &d.join("checkpoint"),
            64 << 10,
            &detector(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let cp = checkpoint::load(&d.join("checkpoint")).unwrap().unwrap();
        let oldest = fs::metadata(d.join("spool.ndjson.1")).unwrap();
        assert_eq!(
            (cp.position.file.ino, cp.position.offset),
            (oldest.ino(), 0)
        );
        assert_eq!(cp.path, d.join(SPOOL_FILE));
        let lines: usize = fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("spool.ndjson"))
            .map(|e| fs::read_to_string(e.path()).unwrap().lines().count())
            .sum();
        assert_eq!(lines as u64, n);
        let _ = fs::remove_dir_all(&d);
    }
}
