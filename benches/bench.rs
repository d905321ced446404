//! The performance harness (`cargo bench`, std only, `harness = false`): generates realistic
//! audit logs with `tests/it/gen.rs`, drives the release binary the way an operator would
//! (`replay`, `replay --send`, `run`) and prints one Markdown table of medians against the
//! targets of issue 8: scan rate (MB of log per CPU-second, with the `wc -l` ratio), lines/s,
//! events/s, peak RSS, huge lines, delivery rate and connections, append→arrival latency, idle
//! CPU, binary size and startup time.
//!
//! Nothing here asserts on time: the figures are informational (CI prints them via
//! `.ci/bench`). A part whose feature is not there yet prints `n/a: <reason>` and the run goes
//! on. Sizes come from the environment (see `Settings::from_env`), so CI can run a small
//! version. CPU time of a child comes from our own `/proc/self/stat` cutime+cstime (children
//! reaped so far), peak RSS from the child's `/proc/<pid>/status` VmHWM polled while it runs,
//! both cross-checked with the `summary` line `replay` prints on stderr.

#[path = "../tests/it/gen.rs"]
mod gen;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gen::{GenOptions, Generator, Kind};

/// The repository's rules.yaml (its 5 enabled rules are the Go agent's 5 active ones). The
/// agent runs with a copy without repeat suppression (`Settings::rules`).
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/rules.yaml");
const MIB: usize = 1 << 20;
/// Linux's USER_HZ: the unit of utime/stime in /proc.
const TICKS_PER_SEC: f64 = 100.0;

fn main() {
    // `cargo bench -- --bench` passes flags we do not use; `--list` must print nothing.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let s = Settings::from_env();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_healert-agent"));
    let _ = fs::remove_dir_all(&s.dir);
    if let Err(e) = fs::create_dir_all(&s.dir) {
        println!("bench: cannot create {}: {e}", s.dir.display());
        return;
    }
    if let Err(e) = gen::rules_without_suppression(Path::new(RULES), &s.rules) {
        println!("bench: cannot write {}: {e}", s.rules.display());
        return;
    }
    let mut t = Table::default();
    header(&bin, &s);
    let parts: [(&str, Part); 9] = [
        ("scan", scan_plain),
        ("bodies", scan_bodies),
        ("longline", long_lines),
        ("deliver", delivery_library),
        ("send", delivery),
        ("latency", latency_and_idle),
        ("webhook", webhook),
        ("startup", startup),
        ("size", binary_size),
    ];
    for (name, part) in parts {
        if s.skip.iter().any(|x| x == name) {
            t.row(name, "skipped (BENCH_SKIP)", "", "");
            continue;
        }
        eprintln!("bench: {name}...");
        part(&bin, &s, &mut t);
    }
    t.print();
    if !s.keep {
        let _ = fs::remove_dir_all(&s.dir);
    }
}

/// One measurement: binary, settings, the table to add rows to.
type Part = fn(&Path, &Settings, &mut Table);

/// Sizes and switches, from the environment.
struct Settings {
    /// BENCH_MB: size of the 0.1 %-match Metadata log (default 300).
    plain_mb: usize,
    /// BENCH_BODY_MB: size of the 1 %-match log with 3–8 KB bodies (default 200).
    body_mb: usize,
    /// BENCH_RUNS: runs per replay measurement; the median is reported (default 3).
    runs: usize,
    /// BENCH_SEND_EVENTS: events for the delivery rate (default 20000).
    send_events: usize,
    /// BENCH_LATENCY_LINES: matching lines appended one by one (default 40).
    latency_lines: usize,
    /// BENCH_IDLE_SECS: idle CPU window (default 10).
    idle_secs: u64,
    /// BENCH_HUGE_MB: the largest matching line measured (MiB; default 1024).
    huge_mb: usize,
    /// BENCH_WEBHOOK_BATCHES: 400-event batches posted to the webhook (default 300).
    webhook_batches: usize,
    /// BENCH_SKIP: comma-separated parts to skip (scan,bodies,longline,deliver,send,latency,
    /// webhook,startup,size).
    skip: Vec<String>,
    /// BENCH_DIR: where logs are written (default $TMPDIR/healert-bench-<pid>), removed unless
    /// BENCH_KEEP=1.
    dir: PathBuf,
    keep: bool,
    /// rules.yaml without `suppress:`/`same_act:`, in `dir`; every agent run also has
    /// `SUPPRESS_WINDOW=0`: the generator's oracle counts every match, and a run that waits for
    /// the expected events must get them all.
    rules: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        let dir = std::env::var_os("BENCH_DIR").map_or_else(
            || std::env::temp_dir().join(format!("healert-bench-{}", std::process::id())),
            PathBuf::from,
        );
        Settings {
            plain_mb: num("BENCH_MB", 300),
            huge_mb: num("BENCH_HUGE_MB", 1024),
            body_mb: num("BENCH_BODY_MB", 200),
            runs: num("BENCH_RUNS", 3).max(1),
            send_events: num("BENCH_SEND_EVENTS", 20_000),
            latency_lines: num("BENCH_LATENCY_LINES", 40).max(1),
            idle_secs: num("BENCH_IDLE_SECS", 10) as u64,
            webhook_batches: num("BENCH_WEBHOOK_BATCHES", 300).max(1),
            skip: std::env::var("BENCH_SKIP")
                .unwrap_or_default()
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            dir: dir.clone(),
            keep: std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1"),
            rules: dir.join("rules-unsuppressed.yaml"),
        }
    }
}

fn header(bin: &Path, s: &Settings) {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let version = Command::new(bin)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("## healert-agent bench — {}", utc_now());
    println!();
    println!("- binary: `{}` ({version})", bin.display());
    println!("- machine: {cores} cores, {cpu}");
    println!(
        "- sizes: BENCH_MB={} BENCH_BODY_MB={} BENCH_RUNS={} BENCH_SEND_EVENTS={} BENCH_LATENCY_LINES={} BENCH_IDLE_SECS={}",
        s.plain_mb, s.body_mb, s.runs, s.send_events, s.latency_lines, s.idle_secs
    );
    println!("- rules: rules.yaml (5 enabled rules), repeat suppression off");
    println!();
}

// ---------------------------------------------------------------------------------------------
// Result table
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, what: &str, value: &str, target: &str, note: &str) {
        self.rows
            .push([what.into(), value.into(), target.into(), note.into()]);
    }

    fn print(&self) {
        println!("| measurement | median | target | notes |");
        println!("|---|---|---|---|");
        for r in &self.rows {
            println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
        }
        println!();
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// Child processes: CPU time, peak RSS
// ---------------------------------------------------------------------------------------------

/// CPU seconds of all children of this process that were reaped so far (cutime + cstime).
fn children_cpu_secs() -> f64 {
    stat_fields("/proc/self/stat").map_or(0.0, |f| {
        let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        (t(13) + t(14)) / TICKS_PER_SEC
    })
}

/// CPU seconds used so far by a running process (utime + stime).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    Some((t(11) + t(12)) / TICKS_PER_SEC)
}

/// Fields of a /proc stat file after the `(comm)` field, numbered from `state` = 0.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let s = fs::read_to_string(path).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    Some(after.split_whitespace().map(String::from).collect())
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one run of a child cost.
struct Run {
    ok: bool,
    wall: f64,
    cpu: f64,
    /// Max of the polled VmHWM and the child's own report.
    peak_rss_kb: u64,
    stderr: String,
    /// `summary key=value...` from replay's stderr, if any.
    summary: HashMap<String, String>,
}

impl Run {
    fn num(&self, k: &str) -> Option<f64> {
        self.summary.get(k).and_then(|v| v.parse().ok())
    }

    /// Why the run does not count, for an `n/a` cell.
    fn failure(&self) -> String {
        let first = self
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        format!("n/a: {}", first.chars().take(100).collect::<String>())
    }
}

/// Runs `cmd` to the end with stdout discarded, measuring it.
fn measure(mut cmd: Command) -> Run {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let cpu0 = children_cpu_secs();
    let t0 = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                ok: false,
                wall: 0.0,
                cpu: 0.0,
                peak_rss_kb: 0,
                stderr: format!("cannot start: {e}"),
                summary: HashMap::new(),
            }
        }
    };
    let pid = child.id();
    let mut err_pipe = child.stderr.take();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
        }
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = children_cpu_secs() - cpu0;
    let stderr = reader.join().unwrap_or_default();
    let summary: HashMap<String, String> = stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("summary "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut run = Run {
        ok: status.is_some_and(|s| s.success()),
        wall,
        cpu,
        peak_rss_kb: peak,
        stderr,
        summary,
    };
    if let Some(kb) = run.num("peak_rss_kb") {
        run.peak_rss_kb = run.peak_rss_kb.max(kb as u64);
    }
    run
}

fn replay_cmd(bin: &Path, s: &Settings, file: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("replay").arg("--rules").arg(&s.rules).arg(file);
    c.env("LOG_LEVEL", "warn").env("SUPPRESS_WINDOW", "0");
    c
}

// ---------------------------------------------------------------------------------------------
// Log files
// ---------------------------------------------------------------------------------------------

/// Writes a generated log of at least `mb` MB; returns its summary.
fn write_log(path: &Path, mb: usize, opts: GenOptions) -> std::io::Result<gen::GenSummary> {
    let t0 = Instant::now();
    let mut out = BufWriter::with_capacity(MIB, File::create(path)?);
    let mut g = Generator::new(GenOptions {
        keep_expected: false,
        ..opts
    });
    let mut buf = Vec::with_capacity(2 * MIB);
    let target = (mb * 1_000_000) as u64;
    while g.summary().bytes < target {
        g.next_line(&mut buf);
        if buf.len() >= MIB {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    let s = g.into_summary();
    eprintln!(
        "bench: wrote {} ({:.0} MB, {} lines) in {:.1}s",
        path.display(),
        s.bytes as f64 / 1e6,
        s.lines,
        t0.elapsed().as_secs_f64()
    );
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------------

fn scan_plain(bin: &Path, s: &Settings, t: &mut Table) {
    // 0.1 % of lines match: human friction 0.12 % of calls, little human noise (its
    // bypass=false patches would match config-drift), Metadata level (no bodies).
    let opts = GenOptions {
        seed: 101,
        match_fraction: 0.0012,
        human_noise_fraction: 0.002,
        body_fraction: 0.0,
        ..GenOptions::default()
    };
    scan(
        bin,
        s,
        t,
        "0.1 % matches, Metadata",
        s.plain_mb,
        opts,
        1000.0,
    );
}

fn scan_bodies(bin: &Path, s: &Settings, t: &mut Table) {
    let opts = GenOptions {
        seed: 202,
        match_fraction: 0.012,
        human_noise_fraction: 0.002,
        body_fraction: 0.2,
        ..GenOptions::default()
    };
    scan(
        bin,
        s,
        t,
        "1 % matches, 3–8 KB bodies",
        s.body_mb,
        opts,
        600.0,
    );
}

fn scan(
    bin: &Path,
    s: &Settings,
    t: &mut Table,
    label: &str,
    mb: usize,
    opts: GenOptions,
    target_mb_per_cpu_s: f64,
) {
    let path = s.dir.join(format!("scan-{}.ndjson", opts.seed));
    let g = match write_log(&path, mb, opts) {
        Ok(g) => g,
        Err(e) => {
            t.row(label, &format!("n/a: cannot write the log: {e}"), "", "");
            return;
        }
    };
    let mb_total = g.bytes as f64 / 1e6;
    let note = format!(
        "{:.0} MB, {} lines, {:.2} % matching lines, {} events expected",
        mb_total,
        g.lines,
        100.0 * g.matching_lines as f64 / g.lines as f64,
        g.expected_events
    );
    // wc -l on the same file in the same run: the floor for "reading every byte".
    let mut wc_cpu = Vec::new();
    let mut wc_wall = Vec::new();
    for _ in 0..s.runs {
        let mut c = Command::new("wc");
        c.arg("-l").arg(&path);
        let r = measure(c);
        if r.ok {
            wc_cpu.push(r.cpu);
            wc_wall.push(r.wall);
        }
    }
    let mut rate = Vec::new();
    let mut lines_s = Vec::new();
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    let mut events = Vec::new();
    let mut fail = None;
    for _ in 0..s.runs {
        let r = measure(replay_cmd(bin, s, &path));
        if !r.ok {
            fail = Some(r.failure());
            break;
        }
        // Our own measurement of the child's CPU; the summary's cpu_s if ours rounds to 0.
        let c = if r.cpu > 0.0 {
            r.cpu
        } else {
            r.num("cpu_s").unwrap_or(r.wall)
        };
        cpu.push(c);
        rate.push(mb_total / c);
        lines_s.push(g.lines as f64 / c);
        rss.push(r.peak_rss_kb as f64);
        events.push(r.num("events").unwrap_or(f64::NAN));
    }
    if let Some(f) = fail {
        t.row(&format!("scan rate ({label})"), &f, "", &note);
        return;
    }
    let (rate_m, cpu_m) = (median(&mut rate), median(&mut cpu));
    let wc_m = median(&mut wc_cpu);
    let ratio = if wc_m > 0.0 {
        format!("{:.1}× wc -l CPU time", cpu_m / wc_m)
    } else {
        "wc -l under the 10 ms tick".into()
    };
    t.row(
        &format!("scan rate ({label})"),
        &format!("{rate_m:.0} MB per CPU-second"),
        &format!("≥ {target_mb_per_cpu_s:.0}"),
        &format!(
            "{note}; replay {cpu_m:.2} CPU-s; wc -l {wc_m:.2} CPU-s / {:.2} s wall; {ratio}",
            median(&mut wc_wall)
        ),
    );
    t.row(
        &format!("lines/s ({label})"),
        &format!("{:.2} M lines per CPU-second", median(&mut lines_s) / 1e6),
        "",
        "",
    );
    let ev = median(&mut events);
    t.row(
        &format!("events ({label})"),
        &if ev.is_nan() {
            "n/a: no summary line".to_string()
        } else {
            format!("{ev:.0}")
        },
        &format!("{} (gen.rs oracle)", g.expected_events),
        if ev as u64 == g.expected_events {
            "match"
        } else {
            "MISMATCH"
        },
    );
    t.row(
        &format!("peak RSS ({label})"),
        &format!("{:.1} MB", median(&mut rss) / 1024.0),
        "≤ 5 MB",
        "VmHWM",
    );
    let _ = fs::remove_file(&path);
}

fn long_lines(bin: &Path, s: &Settings, t: &mut Table) {
    // Issue 14: a matching line of any size is evaluated (in streaming mode past
    // MAX_LINE_BYTES, 16 MiB) in bounded memory, in `replay` and in `run`; so is an EventList
    // of any size, compact on one line or pretty-printed.
    let huge = s.huge_mb.max(1) * MIB;
    for (label, size) in [
        ("16 MiB line (under MAX_LINE_BYTES)", 16 * MIB - 1024),
        ("50 MB line", 50_000_000),
        ("huge line (BENCH_HUGE_MB)", huge),
    ] {
        let target = "< 24 MB, event found";
        let path = s.dir.join(format!("long-{size}.ndjson"));
        let expected = match write_long_log(&path, size) {
            Ok(n) => n + gen::LONG_LINE_EVENTS,
            Err(e) => {
                t.row(label, &format!("n/a: {e}"), target, "");
                continue;
            }
        };
        let mut rss = Vec::new();
        let mut events = Vec::new();
        let mut fail = None;
        for _ in 0..s.runs {
            let r = measure(replay_cmd(bin, s, &path));
            if !r.ok {
                fail = Some(r.failure());
                break;
            }
            rss.push(r.peak_rss_kb as f64);
            events.push(r.num("events").unwrap_or(f64::NAN));
        }
        let mb = size as f64 / 1e6;
        match fail {
            Some(f) => t.row(&format!("replay, {label}"), &f, target, ""),
            None => {
                let ev = median(&mut events);
                t.row(
                    &format!("peak RSS, replay, {label}"),
                    &format!("{:.1} MB", median(&mut rss) / 1024.0),
                    target,
                    &format!(
                        "{mb:.0} MB line; events {ev:.0} of {expected} expected{}",
                        if ev as u64 == expected {
                            ""
                        } else {
                            " — MISMATCH"
                        }
                    ),
                )
            }
        }
        let (value, note) = follow_once(bin, &path, expected, s);
        t.row(&format!("peak RSS, run, {label}"), &value, target, &note);
        let _ = fs::remove_file(&path);
    }
    for (label, pretty, mb) in [
        ("compact EventList, one line", false, 30usize),
        ("pretty-printed EventList", true, 200),
    ] {
        let target = "< 24 MB, every item evaluated";
        let path = s.dir.join(format!("list-{mb}.json"));
        let expected = match write_event_list(&path, mb * 1_000_000, pretty) {
            Ok(n) => n,
            Err(e) => {
                t.row(label, &format!("n/a: {e}"), target, "");
                continue;
            }
        };
        let r = measure(replay_cmd(bin, s, &path));
        if !r.ok {
            t.row(&format!("replay, {label}"), &r.failure(), target, "");
        } else {
            let ev = r.num("events").unwrap_or(f64::NAN);
            t.row(
                &format!("peak RSS, replay, {label}"),
                &format!("{:.1} MB", r.peak_rss_kb as f64 / 1024.0),
                target,
                &format!(
                    "{mb} MB; events {ev:.0} of {expected} expected{}; {:.2} CPU-s",
                    if ev as u64 == expected {
                        ""
                    } else {
                        " — MISMATCH"
                    },
                    r.cpu
                ),
            );
        }
        let _ = fs::remove_file(&path);
    }
}

/// `run` from the beginning of `log` against a recording sink until `expected` events arrived
/// (hang guard: 5 minutes): (peak RSS, note).
fn follow_once(bin: &Path, log: &Path, expected: u64, s: &Settings) -> (String, String) {
    let rec = match Recorder::start() {
        Ok(r) => r,
        Err(e) => return (format!("n/a: {e}"), String::new()),
    };
    let _ = fs::remove_file(s.dir.join("checkpoint"));
    let child = Command::new(bin)
        .arg("run")
        .env("HEALERT_BACKEND_URL", rec.url())
        .env("AUDIT_LOG_PATH", log)
        .env("RULES_PATH", &s.rules)
        .env("SUPPRESS_WINDOW", "0")
        .env("START_AT", "beginning")
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (format!("n/a: cannot start: {e}"), String::new()),
    };
    let pid = child.id();
    let t0 = Instant::now();
    let mut peak = 0;
    // Until every expected event arrived; a bench never waits for good: 120 s at most, and
    // not past the agent's exit.
    while (rec.events() as u64) < expected && t0.elapsed() < Duration::from_secs(120) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
        }
        thread::sleep(Duration::from_millis(10));
    }
    if let Some(kb) = vm_hwm_kb(pid) {
        peak = peak.max(kb);
    }
    let got = rec.events();
    let wall = t0.elapsed().as_secs_f64();
    stop_agent(child);
    (
        format!("{:.1} MB", peak as f64 / 1024.0),
        format!(
            "events {got} of {expected} delivered{} in {wall:.1} s",
            if got as u64 == expected {
                ""
            } else {
                " — MISMATCH"
            }
        ),
    )
}

/// An EventList of about `bytes` bytes (items from the generator; every 200th a human exec):
/// on one line, or pretty-printed with one item per line. Returns the events expected.
fn write_event_list(path: &Path, bytes: usize, pretty: bool) -> std::io::Result<u64> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut g = Generator::new(GenOptions {
        seed: 404,
        keep_expected: false,
        ..GenOptions::default()
    });
    let (open, sep, close) = if pretty {
        (
            "{\n  \"kind\": \"EventList\",\n  \"apiVersion\": \"audit.k8s.io/v1\",\n  \"items\": [\n    ",
            ",\n    ",
            "\n  ]\n}\n",
        )
    } else {
        (
            "{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[",
            ",",
            "]}\n",
        )
    };
    out.write_all(open.as_bytes())?;
    let mut written = 0;
    let mut buf = Vec::new();
    let mut first = true;
    let mut execs = 0u64;
    let mut i = 0u64;
    while written < bytes {
        buf.clear();
        if i % 200 == 0 {
            buf.extend_from_slice(&gen::long_line_with(
                600,
                &gen::rfc3339_micros(1_767_225_600_000_000 + i),
            ));
            execs += 1;
        } else {
            g.next_line(&mut buf);
        }
        i += 1;
        while buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if !first {
            out.write_all(sep.as_bytes())?;
        }
        first = false;
        out.write_all(&buf)?;
        written += buf.len() + sep.len();
    }
    out.write_all(close.as_bytes())?;
    out.flush()?;
    // The generator's own lines are not counted (keep_expected off): only the execs are
    // known; its matching traffic share is zero by default in this list.
    Ok(execs * gen::LONG_LINE_EVENTS + g.summary().expected_events)
}

fn write_long_log(path: &Path, size: usize) -> std::io::Result<u64> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut g = Generator::new(GenOptions {
        seed: 303,
        keep_expected: false,
        ..GenOptions::default()
    });
    let mut buf = Vec::new();
    for i in 0..40_000 {
        if i == 20_000 {
            out.write_all(&gen::long_line(size))?;
        }
        buf.clear();
        g.next_line(&mut buf);
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(g.summary().expected_events)
}

// ---------------------------------------------------------------------------------------------
// A recording loopback backend
// ---------------------------------------------------------------------------------------------

/// One `POST /events` as it arrived.
struct Arrival {
    at: Instant,
    body: Vec<u8>,
}

/// A std-only HTTP/1.1 backend on 127.0.0.1 that answers 200 to everything, keeps connections
/// alive, counts connections and timestamps each request body.
struct Recorder {
    addr: String,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start() -> std::io::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, c, st) = (arrivals.clone(), connections.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let (a, st) = (a.clone(), st.clone());
                        thread::spawn(move || serve(conn, a, st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Recorder {
            addr,
            arrivals,
            connections,
            stop,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn events(&self) -> usize {
        self.arrivals
            .lock()
            .map_or(0, |v| v.iter().map(|a| count_events(&a.body)).sum())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, arrivals: Arc<Mutex<Vec<Arrival>>>, stop: Arc<AtomicBool>) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    let mut idle = Instant::now();
    while !stop.load(Ordering::Relaxed) && idle.elapsed() < Duration::from_secs(120) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        if line.trim().is_empty() {
            continue;
        }
        idle = Instant::now();
        let mut len = 0usize;
        let mut chunked = false;
        let mut close = false;
        loop {
            let mut h = String::new();
            match r.read_line(&mut h) {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => return,
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let body = if chunked {
            read_chunked(&mut r)
        } else {
            let mut b = vec![0; len.min(64 * MIB)];
            r.read_exact(&mut b).ok().map(|_| b)
        };
        let Some(body) = body else { return };
        let at = Instant::now();
        if line.starts_with("POST") {
            if let Ok(mut v) = arrivals.lock() {
                v.push(Arrival { at, body });
            }
        }
        let resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            let mut end = String::new();
            r.read_line(&mut end).ok()?;
            return Some(body);
        }
        let start = body.len();
        body.resize(start + n.min(64 * MIB), 0);
        r.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf).ok()?;
    }
}

/// Events in one request body (one object, or an array of them).
fn count_events(body: &[u8]) -> usize {
    body.windows(12).filter(|w| w == b"\"entity_ref\"").count()
}

/// Every `"timestamp": "..."` value in a body.
fn timestamps(body: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut rest = &s[..];
    while let Some(i) = rest.find("\"timestamp\"") {
        rest = &rest[i + 11..];
        let v = rest.trim_start().trim_start_matches(':').trim_start();
        if let Some(v) = v.strip_prefix('"') {
            if let Some(end) = v.find('"') {
                out.push(v[..end].to_string());
            }
        }
    }
    out
}

fn delivery(bin: &Path, s: &Settings, t: &mut Table) {
    let label = "delivery (replay --send)";
    let target = "≥ 5 000 events/s, 1 connection";
    let path = s.dir.join("send.ndjson");
    // Every line one event: human `get secrets`, no RequestReceived lines.
    let g = match write_log_lines(
        &path,
        s.send_events,
        GenOptions {
            seed: 404,
            match_fraction: 1.0,
            human_noise_fraction: 0.0,
            human_system_ns_fraction: 0.0,
            rr_fraction: 0.0,
            kinds: vec![Kind::SecretGet],
            ..GenOptions::default()
        },
    ) {
        Ok(g) => g,
        Err(e) => return t.row(label, &format!("n/a: {e}"), target, ""),
    };
    let rec = match Recorder::start() {
        Ok(r) => r,
        Err(e) => {
            return t.row(
                label,
                &format!("n/a: cannot listen on loopback: {e}"),
                target,
                "",
            )
        }
    };
    let mut c = Command::new(bin);
    c.args(["replay", "--send", "--rules"])
        .arg(&s.rules)
        .arg(&path)
        .env("HEALERT_BACKEND_URL", rec.url())
        .env("HEALERT_API_KEY", "bench-key-0123456789")
        .env("SUPPRESS_WINDOW", "0")
        .env("LOG_LEVEL", "warn");
    let r = measure(c);
    let got = rec.events();
    if !r.ok || got == 0 {
        let why = if r.ok {
            "n/a: no event reached the sink".to_string()
        } else {
            r.failure()
        };
        return t.row(
            label,
            &why,
            target,
            &format!("{} events expected", g.expected_events),
        );
    }
    let (first, last) = {
        let v = rec
            .arrivals
            .lock()
            .map(|v| (v.first().map(|a| a.at), v.last().map(|a| a.at)));
        v.unwrap_or((None, None))
    };
    let span = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    t.row(
        label,
        &format!("{:.0} events/s", got as f64 / r.wall),
        target,
        &format!(
            "{got} of {} events in {:.2} s wall ({:.0}/s between first and last arrival); {} TCP connection(s); {} requests",
            g.expected_events,
            r.wall,
            if span > 0.0 { got as f64 / span } else { f64::NAN },
            rec.connections.load(Ordering::Relaxed),
            rec.arrivals.lock().map_or(0, |v| v.len())
        ),
    );
    let _ = fs::remove_file(&path);
}

fn write_log_lines(
    path: &Path,
    lines: usize,
    opts: GenOptions,
) -> std::io::Result<gen::GenSummary> {
    let mut f = BufWriter::new(File::create(path)?);
    let s = gen::generate(
        &GenOptions {
            lines: lines as u64,
            keep_expected: false,
            ..opts
        },
        &mut f,
    )?;
    Ok(s)
}

/// The sender thread of `deliver` driven through the library (what `run` and `replay --send`
/// use), so the delivery rate is measured even before the binary wires it.
fn delivery_library(_bin: &Path, s: &Settings, t: &mut Table) {
    use healert_agent::deliver::http_client::{ApiKey, BackendUrl, Client};
    use healert_agent::deliver::{spawn_sender, DeliveryOptions, Queue};
    use healert_agent::detect::event::FrictionEvent;
    use healert_agent::detect::rules::Severity;
    use healert_agent::operate::metrics::Metrics;

    let label = "delivery (deliver::spawn_sender, library)";
    let target = "≥ 5 000 events/s, 1 connection";
    let rec = match Recorder::start() {
        Ok(r) => r,
        Err(e) => return t.row(label, &format!("n/a: {e}"), target, ""),
    };
    let url = match BackendUrl::parse(&rec.url()) {
        Ok(u) => u,
        Err(e) => return t.row(label, &format!("n/a: {e}"), target, ""),
    };
    let client = Client::new(
        url,
        Some(ApiKey::new("bench-key-0123456789".into())),
        Duration::from_secs(10),
    );
    let metrics = Arc::new(Metrics::new());
    let queue: Arc<Queue<u64>> = Queue::new(10_000, Arc::clone(&metrics));
    let opts = DeliveryOptions {
        log_each_event: false,
        ..DeliveryOptions::default()
    };
    let t0 = Instant::now();
    let sender = spawn_sender(queue.clone(), client, opts, metrics);
    let n = s.send_events.max(1);
    for i in 0..n as u64 {
        let at = |offset| offset;
        let ev = FrictionEvent {
            entity_ref: "component:production/payments-api".into(),
            kind: "emergency-access".into(),
            severity: Severity::Medium,
            actor: "alice@example.com".into(),
            workflow: "incident".into(),
            description: format!(
                "Direct secret access: db-credentials-{i} in production by alice@example.com"
            ),
            timestamp: gen::rfc3339_micros(1_767_225_600_000_000 + i),
            namespace: "production".into(),
            service: "payments-api".into(),
            repeat: Default::default(),
        };
        if !queue.push_line(at(i * 1000), at(i * 1000 + 1000), 0, vec![ev]) {
            break;
        }
    }
    let stats = sender.finish(Instant::now() + Duration::from_secs(60));
    let wall = t0.elapsed().as_secs_f64();
    let got = rec.events();
    t.row(
        label,
        &format!("{:.0} events/s", stats.sent as f64 / wall),
        target,
        &format!(
            "{} sent, {} at the sink, {} retries, {} TCP connection(s), {:.2} s",
            stats.sent,
            got,
            stats.retries,
            rec.connections.load(Ordering::Relaxed),
            wall
        ),
    );
}

/// Starts `healert-agent run` on `log` against `backend`; returns the child and the time to
/// its first stderr line (the banner), or why it did not start.
fn start_agent(
    bin: &Path,
    log: &Path,
    backend: &str,
    s: &Settings,
) -> Result<(Child, f64), String> {
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .env("HEALERT_BACKEND_URL", backend)
        .env("HEALERT_API_KEY", "bench-key-0123456789")
        .env("AUDIT_LOG_PATH", log)
        .env("RULES_PATH", &s.rules)
        .env("SUPPRESS_WINDOW", "0")
        .env("START_AT", "end")
        .env("CHECKPOINT_PATH", s.dir.join("checkpoint"))
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("n/a: cannot start: {e}"))?;
    let mut err = BufReader::new(child.stderr.take().ok_or("n/a: no stderr")?);
    let mut first = String::new();
    let _ = err.read_line(&mut first);
    let banner = t0.elapsed().as_secs_f64();
    // Keep draining stderr so the agent never blocks on a full pipe.
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    thread::sleep(Duration::from_millis(300));
    if let Ok(Some(st)) = child.try_wait() {
        return Err(format!(
            "n/a: agent exited ({st}): {}",
            first.trim().chars().take(100).collect::<String>()
        ));
    }
    Ok((child, banner))
}

fn stop_agent(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(25) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn latency_and_idle(bin: &Path, s: &Settings, t: &mut Table) {
    let target = "p50 ≤ 150 ms, p90 ≤ 300 ms";
    let log = s.dir.join("follow.ndjson");
    // Some history the agent must skip (START_AT=end).
    if let Err(e) = write_log_lines(
        &log,
        1000,
        GenOptions {
            seed: 505,
            ..GenOptions::default()
        },
    ) {
        return t.row("latency", &format!("n/a: {e}"), target, "");
    }
    let rec = match Recorder::start() {
        Ok(r) => r,
        Err(e) => return t.row("latency", &format!("n/a: {e}"), target, ""),
    };
    let (child, _) = match start_agent(bin, &log, &rec.url(), s) {
        Ok(x) => x,
        Err(e) => {
            t.row("latency (append → sink)", &e, target, "");
            t.row("idle CPU", &e, "≤ 0.2 % of a core", "");
            return;
        }
    };
    let pid = child.id();
    // Matching lines, one event each, appended one at a time 50–100 ms apart.
    let mut g = Generator::new(GenOptions {
        seed: 606,
        lines: u64::MAX,
        match_fraction: 1.0,
        human_noise_fraction: 0.0,
        human_system_ns_fraction: 0.0,
        rr_fraction: 0.0,
        kinds: vec![Kind::SecretGet],
        start_unix_micros: Some(now_unix_micros()),
        ..GenOptions::default()
    });
    let mut appended: HashMap<String, Instant> = HashMap::new();
    let mut file = match OpenOptions::new().append(true).open(&log) {
        Ok(f) => f,
        Err(e) => {
            stop_agent(child);
            return t.row("latency", &format!("n/a: {e}"), target, "");
        }
    };
    let mut rng = gen::Rng::new(7);
    for _ in 0..s.latency_lines {
        let mut buf = Vec::new();
        let ts = match g.next_line(&mut buf) {
            0 => None,
            _ => g.summary().expected.last().map(|e| e.timestamp.clone()),
        };
        if file.write_all(&buf).is_err() {
            break;
        }
        if let Some(ts) = ts {
            appended.insert(ts, Instant::now());
        }
        thread::sleep(Duration::from_millis(50 + rng.below(51)));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec.events() < appended.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let mut lat: Vec<f64> = Vec::new();
    if let Ok(v) = rec.arrivals.lock() {
        for a in v.iter() {
            for ts in timestamps(&a.body) {
                if let Some(t0) = appended.get(&ts) {
                    lat.push(a.at.duration_since(*t0).as_secs_f64() * 1000.0);
                }
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    if lat.is_empty() {
        t.row(
            "latency (append → sink)",
            "n/a: no appended event reached the sink within 10 s",
            target,
            "",
        );
    } else {
        t.row(
            "latency (append → sink)",
            &format!(
                "p50 {:.0} ms, p90 {:.0} ms",
                percentile(&lat, 0.5),
                percentile(&lat, 0.9)
            ),
            target,
            &format!(
                "{} of {} events arrived; max {:.0} ms; default POLL_INTERVAL",
                lat.len(),
                appended.len(),
                lat.last().copied().unwrap_or(f64::NAN)
            ),
        );
    }
    // Idle: nothing is appended; how much CPU does following a quiet file cost?
    thread::sleep(Duration::from_secs(1));
    let c0 = process_cpu_secs(pid);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(s.idle_secs));
    let c1 = process_cpu_secs(pid);
    match (c0, c1) {
        (Some(a), Some(b)) => {
            let pct = 100.0 * (b - a) / t0.elapsed().as_secs_f64();
            t.row(
                "idle CPU",
                &format!("{pct:.2} % of a core"),
                "≤ 0.2 %",
                &format!(
                    "{:.2} CPU-s over {} s (10 ms ticks); RSS {:.1} MB",
                    b - a,
                    s.idle_secs,
                    vm_hwm_kb(pid).unwrap_or(0) as f64 / 1024.0
                ),
            );
        }
        _ => t.row("idle CPU", "n/a: agent exited while idle", "≤ 0.2 %", ""),
    }
    stop_agent(child);
    let _ = fs::remove_file(&log);
}

/// The filesystem type of the mount holding `path` (from /proc/mounts), for the fsync figures.
fn fs_type(path: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2).then(|| (f[1].to_string(), f[2].to_string()))
        })
        .filter(|(m, _)| path.starts_with(m))
        .max_by_key(|(m, _)| m.len())
        .map_or_else(|| "unknown".into(), |(m, t)| format!("{t} on {m}"))
}

/// The webhook (AUDIT_SOURCE=webhook): 400-event batches of Metadata-level events, 0.1 % of them
/// matching, posted one after the other on one kept-alive connection as kube-apiserver does.
/// Throughput per CPU-second of the agent (every thread: the batch's judging, the spool, the
/// follower reading it back, the sender), and POST→200 latency, also for the batches whose
/// events were synced to disk.
fn webhook(bin: &Path, s: &Settings, t: &mut Table) {
    const TOKEN: &str = "bench-webhook-token";
    let na = |t: &mut Table, why: String| {
        t.row(
            "webhook intake, 400-event batches",
            &format!("n/a: {why}"),
            "≥ 50 000 events/CPU-s",
            "",
        )
    };
    let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return na(t, e.to_string()),
    };
    let spool = s.dir.join("spool");
    let mut child = match Command::new(bin)
        .arg("run")
        .env("HEALERT_BACKEND_URL", "http://127.0.0.1:9")
        .env("RULES_PATH", &s.rules)
        .env("SUPPRESS_WINDOW", "0")
        .env("AUDIT_SOURCE", "webhook")
        .env("AUDIT_WEBHOOK_ADDR", format!("127.0.0.1:{port}"))
        .env("AUDIT_WEBHOOK_TOKEN", TOKEN)
        .env("SPOOL_PATH", &spool)
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return na(t, e.to_string()),
    };
    let pid = child.id();
    let mut conn = None;
    for _ in 0..250 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            conn = Some(c);
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let Some(mut conn) = conn else {
        let _ = child.kill();
        let _ = child.wait();
        return na(t, "the webhook did not come up".into());
    };
    let _ = conn.set_nodelay(true);
    let mut g = Generator::new(GenOptions {
        seed: 303,
        match_fraction: 0.0012,
        human_noise_fraction: 0.002,
        body_fraction: 0.0,
        keep_expected: false,
        ..GenOptions::default()
    });
    let mut line = Vec::new();
    let mut all = Vec::new();
    let mut synced = Vec::new();
    let mut events = 0u64;
    let mut bytes = 0u64;
    let mut post_secs = 0.0;
    let cpu0 = process_cpu_secs(pid).unwrap_or(0.0);
    for _ in 0..s.webhook_batches {
        let mut body = Vec::with_capacity(512 << 10);
        body.extend_from_slice(
            br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#,
        );
        for i in 0..400 {
            line.clear();
            g.next_line(&mut line);
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(line.trim_ascii_end());
        }
        body.extend_from_slice(b"]}");
        let head = format!(
            "POST /audit?timeout=30s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let t0 = Instant::now();
        if conn
            .write_all(head.as_bytes())
            .and_then(|()| conn.write_all(&body))
            .is_err()
        {
            break;
        }
        let Some((status, answer)) = read_answer(&mut conn) else {
            break;
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if status != 200 {
            eprintln!("bench: webhook answered {status}: {answer}");
            break;
        }
        post_secs += ms / 1000.0;
        all.push(ms);
        if !answer.contains("\"spooled\":0,") {
            synced.push(ms);
        }
        events += 400;
        bytes += body.len() as u64;
    }
    // Let the follower read back what was spooled before taking the CPU time.
    thread::sleep(Duration::from_millis(500));
    let cpu = process_cpu_secs(pid).unwrap_or(0.0) - cpu0;
    let rss = vm_hwm_kb(pid);
    drop(conn);
    stop_agent(child);
    if all.is_empty() {
        return na(t, "no batch was accepted".into());
    }
    all.sort_by(|a, b| a.total_cmp(b));
    synced.sort_by(|a, b| a.total_cmp(b));
    let per_cpu = if cpu > 0.0 {
        events as f64 / cpu
    } else {
        f64::NAN
    };
    t.row(
        "webhook intake, 400-event batches, 0.1 % matching",
        &format!(
            "{:.0} events per CPU-second ({:.0} events/s wall, {:.0} MB/s)",
            per_cpu,
            events as f64 / post_secs,
            bytes as f64 / 1e6 / post_secs
        ),
        "≥ 50 000 events/s on one core",
        &format!(
            "{} batches, {:.2} CPU-s of the agent (all threads), peak RSS {} kB",
            all.len(),
            cpu,
            rss.map_or("n/a".into(), |r| r.to_string())
        ),
    );
    t.row(
        "webhook POST→200, 400-event batch",
        &format!(
            "p50 {:.1} ms, p99 {:.1} ms; with fdatasync (events spooled): p50 {:.1} ms, p99 {:.1} ms ({} batches)",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&synced, 0.5),
            percentile(&synced, 0.99),
            synced.len()
        ),
        "p99 < 50 ms including the fsync",
        &format!("spool on {}", fs_type(&s.dir)),
    );
}

/// One HTTP answer on a kept-alive connection: status and body.
fn read_answer(conn: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn startup(bin: &Path, s: &Settings, t: &mut Table) {
    let log = s.dir.join("startup.ndjson");
    if let Err(e) = File::create(&log) {
        return t.row("startup to banner", &format!("n/a: {e}"), "≤ 10 ms", "");
    }
    // Nothing listens on the backend port: startup must not wait for the backend.
    let backend = "http://127.0.0.1:9";
    let mut times = Vec::new();
    for _ in 0..5 {
        match start_agent(bin, &log, backend, s) {
            Ok((child, banner)) => {
                times.push(banner * 1000.0);
                stop_agent(child);
            }
            Err(e) => return t.row("startup to banner", &e, "≤ 10 ms", ""),
        }
    }
    t.row(
        "startup to banner",
        &format!("{:.1} ms", median(&mut times)),
        "≤ 10 ms",
        "spawn → first stderr line, median of 5",
    );
}

fn binary_size(bin: &Path, _s: &Settings, t: &mut Table) {
    match fs::metadata(bin) {
        Ok(m) => t.row(
            "binary size",
            &format!("{:.2} MB ({} bytes)", m.len() as f64 / 1e6, m.len()),
            "≤ 1.5 MB stripped",
            "release profile: lto, strip, panic=abort",
        ),
        Err(e) => t.row("binary size", &format!("n/a: {e}"), "≤ 1.5 MB", ""),
    }
}

fn now_unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn utc_now() -> String {
    let us = now_unix_micros();
    let mut s = gen::rfc3339_micros(us);
    s.truncate(19);
    let _ = write!(s, "Z");
    s
}
