//! `healert-agent replay`: evaluate a whole audit log offline with the agent's own pipeline
//! stage; `--send` delivers through the agent's own queue and sender.
//!
//! [`scan`] streams the input (NDJSON, or one `EventList` document, possibly pretty-printed)
//! through a [`Stage`] over a [`StreamSource`] and hands every record's events to a closure, in
//! input order, with the record's byte span. [`run`] prints each event's payload on stdout and a
//! summary (human and machine-readable) on stderr, including the process's own peak RSS and
//! CPU time for the benchmark harness. Configuration comes from [`Config`], as for `run`:
//! replay refuses exactly the bad values `run` would refuse, for the variables it reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{self, Config};
use crate::deliver::suppress::{Clock, Decision, Suppressor};
use crate::deliver::{self, Queue, SenderHandle};
use crate::detect::cloud::{CloudSource, Format};
use crate::detect::rules::{self, Diagnostic, Level, LoadError};
use crate::detect::{Detector, FrictionEvent, LineVerdict, Verdict};
use crate::operate::log::{self as oplog, sanitize};
use crate::operate::metrics::Metrics;
use crate::operate::signal;
use crate::pipeline::{drop_reason, Feeder, Stage, Step, Trouble};
use crate::source::{Next, Read as How, Source};

/// Arguments of `healert-agent replay`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayArgs {
    pub rules: Option<PathBuf>,
    pub send: bool,
    /// `--no-suppress`: every match, as detection sees it (no suppression window).
    pub no_suppress: bool,
    /// A path, or "-" for stdin.
    pub input: String,
}

/// One record of input (a line, or the whole document for a multi-line EventList) and its
/// events.
#[derive(Debug)]
pub struct Record<'a> {
    /// Byte offsets of the record in the input: `[start, end)`, line ending included.
    pub start: u64,
    pub end: u64,
    /// What became of it; `None` for a line over MAX_LINE_BYTES, skipped unread.
    pub verdict: Option<&'a Verdict>,
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
    /// Lines longer than the cap, skipped unread.
    pub oversized: u64,
    /// EventList documents and the items they held.
    pub event_lists: u64,
    pub list_items: u64,
    pub events: u64,
    pub events_per_rule: BTreeMap<String, u64>,
    /// The first few malformed lines: (1-based line number, what is wrong).
    pub first_malformed: Vec<(u64, String)>,
    /// Records evaluated from the fields the rules read although the line is damaged.
    pub recovered: u64,
    /// Records pruned out of lines over MAX_LINE_BYTES (one per event, one per list item).
    pub streamed: u64,
    /// Audit events read out of cloud envelopes (CloudWatch messages, AKS records, GKE entries).
    pub unwrapped: u64,
    /// Lines (or list items) not evaluated, per reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Lines (or records of a streamed line) that could not be read at all.
    pub unreadable: u64,
    /// The first few damaged or unreadable lines: (1-based line number, what happened).
    pub first_problems: Vec<(u64, String)>,
    /// MAX_LINE_BYTES of the scan (a longer span that is skipped is an over-long line).
    max_line: u64,
}

/// How many malformed lines the summary describes one by one.
pub const SHOWN_MALFORMED: usize = 5;

impl Stats {
    /// What could not be read whole, and the first problems with their line numbers.
    fn note(&mut self, step: &Step<u64>) {
        let (problem, line) = match step {
            Step::Record {
                trouble: Some(Trouble::Recovered { strict, .. }),
                ..
            } => {
                self.recovered += 1;
                (
                    format!("damaged, evaluated from the fields the rules read: {strict}"),
                    self.lines + 1,
                )
            }
            Step::Record {
                trouble: Some(Trouble::Dropped { strict, pruned }),
                ..
            } => {
                *self.dropped.entry("malformed").or_insert(0) += 1;
                let why = match pruned {
                    Some(p) => format!("{strict}; the fields the rules read: {p}"),
                    None => format!("{strict}, in a field the rules read"),
                };
                if self.first_malformed.len() < SHOWN_MALFORMED {
                    self.first_malformed.push((self.lines + 1, why));
                }
                return;
            }
            Step::Record {
                verdict: Verdict::Malformed(e),
                ..
            } => {
                if self.first_malformed.len() < SHOWN_MALFORMED {
                    self.first_malformed.push((self.lines + 1, e.to_string()));
                }
                return;
            }
            Step::Record { how: How::Item, .. } => {
                self.list_items += 1;
                return;
            }
            Step::Record {
                how: How::Unwrapped,
                ..
            } => {
                self.unwrapped += 1;
                return;
            }
            Step::Record {
                how: How::Streamed,
                verdict,
                start,
                end,
                ..
            } => {
                if !matches!(verdict, Verdict::Malformed(_)) {
                    self.streamed += 1;
                }
                if end > start {
                    self.oversized += 1;
                }
                return;
            }
            Step::Skipped { why, start, end } => {
                *self.dropped.entry(drop_reason(why)).or_insert(0) += 1;
                self.unreadable += 1;
                if end.saturating_sub(*start) > self.max_line {
                    self.oversized += 1;
                }
                (format!("not evaluated: {why}"), self.lines + 1)
            }
            _ => return,
        };
        if self.first_problems.len() < SHOWN_MALFORMED {
            self.first_problems.push((line, problem));
        }
    }

    fn count(&mut self, verdict: Option<&Verdict>, events: &[FrictionEvent]) {
        match verdict {
            None => {}
            Some(Verdict::Event(v)) => match v {
                LineVerdict::Blank => self.blank += 1,
                LineVerdict::Malformed => self.malformed += 1,
                LineVerdict::SkippedStage => self.skipped_stages += 1,
                LineVerdict::Evaluated => self.evaluated += 1,
            },
            Some(Verdict::Malformed(_)) => self.malformed += 1,
            Some(Verdict::List(t)) => {
                self.event_lists += 1;
                self.list_items += t.items;
                self.malformed += t.malformed;
                self.skipped_stages += t.skipped_stages;
                self.evaluated += t.evaluated;
            }
        }
        self.events += events.len() as u64;
        for e in events {
            *self.events_per_rule.entry(e.kind.clone()).or_insert(0) += 1;
        }
    }
}

/// What replay reads: audit lines (NDJSON; a line over MAX_LINE_BYTES, such as a compact
/// EventList export, is streamed item by item), documents over several lines (a pretty-printed
/// EventList, streamed item by item), and the cloud formats `AUDIT_FORMAT` allows (see
/// [`CloudSource`]), decided record by record. Memory stays bounded whatever the input's size.
pub struct Input<R>(CloudSource<R>);

impl<R: Read> Input<R> {
    /// Every format ([`Format::Auto`]).
    pub fn open(input: R, max_line: usize) -> io::Result<Input<R>> {
        Input::open_format(input, max_line, Format::Auto)
    }

    /// The formats `format` names.
    pub fn open_format(input: R, max_line: usize, format: Format) -> io::Result<Input<R>> {
        Ok(Input(CloudSource::new(input, max_line, format)))
    }

    /// The read error that ended the input early, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.0.take_error()
    }
}

impl<R: Read> Source for Input<R> {
    type Pos = u64;

    fn next(&mut self) -> Next<'_, u64> {
        self.0.next()
    }

    fn position(&self) -> u64 {
        self.0.position()
    }

    fn describe(&self, place: &u64) -> String {
        format!("offset {place}")
    }
}

/// Streams `input` through `det`, calling `sink` once per record (in order) with its events.
/// Errors: reading the input, or whatever `sink` returns (which stops the scan).
pub fn scan<R: Read>(
    input: R,
    det: &Detector,
    sink: impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<Stats> {
    scan_capped(
        input,
        det,
        crate::source::lines::DEFAULT_MAX_LINE_BYTES,
        sink,
    )
}

/// [`scan`] with a cap on line length: a longer line is discarded while it is read (never held
/// whole), counted as oversized and handed to `sink` with no events, like the follower does.
pub fn scan_capped<R: Read>(
    input: R,
    det: &Detector,
    max_line: usize,
    sink: impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<Stats> {
    scan_format(input, det, max_line, Format::Auto, sink)
}

/// [`scan_capped`] reading only the formats `format` names (`AUDIT_FORMAT`).
pub fn scan_format<R: Read>(
    input: R,
    det: &Detector,
    max_line: usize,
    format: Format,
    mut sink: impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<Stats> {
    let input = Input::open_format(input, max_line, format)?;
    let mut st = Stats {
        max_line: max_line as u64,
        ..Stats::default()
    };
    let mut stage = Stage::new(input, det.clone(), None);
    loop {
        let step = stage.step();
        st.note(&step);
        let (start, end, verdict, events) = match step {
            Step::Record {
                start,
                end,
                verdict,
                events,
                ..
            } => (start, end, Some(verdict), events),
            Step::Skipped { start, end, .. } => (start, end, None, Vec::new()),
            Step::Idle => continue,
            Step::End => break,
        };
        if end > start {
            st.lines += 1;
        }
        st.bytes = st.bytes.max(end);
        st.count(verdict.as_ref(), &events);
        sink(Record {
            start,
            end,
            verdict: verdict.as_ref(),
            events: &events,
        })?;
    }
    // Lines and bytes of the input, whatever records they held.
    let src = &stage.source().0;
    st.lines = src.lines_read();
    st.bytes = src.bytes_read().max(st.bytes);
    st.event_lists += src.documents().1;
    match stage.source_mut().take_error() {
        Some(e) => Err(e),
        None => Ok(st),
    }
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
            "  lines over MAX_LINE_BYTES: {} (read in streaming mode: {} records evaluated)",
            st.oversized, st.streamed
        );
    }
    if st.event_lists > 0 {
        let _ = writeln!(
            s,
            "  EventList documents: {} ({} items)",
            st.event_lists, st.list_items
        );
    }
    if st.unwrapped > 0 {
        let _ = writeln!(
            s,
            "  audit events read out of cloud envelopes (CloudWatch, GKE, AKS): {}",
            st.unwrapped
        );
    }
    if st.recovered > 0 {
        let _ = writeln!(
            s,
            "  damaged lines evaluated from the fields the rules read: {}",
            st.recovered
        );
    }
    if !st.dropped.is_empty() {
        let reasons: Vec<String> = st.dropped.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(s, "  not evaluated: {}", reasons.join(", "));
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
    for (line, why) in &st.first_problems {
        let _ = writeln!(s, "    line {line}: {why}");
    }
    let _ = writeln!(s, "  friction events: {}", st.events);
    for (rule, n) in &st.events_per_rule {
        let _ = writeln!(s, "    {:<28} {n}", crate::operate::log::sanitize(rule, 64));
    }
    let cpu = cpu_s.map_or("n/a".to_string(), |c| format!("{c:.2}"));
    let rss = rss_kb.map_or("n/a".to_string(), |r| r.to_string());
    let _ = writeln!(
        s,
        "  cpu time: {cpu} s (utime+stime at 100 Hz), peak RSS: {rss} kB"
    );
    let _ = writeln!(
        s,
        "summary lines={} bytes={} blank={} malformed={} skipped_stages={} evaluated={} events={} elapsed_s={:.3} cpu_s={} mb_per_s={:.1} peak_rss_kb={} oversized={} streamed={} recovered={} dropped={}",
        st.lines, st.bytes, st.blank, st.malformed, st.skipped_stages, st.evaluated, st.events,
        elapsed_s, cpu, rate, rss, st.oversized, st.streamed, st.recovered,
        st.dropped.values().sum::<u64>()
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
            sanitize(&d.message, 400)
        );
        if let Some(h) = &d.hint {
            eprintln!("  hint: {}", sanitize(h, 400));
        }
    }
}

/// Refuses bad values of the variables the offline commands read (`replay` without `--send`,
/// `explain`, `test`), as `run` would: the messages, then exit code 1.
pub fn check_config(cmd: &str, send: bool) -> Result<Config, ExitCode> {
    let (cfg, errs) = Config::load();
    let used = config::replay_vars(send);
    let bad: Vec<_> = errs.iter().filter(|e| used.contains(&e.var)).collect();
    if bad.is_empty() {
        return Ok(cfg);
    }
    for e in &bad {
        eprintln!("{cmd}: invalid configuration: {e}");
    }
    eprintln!(
        "{cmd}: not started ({} invalid variable(s)); see `healert-agent --help`",
        bad.len()
    );
    Err(ExitCode::from(1))
}

/// The rules (`--rules PATH`, else RULES_PATH, else ./rules.yaml) through the agent's own
/// loader, warnings printed, as the engine `run` would use. Exit 2 unreadable, 1 invalid.
pub fn load_detector(
    cmd: &str,
    rules: Option<PathBuf>,
    cfg: &Config,
) -> Result<Detector, ExitCode> {
    let path = rules.unwrap_or_else(|| cfg.rules_path_or_default());
    let loaded = match rules::load_file(&path) {
        Ok(l) => l,
        Err(LoadError::Io { path, error }) => {
            eprintln!(
                "{cmd}: cannot read rules file {}: {error} (pass --rules PATH or set RULES_PATH)",
                sanitize(&path, 400)
            );
            return Err(ExitCode::from(2));
        }
        Err(LoadError::Invalid { path, diagnostics }) => {
            print_diagnostics(&sanitize(&path, 400), &diagnostics);
            eprintln!("{cmd}: the rules file is invalid; fix the errors above");
            return Err(ExitCode::from(1));
        }
    };
    print_diagnostics(&path.display().to_string(), &loaded.warnings);
    Ok(Detector::new(loaded.rules, cfg.detect_options()))
}

/// The input of an offline command: a file (with its size, for progress), or stdin for `-`.
pub fn open_input(cmd: &str, input: &str) -> Result<(Box<dyn Read>, Option<u64>), ExitCode> {
    if input == "-" {
        return Ok((Box::new(io::stdin().lock()), None));
    }
    match std::fs::File::open(input) {
        Ok(f) => {
            let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            Ok((Box::new(f), size))
        }
        Err(e) => {
            eprintln!(
                "{cmd}: cannot open {}: {e} (give an audit log path, or - for stdin)",
                sanitize(input, 400)
            );
            Err(ExitCode::from(2))
        }
    }
}

pub fn run(args: ReplayArgs) -> ExitCode {
    let cfg = match check_config("replay", args.send) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let det = match load_detector("replay", args.rules.clone(), &cfg) {
        Ok(d) => d,
        Err(code) => return code,
    };

    let (input, size) = match open_input("replay", &args.input) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let send = if args.send {
        match Backfill::start(&cfg, !args.no_suppress) {
            Ok(b) => Some(b),
            Err(code) => return code,
        }
    } else {
        None
    };
    let mut feeder = send.as_ref().map(|b| Feeder::new(&*b.queue, SEND_WAIT));
    let started = Instant::now();
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut closed = false;
    // What `run` would send: the suppression window on audit time (the queue of `--send`
    // decides the same way, since it sees the same events in the same order).
    let mut sup = Suppressor::new(cfg.suppress_window, Clock::EventTime);
    let suppress = !args.no_suppress;
    let mut held = Held::default();
    let mut progress = Progress::new(size);
    let mut emit = |e: &FrictionEvent, closed: &mut bool| -> io::Result<()> {
        let mut j = e.to_json();
        j.push('\n');
        out.write_all(j.as_bytes()).inspect_err(|err| {
            *closed = err.kind() == io::ErrorKind::BrokenPipe;
        })
    };
    let mut result = scan_format(input, &det, cfg.max_line_bytes, cfg.audit_format, |rec| {
        progress.tick(rec.end);
        if let Some(f) = feeder.as_mut() {
            if signal::terminate_requests() > 0
                || !rec.events.is_empty()
                    && !f.record(rec.start, rec.end, 0, rec.events.to_vec(), || {
                        signal::terminate_requests() == 0
                    })
            {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
        }
        for e in rec.events {
            if !suppress {
                emit(e, &mut closed)?;
                continue;
            }
            sup.observe(e);
            let now = sup.now_ms();
            while let Some((key, summary)) = sup.due(false, now) {
                emit(&summary, &mut closed)?;
                held.summaries += 1;
                sup.summary_done(&key);
            }
            let d = sup.decide(e, now);
            sup.apply(e, d);
            match d {
                Decision::Send => emit(e, &mut closed)?,
                Decision::Repeat => held.repeats += 1,
                Decision::SameAct => held.same_act += 1,
            }
        }
        Ok(())
    });
    progress.clear();
    if result.is_ok() {
        // The input is over: every open window closes.
        while let Some((key, summary)) = sup.due(true, sup.now_ms()) {
            if let Err(e) = emit(&summary, &mut closed) {
                result = Err(e);
                break;
            }
            held.summaries += 1;
            sup.summary_done(&key);
        }
    }
    let flushed = if closed { Ok(()) } else { out.flush() };
    let elapsed = started.elapsed().as_secs_f64();
    let delivery = send.map(|b| b.finish(&args.input));
    match result {
        Ok(st) => {
            let (rss, cpu) = self_usage();
            if suppress {
                eprint!("{}", held.describe(st.events, cfg.suppress_window));
            }
            eprint!("{}", summary(&st, elapsed, cpu, rss));
            if let Some(Err(code)) = delivery {
                return code;
            }
            let skipped = st.malformed + st.unreadable;
            if st.evaluated == 0 && skipped > 0 {
                // "No friction" must not be mistaken for "nothing could be read".
                eprintln!(
                    "replay: nothing was evaluated and {skipped} lines were skipped (see above): \
                     this is not a log without friction"
                );
                return ExitCode::from(1);
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
            eprintln!("replay: reading {} failed: {e}", sanitize(&args.input, 400));
            ExitCode::from(2)
        }
    }
}

/// What the suppression window held back during a replay.
#[derive(Debug, Default)]
struct Held {
    repeats: u64,
    same_act: u64,
    summaries: u64,
}

impl Held {
    fn describe(&self, matched: u64, window: Duration) -> String {
        let sent = matched - self.repeats - self.same_act + self.summaries;
        format!(
            "replay: {sent} events would be sent: {} repeats suppressed into {} summaries, {} merged as the same act (SUPPRESS_WINDOW={}, or the rule's suppress:)\n",
            self.repeats,
            self.summaries,
            self.same_act,
            crate::config::human_duration(window)
        )
    }
}

/// One redrawn stderr line on a terminal while a long replay runs: bytes done, % of the file,
/// rate. Nothing when stderr is not a terminal.
struct Progress {
    on: bool,
    total: Option<u64>,
    started: Instant,
    next: Instant,
    records: u32,
    shown: bool,
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        use std::io::IsTerminal;
        let now = Instant::now();
        Progress {
            on: io::stderr().is_terminal(),
            total,
            started: now,
            next: now + Duration::from_millis(500),
            records: 0,
            shown: false,
        }
    }

    fn tick(&mut self, done: u64) {
        if !self.on {
            return;
        }
        // Look at the clock once per 4096 records only.
        self.records = self.records.wrapping_add(1);
        if self.records % 4096 != 0 {
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_millis(250);
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
        let mb = done as f64 / 1e6;
        let pct = match self.total {
            Some(t) if t > 0 => format!(
                " of {:.1} MB ({:.0}%)",
                t as f64 / 1e6,
                done as f64 * 100.0 / t as f64
            ),
            _ => String::new(),
        };
        eprint!("\r\x1b[Kreplay: {mb:.1} MB{pct}, {:.1} MB/s", mb / secs);
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

/// How long `replay --send` waits on a full queue before looking at signals again.
const SEND_WAIT: Duration = Duration::from_millis(50);

/// `replay --send`: the agent's own delivery path (queue, sender, retry policy, dead letters)
/// fed by the replay scan. Configured from the same environment variables as `run`.
struct Backfill {
    queue: Arc<Queue<u64>>,
    sender: SenderHandle<u64>,
    grace: Duration,
}

impl Backfill {
    fn start(cfg: &Config, suppress: bool) -> Result<Backfill, ExitCode> {
        oplog::init(cfg.log_level, cfg.log_format);
        if let Err(e) = signal::install() {
            eprintln!("replay: cannot install signal handlers: {e}");
            return Err(ExitCode::from(1));
        }
        let metrics = Arc::new(Metrics::new());
        // The sender checks the backend before its first event (`startup_check`).
        let client = cfg.client();
        let queue = Queue::new(cfg.queue_capacity, Arc::clone(&metrics));
        // The same decisions as replay's own output; every window is summarised at the end.
        if suppress {
            queue.enable_suppression(Suppressor::new(cfg.suppress_window, Clock::EventTime), true);
        }
        let sender =
            deliver::spawn_sender(Arc::clone(&queue), client, cfg.delivery_options(), metrics);
        Ok(Backfill {
            queue,
            sender,
            grace: cfg.shutdown_grace,
        })
    }

    /// Waits until every queued event was accepted or dead-lettered; a signal ends the wait
    /// (after SHUTDOWN_GRACE, or at once on a second one) and reports where to resume.
    fn finish(self, input: &str) -> Result<(), ExitCode> {
        let grace = self.grace;
        let mut announced = false;
        let queue = Arc::clone(&self.queue);
        let drained = self.sender.drain(grace, signal::terminate_requests, || {
            if !announced && signal::terminate_requests() == 1 {
                announced = true;
                eprintln!("replay: stopping; delivering queued events for up to {grace:?}");
            }
        });
        let stats = drained.stats;
        eprintln!(
            "replay --send: {} events accepted, {} refused (dead-lettered), {} not delivered, {} retries",
            stats.sent, stats.dead_lettered, stats.pending, stats.retries
        );
        if stats.pending == 0 {
            return Ok(());
        }
        let offset = queue.ack_position().map(|(p, _)| p).unwrap_or(0);
        eprintln!(
            "replay --send: stopped before everything was delivered; to resume without duplicates: \
             tail -c +{} {} | healert-agent replay --send -",
            offset + 1,
            sanitize(input, 400)
        );
        Err(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's verdict as a short label: `oversized`, or the verdict.
    fn label(v: Option<&Verdict>) -> &'static str {
        match v {
            None => "oversized",
            Some(Verdict::Event(LineVerdict::Evaluated)) => "evaluated",
            Some(_) => "other",
        }
    }

    fn det() -> Detector {
        crate::detect::testing::detector(vec![crate::detect::testing::exec_rule()])
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
    fn lines_over_the_cap_are_evaluated_as_they_stream() {
        // A 3 MB matching line (longer than the read chunk) with a cap of 4 KiB, between two
        // matching lines, delivered through short reads too: read in streaming mode, its
        // event found, its memory never held.
        let long = EXEC.replace(
            "\"verb\"",
            &format!(
                "\"requestObject\":{{\"x\":\"{}\"}},\"verb\"",
                "y".repeat(3 << 20)
            ),
        );
        let input = format!("{EXEC}\n{long}\n{EXEC}\n{long}");
        let l = EXEC.len() as u64 + 1;
        let ll = long.len() as u64;
        for trickle in [false, true] {
            let mut recs = Vec::new();
            let mut sink = |r: Record<'_>| {
                recs.push((r.start, r.end, r.events.len(), label(r.verdict)));
                Ok(())
            };
            let st = if trickle {
                scan_capped(Trickle(input.as_bytes()), &det(), 4096, &mut sink)
            } else {
                scan_capped(input.as_bytes(), &det(), 4096, &mut sink)
            }
            .unwrap();
            assert_eq!(
                (st.lines, st.oversized, st.streamed, st.events),
                (4, 2, 2, 4)
            );
            assert_eq!(st.bytes, input.len() as u64);
            assert_eq!(
                recs,
                vec![
                    (0, l, 1, "evaluated"),
                    (l, l + ll + 1, 1, "evaluated"),
                    (l + ll + 1, 2 * l + ll + 1, 1, "evaluated"),
                    (2 * l + ll + 1, 2 * l + 2 * ll + 1, 1, "evaluated"),
                ]
            );
        }
        // Under the cap, the same lines are read whole.
        let st = scan_capped(input.as_bytes(), &det(), 4 << 20, |_| Ok(())).unwrap();
        assert_eq!(
            (st.oversized, st.streamed, st.evaluated, st.events),
            (0, 0, 4, 4)
        );
    }

    #[test]
    fn a_compact_event_list_over_the_cap_streams_item_by_item() {
        let items: Vec<&str> = vec![EXEC; 300];
        let list = format!(
            "{{\"kind\":\"EventList\",\"items\":[{}]}}\n",
            items.join(",")
        );
        let mut spans = Vec::new();
        let st = scan_capped(list.as_bytes(), &det(), 4096, |r| {
            spans.push((r.start, r.end, r.events.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!((st.lines, st.streamed, st.events), (1, 300, 300));
        // Every item's record starts at the line; only the last one ends it.
        assert!(spans[..299]
            .iter()
            .all(|&(s, e, n)| s == 0 && e == 0 && n == 1));
        assert_eq!(spans[299], (0, list.len() as u64, 1));
    }

    #[test]
    fn a_damaged_body_costs_nothing_a_damaged_field_costs_the_line() {
        let damaged = EXEC.replace("\"verb\"", "\"requestObject\":{\"a\":tru, 01},\"verb\"");
        let broken = EXEC.replace("\"a\"}", "\"a\\q\"}");
        let input = format!("{damaged}\n{broken}\n");
        let (st, recs) = collect(input.as_bytes());
        assert_eq!(recs.iter().map(|r| r.2).collect::<Vec<_>>(), [1, 0]);
        assert_eq!((st.recovered, st.malformed, st.evaluated), (1, 1, 1));
        assert_eq!(st.dropped.get("malformed"), Some(&1));
        let s = summary(&st, 1.0, None, None);
        assert!(
            s.contains(
                "line 1: damaged, evaluated from the fields the rules read: invalid JSON at 1:"
            ),
            "{s}"
        );
        assert!(s.contains("line 2: invalid JSON at 1:"), "{s}");
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
        // Streamed item by item, each with its own span in the document.
        let first = pretty.find(EXEC).unwrap() as u64;
        let second = pretty.rfind(EXEC).unwrap() as u64;
        let e = EXEC.len() as u64;
        assert_eq!(recs, vec![(first, first + e, 1), (second, second + e, 1)]);
        assert_eq!((st.event_lists, st.list_items, st.events), (1, 2, 2));
        assert_eq!((st.lines, st.bytes), (7, pretty.len() as u64));
        let compact = format!("{{\"kind\":\"EventList\",\"items\":[{EXEC}]}}\n{EXEC}\n");
        let (st, recs) = collect(compact.as_bytes());
        assert_eq!(recs.len(), 2);
        assert_eq!((st.event_lists, st.events, st.lines), (1, 2, 2));
        // A broken multi-line document: what follows the break is not evaluated, and says so.
        let (st, _) = collect(b"{\n\"kind\":\n");
        assert_eq!((st.lines, st.evaluated), (2, 0));
        assert_eq!(st.dropped.get("malformed"), Some(&1));
        // A truncated first line is just malformed; the rest streams as NDJSON.
        let input = format!("{}\n{EXEC}\n", &EXEC[..40]);
        let (st, recs) = collect(input.as_bytes());
        assert_eq!(
            (st.lines, st.malformed, st.events, recs.len()),
            (2, 1, 1, 2)
        );
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
