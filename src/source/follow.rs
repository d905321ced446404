//! Following the audit log: complete lines only, across rotations, truncations, deletions and
//! restarts, in bounded memory.
//!
//! A [`Follower`] is polled by the one follower/detector thread. It keeps an ordered list of
//! open files: the front one is being read; the others were opened after the path started
//! naming a new file (rename/create rotation) and wait their turn. A rotated-away file stays
//! open until it is read to its end, so neither a writer still appending to it nor
//! kube-apiserver deleting old backups can take unread lines away. Files are identified by
//! device + inode + a fingerprint of their first bytes (see `checkpoint::FileId`), never by name.
//!
//! Reading goes through the shared [`LineBuffer`], filled with `pread` in 64 KiB steps; lines
//! are handed out as slices of it (no copy). A line longer than `max_line_bytes` is never held
//! whole: its bytes are discarded as they arrive and only its start and end are reported
//! ([`Next::Skipped`]). The buffer therefore never exceeds `max_line_bytes` + 128 KiB, and
//! shrinks back after a long line.
//!
//! The path is looked at whenever the front file is at its end, and at least every
//! `poll_interval` (or 8 MiB) while data keeps coming. If it was rotated more than once
//! between two looks (a delivery stall without [`Follower::watch`], a tiny maxsize), the
//! files renamed aside in between are found in the directory (same name prefix, modified
//! since the last look, never read, not compressed) and read first, oldest first. The same
//! search runs at start when the checkpointed file was rotated while the agent was down
//! (backups older than it are not read again); after a copytruncate while down, the copy
//! with the checkpointed file's first bytes is read from the checkpoint instead.
//!
//! What this module does not do: parse lines, decide what is acknowledged, or write
//! checkpoints. It reports positions; the caller saves the oldest unacknowledged one (or
//! [`Source::position`] when nothing is pending) and hands it back to [`Follower::new`]
//! at the next start. It cannot read what was deleted before it was opened: a rotated file
//! removed while the agent was down (or during a stall, before it was noticed) is lost,
//! and said so.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::operate::log::Throttle;
use crate::operate::metrics::{now_unix_ms, Metrics};
use crate::source::checkpoint::{self, Checkpoint};
use crate::source::lines::{Found, LineBuffer};
use crate::source::position::{self, FileId, Position, FINGERPRINT_MAX};
use crate::source::prune::{Caps, Spec};
use crate::source::{Next, Read, Record, Source};
use crate::{debug, error, info, warn};

/// Bytes asked for per read.
const CHUNK: usize = 64 * 1024;
/// Rotated files held open at most, waiting to be drained. Each rotation of a 100 MB log
/// while delivery is stalled adds one; past this the newest path is not opened until the
/// backlog shrinks (and a warning says so).
const MAX_HELD_FILES: usize = 64;
/// A busy file never reaches EOF; its path is still re-checked after this many bytes.
const CHECK_EVERY_BYTES: u64 = 8 << 20;
/// Directory entries examined when looking for a rotated checkpointed file.
const MAX_SIBLINGS: usize = 10_000;
/// Rotated files whose name ends like this were compressed (new inodes, not text): never read.
const COMPRESSED: [&str; 7] = [".gz", ".zst", ".xz", ".bz2", ".lz4", ".zip", ".tmp"];
/// File timestamps come from a coarse kernel clock; a window edge is widened by this much.
const CLOCK_SLACK: Duration = Duration::from_secs(1);
/// Repeated conditions (file missing, unreadable) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Where to begin reading when no checkpoint applies (`START_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    End,
    Beginning,
}

/// What to follow and how.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The audit log (AUDIT_LOG_PATH); the name kube-apiserver writes to.
    pub path: PathBuf,
    /// How long the caller sleeps after [`Next::Idle`]; also how often the path's identity is
    /// re-checked while data keeps coming.
    pub poll_interval: Duration,
    /// Longest line handed out; longer lines are skipped (MAX_LINE_BYTES).
    pub max_line_bytes: usize,
    /// Where to start when no usable checkpoint is given and the file exists at start.
    pub start_at: StartAt,
}

/// An open file in the reading order.
struct OpenFile {
    file: File,
    id: FileId,
    /// The name it was opened under, for log messages (it may have been renamed since).
    name: PathBuf,
}

/// What a check of the path found.
enum Check {
    Same,
    /// The path names a new file; it was queued behind the current ones.
    Rotated,
    /// The front file was truncated or rewritten in place; reading restarts at 0.
    Truncated,
}

/// Follows one audit log path. See the module documentation.
pub struct Follower {
    opts: FollowOptions,
    /// Front: being read. Back: the file the path named at the last check.
    sources: VecDeque<OpenFile>,
    /// The front file's unread bytes, at its offsets.
    lines: LineBuffer,
    metrics: Arc<Metrics>,
    last_check: Instant,
    bytes_since_check: u64,
    start_desc: String,
    missing_log: Throttle,
    open_log: Throttle,
    read_log: Throttle,
    held_log: Throttle,
    /// Set while the path was seen missing, so its reappearance is logged once.
    was_missing: bool,
    /// The read before the last one was short (caught up with the writer): new data is only
    /// used after verifying the file was not rewritten in place meanwhile (copytruncate
    /// followed by more writes than the old read offset). A reader that is behind reads full
    /// chunks and skips this check.
    verify_next: bool,
    near_eof: bool,
    /// The file existed at start but could not be opened: apply START_AT when it can be.
    deferred_start: bool,
    /// (dev, ino) of files already opened or present in the directory when the follower
    /// started: never mistaken for a missed rotation. Pruned to what still exists.
    known: HashSet<(u64, u64)>,
    /// Wall-clock time when the path was last seen naming the newest open file.
    last_same: SystemTime,
}

impl Follower {
    /// Lines longer than `max_line_bytes` are streamed through a pruner with `spec` rather
    /// than skipped (see [`LineBuffer::stream_long_lines`]).
    pub fn streaming_long_lines(
        mut self,
        spec: &'static Spec,
        container_kind: &'static str,
        caps: Caps,
    ) -> Follower {
        let lines = std::mem::replace(&mut self.lines, LineBuffer::new(1, 64));
        self.lines = lines.stream_long_lines(spec, container_kind, caps);
        self
    }

    /// Never fails: a missing/unreadable file is waited for (logged once, then throttled).
    /// `resume`: a checkpoint loaded by the caller (may be foreign/stale: decide, log, fall back
    /// to start_at). `metrics`: where the follow counters and gauges go.
    pub fn new(opts: FollowOptions, resume: Option<Checkpoint>, metrics: Arc<Metrics>) -> Follower {
        let mut opts = opts;
        opts.max_line_bytes = opts.max_line_bytes.max(1);
        let mut f = Follower {
            lines: LineBuffer::new(opts.max_line_bytes, CHUNK),
            opts,
            sources: VecDeque::new(),
            metrics,
            last_check: Instant::now(),
            bytes_since_check: 0,
            start_desc: String::new(),
            missing_log: Throttle::new(LOG_EVERY),
            open_log: Throttle::new(LOG_EVERY),
            read_log: Throttle::new(LOG_EVERY),
            held_log: Throttle::new(LOG_EVERY),
            was_missing: false,
            verify_next: false,
            near_eof: false,
            deferred_start: false,
            known: HashSet::new(),
            last_same: SystemTime::now(),
        };
        let resume = resume.filter(|cp| {
            let same = cp.path == f.opts.path;
            if !same {
                warn!(
                    "the checkpoint is for another audit log path; it is ignored",
                    "checkpoint_path" => cp.path.display(),
                    "audit_log_path" => f.opts.path.display(),
                );
            }
            same
        });
        match resume {
            Some(cp) => f.resume_from(&cp),
            None => f.start_fresh(),
        }
        // Whatever is in the directory now is either chosen above or older than the start.
        for (_, _, key) in f.siblings(UNIX_EPOCH) {
            f.known.insert(key);
        }
        f.last_same = SystemTime::now();
        f
    }

    /// For the banner: "from end-of-file" / "from checkpoint offset N" / "from beginning" / "waiting for file".
    pub fn start_description(&self) -> String {
        self.start_desc.clone()
    }

    /// The path being followed (for checkpoints: `Checkpoint.path`).
    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// Bytes allocated for the read buffer (bounded by `max_line_bytes` + 128 KiB).
    pub fn buffer_capacity(&self) -> usize {
        self.lines.capacity()
    }

    /// Files currently open: the one being read plus rotated-away ones waiting to be drained
    /// (or the new file waiting behind a rotated one).
    pub fn open_files(&self) -> usize {
        self.sources.len()
    }

    /// Call this about every `poll_interval` while not polling because delivery is blocked
    /// (backpressure): it notices a rotation and opens the new file at once. The file being
    /// read is already held open; this also holds each later file open, so kube-apiserver
    /// rotating again and deleting backups during a long stall cannot take unread lines away.
    pub fn watch(&mut self) {
        if !self.sources.is_empty() {
            self.last_check = Instant::now();
            self.check_rotation();
        }
    }

    /// Returns the next complete line, a skipped over-long line, or `Idle`.
    fn poll(&mut self) -> Next<'_, Position> {
        loop {
            if self.sources.is_empty() && !self.open_live() {
                return Next::Idle;
            }
            if let Some(found) = self.lines.next_line() {
                return self.found(found);
            }
            match self.fill() {
                Ok(0) => {}
                Ok(n) => {
                    self.bytes_since_check += n as u64;
                    if self.verify_next
                        && self.sources.len() == 1
                        && self.check_truncation().is_some()
                    {
                        // The file was truncated or rewritten while we waited: what was just
                        // read belongs to the new content at the old offset; start over at 0.
                        continue;
                    }
                    if self.bytes_since_check >= CHECK_EVERY_BYTES
                        || self.last_check.elapsed() >= self.opts.poll_interval
                    {
                        // A busy log may never reach EOF: notice a rotation (queue the new
                        // file, switch only after draining) or a truncation anyway.
                        self.check_path();
                    }
                    continue;
                }
                Err(e) => {
                    let name = self.front_name();
                    if let Some(n) = self.read_log.hit("read") {
                        error!(
                            "reading the audit log failed; retrying",
                            "file" => name.display(),
                            "error" => e,
                            "suppressed" => n,
                        );
                    }
                    return Next::Idle;
                }
            }
            // End of the front file.
            if self.sources.len() > 1 {
                // It was rotated away and a read after the rotation was noticed found nothing
                // more: it is complete. Hand out its unterminated last line, then switch.
                self.lines.end_of_input();
                if let Some(found) = self.lines.next_line() {
                    return self.found(found);
                }
                self.finish_rotated();
                continue;
            }
            match self.check_path() {
                Check::Rotated | Check::Truncated => continue,
                Check::Same => return Next::Idle,
            }
        }
    }

    /// A line, record or unreadable line of the front file.
    fn found(&mut self, found: Found) -> Next<'_, Position> {
        let file = self.sources.front().map(|s| s.id).unwrap_or_default();
        let at = |offset| Position { file, offset };
        match found {
            Found::Line(span) => {
                self.metrics.lines_read.fetch_add(1, Ordering::Relaxed);
                self.metrics.read_offset.store(span.end, Ordering::Relaxed);
                Next::Record(Record {
                    bytes: self.lines.bytes(&span),
                    start: at(span.start),
                    end: at(span.end),
                    how: Read::Whole,
                })
            }
            Found::Pruned { start, end } => {
                if end > start {
                    self.long_line_done(start, end);
                }
                Next::Record(Record {
                    bytes: self.lines.pruned(),
                    start: at(start),
                    end: at(end),
                    how: Read::Streamed,
                })
            }
            Found::Unreadable { start, end, why } => {
                if end > start {
                    self.long_line_done(start, end);
                }
                Next::Skipped {
                    start: at(start),
                    end: at(end),
                    why,
                }
            }
        }
    }

    /// An over-long line is complete: counted, and the read offset moves past it.
    fn long_line_done(&mut self, start: u64, end: u64) {
        self.metrics.lines_read.fetch_add(1, Ordering::Relaxed);
        self.metrics.oversized_lines.fetch_add(1, Ordering::Relaxed);
        self.metrics.read_offset.store(end, Ordering::Relaxed);
        debug!(
            "read an over-long line in streaming mode",
            "file" => self.front_name().display(),
            "offset" => start,
            "bytes" => end - start,
            "max_line_bytes" => self.opts.max_line_bytes,
        );
    }

    fn front_name(&self) -> PathBuf {
        self.sources
            .front()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| self.opts.path.clone())
    }

    /// Reads more of the front file; Ok(0) at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let Some(src) = self.sources.front() else {
            return Ok(0);
        };
        let off = self.lines.read_offset();
        let room = self.lines.space();
        let space = room.len();
        let n = loop {
            match src.file.read_at(room, off) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.lines.commit(n);
        self.verify_next = self.near_eof;
        self.near_eof = n < space;
        if n > 0 {
            self.metrics
                .bytes_read
                .fetch_add(n as u64, Ordering::Relaxed);
            self.metrics
                .last_line_unix_ms
                .store(now_unix_ms(), Ordering::Relaxed);
            let reached = off + n as u64;
            if let Some(src) = self.sources.front_mut() {
                if src.id.fingerprint_len < FINGERPRINT_MAX
                    && reached > u64::from(src.id.fingerprint_len)
                {
                    // The file grew past its fingerprinted prefix: cover more of it, so a
                    // checkpoint names it more surely. Positions made before stay valid: a
                    // shorter fingerprint is verified as a prefix.
                    // Only while the old prefix is intact: a file rewritten in place must
                    // keep its old fingerprint so the truncation check notices it.
                    if position::fingerprint_matches(&src.file, &src.id).unwrap_or(false) {
                        if let Ok(id) = position::file_id(&src.file) {
                            if id.dev == src.id.dev && id.ino == src.id.ino {
                                src.id = id;
                            }
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    /// The front file was rotated away and read to its end (its last line already taken from
    /// the line buffer): the next file becomes the front.
    fn finish_rotated(&mut self) {
        let end = self.lines.read_offset();
        if let Some(old) = self.sources.pop_front() {
            info!(
                "finished reading the rotated audit log; continuing with the next file",
                "file" => old.name.display(),
                "bytes" => end,
            );
        }
        self.lines.reset(0);
    }

    /// Looks at the path (rotation) and at the front file (truncation).
    fn check_path(&mut self) -> Check {
        self.last_check = Instant::now();
        self.bytes_since_check = 0;
        if self.sources.len() == 1 {
            if let Some(c) = self.check_truncation() {
                return c;
            }
        }
        self.check_rotation()
    }

    /// Whether the path names a file other than the newest one open; if so, opens it and
    /// queues it behind the others.
    fn check_rotation(&mut self) -> Check {
        let Some(back) = self.sources.back() else {
            return Check::Same;
        };
        let back_id = back.id;
        match fs::metadata(&self.opts.path) {
            Ok(m) if m.dev() == back_id.dev && m.ino() == back_id.ino => {
                self.last_same = SystemTime::now();
                if self.was_missing {
                    self.was_missing = false;
                    self.missing_log.reset();
                }
                Check::Same
            }
            Ok(_) => {
                if self.sources.len() >= MAX_HELD_FILES {
                    if let Some(n) = self.held_log.hit("held") {
                        warn!(
                            "delivery is far behind: many rotated audit logs are still unread; \
                             the newest one is opened once older ones are drained",
                            "open_files" => self.sources.len(),
                            "suppressed" => n,
                        );
                    }
                    return Check::Same;
                }
                let Some((file, id)) = self.open_path() else {
                    return Check::Same;
                };
                if id.dev == back_id.dev && id.ino == back_id.ino {
                    return Check::Same; // renamed back between stat and open
                }
                self.was_missing = false;
                self.missing_log.reset();
                // Rotated more than once since the last look (a stall, a tiny maxsize)? The
                // files in between were renamed aside after the last check: hold them too.
                let since = self
                    .last_same
                    .checked_sub(CLOCK_SLACK)
                    .unwrap_or(UNIX_EPOCH);
                self.queue_missed(since, (id.dev, id.ino));
                self.known.insert((id.dev, id.ino));
                self.last_same = SystemTime::now();
                self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
                info!(
                    "audit log rotated: finishing the old file, then reading the new one from offset 0",
                    "path" => self.opts.path.display(),
                    "old_inode" => back_id.ino,
                    "new_inode" => id.ino,
                );
                self.sources.push_back(OpenFile {
                    file,
                    id,
                    name: self.opts.path.clone(),
                });
                Check::Rotated
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.was_missing = true;
                if let Some(n) = self.missing_log.hit("gone") {
                    info!(
                        "the audit log path no longer exists; still reading the open file and \
                         waiting for a new one to appear",
                        "path" => self.opts.path.display(),
                        "suppressed" => n,
                    );
                }
                Check::Same
            }
            Err(e) => {
                if let Some(n) = self.open_log.hit("stat") {
                    warn!(
                        "cannot check the audit log path for rotation",
                        "path" => self.opts.path.display(),
                        "error" => e,
                        "suppressed" => n,
                    );
                }
                Check::Same
            }
        }
    }

    /// copytruncate (the file became shorter than what was read) or a file rewritten in place
    /// (its first bytes changed): read it again from 0.
    fn check_truncation(&mut self) -> Option<Check> {
        let src = self.sources.front()?;
        let size = src.file.metadata().ok()?.len();
        self.metrics.file_size.store(size, Ordering::Relaxed);
        let read = self.lines.read_offset();
        let shorter = size < read;
        let rewritten = !shorter && !position::fingerprint_matches(&src.file, &src.id).ok()?;
        if !shorter && !rewritten {
            return None;
        }
        self.metrics.truncations.fetch_add(1, Ordering::Relaxed);
        warn!(
            "the audit log was truncated or rewritten in place (copytruncate rotation?); \
             reading it again from offset 0. Lines written between the copy and the truncation \
             may be lost: prefer rename rotation (kube-apiserver's own --audit-log-maxsize)",
            "file" => src.name.display(),
            "size" => size,
            "read_offset" => read,
        );
        let id = position::file_id(&src.file).ok()?;
        if let Some(src) = self.sources.front_mut() {
            src.id = id;
        }
        self.lines.reset(0);
        Some(Check::Truncated)
    }

    /// Opens the path; logs why not (throttled) and returns None on failure.
    fn open_path(&mut self) -> Option<(File, FileId)> {
        let path = &self.opts.path;
        let res = File::open(path).and_then(|f| {
            if f.metadata()?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a directory",
                ));
            }
            let id = position::file_id(&f)?;
            Ok((f, id))
        });
        match res {
            Ok(v) => {
                self.open_log.reset();
                Some(v)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.was_missing = true;
                if let Some(n) = self.missing_log.hit("missing") {
                    info!(
                        "waiting for the audit log to appear (is kube-apiserver started with \
                         --audit-log-path set to this file?)",
                        "AUDIT_LOG_PATH" => path.display(),
                        "suppressed" => n,
                    );
                }
                None
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                if let Some(n) = self.open_log.hit("denied") {
                    error!(permission_message(path), "suppressed" => n);
                }
                None
            }
            Err(e) => {
                if let Some(n) = self.open_log.hit(&e.to_string()) {
                    error!(
                        "cannot open the audit log; set AUDIT_LOG_PATH to the file kube-apiserver \
                         writes (--audit-log-path)",
                        "AUDIT_LOG_PATH" => path.display(),
                        "error" => e,
                        "suppressed" => n,
                    );
                }
                None
            }
        }
    }

    /// No file is open: try the path. A file that appears while the agent runs is new, so it
    /// is read from offset 0.
    fn open_live(&mut self) -> bool {
        self.metrics.log_open.store(0, Ordering::Relaxed);
        let Some((file, id)) = self.open_path() else {
            return false;
        };
        if std::mem::replace(&mut self.deferred_start, false) && !self.was_missing {
            // It existed but was unreadable at start: its old content is old, START_AT applies.
            info!(
                "the audit log is readable now",
                "path" => self.opts.path.display(),
            );
            self.start_at(file, id);
            return true;
        }
        if self.was_missing {
            info!(
                "the audit log appeared; reading it from offset 0",
                "path" => self.opts.path.display(),
            );
            self.was_missing = false;
            self.missing_log.reset();
        }
        self.push_front_source(file, id, 0);
        true
    }

    fn push_front_source(&mut self, file: File, id: FileId, offset: u64) {
        self.known.insert((id.dev, id.ino));
        self.sources.push_back(OpenFile {
            file,
            id,
            name: self.opts.path.clone(),
        });
        if self.sources.len() == 1 {
            self.lines.reset(offset);
        }
        self.metrics.log_open.store(1, Ordering::Relaxed);
    }

    fn start_fresh(&mut self) {
        let Some((file, id)) = self.open_path() else {
            // Missing: whatever appears later is new and read from 0. Present but unreadable:
            // START_AT applies once it can be opened.
            self.deferred_start = !self.was_missing;
            self.start_desc = "waiting for file".into();
            return;
        };
        self.start_at(file, id);
    }

    /// Opens the reading at START_AT.
    fn start_at(&mut self, file: File, id: FileId) {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        match self.opts.start_at {
            StartAt::Beginning => {
                self.start_desc = "from beginning".into();
                self.push_front_source(file, id, 0);
            }
            StartAt::End => {
                self.start_desc = format!("from end-of-file (offset {size})");
                let mut last = [0u8; 1];
                let mid_line = size > 0
                    && matches!(file.read_at(&mut last, size - 1), Ok(1))
                    && last[0] != b'\n';
                self.push_front_source(file, id, size);
                if mid_line {
                    // Starting in the middle of a line being written: its rest is not a line.
                    self.lines.skip_partial_line();
                }
            }
        }
    }

    fn resume_from(&mut self, cp: &Checkpoint) {
        let want = cp.position.file;
        let offset = cp.position.offset;
        if want.ino == 0 {
            // Saved while no file was open (the log did not exist yet): all of it is new.
            info!(
                "the checkpoint was saved while the audit log did not exist; reading it from offset 0",
                "path" => self.opts.path.display(),
            );
            self.start_desc = "from beginning (no file at the last checkpoint)".into();
            if let Some((file, id)) = self.open_path() {
                self.push_front_source(file, id, 0);
            } else {
                self.start_desc = "waiting for file".into();
            }
            return;
        }
        let live = self.open_path();
        if let Some((file, id)) = &live {
            if id.dev == want.dev && id.ino == want.ino {
                if position::fingerprint_matches(file, &want).unwrap_or(false) {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    let Some((file, id)) = live else { return };
                    if offset > size {
                        self.metrics.truncations.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            "the audit log is shorter than the checkpoint offset (truncated while \
                             the agent was down?); reading it from offset 0",
                            "path" => self.opts.path.display(),
                            "size" => size,
                            "checkpoint_offset" => offset,
                        );
                        self.start_desc = "from beginning (file shorter than checkpoint)".into();
                        self.push_front_source(file, id, 0);
                    } else {
                        self.start_desc = format!("from checkpoint offset {offset}");
                        self.push_front_source(file, id, offset);
                    }
                    return;
                }
                warn!(
                    "the audit log has the checkpointed inode but other content (truncated \
                     and rewritten, e.g. copytruncate, or the inode was reused for a new file)",
                    "path" => self.opts.path.display(),
                    "inode" => want.ino,
                );
            }
        }
        // The checkpointed file is not at the path any more: rotated while the agent was down?
        match self.find_rotated(&want, offset) {
            Some((file, id, name, copied)) => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                let from = if offset > size { 0 } else { offset };
                let how = if copied {
                    "the audit log was copied aside and truncated (copytruncate) while the agent \
                     was down: reading the copy from the checkpoint first, then the current file \
                     from offset 0"
                } else {
                    "the audit log was rotated while the agent was down: reading the rotated \
                     file from the checkpoint first, then the current file from offset 0"
                };
                warn!(
                    how,
                    "rotated_file" => name.display(),
                    "offset" => from,
                    "unread_bytes" => size - from,
                    "path" => self.opts.path.display(),
                );
                self.start_desc = format!(
                    "from checkpoint offset {from} of rotated file {}, then the current file from beginning",
                    name.display()
                );
                let rotated_at = file.metadata().and_then(|m| m.modified()).ok();
                let rotated_ino = id.ino;
                self.known.insert((id.dev, id.ino));
                self.sources.push_back(OpenFile { file, id, name });
                self.lines.reset(from);
                self.metrics.log_open.store(1, Ordering::Relaxed);
                self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
                // Rotated more than once while down: files last written after the
                // checkpointed one come between it and the current file.
                if let Some(t) = rotated_at {
                    // Backups older than the checkpointed file were read before it: in the
                    // (mtime, inode) order `siblings` sorts by they come before it, also when
                    // the coarse file clock gives them its mtime (rotations in quick
                    // succession). They are not "missed", whatever the window below says.
                    for (mtime, _, key) in self.siblings(UNIX_EPOCH) {
                        if (mtime, key.1) < (t, rotated_ino) {
                            self.known.insert(key);
                        }
                    }
                    let live_key = live.as_ref().map(|(_, id)| (id.dev, id.ino));
                    self.queue_missed(t, live_key.unwrap_or((0, 0)));
                }
                if let Some((file, id)) = live {
                    self.push_front_source(file, id, 0);
                }
            }
            None => {
                warn!(
                    "the checkpointed audit log file is gone (rotated and deleted while the agent \
                     was down): its lines after the checkpoint offset could not be read (how many \
                     bytes is unknown). Reading the current file from offset 0 so that nothing \
                     written since is lost",
                    "path" => self.opts.path.display(),
                    "checkpoint_inode" => want.ino,
                    "checkpoint_offset" => offset,
                );
                match live {
                    Some((file, id)) => {
                        self.start_desc = "from beginning (checkpointed file is gone)".to_string();
                        self.push_front_source(file, id, 0);
                    }
                    None => self.start_desc = "waiting for file".into(),
                }
            }
        }
    }

    /// Rotated siblings of the path, oldest first: regular files in the same directory whose
    /// name starts like the path's (`audit` for `audit.log`: `audit-2026-...log`,
    /// `audit.log.1`), not compressed, last modified at or after `newer_than`. Also prunes
    /// `known` to what still exists.
    fn siblings(&mut self, newer_than: SystemTime) -> Vec<(SystemTime, PathBuf, (u64, u64))> {
        let dir = match self.opts.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Some(own) = self
            .opts
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return Vec::new();
        };
        let stem = own.split('.').next().unwrap_or(&own).to_string();
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut present = HashSet::new();
        let mut out = Vec::new();
        for entry in entries.take(MAX_SIBLINGS).flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == own
                || !name.starts_with(&stem)
                || COMPRESSED.iter().any(|c| name.ends_with(c))
            {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let key = (meta.dev(), meta.ino());
            present.insert(key);
            let Ok(mtime) = meta.modified() else { continue };
            if mtime >= newer_than {
                out.push((mtime, entry.path(), key));
            }
        }
        self.known.retain(|k| {
            present.contains(k) || self.sources.iter().any(|s| (s.id.dev, s.id.ino) == *k)
        });
        // Oldest first. File times come from a coarse clock: files rotated within one tick
        // tie, and then creation order decides — inode numbers, which filesystems hand out
        // increasing in practice (names do not: `audit.log.2` is older than `audit.log.1`).
        out.sort_by_key(|(mtime, _, key)| (*mtime, key.1));
        out
    }

    /// Opens and queues (from offset 0) the rotated siblings modified since `since` that were
    /// never read: files that were rotated aside between two looks at the path.
    fn queue_missed(&mut self, since: SystemTime, except: (u64, u64)) {
        let mut queued = Vec::new();
        for (_, name, key) in self.siblings(since) {
            if key == except
                || self.known.contains(&key)
                || self.sources.iter().any(|s| (s.id.dev, s.id.ino) == key)
                || self.sources.len() >= MAX_HELD_FILES
            {
                continue;
            }
            let Ok(file) = File::open(&name) else {
                continue;
            };
            let Ok(id) = position::file_id(&file) else {
                continue;
            };
            if (id.dev, id.ino) != key {
                continue; // replaced between listing and opening
            }
            let mut head = [0u8; checkpoint::HEADER.len()];
            if file.read_at(&mut head, 0).ok() == Some(head.len())
                && head == *checkpoint::HEADER.as_bytes()
            {
                continue; // our own checkpoint, if CHECKPOINT_PATH is beside the log
            }
            self.metrics.rotations.fetch_add(1, Ordering::Relaxed);
            self.known.insert(key);
            queued.push(name.display().to_string());
            self.sources.push_back(OpenFile { file, id, name });
        }
        if let Some(first) = queued.first() {
            // One line per look, however many files: no log storm when rotations race.
            warn!(
                "the audit log was rotated more than once between two looks at it (delivery \
                 stalled, or a very small --audit-log-maxsize); also reading the rotated files \
                 in between, oldest first",
                "files" => queued.len(),
                "first" => first,
                "last" => queued.last().unwrap_or(first),
            );
        }
    }

    /// Looks for the checkpointed file among the path's siblings named like rotated logs
    /// (e.g. `audit-2026-...log`, `audit.log.1`; never compressed ones): same device and
    /// inode, fingerprint verified.
    ///
    /// Failing that, a copy of it (copytruncate while the agent was down: the checkpointed
    /// inode now holds other content, the lines after the checkpoint are only in the copy): a
    /// sibling named like a rotated file, with the checkpointed file's first bytes and at least
    /// `offset` bytes; the oldest such copy. The flag says the file found is a copy.
    fn find_rotated(&self, want: &FileId, offset: u64) -> Option<(File, FileId, PathBuf, bool)> {
        let dir = match self.opts.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let own = self.opts.path.file_name()?.to_string_lossy().into_owned();
        let stem = own.split('.').next().unwrap_or(&own).to_string();
        let mut copy: Option<(SystemTime, u64, PathBuf)> = None;
        for entry in fs::read_dir(dir).ok()?.take(MAX_SIBLINGS).flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            // Only files named like rotated audit logs: with an empty fingerprint (the file
            // was empty at the checkpoint) the inode alone cannot tell the rotated file from
            // any other file that reused it since (a compressed backup, an unrelated file).
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname == own
                || !fname.starts_with(&stem)
                || COMPRESSED.iter().any(|c| fname.ends_with(c))
            {
                continue;
            }
            let name = entry.path();
            if meta.dev() == want.dev && meta.ino() == want.ino {
                let Ok(file) = File::open(&name) else {
                    continue;
                };
                if position::fingerprint_matches(&file, want).unwrap_or(false) {
                    let id = position::file_id(&file).ok()?;
                    return Some((file, id, name, false));
                }
                continue;
            }
            // A copy is recognised by its first bytes only: never by an empty fingerprint.
            if want.fingerprint_len == 0
                || meta.len() < offset
                || meta.len() < u64::from(want.fingerprint_len)
            {
                continue;
            }
            let key = (meta.modified().unwrap_or(UNIX_EPOCH), meta.ino());
            if copy.as_ref().is_some_and(|(t, ino, _)| (*t, *ino) <= key) {
                continue;
            }
            let Ok(file) = File::open(&name) else {
                continue;
            };
            if position::fingerprint_matches(&file, want).unwrap_or(false) {
                copy = Some((key.0, key.1, name));
            }
        }
        let (_, _, name) = copy?;
        let file = File::open(&name).ok()?;
        let id = position::file_id(&file).ok()?;
        Some((file, id, name, true))
    }
}

impl Source for Follower {
    type Pos = Position;

    fn next(&mut self) -> Next<'_, Position> {
        self.poll()
    }

    /// The position of the next byte not yet handed out: after the last line returned, or
    /// the start of the next file once a rotated one is finished (during an over-long line:
    /// its start). The caller checkpoints this when no event is pending, rather than the end
    /// of the last line, so a checkpoint moves to the new file as soon as the rotated one is
    /// done.
    fn position(&self) -> Position {
        Position {
            file: self.sources.front().map(|s| s.id).unwrap_or_default(),
            offset: self.lines.position(),
        }
    }

    /// While delivery is blocked (backpressure): notices a rotation and opens the new file at
    /// once. The file being read is already held open; this also holds each later file open,
    /// so kube-apiserver rotating again and deleting backups during a long stall cannot take
    /// unread lines away.
    fn hold(&mut self) {
        self.watch();
    }

    fn describe(&self, place: &Position) -> String {
        let name = self
            .sources
            .iter()
            .find(|s| s.id.same_file(&place.file))
            .map_or_else(|| self.opts.path.clone(), |s| s.name.clone());
        format!("{} offset {}", name.display(), place.offset)
    }
}

/// The one message for an unreadable audit log, with the fix.
fn permission_message(path: &Path) -> String {
    let uid = fs::metadata("/proc/self")
        .map(|m| m.uid().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let dir = path
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    format!(
        "permission denied reading AUDIT_LOG_PATH={}: the agent runs as uid {uid}; give it a \
         group that can read the log (chgrp healert-audit {p}; chmod g+r {p}; chmod g+x {dir}; \
         in the DaemonSet add that gid to securityContext.supplementalGroups)",
        path.display(),
        p = path.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_message_says_how_to_fix() {
        let m = permission_message(Path::new("/var/log/kubernetes/audit/audit.log"));
        assert!(m.starts_with(
            "permission denied reading AUDIT_LOG_PATH=/var/log/kubernetes/audit/audit.log: the agent runs as uid "
        ));
        assert!(m.contains("chgrp healert-audit /var/log/kubernetes/audit/audit.log"));
        assert!(m.contains("chmod g+x /var/log/kubernetes/audit;"));
        assert!(m.contains("securityContext.supplementalGroups"));
    }
}
