//! The follower and the checkpoint store against real files in temporary directories:
//! rotations with a concurrent writer, copytruncate, partial lines, missing and recreated
//! files, resuming from checkpoints (same file, rotated while down, rotated file gone, reused
//! inode), over-long lines in bounded memory, and corrupt checkpoint files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use healert_agent::operate::metrics::Metrics;
use healert_agent::source::checkpoint::{self, Checkpoint, CheckpointErrorKind};
use healert_agent::source::follow::{FollowOptions, Follower, StartAt};
use healert_agent::source::position::{self, Position};
use healert_agent::source::{Next, Source};

use crate::support::{append, TempDir};

/// Hang guard for every wait below (never a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);

fn opts(path: &Path, start_at: StartAt) -> FollowOptions {
    FollowOptions {
        path: path.to_path_buf(),
        poll_interval: POLL,
        max_line_bytes: 16 << 20,
        start_at,
    }
}

/// A follower with counters of its own.
fn follower(o: FollowOptions, resume: Option<Checkpoint>) -> Follower {
    Follower::new(o, resume, Arc::new(Metrics::new()))
}

fn lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{prefix}-{i}\n")).collect()
}

fn expected(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// What one reader saw: the lines, and the position after the last one.
#[derive(Default)]
struct Seen {
    lines: Vec<String>,
    last_end: Option<Position>,
    skipped: Vec<(Position, Position)>,
}

/// Polls until `n` lines were read (or the hang guard fires), checking that within one file
/// each line starts where the previous one ended.
fn read_n(f: &mut Follower, seen: &mut Seen, n: usize) {
    let deadline = Instant::now() + HANG_GUARD;
    while seen.lines.len() < n {
        assert!(
            Instant::now() < deadline,
            "hang guard: got {} of {n} lines: {:?}",
            seen.lines.len(),
            &seen.lines[seen.lines.len().saturating_sub(3)..]
        );
        match f.next() {
            Next::Record(l) => {
                if let Some(prev) = seen.last_end {
                    let same_inode =
                        prev.file.dev == l.start.file.dev && prev.file.ino == l.start.file.ino;
                    // Truncated/rewritten in place: same inode, new first bytes, from 0.
                    let rewritten = prev.file.fingerprint != l.start.file.fingerprint;
                    if same_inode && !(rewritten && l.start.offset == 0) {
                        assert_eq!(prev.offset, l.start.offset, "gap or overlap before {l:?}");
                    } else {
                        assert_eq!(l.start.offset, 0, "a new file starts at 0: {l:?}");
                    }
                }
                assert!(l.end.offset > l.start.offset);
                seen.last_end = Some(l.end);
                seen.lines
                    .push(String::from_utf8(l.bytes.to_vec()).unwrap());
            }
            Next::Skipped { start, end, .. } => {
                seen.last_end = Some(end);
                seen.skipped.push((start, end));
            }
            Next::End => unreachable!("a followed file never ends"),
            Next::Idle => std::thread::sleep(POLL),
        }
    }
}

/// Polls `times` times and asserts that nothing is returned (no line arrives).
fn assert_idle(f: &mut Follower, times: usize) {
    for _ in 0..times {
        match f.next() {
            Next::End => unreachable!("a followed file never ends"),
            Next::Idle => std::thread::sleep(Duration::from_millis(1)),
            Next::Record(l) => panic!("unexpected line {:?}", String::from_utf8_lossy(l.bytes)),
            Next::Skipped { start, end, .. } => panic!("unexpected skip {start:?}..{end:?}"),
        }
    }
}

fn checkpoint_at(f: &Follower, pos: Position) -> Checkpoint {
    Checkpoint {
        path: f.path().to_path_buf(),
        position: pos,
        skip_events: 0,
    }
}

#[test]
fn rename_rotation_with_concurrent_writer_loses_and_repeats_nothing() {
    const N: usize = 3000;
    const K: usize = 400;
    let dir = TempDir::new("follow", "rename");
    let path = dir.join("audit.log");
    File::create(&path).unwrap();
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    assert_eq!(f.start_description(), "from beginning");

    let wpath = path.clone();
    let wdir = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut out = OpenOptions::new().append(true).open(&wpath).unwrap();
        let mut i = 0;
        let mut rotation = 0;
        while i < N {
            writeln!(out, "line-{i}").unwrap();
            i += 1;
            if i % K == 0 && i < N {
                // kube-apiserver style: rename, (a late write to the old handle), create.
                rotation += 1;
                fs::rename(&wpath, wdir.join(format!("audit-{rotation}.log"))).unwrap();
                if i < N {
                    writeln!(out, "line-{i}").unwrap();
                    i += 1;
                }
                out = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&wpath)
                    .unwrap();
            }
            if i % 37 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rotation
    });
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, N);
    let rotations = writer.join().unwrap();
    // One rotation every K lines: at K, 2K, ... below N.
    assert_eq!(rotations, (N - 1) / K);
    assert_eq!(seen.lines, expected("line", 0..N));
    assert!(seen.skipped.is_empty());
    assert_idle(&mut f, 5);
    assert_eq!(f.open_files(), 1, "rotated files are closed once drained");
}

#[test]
fn unterminated_last_line_of_a_rotated_file_is_delivered_once_drained() {
    let dir = TempDir::new("follow", "unterminated");
    let path = dir.join("audit.log");
    append(&path, "a\nb\npartial");
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 2);
    assert_idle(&mut f, 3); // "partial" waits for its newline
    fs::rename(&path, dir.join("audit.log.1")).unwrap();
    append(&path, "c\n");
    read_n(&mut f, &mut seen, 4);
    assert_eq!(seen.lines, ["a", "b", "partial", "c"]);
}

#[test]
fn copytruncate_restarts_at_zero() {
    let dir = TempDir::new("follow", "copytruncate");
    let path = dir.join("audit.log");
    append(&path, &lines("old", 0..100));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 100);
    assert_idle(&mut f, 2);

    // logrotate copytruncate: copy, then truncate in place; the writer appends on.
    fs::copy(&path, dir.join("audit.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, &lines("new", 0..30));
    read_n(&mut f, &mut seen, 130);

    // Truncated and rewritten past the old read offset before the follower looked: the
    // changed first bytes (fingerprint) still reveal it.
    fs::write(&path, lines("newer", 0..400)).unwrap();
    read_n(&mut f, &mut seen, 530);

    let mut want = expected("old", 0..100);
    want.extend(expected("new", 0..30));
    want.extend(expected("newer", 0..400));
    assert_eq!(seen.lines, want);
}

#[test]
fn a_line_written_in_three_pieces_is_read_once_complete() {
    let dir = TempDir::new("follow", "pieces");
    let path = dir.join("audit.log");
    File::create(&path).unwrap();
    let mut f = follower(opts(&path, StartAt::End), None);
    assert_eq!(f.start_description(), "from end-of-file (offset 0)");
    append(&path, "{\"verb\":");
    assert_idle(&mut f, 3);
    append(&path, "\"create\",\"objectRef\"");
    assert_idle(&mut f, 3);
    append(&path, ":{}}\r\nnext");
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 1);
    assert_eq!(seen.lines, ["{\"verb\":\"create\",\"objectRef\":{}}"]);
    assert_eq!(seen.last_end.unwrap().offset, 34);
    assert_idle(&mut f, 2);
}

#[test]
fn start_at_end_skips_the_rest_of_a_line_being_written() {
    let dir = TempDir::new("follow", "midline");
    let path = dir.join("audit.log");
    append(&path, "a\nb\nhalf-wri");
    let mut f = follower(opts(&path, StartAt::End), None);
    assert_eq!(f.start_description(), "from end-of-file (offset 12)");
    append(&path, "tten\nc\n");
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 1);
    assert_eq!(seen.lines, ["c"]);
}

#[test]
fn missing_at_start_then_deleted_and_recreated() {
    let dir = TempDir::new("follow", "missing");
    let path = dir.join("audit.log");
    // START_AT=end does not apply to a file that appears later: all of it is new.
    let mut f = follower(opts(&path, StartAt::End), None);
    assert_eq!(f.start_description(), "waiting for file");
    assert_idle(&mut f, 5);
    assert_eq!(f.open_files(), 0);
    append(&path, &lines("first", 0..3));
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 3);

    // Deleted and not (yet) recreated: keep waiting on the open handle.
    fs::remove_file(&path).unwrap();
    assert_idle(&mut f, 20);
    append(&path, &lines("second", 0..2));
    read_n(&mut f, &mut seen, 5);
    assert_idle(&mut f, 3);

    let mut want = expected("first", 0..3);
    want.extend(expected("second", 0..2));
    assert_eq!(seen.lines, want);
}

#[test]
fn resume_from_checkpoint_on_the_same_file() {
    let dir = TempDir::new("follow", "resume");
    let path = dir.join("audit.log");
    append(&path, &lines("l", 0..10));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 5);
    let cp = checkpoint_at(&f, seen.last_end.unwrap());
    let cp_file = dir.join("checkpoint");
    checkpoint::save(&cp_file, &cp).unwrap();
    drop(f);

    append(&path, &lines("l", 10..13)); // written while the agent is down
    let loaded = checkpoint::load(&cp_file).unwrap().unwrap();
    assert_eq!(loaded, cp);
    // The checkpoint wins over START_AT=end.
    let mut f = follower(opts(&path, StartAt::End), Some(loaded));
    assert_eq!(
        f.start_description(),
        format!("from checkpoint offset {}", cp.position.offset)
    );
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 8);
    assert_eq!(again.lines, expected("l", 5..13));
    assert_idle(&mut f, 3);
}

#[test]
fn resume_after_rotation_while_down_drains_the_rotated_file_first() {
    let dir = TempDir::new("follow", "rotated-down");
    let path = dir.join("audit.log");
    append(&path, &lines("l", 0..10));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 4);
    let cp = checkpoint_at(&f, seen.last_end.unwrap());
    drop(f);

    // While down: more lines, rotation (with a compressed older backup around), new lines.
    append(&path, &lines("l", 10..12));
    fs::write(
        dir.join("audit-2026-01-01T00-00-00.000.log.gz"),
        b"\x1f\x8b",
    )
    .unwrap();
    fs::rename(&path, dir.join("audit-2026-11-25T23-00-00.000.log")).unwrap();
    append(&path, &lines("m", 0..3));

    let mut f = follower(opts(&path, StartAt::End), Some(cp));
    assert!(
        f.start_description().contains("rotated file")
            && f.start_description()
                .contains("audit-2026-11-25T23-00-00.000.log"),
        "{}",
        f.start_description()
    );
    assert_eq!(f.open_files(), 2);
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 11);
    let mut want = expected("l", 4..12);
    want.extend(expected("m", 0..3));
    assert_eq!(again.lines, want);
    assert_idle(&mut f, 3);
    assert_eq!(f.open_files(), 1);
}

#[test]
fn resume_when_the_rotated_file_is_gone_reads_the_live_file_from_zero() {
    let dir = TempDir::new("follow", "rotated-gone");
    let path = dir.join("audit.log");
    append(&path, &lines("l", 0..10));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 4);
    let cp = checkpoint_at(&f, seen.last_end.unwrap());
    drop(f);
    fs::rename(&path, dir.join("audit.log.1")).unwrap();
    fs::remove_file(dir.join("audit.log.1")).unwrap();
    append(&path, &lines("m", 0..3));

    let mut f = follower(opts(&path, StartAt::End), Some(cp));
    assert_eq!(
        f.start_description(),
        "from beginning (checkpointed file is gone)"
    );
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 3);
    assert_eq!(again.lines, expected("m", 0..3));
}

#[test]
fn reused_inode_is_recognised_by_its_fingerprint() {
    let dir = TempDir::new("follow", "reused");
    let path = dir.join("audit.log");
    append(&path, &lines("old", 0..50));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 40);
    let cp = checkpoint_at(&f, seen.last_end.unwrap());
    drop(f);
    // Same inode, new content (what a deleted file's reused inode looks like to the agent).
    fs::write(&path, lines("fresh", 0..60)).unwrap();
    let f2 = File::open(&path).unwrap();
    let id = position::file_id(&f2).unwrap();
    assert_eq!(
        (id.dev, id.ino),
        (cp.position.file.dev, cp.position.file.ino)
    );
    let mut f = follower(opts(&path, StartAt::End), Some(cp));
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 60);
    assert_eq!(again.lines, expected("fresh", 0..60));
}

#[test]
fn checkpoint_for_another_path_or_past_the_end_falls_back() {
    let dir = TempDir::new("follow", "foreign-cp");
    let path = dir.join("audit.log");
    append(&path, &lines("l", 0..5));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 5);
    let good = checkpoint_at(&f, seen.last_end.unwrap());
    drop(f);

    let mut other = good.clone();
    other.path = dir.join("other.log");
    let f = follower(opts(&path, StartAt::End), Some(other));
    assert_eq!(f.start_description(), "from end-of-file (offset 20)");

    let mut past = good.clone();
    past.position.offset = 10_000;
    let mut f = follower(opts(&path, StartAt::End), Some(past));
    assert_eq!(
        f.start_description(),
        "from beginning (file shorter than checkpoint)"
    );
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 5);
    assert_eq!(again.lines, expected("l", 0..5));
}

#[test]
fn a_64_mib_line_is_skipped_in_bounded_memory() {
    let dir = TempDir::new("follow", "long");
    let path = dir.join("audit.log");
    {
        let mut out = File::create(&path).unwrap();
        out.write_all(b"before\n").unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            out.write_all(&block).unwrap();
        }
        out.write_all(b"\nafter\n").unwrap();
    }
    let max = 16 << 20;
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut got = Vec::new();
    let mut peak = 0;
    let deadline = Instant::now() + HANG_GUARD;
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "hang guard: {got:?}");
        peak = peak.max(f.buffer_capacity());
        match f.next() {
            Next::Record(l) => got.push(format!(
                "line {} {}..{}",
                String::from_utf8_lossy(l.bytes),
                l.start.offset,
                l.end.offset
            )),
            Next::Skipped { start, end, .. } => {
                got.push(format!("skipped {}..{}", start.offset, end.offset))
            }
            Next::End => unreachable!("a followed file never ends"),
            Next::Idle => std::thread::sleep(POLL),
        }
    }
    peak = peak.max(f.buffer_capacity());
    let long_end = 7 + (64 << 20) + 1;
    assert_eq!(
        got,
        [
            "line before 0..7".to_string(),
            format!("skipped 7..{long_end}"),
            format!("line after {long_end}..{}", long_end + 6),
        ]
    );
    assert!(peak <= max + (256 << 10), "buffer peaked at {peak} bytes");
    assert!(
        f.buffer_capacity() <= 256 << 10,
        "buffer not shrunk: {}",
        f.buffer_capacity()
    );
}

#[test]
fn backpressure_holds_a_rotated_and_deleted_file_until_drained() {
    let dir = TempDir::new("follow", "backpressure");
    let path = dir.join("audit.log");
    append(&path, &lines("l", 0..1000));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 10);
    // Delivery is stalled (no polls) while the log rotates and the backup is deleted.
    append(&path, &lines("l", 1000..1200));
    fs::rename(&path, dir.join("audit.log.1")).unwrap();
    append(&path, &lines("m", 0..100));
    fs::remove_file(dir.join("audit.log.1")).unwrap();
    read_n(&mut f, &mut seen, 1300);
    let mut want = expected("l", 0..1200);
    want.extend(expected("m", 0..100));
    assert_eq!(seen.lines, want);
}

#[test]
fn corrupt_checkpoint_files_are_reported_not_fatal() {
    let dir = TempDir::new("follow", "corrupt-cp");
    let p = dir.join("checkpoint");
    assert_eq!(
        checkpoint::load(&p).unwrap(),
        None,
        "absent: no checkpoint yet"
    );
    let good = checkpoint::encode(&Checkpoint {
        path: dir.join("audit.log"),
        position: Position::default(),
        skip_events: 1,
    });
    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] = if flipped[at] == b'1' { b'2' } else { b'1' };
    type IsKind = fn(&CheckpointErrorKind) -> bool;
    let cases: Vec<(Vec<u8>, IsKind)> = vec![
        (good[..good.len() / 2].to_vec(), |k| {
            matches!(k, CheckpointErrorKind::Truncated)
        }),
        (flipped, |k| {
            matches!(k, CheckpointErrorKind::BadChecksum { .. })
        }),
        (b"offset: 42\n".to_vec(), |k| {
            matches!(k, CheckpointErrorKind::Foreign { .. })
        }),
        (vec![b'\n'; 10 << 20], |k| {
            matches!(k, CheckpointErrorKind::TooLarge { .. })
        }),
        (Vec::new(), |k| matches!(k, CheckpointErrorKind::Empty)),
    ];
    for (bytes, is) in cases {
        fs::write(&p, &bytes).unwrap();
        let e = checkpoint::load(&p).unwrap_err();
        assert!(is(&e.kind), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("is ignored"),
            "{msg}"
        );
    }
    fs::write(&p, &good).unwrap();
    assert_eq!(checkpoint::load(&p).unwrap().unwrap().skip_events, 1);
}

#[test]
fn watch_during_a_stall_holds_every_rotated_file() {
    let dir = TempDir::new("follow", "watch");
    let path = dir.join("audit.log");
    append(&path, &lines("a", 0..100));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 10);
    // Delivery stalled: the caller only calls watch() while kube-apiserver rotates twice and
    // its retention deletes both backups.
    fs::rename(&path, dir.join("audit-1.log")).unwrap();
    append(&path, &lines("b", 0..50));
    f.watch();
    fs::rename(&path, dir.join("audit-2.log")).unwrap();
    append(&path, &lines("c", 0..20));
    f.watch();
    f.watch();
    assert_eq!(f.open_files(), 3);
    fs::remove_file(dir.join("audit-1.log")).unwrap();
    fs::remove_file(dir.join("audit-2.log")).unwrap();
    read_n(&mut f, &mut seen, 170);
    let mut want = expected("a", 0..100);
    want.extend(expected("b", 0..50));
    want.extend(expected("c", 0..20));
    assert_eq!(seen.lines, want);
    assert_idle(&mut f, 2);
    assert_eq!(f.open_files(), 1);
}

#[test]
fn position_moves_to_the_new_file_once_the_rotated_one_is_done() {
    let dir = TempDir::new("follow", "position");
    let path = dir.join("audit.log");
    append(&path, &lines("a", 0..3));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 3);
    assert_eq!(f.position(), seen.last_end.unwrap());
    fs::rename(&path, dir.join("audit.log.1")).unwrap();
    File::create(&path).unwrap();
    assert_idle(&mut f, 3);
    let new = position::file_id(&File::open(&path).unwrap()).unwrap();
    let p = f.position();
    assert_eq!((p.file.ino, p.offset), (new.ino, 0));
    // A checkpoint taken there, after the rotated file is deleted, loses nothing.
    let cp = checkpoint_at(&f, p);
    drop(f);
    fs::remove_file(dir.join("audit.log.1")).unwrap();
    append(&path, &lines("b", 0..2));
    let mut f = follower(opts(&path, StartAt::End), Some(cp));
    assert_eq!(f.start_description(), "from checkpoint offset 0");
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 2);
    assert_eq!(again.lines, expected("b", 0..2));
}

#[test]
fn max_line_bytes_boundary_and_long_lines_across_reads_and_rotation() {
    let dir = TempDir::new("follow", "boundary");
    let path = dir.join("audit.log");
    let long = "y".repeat(300_000);
    append(
        &path,
        &format!("0123456789\n0123456789a\n{long}\nok\n{}", "z".repeat(50)),
    );
    let mut o = opts(&path, StartAt::Beginning);
    o.max_line_bytes = 10;
    let mut f = follower(o, None);
    let mut got = Vec::new();
    let deadline = Instant::now() + HANG_GUARD;
    let mut renamed = false;
    while got.len() < 6 {
        assert!(Instant::now() < deadline, "hang guard: {got:?}");
        match f.next() {
            Next::Record(l) => got.push(format!(
                "{} {}..{}",
                String::from_utf8_lossy(l.bytes),
                l.start.offset,
                l.end.offset
            )),
            Next::Skipped { start, end, .. } => {
                got.push(format!("skip {}..{}", start.offset, end.offset))
            }
            Next::End => unreachable!("a followed file never ends"),
            Next::Idle if !renamed => {
                renamed = true;
                fs::rename(&path, dir.join("audit.log.1")).unwrap();
                append(&path, "x\n");
            }
            Next::Idle => std::thread::sleep(POLL),
        }
        assert!(f.buffer_capacity() <= 256 << 10);
    }
    let a = 11 + 12;
    let b = a + 300_001;
    assert_eq!(
        got,
        [
            "0123456789 0..11".to_string(),
            "skip 11..23".to_string(),
            format!("skip {a}..{b}"),
            format!("ok {b}..{}", b + 3),
            format!("skip {}..{}", b + 3, b + 53),
            "x 0..2".to_string(),
        ]
    );
}

#[test]
fn real_audit_samples_are_split_exactly() {
    let dir = crate::support::audit_samples();
    let mut files = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.ends_with(".ndjson") || name.ends_with(".json")) {
            continue;
        }
        files += 1;
        let content = fs::read(&path).unwrap();
        let want: Vec<&[u8]> = match content.iter().rposition(|&b| b == b'\n') {
            Some(last) => content[..last].split(|&b| b == b'\n').collect(),
            None => Vec::new(), // one unterminated line: not complete while the file is live
        };
        let mut f = follower(opts(&path, StartAt::Beginning), None);
        let mut n = 0;
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            assert!(Instant::now() < deadline, "hang guard in {name}");
            match f.next() {
                Next::Record(l) => {
                    assert!(n < want.len(), "{name}: extra line");
                    assert!(l.bytes == want[n], "{name}: line {} differs", n + 1);
                    n += 1;
                }
                Next::Skipped { start, .. } => panic!("{name}: skipped at {}", start.offset),
                Next::End => unreachable!("a followed file never ends"),
                Next::Idle => break,
            }
        }
        assert_eq!(n, want.len(), "{name}");
        if name.ends_with(".ndjson") {
            assert!(n > 0, "{name}");
        }
    }
    assert!(files >= 5);
}

/// Throughput of the follower over a large file of real audit lines (prints MB/s; asserts only
/// the line count). Run: cargo test --release --test it -- --ignored follower_throughput --nocapture
#[test]
#[ignore = "benchmark: writes ~256 MiB; run by hand with --release"]
fn follower_throughput() {
    let sample = fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/audit-samples/openshift-cluster-logging-operator__ocp4.12-apiaudit-audit_in.ndjson"
    ))
    .unwrap();
    let dir = TempDir::new("follow", "bench");
    let path = dir.join("audit.log");
    let per_copy = sample.iter().filter(|&&b| b == b'\n').count();
    let copies = (256 << 20) / sample.len();
    {
        let mut out = std::io::BufWriter::new(File::create(&path).unwrap());
        for _ in 0..copies {
            out.write_all(&sample).unwrap();
        }
    }
    let total = (copies * sample.len()) as f64;
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let t0 = Instant::now();
    let mut n = 0usize;
    let mut bytes = 0usize;
    while let Next::Record(l) = f.next() {
        n += 1;
        bytes += l.bytes.len();
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "follower: {n} lines, {:.0} MiB in {dt:.3}s = {:.0} MiB/s ({:.0} lines/s), buffer {} KiB",
        total / 1048576.0,
        total / 1048576.0 / dt,
        n as f64 / dt,
        f.buffer_capacity() >> 10
    );
    assert!(bytes > 0);
    assert_eq!(n, per_copy * copies);
}

/// Polls until Idle, collecting lines (bounded).
fn drain_now(f: &mut Follower, out: &mut Vec<String>) {
    for _ in 0..100_000 {
        match f.next() {
            Next::Record(l) => out.push(String::from_utf8(l.bytes.to_vec()).unwrap()),
            Next::Skipped { start, .. } => panic!("unexpected skip at {}", start.offset),
            Next::End => unreachable!("a followed file never ends"),
            Next::Idle => return,
        }
    }
    panic!("follower never became idle");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Lines of random lengths written in random pieces, with rename rotations at random line
    /// boundaries, polled between pieces: every line arrives once, in order.
    #[test]
    fn random_pieces_and_rotations_deliver_every_line_once(
        spec in proptest::collection::vec((0usize..3000, proptest::bool::weighted(0.15)), 1..60),
        piece in 1usize..7000,
    ) {
        let dir = TempDir::new("follow", "prop");
        let path = dir.join("audit.log");
        File::create(&path).unwrap();
        let mut f = follower(opts(&path, StartAt::Beginning), None);
        let mut got = Vec::new();
        let mut want = Vec::new();
        let mut out = OpenOptions::new().append(true).open(&path).unwrap();
        let mut rotations = 0;
        for (i, (len, rotate)) in spec.iter().enumerate() {
            let line = format!("{i}:{}", "q".repeat(*len));
            let bytes = format!("{line}\n").into_bytes();
            for p in bytes.chunks(piece) {
                out.write_all(p).unwrap();
                drain_now(&mut f, &mut got);
            }
            want.push(line);
            if *rotate {
                rotations += 1;
                fs::rename(&path, dir.join(&format!("audit-{rotations}.log"))).unwrap();
                out = File::create(&path).unwrap();
                drain_now(&mut f, &mut got);
            }
        }
        drain_now(&mut f, &mut got);
        proptest::prop_assert_eq!(got, want);
    }
}

#[test]
fn a_directory_at_the_path_is_waited_out() {
    let dir = TempDir::new("follow", "isdir");
    let path = dir.join("audit.log");
    fs::create_dir(&path).unwrap();
    let mut f = follower(opts(&path, StartAt::End), None);
    assert_eq!(f.start_description(), "waiting for file");
    assert_idle(&mut f, 3);
    fs::remove_dir(&path).unwrap();
    assert_idle(&mut f, 2); // now missing: what appears next is new
    append(&path, &lines("l", 0..3));
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 3);
    assert_eq!(seen.lines, expected("l", 0..3));
}

#[test]
fn two_rotations_between_polls_are_both_read() {
    let dir = TempDir::new("follow", "double");
    let path = dir.join("audit.log");
    append(&path, &lines("a", 0..50));
    // Older backups and our own checkpoint beside the log are never picked up.
    append(&dir.join("audit.log.9"), &lines("old", 0..5));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 10);
    fs::rename(&path, dir.join("audit.log.1")).unwrap();
    append(&path, &lines("b", 0..30));
    fs::rename(&path, dir.join("audit.log.2")).unwrap();
    append(&path, &lines("c", 0..20));
    checkpoint::save(
        &dir.join("audit.checkpoint"),
        &checkpoint_at(&f, f.position()),
    )
    .unwrap();
    append(&dir.join("audit.log.2.gz"), "\u{1f}\u{8b}compressed\n");
    read_n(&mut f, &mut seen, 100);
    assert_idle(&mut f, 3);
    let mut want = expected("a", 0..50);
    want.extend(expected("b", 0..30));
    want.extend(expected("c", 0..20));
    assert_eq!(seen.lines, want);
}

#[test]
fn two_rotations_while_down_are_both_read_after_the_checkpoint() {
    let dir = TempDir::new("follow", "double-down");
    let path = dir.join("audit.log");
    append(&dir.join("audit-0.log"), &lines("older", 0..5));
    std::thread::sleep(Duration::from_millis(20)); // distinct mtimes on coarse clocks
    append(&path, &lines("a", 0..50));
    let mut f = follower(opts(&path, StartAt::Beginning), None);
    let mut seen = Seen::default();
    read_n(&mut f, &mut seen, 10);
    let cp = checkpoint_at(&f, f.position());
    drop(f);
    fs::rename(&path, dir.join("audit-1.log")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    append(&path, &lines("b", 0..30));
    fs::rename(&path, dir.join("audit-2.log")).unwrap();
    append(&path, &lines("c", 0..20));
    let mut f = follower(opts(&path, StartAt::End), Some(cp));
    assert_eq!(f.open_files(), 3);
    let mut again = Seen::default();
    read_n(&mut f, &mut again, 90);
    assert_idle(&mut f, 3);
    let mut want = expected("a", 10..50);
    want.extend(expected("b", 0..30));
    want.extend(expected("c", 0..20));
    assert_eq!(again.lines, want);
}
