//! The suppression window: the same rule, entity and actor within a window are sent once.
//!
//! The first event of a key (rule, entity ref, actor) is sent at once and opens a window of the
//! rule's `suppress:` (else `SUPPRESS_WINDOW`); later events of the key while it is open are
//! counted, not sent; when the window closes with a count above zero, one summary event is sent
//! whose description ends in `(41 more times in 10m)`. With a rule's `same_act:`, an event whose
//! verb differs from the previous event of its key and that comes less than `same_act` after it
//! (audit timestamps) is the second half of the same act — kubectl 1.30+ logs one exec as
//! `get pods/exec` and, on fallback, `create pods/exec` half a second later — and is not
//! counted at all.
//!
//! [`Suppressor`] is a pure state machine: the caller decides ([`Suppressor::decide`]), then
//! applies the decision once it is final ([`Suppressor::apply`]). `run` and `replay --send`
//! keep it inside the [`crate::deliver::Queue`], under the queue's lock, and apply a decision
//! only when the event is acknowledged (sent, dead-lettered, or counted), so the state always
//! describes exactly the records before the acknowledged position: saved together with the
//! checkpoint ([`Suppressor::encode`], with the checkpoint's own bytes embedded), a restart
//! re-reads the records after the checkpoint and re-applies exactly them. `replay` and
//! `explain` apply each decision at once, on audit-event time.
//!
//! A window's length is its rule's window when it opened, and whatever the rule says when a
//! repeat arrives (a reload or a restart with another `suppress:` applies to open windows).
//!
//! Time: `run` measures windows on the wall clock ([`Clock::Wall`]); `replay` and `explain`
//! on the audit events' `requestReceivedTimestamp` ([`Clock::EventTime`]: the window closes
//! when a later event is past its end, and every open window closes at the end of the input).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::detect::event::{truncate, FrictionEvent, Parts, MAX_DESCRIPTION};
use crate::detect::rules::Severity;
use crate::operate::clock::{human_duration, now_unix_ms, parse_rfc3339_ms, rfc3339_millis};

/// Most windows open at once; past it a new key's events are sent without a window (counted in
/// `healert_agent_suppress_overflow_total`), so memory and the state file stay bounded.
pub const MAX_WINDOWS: usize = 4096;
/// Largest state file read back (4096 windows of a few hundred bytes, with room).
pub const MAX_STATE_BYTES: usize = 8 << 20;
/// First line of the state file.
pub const HEADER: &str = "healert-agent suppression v1";

/// Which clock measures the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The agent's wall clock (`run`).
    Wall,
    /// The latest audit timestamp seen (`replay`, `explain`): deterministic offline.
    EventTime,
}

/// What becomes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sent; it opens a window when its rule has one.
    Send,
    /// A repeat inside an open window: counted into the summary, not sent.
    Repeat,
    /// The other half of the previous event's act (`same_act`): neither sent nor counted.
    SameAct,
}

/// (rule, entity ref, actor).
type Key = (String, String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    opened_ms: u64,
    len_ms: u64,
    count: u64,
    merged: u64,
    /// The previous event of the key: its verb, audit time, and whether it was merged.
    last_verb: String,
    last_at_ms: Option<u64>,
    last_merged: bool,
    /// Timestamp of the latest repeat (the summary's timestamp).
    last_timestamp: String,
    /// The first event: the summary repeats its fields.
    first: FrictionEvent,
}

impl Window {
    fn end_ms(&self) -> u64 {
        self.opened_ms.saturating_add(self.len_ms)
    }
}

/// What a summary closes: the key to pass back to [`Suppressor::summary_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryKey(Key);

/// The suppression state. See the module documentation.
#[derive(Debug, Clone)]
pub struct Suppressor {
    default_window: Duration,
    clock: Clock,
    /// The latest audit time seen (EventTime), ms.
    event_clock_ms: u64,
    windows: BTreeMap<Key, Window>,
    /// Bumped on every change, so a saver knows whether to write.
    generation: u64,
    /// A first event or a summary was acknowledged since the last [`Suppressor::take_urgent`]:
    /// save now, so a restart cannot send it again.
    urgent: bool,
}

/// Parses an event's timestamp (ms), if it is one.
fn at_ms(ev: &FrictionEvent) -> Option<u64> {
    parse_rfc3339_ms(&ev.timestamp)
}

impl Suppressor {
    pub fn new(default_window: Duration, clock: Clock) -> Suppressor {
        Suppressor {
            default_window,
            clock,
            event_clock_ms: 0,
            windows: BTreeMap::new(),
            generation: 0,
            urgent: false,
        }
    }

    /// The window that applies to `ev` (zero: never suppressed).
    pub fn window_of(&self, ev: &FrictionEvent) -> Duration {
        ev.repeat.window.unwrap_or(self.default_window)
    }

    /// Now, on this suppressor's clock (ms).
    pub fn now_ms(&self) -> u64 {
        match self.clock {
            Clock::Wall => now_unix_ms(),
            Clock::EventTime => self.event_clock_ms,
        }
    }

    /// Lets an event's audit time advance the clock (EventTime only).
    pub fn observe(&mut self, ev: &FrictionEvent) {
        if self.clock == Clock::EventTime {
            if let Some(t) = at_ms(ev) {
                self.event_clock_ms = self.event_clock_ms.max(t);
            }
        }
    }

    /// Open windows.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether something happened that must be saved at once (a first event or a summary was
    /// acknowledged); clears the flag.
    pub fn take_urgent(&mut self) -> bool {
        std::mem::take(&mut self.urgent)
    }

    fn key(ev: &FrictionEvent) -> Key {
        (ev.kind.clone(), ev.entity_ref.clone(), ev.actor.clone())
    }

    /// What to do with `ev` at `now` (ms, [`Suppressor::now_ms`]). Call [`Suppressor::due`]
    /// with the same `now` until it returns `None` first: a window past its end must be
    /// summarised before its key can open a new one.
    pub fn decide(&self, ev: &FrictionEvent, now: u64) -> Decision {
        if self.window_of(ev).is_zero() {
            return Decision::Send;
        }
        let Some(w) = self
            .windows
            .get(&(ev.kind.clone(), ev.entity_ref.clone(), ev.actor.clone()))
        else {
            return Decision::Send;
        };
        if now >= w.end_ms() {
            return Decision::Send;
        }
        let same_act = match (ev.repeat.same_act, at_ms(ev), w.last_at_ms) {
            (Some(span), Some(t), Some(prev)) => {
                !w.last_merged
                    && ev.repeat.verb != w.last_verb
                    && u128::from(t.abs_diff(prev)) < span.as_millis()
            }
            _ => false,
        };
        if same_act {
            Decision::SameAct
        } else {
            Decision::Repeat
        }
    }

    /// Records the final decision for `ev`. False when a first event found no room for its
    /// window ([`MAX_WINDOWS`]): it is sent, and its repeats will be too.
    pub fn apply(&mut self, ev: &FrictionEvent, d: Decision) -> bool {
        self.generation += 1;
        let now = self.now_ms();
        let key = Suppressor::key(ev);
        match d {
            Decision::Send => {
                let len = self.window_of(ev);
                if len.is_zero() {
                    return true;
                }
                if self.windows.len() >= MAX_WINDOWS && !self.windows.contains_key(&key) {
                    return false;
                }
                self.urgent = true;
                self.windows.insert(
                    key,
                    Window {
                        opened_ms: now,
                        len_ms: len.as_millis().min(u128::from(u64::MAX)) as u64,
                        count: 0,
                        merged: 0,
                        last_verb: ev.repeat.verb.clone(),
                        last_at_ms: at_ms(ev),
                        last_merged: false,
                        last_timestamp: ev.timestamp.clone(),
                        first: ev.clone(),
                    },
                );
                true
            }
            Decision::Repeat | Decision::SameAct => {
                // A repeat carries its rule's window as configured now: after a reload or a
                // restart with another `suppress:`, the open window takes it on.
                let len = self.window_of(ev).as_millis().min(u128::from(u64::MAX)) as u64;
                if let Some(w) = self.windows.get_mut(&key) {
                    w.len_ms = len;
                    let merged = d == Decision::SameAct;
                    if merged {
                        w.merged += 1;
                    } else {
                        w.count += 1;
                        w.last_timestamp = ev.timestamp.clone();
                    }
                    w.last_merged = merged;
                    w.last_verb = ev.repeat.verb.clone();
                    w.last_at_ms = at_ms(ev);
                }
                true
            }
        }
    }

    /// The next summary to send at `now` (ms): the earliest window past its end with repeats
    /// to report. Windows past their end without repeats are closed on the way. `all`: every
    /// open window counts as closed (the end of a replay).
    pub fn due(&mut self, all: bool, now: u64) -> Option<(SummaryKey, FrictionEvent)> {
        let before = self.windows.len();
        self.windows
            .retain(|_, w| w.count > 0 || (!all && now < w.end_ms()));
        if self.windows.len() != before {
            self.generation += 1;
        }
        let (key, w) = self
            .windows
            .iter()
            .filter(|(_, w)| all || now >= w.end_ms())
            .min_by_key(|(_, w)| w.end_ms())?;
        Some((SummaryKey(key.clone()), summary(w)))
    }

    /// The summary for `key` was acknowledged: its window is closed.
    pub fn summary_done(&mut self, key: &SummaryKey) {
        if self.windows.remove(&key.0).is_some() {
            self.generation += 1;
            self.urgent = true;
        }
    }

    /// How long until the next window ends (wall clock), if one is open.
    pub fn next_end_in(&self) -> Option<Duration> {
        let now = self.now_ms();
        self.windows
            .values()
            .map(|w| Duration::from_millis(w.end_ms().saturating_sub(now)))
            .min()
    }

    /// Repeats counted so far in open windows (for tests and `explain`).
    pub fn pending_repeats(&self) -> u64 {
        self.windows.values().map(|w| w.count).sum()
    }

    /// The state as text, with `embedded` (the checkpoint written with it) inside:
    ///
    /// ```text
    /// healert-agent suppression v1
    /// clock=0
    /// checkpoint=<the checkpoint file, percent-encoded>
    /// window=<opened_ms> <len_ms> <count> <merged> <last_at_ms|-> <last_merged> =<last_verb> ...
    /// checksum=<FNV-1a 64 of everything above>
    /// ```
    ///
    /// Every string is written as `=` and its bytes percent-encoded outside printable ASCII
    /// (and `%`, space), so an audit value cannot break a line or a field.
    pub fn encode(&self, embedded: &[u8]) -> Vec<u8> {
        let mut b = String::with_capacity(256 + self.windows.len() * 400);
        let _ = writeln!(b, "{HEADER}");
        let _ = writeln!(b, "clock={}", self.event_clock_ms);
        let _ = writeln!(b, "checkpoint={}", pct(embedded));
        for w in self.windows.values() {
            let e = &w.first;
            let opt =
                |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
            let _ = write!(
                b,
                "window={} {} {} {} {} {}",
                w.opened_ms,
                w.len_ms,
                w.count,
                w.merged,
                w.last_at_ms.map_or("-".to_string(), |t| t.to_string()),
                u8::from(w.last_merged),
            );
            for s in [
                &w.last_verb,
                &w.last_timestamp,
                &e.kind,
                e.severity.as_str(),
                &e.actor,
                &e.workflow,
                &e.description,
                &e.timestamp,
                &e.namespace,
                &e.service,
                &e.entity_ref,
                &e.repeat.verb,
            ] {
                let _ = write!(b, " ={}", pct(s.as_bytes()));
            }
            let _ = writeln!(b, " {} {}", opt(e.repeat.window), opt(e.repeat.same_act));
        }
        let sum = fnv1a64(b.as_bytes());
        let _ = writeln!(b, "checksum={sum:016x}");
        b.into_bytes()
    }

    /// Reads [`Suppressor::encode`]'s text back: the state and the embedded checkpoint bytes.
    /// Strict and bounded; an error says which line is wrong.
    pub fn decode(
        bytes: &[u8],
        default_window: Duration,
        clock: Clock,
    ) -> Result<(Suppressor, Vec<u8>), String> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(format!("larger than {MAX_STATE_BYTES} bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let body_end = text
            .rfind("checksum=")
            .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
            .ok_or("no checksum line (a torn write)")?;
        let stored = text[body_end + 9..].trim_end_matches('\n');
        let computed = format!("{:016x}", fnv1a64(&bytes[..body_end]));
        if stored != computed {
            return Err(format!(
                "checksum mismatch (stored {stored:?}, content hashes to {computed})"
            ));
        }
        let mut lines = text[..body_end].lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            other => {
                return Err(format!(
                    "line 1 is {:?}, expected {HEADER:?}",
                    other.map(|o| o.1).unwrap_or("")
                ))
            }
        }
        let mut s = Suppressor::new(default_window, clock);
        let mut embedded = None;
        for (i, line) in lines {
            let n = i + 1;
            let bad = |why: &str| format!("line {n}: {why}");
            if let Some(v) = line.strip_prefix("clock=") {
                s.event_clock_ms = v.parse().map_err(|_| bad("clock is not a number"))?;
            } else if let Some(v) = line.strip_prefix("checkpoint=") {
                embedded = Some(unpct(v).ok_or_else(|| bad("bad percent-encoding"))?);
            } else if let Some(v) = line.strip_prefix("window=") {
                if s.windows.len() >= MAX_WINDOWS {
                    return Err(bad("more windows than MAX_WINDOWS"));
                }
                let w = window(v).ok_or_else(|| bad("malformed window"))?;
                s.windows.insert(Suppressor::key(&w.first), w);
            } else {
                return Err(bad("unknown line"));
            }
        }
        let embedded = embedded.ok_or("no checkpoint line")?;
        Ok((s, embedded))
    }
}

/// One `window=` line's value.
fn window(v: &str) -> Option<Window> {
    let f: Vec<&str> = v.split(' ').collect();
    if f.len() != 20 {
        return None;
    }
    let num = |s: &str| s.parse::<u64>().ok();
    let opt_num = |s: &str| {
        if s == "-" {
            Some(None)
        } else {
            num(s).map(Some)
        }
    };
    let text = |s: &str| {
        let b = unpct(s.strip_prefix('=')?)?;
        String::from_utf8(b).ok()
    };
    let dur = |s: &str| opt_num(s).map(|o| o.map(Duration::from_millis));
    let severity = match text(f[9])?.as_str() {
        "high" => Severity::High,
        "medium" => Severity::Medium,
        "low" => Severity::Low,
        _ => return None,
    };
    let first = FrictionEvent {
        kind: text(f[8])?,
        severity,
        actor: text(f[10])?,
        workflow: text(f[11])?,
        description: text(f[12])?,
        timestamp: text(f[13])?,
        namespace: text(f[14])?,
        service: text(f[15])?,
        entity_ref: text(f[16])?,
        repeat: crate::detect::event::Repeat {
            verb: text(f[17])?,
            window: dur(f[18])?,
            same_act: dur(f[19])?,
        },
    };
    Some(Window {
        opened_ms: num(f[0])?,
        len_ms: num(f[1])?,
        count: num(f[2])?,
        merged: num(f[3])?,
        last_at_ms: opt_num(f[4])?,
        last_merged: match f[5] {
            "0" => false,
            "1" => true,
            _ => return None,
        },
        last_verb: text(f[6])?,
        last_timestamp: text(f[7])?,
        first,
    })
}

/// The summary event of a closed window: the first event's fields, the latest repeat's
/// timestamp, and the count at the end of the description, built by `FrictionEvent::new` like
/// every event (so the backend's limits hold).
fn summary(w: &Window) -> FrictionEvent {
    let n = w.count;
    let suffix = format!(
        " ({n} more time{} in {})",
        if n == 1 { "" } else { "s" },
        human_duration(Duration::from_millis(w.len_ms))
    );
    let room = MAX_DESCRIPTION.saturating_sub(suffix.chars().count());
    let description = truncate(&w.first.description, room) + &suffix;
    let end = w.end_ms();
    let now = move || rfc3339_millis(end);
    let e = &w.first;
    let mut ev = FrictionEvent::new(Parts {
        kind: &e.kind,
        severity: e.severity,
        actor: &e.actor,
        workflow: &e.workflow,
        description: &description,
        timestamp: &w.last_timestamp,
        now: &now,
        namespace: &e.namespace,
        workload: &e.service,
    });
    ev.repeat = e.repeat.clone();
    ev
}

fn pct(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if (0x21..=0x7e).contains(&c) && c != b'%' {
            s.push(c as char);
        } else {
            let _ = write!(s, "%{c:02X}");
        }
    }
    s
}

fn unpct(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn fnv1a64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::event::Repeat;

    fn ev(verb: &str, ts: &str) -> FrictionEvent {
        let now = || "NOW".to_string();
        let mut e = FrictionEvent::new(Parts {
            kind: "kubectl-exec",
            severity: Severity::High,
            actor: "alice two\n%",
            workflow: "deploy",
            description: "kubectl exec on pods/web-0 (ns:shop) by alice",
            timestamp: ts,
            now: &now,
            namespace: "shop",
            workload: "web",
        });
        e.repeat = Repeat {
            window: Some(Duration::from_secs(600)),
            same_act: Some(Duration::from_secs(2)),
            verb: verb.into(),
        };
        e
    }

    /// Replays `events` the way `replay` does; returns what was sent.
    fn run(s: &mut Suppressor, events: &[FrictionEvent]) -> Vec<FrictionEvent> {
        let mut sent = Vec::new();
        for e in events {
            s.observe(e);
            let now = s.now_ms();
            while let Some((k, sum)) = s.due(false, now) {
                sent.push(sum);
                s.summary_done(&k);
            }
            let d = s.decide(e, now);
            s.apply(e, d);
            if d == Decision::Send {
                sent.push(e.clone());
            }
        }
        while let Some((k, sum)) = s.due(true, s.now_ms()) {
            sent.push(sum);
            s.summary_done(&k);
        }
        sent
    }

    #[test]
    fn a_flood_is_one_event_and_one_summary() {
        let mut s = Suppressor::new(Duration::ZERO, Clock::EventTime);
        let flood: Vec<_> = (0..1000)
            .map(|i| {
                ev(
                    "create",
                    &format!("2026-01-01T00:00:{:02}.{:03}Z", i / 100, i % 1000),
                )
            })
            .collect();
        let sent = run(&mut s, &flood);
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[1].description,
            "kubectl exec on pods/web-0 (ns:shop) by alice (999 more times in 10m)"
        );
        assert_eq!(sent[1].entity_ref, sent[0].entity_ref);
        assert_eq!(s.open_windows(), 0);
    }

    #[test]
    fn a_get_create_pair_is_one_act_and_windows_reopen_after_their_end() {
        let mut s = Suppressor::new(Duration::ZERO, Clock::EventTime);
        let sent = run(
            &mut s,
            &[
                ev("get", "2026-01-01T00:00:00.296Z"),
                ev("create", "2026-01-01T00:00:00.770Z"),
            ],
        );
        assert_eq!(sent.len(), 1, "{sent:?}");
        // Two execs (two pairs) in the window: one event, one summary of one more time; a
        // third exec after the window's end opens a new one.
        let sent = run(
            &mut s,
            &[
                ev("get", "2026-01-01T01:00:00.000Z"),
                ev("create", "2026-01-01T01:00:00.500Z"),
                ev("get", "2026-01-01T01:00:05.000Z"),
                ev("create", "2026-01-01T01:00:05.400Z"),
                ev("get", "2026-01-01T01:20:00.000Z"),
            ],
        );
        let d: Vec<&str> = sent.iter().map(|e| e.description.as_str()).collect();
        assert_eq!(
            d,
            [
                "kubectl exec on pods/web-0 (ns:shop) by alice",
                "kubectl exec on pods/web-0 (ns:shop) by alice (1 more time in 10m)",
                "kubectl exec on pods/web-0 (ns:shop) by alice",
            ]
        );
        assert_eq!(sent[1].timestamp, "2026-01-01T01:00:05.000Z");
    }

    #[test]
    fn a_repeat_brings_its_rules_current_window() {
        let mut s = Suppressor::new(Duration::ZERO, Clock::EventTime);
        let first = ev("create", "2026-01-01T00:00:00Z");
        let mut again = ev("create", "2026-01-01T00:00:03Z");
        again.repeat.window = Some(Duration::from_secs(2));
        let sent = run(&mut s, &[first, again.clone(), again]);
        let d: Vec<&str> = sent.iter().map(|e| e.description.as_str()).collect();
        // The second event is a repeat of the 10m window, which then lasts 2 s: the third (3 s
        // after the first) comes after its end.
        assert_eq!(
            d,
            [
                "kubectl exec on pods/web-0 (ns:shop) by alice",
                "kubectl exec on pods/web-0 (ns:shop) by alice (1 more time in 2s)",
                "kubectl exec on pods/web-0 (ns:shop) by alice",
            ]
        );
    }

    #[test]
    fn no_window_means_every_event_is_sent() {
        let mut s = Suppressor::new(Duration::ZERO, Clock::EventTime);
        let mut e = ev("create", "2026-01-01T00:00:00Z");
        e.repeat.window = None;
        assert_eq!(run(&mut s, &[e.clone(), e.clone(), e]).len(), 3);
        let mut s = Suppressor::new(Duration::from_secs(60), Clock::EventTime);
        let mut e = ev("create", "2026-01-01T00:00:00Z");
        e.repeat.window = None;
        assert_eq!(run(&mut s, &[e.clone(), e.clone(), e]).len(), 2);
    }

    #[test]
    fn state_round_trips_and_damage_is_named() {
        let mut s = Suppressor::new(Duration::ZERO, Clock::EventTime);
        let e = ev("get", "2026-01-01T00:00:00Z");
        s.observe(&e);
        s.apply(&e, Decision::Send);
        s.apply(&ev("create", "2026-01-01T00:00:09Z"), Decision::Repeat);
        let cp = b"healert-agent checkpoint v1\npath=/x y\n";
        let bytes = s.encode(cp);
        let (back, emb) = Suppressor::decode(&bytes, Duration::ZERO, Clock::EventTime).unwrap();
        assert_eq!(emb, cp);
        assert_eq!(back.windows, s.windows);
        assert_eq!(back.event_clock_ms, s.event_clock_ms);
        let mut broken = bytes.clone();
        broken[40] ^= 1;
        assert!(
            Suppressor::decode(&broken, Duration::ZERO, Clock::EventTime)
                .unwrap_err()
                .contains("checksum")
        );
        let torn = &bytes[..bytes.len() - 30];
        assert!(Suppressor::decode(torn, Duration::ZERO, Clock::EventTime).is_err());
    }

    #[test]
    fn windows_are_bounded() {
        let mut s = Suppressor::new(Duration::from_secs(60), Clock::EventTime);
        for i in 0..MAX_WINDOWS + 3 {
            let mut e = ev("create", "2026-01-01T00:00:00Z");
            e.entity_ref = format!("component:shop/w{i}");
            assert_eq!(s.apply(&e, Decision::Send), i < MAX_WINDOWS);
        }
        assert_eq!(s.open_windows(), MAX_WINDOWS);
    }
}
