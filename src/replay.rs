//! `healert-agent replay`: evaluate a whole audit log offline with the agent's own engine
//! (issue 3); `--send` delivers through the agent's own delivery path (issue 5).
//!
//! [`scan`] streams the input (NDJSON, or one `EventList` document, possibly pretty-printed)
//! through a [`Detector`] and hands every line's events to a closure, in log order, with the
//! line's byte span — the same shape the follower uses, so a delivery queue can be plugged in.
//! [`run`] prints each event's payload on stdout and a summary (human and machine-readable) on
//! stderr, including the process's own peak RSS and CPU time for the benchmark harness.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{extract, items};
use crate::checkpoint::{FileId, Position};
use crate::config::Config;
use crate::deliver::{self, DeliveryOptions, Queue, SenderHandle};
use crate::detect::{DetectOptions, Detector, LineVerdict};
use crate::event::FrictionEvent;
use crate::http_client::Client;
use crate::rules::{self, Diagnostic, Level, LoadError};

/// Arguments of `healert-agent replay`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayArgs {
    pub rules: Option<PathBuf>,
    pub send: bool,
    /// A path, or "-" for stdin.
    pub input: String,
}

/// One line of input (or the whole document, for a multi-line EventList) and its events.
#[derive(Debug)]
pub struct Record<'a> {
    /// Byte offsets of the line in the input: `[start, end)`, newline included.
    pub start: u64,
    pub end: u64,
    /// What became of the line (for an EventList: `Evaluated`).
    pub verdict: LineVerdict,
    pub events: &'a [FrictionEvent],
}

/// What a scan saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub lines: u64,
    pub bytes: u64,
    pub blank: u64,
    pub malformed: u64,
    pub skipped_stages: u64,
    /// ResponseComplete events that went through the rules.
    pub evaluated: u64,
    /// EventList documents and the items they held.
    /// Lines longer than the cap, skipped unread.
    pub oversized: u64,
    pub event_lists: u64,
    pub list_items: u64,
    pub events: u64,
    pub events_per_rule: BTreeMap<String, u64>,
    /// The first few malformed lines: (1-based line number, what is wrong).
    pub first_malformed: Vec<(u64, String)>,
}

/// How many malformed lines the summary describes one by one.
pub const SHOWN_MALFORMED: usize = 5;

impl Stats {
    fn count(&mut self, v: LineVerdict) {
        match v {
            LineVerdict::Blank => self.blank += 1,
            LineVerdict::Malformed => self.malformed += 1,
            LineVerdict::SkippedStage => self.skipped_stages += 1,
            LineVerdict::Evaluated => self.evaluated += 1,
            LineVerdict::Oversized => self.oversized += 1,
        }
    }
}

fn trim_newline(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = b {
        b = rest;
    }
    b
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Whether the first non-blank line opens a multi-line JSON document rather than being an
/// NDJSON line (complete, or truncated).
fn starts_document(first: &[u8]) -> bool {
    let t = first.trim_ascii();
    if t == b"{" {
        return true;
    }
    t.first() == Some(&b'{')
        && t.windows(11).any(|w| w == b"\"EventList\"")
        && extract(t).is_err_and(|e| e.kind == crate::json::ErrorKind::UnexpectedEnd)
}

/// Evaluates one line (or document); an `EventList` has each of its items evaluated.
fn evaluate(
    det: &Detector,
    body: &[u8],
    out: &mut Vec<FrictionEvent>,
    st: &mut Stats,
) -> LineVerdict {
    if is_blank(body) {
        // Counted into METRICS by the detector, like every other verdict.
        let v = det.detect(body, out);
        st.count(v);
        return v;
    }
    let parsed = extract(body);
    if let Ok(f) = &parsed {
        if f.kind == "EventList" {
            if let Some(list) = f.items {
                st.event_lists += 1;
                // `items` were validated by `extract`, so this only fails on a bug.
                for item in items(list).unwrap_or_default() {
                    st.list_items += 1;
                    let v = det.detect(item, out);
                    st.count(v);
                }
                return LineVerdict::Evaluated;
            }
        }
    }
    if let Err(e) = &parsed {
        if st.first_malformed.len() < SHOWN_MALFORMED {
            st.first_malformed.push((st.lines.max(1), e.to_string()));
        }
    }
    let v = det.detect_extracted(&parsed, out);
    st.count(v);
    v
}

/// Streams `input` through `det`, calling `sink` once per line (in order) with its events.
/// Errors: reading the input, or whatever `sink` returns (which stops the scan).
///
/// Lines are evaluated in place in a chunk buffer (no per-line copy); only the partial line
/// at the end of a chunk moves, and the buffer grows for a line longer than itself.
pub fn scan<R: Read>(
    input: R,
    det: &Detector,
    sink: impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<Stats> {
    scan_capped(input, det, DEFAULT_MAX_LINE_BYTES, sink)
}

/// `MAX_LINE_BYTES`' default, as for the agent.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

/// [`scan`] with a cap on line length: a longer line is discarded while it is read (never held
/// whole), counted as oversized and handed to `sink` with no events, like the follower does.
pub fn scan_capped<R: Read>(
    mut input: R,
    det: &Detector,
    max_line: usize,
    mut sink: impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<Stats> {
    const CHUNK: usize = 1 << 20;
    let mut st = Stats::default();
    let mut buf = vec![0u8; CHUNK];
    let (mut begin, mut filled) = (0usize, 0usize);
    let mut events = Vec::new();
    let mut seen_content = false;
    let mut eof = false;
    // How much of the partial line at `begin` is known to hold no newline: short reads must
    // not make a long line cost quadratic time.
    let mut searched = 0usize;
    // Start offset of an over-long line being discarded.
    let mut skipping: Option<u64> = None;
    loop {
        if let Some(start) = skipping {
            let rest = &buf[begin..filled];
            let (len, done) = match crate::json::find_byte(rest, b'\n') {
                Some(p) => (p + 1, true),
                None => (rest.len(), eof),
            };
            st.bytes += len as u64;
            begin += len;
            if done {
                skipping = None;
                st.lines += 1;
                st.oversized += 1;
                sink(Record {
                    start,
                    end: st.bytes,
                    verdict: LineVerdict::Oversized,
                    events: &[],
                })?;
            }
        }
        while skipping.is_none() {
            let rest = &buf[begin..filled];
            let len = match crate::json::find_byte(&rest[searched..], b'\n') {
                Some(p) => searched + p + 1,
                None if eof && !rest.is_empty() => rest.len(),
                None => {
                    searched = rest.len();
                    break;
                }
            };
            searched = 0;
            let raw = &rest[..len];
            let body = trim_newline(raw);
            let start = st.bytes;
            if !seen_content && !is_blank(body) {
                seen_content = true;
                // The first line of a pretty-printed document (`{` alone, or an unfinished
                // object naming EventList): read everything and look at it whole. Only then:
                // a log whose first line is merely truncated must keep streaming, not be read
                // into memory.
                if starts_document(body) {
                    let mut all = rest.to_vec();
                    input.read_to_end(&mut all)?;
                    return scan_buffer(&all, start, det, st, &mut sink);
                }
            }
            st.lines += 1;
            st.bytes += len as u64;
            events.clear();
            // A whole over-long line can arrive in one read once the buffer has grown.
            let v = if body.len() > max_line {
                st.oversized += 1;
                LineVerdict::Oversized
            } else {
                evaluate(det, body, &mut events, &mut st)
            };
            st.events += events.len() as u64;
            for e in &events {
                *st.events_per_rule.entry(e.kind.clone()).or_insert(0) += 1;
            }
            sink(Record {
                start,
                end: st.bytes,
                verdict: v,
                events: &events,
            })?;
            begin += len;
        }
        if skipping.is_none() && filled - begin > max_line {
            // No newline within the cap: drop what is buffered and discard up to the newline.
            skipping = Some(st.bytes);
            st.bytes += (filled - begin) as u64;
            begin = filled;
            searched = 0;
        }
        if eof && skipping.is_none() {
            return Ok(st);
        }
        if begin > 0 {
            buf.copy_within(begin..filled, 0);
            filled -= begin;
            begin = 0;
        }
        if filled == buf.len() {
            // Linear growth: only the bytes of the longest line (≤ the cap) are ever touched.
            buf.resize(buf.len() + CHUNK, 0);
        }
        match input.read(&mut buf[filled..]) {
            Ok(0) => eof = true,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The rest of the input, in memory from offset `base`: one JSON document if it is one,
/// NDJSON lines otherwise.
fn scan_buffer(
    buf: &[u8],
    base: u64,
    det: &Detector,
    mut st: Stats,
    sink: &mut impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<Stats> {
    let mut events = Vec::new();
    let mut emit =
        |st: &mut Stats, start: u64, end: u64, body: &[u8], events: &mut Vec<FrictionEvent>| {
            events.clear();
            let v = evaluate(det, body, events, st);
            st.events += events.len() as u64;
            for e in events.iter() {
                *st.events_per_rule.entry(e.kind.clone()).or_insert(0) += 1;
            }
            sink(Record {
                start,
                end,
                verdict: v,
                events,
            })
        };
    if crate::json::validate(buf).is_ok() {
        st.lines += buf.iter().filter(|&&b| b == b'\n').count() as u64
            + u64::from(buf.last().is_some_and(|&b| b != b'\n'));
        st.bytes += buf.len() as u64;
        let end = base + buf.len() as u64;
        emit(&mut st, base, end, buf, &mut events)?;
        return Ok(st);
    }
    let mut at = 0usize;
    while at < buf.len() {
        let end = buf[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |p| at + p + 1);
        let start = base + at as u64;
        st.lines += 1;
        st.bytes += (end - at) as u64;
        emit(
            &mut st,
            start,
            base + end as u64,
            trim_newline(&buf[at..end]),
            &mut events,
        )?;
        at = end;
    }
    Ok(st)
}

/// Resident-set high-water mark (`VmHWM`, kB) and CPU time (user + system, seconds) of this
/// process, from /proc; `None` where /proc is unavailable. CPU ticks are converted at 100 Hz,
/// the `USER_HZ` Linux reports in /proc on every architecture we ship.
pub fn self_usage() -> (Option<u64>, Option<f64>) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) closed by the last ')'.
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
            let ut: u64 = f.get(11)?.parse().ok()?;
            let stt: u64 = f.get(12)?.parse().ok()?;
            Some((ut + stt) as f64 / 100.0)
        });
    (rss, cpu)
}

/// The summary printed on stderr: a human part, then one `summary k=v ...` line.
pub fn summary(st: &Stats, elapsed_s: f64, cpu_s: Option<f64>, rss_kb: Option<u64>) -> String {
    let mb = st.bytes as f64 / 1e6;
    let rate = if elapsed_s > 0.0 { mb / elapsed_s } else { 0.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replay: {} lines, {:.3} MB in {:.3} s ({:.1} MB/s; 1 MB = 10^6 bytes)",
        st.lines, mb, elapsed_s, rate
    );
    let _ = writeln!(
        s,
        "  malformed lines: {}, blank lines: {}, stages skipped: {}, events evaluated: {}",
        st.malformed, st.blank, st.skipped_stages, st.evaluated
    );
    if st.oversized > 0 {
        let _ = writeln!(
            s,
            "  lines over MAX_LINE_BYTES (skipped unread): {}",
            st.oversized
        );
    }
    if st.event_lists > 0 {
        let _ = writeln!(
            s,
            "  EventList documents: {} ({} items)",
            st.event_lists, st.list_items
        );
    }
    for (line, why) in &st.first_malformed {
        let _ = writeln!(s, "    line {line}: {why}");
    }
    if st.malformed > st.first_malformed.len() as u64 {
        let _ = writeln!(
            s,
            "    ... and {} more malformed lines",
            st.malformed - st.first_malformed.len() as u64
        );
    }
    let _ = writeln!(s, "  friction events: {}", st.events);
    for (rule, n) in &st.events_per_rule {
        let _ = writeln!(s, "    {:<28} {n}", crate::log::sanitize(rule, 64));
    }
    let cpu = cpu_s.map_or("n/a".to_string(), |c| format!("{c:.2}"));
    let rss = rss_kb.map_or("n/a".to_string(), |r| r.to_string());
    let _ = writeln!(
        s,
        "  cpu time: {cpu} s (utime+stime at 100 Hz), peak RSS: {rss} kB"
    );
    let _ = writeln!(
        s,
        "summary lines={} bytes={} blank={} malformed={} skipped_stages={} evaluated={} events={} elapsed_s={:.3} cpu_s={} mb_per_s={:.1} peak_rss_kb={} oversized={}",
        st.lines, st.bytes, st.blank, st.malformed, st.skipped_stages, st.evaluated, st.events,
        elapsed_s, cpu, rate, rss, st.oversized
    );
    s
}

/// Prints a rules file's diagnostics like `validate` does: `PATH:LINE:COL: error: MESSAGE`.
pub fn print_diagnostics(path: &str, diags: &[Diagnostic]) {
    for d in diags {
        let level = match d.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        eprintln!(
            "{path}:{}:{}: {level}: {}",
            d.line,
            d.col,
            crate::log::sanitize(&d.message, 400)
        );
        if let Some(h) = &d.hint {
            eprintln!("  hint: {}", crate::log::sanitize(h, 400));
        }
    }
}

fn rules_path(args: &ReplayArgs) -> PathBuf {
    args.rules
        .clone()
        .or_else(|| std::env::var_os("RULES_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("rules.yaml"))
}

pub fn run(args: ReplayArgs) -> ExitCode {
    let path = rules_path(&args);
    let loaded = match rules::load_file(&path) {
        Ok(l) => l,
        Err(LoadError::Io { path, error }) => {
            eprintln!(
                "replay: cannot read rules file {}: {error} (pass --rules PATH or set RULES_PATH)",
                crate::log::sanitize(&path, 400)
            );
            return ExitCode::from(2);
        }
        Err(LoadError::Invalid { path, diagnostics }) => {
            print_diagnostics(&crate::log::sanitize(&path, 400), &diagnostics);
            eprintln!("replay: the rules file is invalid; fix the errors above");
            return ExitCode::from(1);
        }
    };
    print_diagnostics(&path.display().to_string(), &loaded.warnings);
    let det = Detector::new(loaded.rules, DetectOptions::from_env());

    let input: Box<dyn Read> = if args.input == "-" {
        Box::new(io::stdin().lock())
    } else {
        match std::fs::File::open(&args.input) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!(
                    "replay: cannot open {}: {e} (give an audit log path, or - for stdin)",
                    crate::log::sanitize(&args.input, 400)
                );
                return ExitCode::from(2);
            }
        }
    };
    let mut send = if args.send {
        match Backfill::start() {
            Ok(b) => Some(b),
            Err(code) => return code,
        }
    } else {
        None
    };
    let started = Instant::now();
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut closed = false;
    let max_line = match max_line_bytes() {
        Ok(n) => n,
        Err(msg) => {
            eprintln!("replay: {msg}");
            return ExitCode::from(1);
        }
    };
    let result = scan_capped(input, &det, max_line, |rec| {
        if let Some(b) = send.as_mut() {
            if !rec.events.is_empty() && !b.push(rec.start, rec.end, rec.events) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
        }
        for e in rec.events {
            let mut j = e.to_json();
            j.push('\n');
            if let Err(err) = out.write_all(j.as_bytes()) {
                closed = err.kind() == io::ErrorKind::BrokenPipe;
                return Err(err);
            }
        }
        Ok(())
    });
    let flushed = if closed { Ok(()) } else { out.flush() };
    let elapsed = started.elapsed().as_secs_f64();
    let delivery = send.map(|b| b.finish(&args.input));
    match result {
        Ok(st) => {
            let (rss, cpu) = self_usage();
            eprint!("{}", summary(&st, elapsed, cpu, rss));
            if let Some(Err(code)) = delivery {
                return code;
            }
            if let Err(e) = flushed {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    eprintln!("replay: cannot write to stdout: {e}");
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(_) if closed => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            eprintln!("replay: interrupted");
            match delivery {
                Some(Err(code)) => code,
                _ => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!(
                "replay: reading {} failed: {e}",
                crate::log::sanitize(&args.input, 400)
            );
            ExitCode::from(2)
        }
    }
}

/// MAX_LINE_BYTES from the environment, read as the agent reads it.
fn max_line_bytes() -> Result<usize, String> {
    match std::env::var("MAX_LINE_BYTES") {
        Ok(v) if !v.trim().is_empty() => match crate::config::parse_size(&v) {
            Ok(n) if (1024..=(1 << 30)).contains(&n) => Ok(n as usize),
            Ok(_) => Err(format!(
                "MAX_LINE_BYTES={v:?}: must be between 1KiB and 1GiB (example: MAX_LINE_BYTES=16MiB)"
            )),
            Err(p) => Err(format!(
                "MAX_LINE_BYTES={v:?}: {p} (example: MAX_LINE_BYTES=16MiB)"
            )),
        },
        _ => Ok(DEFAULT_MAX_LINE_BYTES),
    }
}

/// `replay --send`: the agent's own delivery path (queue, sender, retry policy, dead letters)
/// fed by the replay scan. Configured from the same environment variables as `run`.
struct Backfill {
    queue: Arc<Queue>,
    sender: SenderHandle,
    grace: Duration,
}

impl Backfill {
    fn start() -> Result<Backfill, ExitCode> {
        let cfg = match Config::from_env() {
            Ok(c) => c,
            Err(errs) => {
                for e in &errs {
                    eprintln!("replay: invalid configuration: {e}");
                }
                return Err(ExitCode::from(1));
            }
        };
        crate::log::init(cfg.log_level, cfg.log_format);
        if let Err(e) = crate::signal::install() {
            eprintln!("replay: cannot install signal handlers: {e}");
            return Err(ExitCode::from(1));
        }
        let mut client = Client::from_config(&cfg);
        deliver::log_backend_check(&mut client);
        let queue = Queue::new(cfg.queue_capacity);
        let sender = deliver::spawn_sender(
            Arc::clone(&queue),
            client,
            DeliveryOptions::from_config(&cfg),
        );
        Ok(Backfill {
            queue,
            sender,
            grace: cfg.shutdown_grace,
        })
    }

    /// Queues one line's events (blocking while the queue is full); false once interrupted.
    fn push(&mut self, start: u64, end: u64, events: &[FrictionEvent]) -> bool {
        if crate::signal::terminate_requests() > 0 {
            return false;
        }
        while self.queue.is_full() {
            if crate::signal::terminate_requests() > 0 {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let at = |offset| Position {
            file: FileId::default(),
            offset,
        };
        self.queue.push_line(at(start), at(end), 0, events.to_vec())
    }

    /// Waits until every queued event was accepted or dead-lettered; a signal ends the wait
    /// (after SHUTDOWN_GRACE, or at once on a second one) and reports where to resume.
    fn finish(self, input: &str) -> Result<(), ExitCode> {
        let mut deadline: Option<Instant> = None;
        while !self.queue.is_empty() {
            let signals = crate::signal::terminate_requests();
            if signals > 1 {
                break;
            }
            if signals == 1 && deadline.is_none() {
                deadline = Some(Instant::now() + self.grace);
                eprintln!(
                    "replay: stopping; delivering queued events for up to {:?}",
                    self.grace
                );
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let resume = self.queue.ack_position();
        let stats = self.sender.finish(Instant::now());
        eprintln!(
            "replay --send: {} events accepted, {} refused (dead-lettered), {} not delivered, {} retries",
            stats.sent, stats.dead_lettered, stats.pending, stats.retries
        );
        if stats.pending == 0 {
            return Ok(());
        }
        let offset = resume.map(|(p, _)| p.offset).unwrap_or(0);
        eprintln!(
            "replay --send: stopped before everything was delivered; to resume without duplicates: \
             tail -c +{} {} | healert-agent replay --send -",
            offset + 1,
            crate::log::sanitize(input, 400)
        );
        Err(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Match, Rule, RuleSet, Severity, Template};

    fn det() -> Detector {
        let rule = Rule {
            name: "kubectl-exec".into(),
            description_source: String::new(),
            description: Template::default(),
            severity: Severity::High,
            workflow: "deploy".into(),
            ignore_system: true,
            matcher: Match {
                subresource: Some("exec".into()),
                ..Match::default()
            },
            line: 1,
        };
        Detector::new(
            RuleSet {
                rules: vec![rule],
                ignore_namespaces: vec![],
            },
            DetectOptions::default(),
        )
    }

    const EXEC: &str = r#"{"stage":"ResponseComplete","verb":"create","user":{"username":"a"},"objectRef":{"resource":"pods","namespace":"n","name":"p","subresource":"exec"}}"#;

    fn collect(input: &[u8]) -> (Stats, Vec<(u64, u64, usize)>) {
        let mut recs = Vec::new();
        let st = scan(input, &det(), |r| {
            recs.push((r.start, r.end, r.events.len()));
            Ok(())
        })
        .unwrap();
        (st, recs)
    }

    #[test]
    fn lines_over_the_cap_are_skipped_unread_and_counted() {
        // A 3 MB line (longer than the 1 MiB read chunk) with a cap of 4 KiB, between two
        // matching lines, delivered through short reads too.
        let long = format!(
            "{{\"stage\":\"ResponseComplete\",\"x\":\"{}\"}}",
            "y".repeat(3 << 20)
        );
        let input = format!("{EXEC}\n{long}\n{EXEC}\n{long}");
        let l = EXEC.len() as u64 + 1;
        let ll = long.len() as u64;
        for trickle in [false, true] {
            let mut recs = Vec::new();
            let mut sink = |r: Record<'_>| {
                recs.push((r.start, r.end, r.events.len(), r.verdict));
                Ok(())
            };
            let st = if trickle {
                scan_capped(Trickle(input.as_bytes()), &det(), 4096, &mut sink)
            } else {
                scan_capped(input.as_bytes(), &det(), 4096, &mut sink)
            }
            .unwrap();
            assert_eq!((st.lines, st.oversized, st.events), (4, 2, 2));
            assert_eq!(st.bytes, input.len() as u64);
            assert_eq!(
                recs,
                vec![
                    (0, l, 1, LineVerdict::Evaluated),
                    (l, l + ll + 1, 0, LineVerdict::Oversized),
                    (l + ll + 1, 2 * l + ll + 1, 1, LineVerdict::Evaluated),
                    (
                        2 * l + ll + 1,
                        2 * l + 2 * ll + 1,
                        0,
                        LineVerdict::Oversized
                    ),
                ]
            );
        }
        // Under the cap, the same line is evaluated.
        let st = scan_capped(input.as_bytes(), &det(), 4 << 20, |_| Ok(())).unwrap();
        assert_eq!((st.oversized, st.evaluated), (0, 4));
    }

    #[test]
    fn ndjson_lines_with_offsets() {
        let input = format!("{EXEC}\n\nnot json\r\n{EXEC}");
        let (st, recs) = collect(input.as_bytes());
        let l = EXEC.len() as u64;
        assert_eq!(
            recs,
            vec![
                (0, l + 1, 1),
                (l + 1, l + 2, 0),
                (l + 2, l + 12, 0),
                (l + 12, 2 * l + 12, 1)
            ]
        );
        assert_eq!(
            (st.lines, st.blank, st.malformed, st.evaluated, st.events),
            (4, 1, 1, 2, 2)
        );
        assert_eq!(st.bytes, input.len() as u64);
        assert_eq!(st.first_malformed.len(), 1);
        assert_eq!(st.first_malformed[0].0, 3);
        assert!(
            st.first_malformed[0].1.contains("1:1"),
            "{:?}",
            st.first_malformed
        );
        let s = summary(&st, 1.0, None, None);
        assert!(s.contains("line 3: invalid JSON at 1:1"), "{s}");
    }

    /// Hands out at most 7 bytes per read, so lines straddle every chunk boundary.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(7).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_and_lines_longer_than_the_buffer() {
        let big = EXEC.replace(
            "\"verb\"",
            &format!("\"requestObject\":\"{}\",\"verb\"", "x".repeat(2_500_000)),
        );
        let input = format!("{EXEC}\n{big}\n\n{EXEC}");
        let (st, recs) = collect(input.as_bytes());
        assert_eq!(recs.iter().map(|r| r.2).collect::<Vec<_>>(), [1, 1, 0, 1]);
        let mut trickled = Vec::new();
        let st2 = scan(Trickle(input.as_bytes()), &det(), |r| {
            trickled.push((r.start, r.end, r.events.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!((st, recs), (st2, trickled));
    }

    #[test]
    fn event_lists_pretty_and_compact() {
        let pretty =
            format!("{{\n \"kind\": \"EventList\",\n \"items\": [\n  {EXEC},\n  {EXEC}\n ]\n}}\n");
        let (st, recs) = collect(pretty.as_bytes());
        assert_eq!(recs, vec![(0, pretty.len() as u64, 2)]);
        assert_eq!((st.event_lists, st.list_items, st.events), (1, 2, 2));
        let compact = format!("{{\"kind\":\"EventList\",\"items\":[{EXEC}]}}\n{EXEC}\n");
        let (st, recs) = collect(compact.as_bytes());
        assert_eq!(recs.len(), 2);
        assert_eq!((st.event_lists, st.events, st.lines), (1, 2, 2));
        // A broken multi-line document falls back to lines, each malformed.
        let (st, _) = collect(b"{\n\"kind\":\n");
        assert_eq!((st.lines, st.malformed), (2, 2));
        // A truncated first line is just malformed; the rest streams as NDJSON.
        let input = format!("{}\n{EXEC}\n", &EXEC[..40]);
        let (st, recs) = collect(input.as_bytes());
        assert_eq!(
            (st.lines, st.malformed, st.events, recs.len()),
            (2, 1, 1, 2)
        );
        assert!(starts_document(b"  {  \r"));
        assert!(starts_document(b"{\"kind\":\"EventList\",\"items\":["));
        assert!(!starts_document(&EXEC.as_bytes()[..60]));
        assert!(!starts_document(b"{\"kind\":\"EventList\",\"items\":[]}"));
    }

    #[test]
    fn summary_has_a_machine_line() {
        let (st, _) = collect(format!("{EXEC}\n").as_bytes());
        let s = summary(&st, 0.5, Some(0.25), Some(1234));
        let last = s.lines().last().unwrap();
        assert!(last.starts_with("summary lines=1 bytes="), "{last}");
        assert!(
            last.contains("events=1")
                && last.contains("peak_rss_kb=1234")
                && last.contains("cpu_s=0.25")
        );
        assert!(s.contains("kubectl-exec"));
        let (rss, cpu) = self_usage();
        assert!(rss.is_some_and(|r| r > 0) && cpu.is_some());
    }
}
