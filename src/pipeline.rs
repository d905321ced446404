//! The one pipeline stage: source → detector → queue, shared by `run` (the file follower) and
//! `replay` (a stream, with `--send` into the same queue and sender).
//!
//! [`Stage`] pulls one record at a time from any [`Source`], runs it through the
//! [`Detector`], applies the [`ResumePoint`] (the events of the first record that were already
//! accepted before a clean stop are not produced again) and returns a [`Step`] the caller
//! counts and forwards. [`Feeder`] is how a step reaches the delivery [`Queue`]: events in
//! order once there is room (the caller's `wait` runs while there is none), records without
//! events only move the acknowledged place forward, in batches, so the hot path takes no lock
//! for the lines that match nothing.
//!
//! What this module does not do: start threads, handle signals, save checkpoints (that is
//! `agent`'s wiring), or know what a place is (the source decides).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::deliver::{Queue, Room};
use crate::detect::audit::{extract, EVENT_LIST, EVENT_SPEC};
use crate::detect::json::JsonError;
use crate::detect::{Detector, FrictionEvent, LineVerdict, ListTally, Verdict};
use crate::operate::log::Throttle;
use crate::operate::metrics::Metrics;
use crate::source::prune::{prune_all, Caps, PruneError, PruneErrorKind};
use crate::source::{Next, Place, Read, Source, Unreadable};
use crate::{info, warn};

/// Where to resume: the first place not acknowledged, and how many events of the record that
/// starts there were already accepted (a checkpoint's `offset` and `skip_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint<P> {
    pub position: P,
    pub skip: u32,
}

/// What one [`Stage::step`] did.
#[derive(Debug)]
pub enum Step<P> {
    /// A record went through detection.
    Record {
        start: P,
        end: P,
        /// Index within the record of `events[0]` (non-zero only where the resume point
        /// skipped events already accepted).
        first_index: u32,
        verdict: Verdict,
        events: Vec<FrictionEvent>,
        /// How the record was read.
        how: Read,
        /// What was wrong with it, if anything.
        trouble: Option<Trouble>,
    },
    /// A line (or, `start == end`, one record of a streamed line) could not be read.
    Skipped { start: P, end: P, why: Unreadable },
    /// Nothing to read now: the caller waits a poll interval.
    Idle,
    /// The source ended.
    End,
}

/// What was wrong with a record that was judged anyway, or could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// Not valid JSON as a whole (`strict`), but the fields the rules read are: evaluated from
    /// those (a broken request or response body costs nothing).
    Recovered {
        strict: JsonError,
        audit_id: Option<String>,
    },
    /// Not valid JSON, and the fields the rules read cannot be told unambiguously either
    /// (`pruned`: why; `None` when they can be told apart but one of them is itself invalid):
    /// not evaluated.
    Dropped {
        strict: JsonError,
        pruned: Option<PruneError>,
    },
}

/// Progress through the records of one line (several when a streamed line holds a list).
struct LineProgress<P> {
    start: P,
    /// Events produced for the line so far (the index of the next one).
    emitted: u32,
    /// Events of the line still to drop: accepted before a clean stop (the resume point).
    skip_left: u32,
}

/// A source and the detector it feeds. See the module documentation.
pub struct Stage<S: Source> {
    source: S,
    detector: Detector,
    resume: Option<ResumePoint<S::Pos>>,
    line: Option<LineProgress<S::Pos>>,
    events: Vec<FrictionEvent>,
}

impl<S: Source> Stage<S> {
    pub fn new(source: S, detector: Detector, resume: Option<ResumePoint<S::Pos>>) -> Stage<S> {
        Stage {
            source,
            detector,
            resume,
            line: None,
            events: Vec::new(),
        }
    }

    /// Reads and evaluates the next record.
    pub fn step(&mut self) -> Step<S::Pos> {
        let (start, end, how, verdict, trouble) = match self.source.next() {
            Next::Record(r) => {
                let (verdict, trouble) = judge(&self.detector, r.bytes, r.how, &mut self.events);
                (r.start, r.end, r.how, verdict, trouble)
            }
            Next::Skipped { start, end, why } => {
                if end != start {
                    self.line = None;
                }
                return Step::Skipped { start, end, why };
            }
            Next::Idle => return Step::Idle,
            Next::End => return Step::End,
        };
        // Which line this record belongs to: records pruned out of one streamed line share its
        // start, and their events are numbered across the line.
        let continuing = self
            .line
            .as_ref()
            .is_some_and(|l| l.start.same_place(&start));
        if !continuing {
            // A clean stop in the middle of a line: its first `skip` events were accepted.
            // Only the line that starts exactly there (same file, whose fingerprint may have
            // grown since, same offset), the first one read, is concerned.
            let skip_left = match self.resume.take() {
                Some(r) if r.position.same_place(&start) => r.skip,
                _ => 0,
            };
            self.line = Some(LineProgress {
                start,
                emitted: 0,
                skip_left,
            });
        }
        let mut first_index = 0;
        if let Some(line) = self.line.as_mut() {
            let n = (line.skip_left as usize).min(self.events.len());
            self.events.drain(..n);
            line.skip_left -= n as u32;
            first_index = line.emitted + n as u32;
            line.emitted = first_index + self.events.len() as u32;
        }
        if end != start {
            self.line = None;
        }
        // Only records with events allocate: the next detection starts a new vector.
        let events = std::mem::take(&mut self.events);
        Step::Record {
            start,
            end,
            first_index,
            verdict,
            events,
            how,
            trouble,
        }
    }

    /// The place of the next byte not read yet.
    pub fn position(&self) -> S::Pos {
        self.source.position()
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// New rules (SIGHUP): records read from now on are judged by `detector`.
    pub fn set_detector(&mut self, detector: Detector) {
        self.detector = detector;
    }
}

/// Evaluates one record. A whole line that is not valid JSON is read again by the pruner: when
/// the fields the rules read are unambiguous, those are evaluated (a damaged body must not hide
/// an event); otherwise the line is dropped with both reasons.
fn judge(
    detector: &Detector,
    bytes: &[u8],
    how: Read,
    out: &mut Vec<FrictionEvent>,
) -> (Verdict, Option<Trouble>) {
    let verdict = detector.detect_record(bytes, out);
    let Verdict::Malformed(strict) = verdict else {
        return (verdict, None);
    };
    if !matches!(how, Read::Whole | Read::Unwrapped) {
        // Pruned records are small and already what the rules read.
        return (Verdict::Malformed(strict), None);
    }
    let all = prune_all(bytes, EVENT_SPEC, EVENT_LIST, Caps::default());
    let pruned_error = match all.end {
        Err(e) => Some(e),
        Ok(()) => all
            .records
            .iter()
            .find_map(|r| r.record.as_ref().err())
            .cloned(),
    };
    if let Some(pruned) = pruned_error {
        return (
            Verdict::Malformed(strict),
            Some(Trouble::Dropped {
                strict,
                pruned: Some(pruned),
            }),
        );
    }
    let mut tally = ListTally::default();
    let mut single = None;
    let mut audit_id = None;
    for r in &all.records {
        let Ok(record) = &r.record else { continue };
        if audit_id.is_none() {
            audit_id = extract(record)
                .ok()
                .map(|f| f.audit_id.chars().take(128).collect::<String>())
                .filter(|id| !id.is_empty());
        }
        let v = detector.detect_record(record, out);
        match v {
            Verdict::Event(lv) => tally.count(lv),
            Verdict::Malformed(_) => tally.count(LineVerdict::Malformed),
            Verdict::List(t) => tally.add(&t),
        }
        single = Some(v);
    }
    let verdict = match single {
        Some(v) if !all.container => v,
        _ => Verdict::List(tally),
    };
    if matches!(verdict, Verdict::Malformed(_)) {
        // A field the rules read is itself not valid: nothing can be recovered.
        return (
            Verdict::Malformed(strict),
            Some(Trouble::Dropped {
                strict,
                pruned: None,
            }),
        );
    }
    (verdict, Some(Trouble::Recovered { strict, audit_id }))
}

/// Counts one step into `m` (the engine counts nothing itself): the verdict, the events per
/// rule, and what could not be read whole.
pub fn count<P>(m: &Metrics, step: &Step<P>) {
    let add = |c: &std::sync::atomic::AtomicU64, n: u64| {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    };
    match step {
        Step::Record {
            verdict,
            events,
            how,
            trouble,
            ..
        } => {
            match verdict {
                Verdict::Event(LineVerdict::Blank) => add(&m.blank_lines, 1),
                Verdict::Event(LineVerdict::Malformed) | Verdict::Malformed(_) => {
                    add(&m.malformed_lines, 1)
                }
                Verdict::Event(LineVerdict::SkippedStage) => add(&m.stages_skipped, 1),
                Verdict::Event(LineVerdict::Evaluated) => {}
                Verdict::List(t) => {
                    add(&m.malformed_lines, t.malformed);
                    add(&m.stages_skipped, t.skipped_stages);
                }
            }
            match trouble {
                Some(Trouble::Dropped { .. }) => m.inc_dropped("malformed"),
                Some(Trouble::Recovered { .. }) => m.inc_recovered("damaged"),
                None if *how == Read::Streamed && !matches!(verdict, Verdict::Malformed(_)) => {
                    m.inc_recovered("streamed")
                }
                None => {}
            }
            for e in events {
                m.inc_matched(&e.kind);
            }
        }
        Step::Skipped { why, .. } => m.inc_dropped(drop_reason(why)),
        Step::Idle | Step::End => {}
    }
}

/// The `reason` label of a line that could not be read.
pub fn drop_reason(why: &Unreadable) -> &'static str {
    match why {
        Unreadable::OverCap => "over_max_line",
        Unreadable::Pruner(e) => match e.kind {
            PruneErrorKind::TooLarge => "too_large",
            PruneErrorKind::TooDeep => "too_deep",
            _ => "malformed",
        },
        Unreadable::Truncated { .. } => "truncated",
        Unreadable::UnknownFormat { .. } => "unknown_format",
        Unreadable::NotAudit { .. } => "not_audit",
    }
}

/// Logs what could not be read whole, at most once a minute per kind (with how many more of
/// that kind there were): where, the `auditID` when readable, and what was wrong.
#[derive(Default)]
pub struct TroubleLog {
    throttles: std::collections::BTreeMap<&'static str, Throttle>,
}

impl TroubleLog {
    /// Logs `step` if something was wrong with it; `at` says where it is (the source's
    /// description of its start).
    pub fn report<P>(&mut self, step: &Step<P>, at: impl FnOnce() -> String) {
        let (kind, audit_id, what, dropped): (&'static str, Option<&str>, String, bool) = match step
        {
            Step::Record {
                trouble: Some(Trouble::Dropped { strict, pruned }),
                ..
            } => (
                "malformed",
                pruned.as_ref().and_then(|p| p.audit_id.as_deref()),
                match pruned {
                    Some(p) => format!("{strict}; the fields the rules read: {p}"),
                    None => format!("{strict}, in a field the rules read"),
                },
                true,
            ),
            Step::Record {
                trouble: Some(Trouble::Recovered { strict, audit_id }),
                ..
            } => ("damaged", audit_id.as_deref(), strict.to_string(), false),
            Step::Record {
                verdict: Verdict::Malformed(e),
                ..
            } => ("malformed", None, e.to_string(), true),
            Step::Skipped { why, .. } => {
                let id = match why {
                    Unreadable::Pruner(e) => e.audit_id.as_deref(),
                    Unreadable::Truncated { audit_id } => audit_id.as_deref(),
                    Unreadable::OverCap
                    | Unreadable::UnknownFormat { .. }
                    | Unreadable::NotAudit { .. } => None,
                };
                (drop_reason(why), id, why.to_string(), true)
            }
            _ => return,
        };
        let throttle = self
            .throttles
            .entry(kind)
            .or_insert_with(|| Throttle::new(Duration::from_secs(60)));
        let Some(others) = throttle.hit(kind) else {
            return;
        };
        let audit_id = audit_id.unwrap_or("(unreadable)");
        if kind == "not_audit" {
            // Expected where a log export carries other categories too: said, not warned.
            info!(
                "records that are not audit events are skipped (counted in healert_agent_lines_dropped_total{reason=\"not_audit\"})",
                "at" => at(),
                "what" => what,
                "more_of_this_kind_last_minute" => others,
            );
        } else if kind == "unknown_format" {
            warn!(
                "a record matches no input format the agent reads; it is skipped",
                "at" => at(),
                "why" => what,
                "more_of_this_kind_last_minute" => others,
            );
        } else if dropped {
            warn!(
                "an audit line could not be evaluated; it is skipped",
                "kind" => kind,
                "at" => at(),
                "auditID" => audit_id,
                "why" => what,
                "more_of_this_kind_last_minute" => others,
            );
        } else {
            warn!(
                "an audit line is damaged where no rule looks; evaluated from the fields the rules read",
                "kind" => kind,
                "at" => at(),
                "auditID" => audit_id,
                "why" => what,
                "more_of_this_kind_last_minute" => others,
            );
        }
    }
}

/// Records without events between two moves of the acknowledged place.
const ADVANCE_EVERY: u32 = 4096;

/// Hands a stage's records to the delivery queue. See the module documentation.
pub struct Feeder<'q, P> {
    queue: &'q Queue<P>,
    /// How long to wait on a full queue before calling the caller's `wait` again.
    slice: Duration,
    /// Records without events since the acknowledged place last moved.
    quiet: u32,
}

impl<'q, P: Copy> Feeder<'q, P> {
    pub fn new(queue: &'q Queue<P>, slice: Duration) -> Feeder<'q, P> {
        Feeder {
            queue,
            slice,
            quiet: 0,
        }
    }

    /// One record, `[start, end)`, and its events. Events are queued once there is room:
    /// while the queue is full, `wait` runs every `slice` (the caller keeps its liveness and
    /// its source's hold there) and returning false gives up. A record without events only
    /// moves the acknowledged place, every [`ADVANCE_EVERY`] records (re-reading such records
    /// after a crash emits nothing). False once the queue is closed or `wait` gave up: the
    /// caller stops reading.
    pub fn record(
        &mut self,
        start: P,
        end: P,
        first_index: u32,
        events: Vec<FrictionEvent>,
        mut wait: impl FnMut() -> bool,
    ) -> bool {
        if events.is_empty() {
            self.quiet += 1;
            if self.quiet >= ADVANCE_EVERY {
                self.quiet = 0;
                return self.queue.advance_to(end);
            }
            return true;
        }
        self.quiet = 0;
        loop {
            match self.queue.wait_for_room(self.slice) {
                Room::Free => break,
                Room::Closed => return false,
                Room::Full => {
                    if !wait() {
                        return false;
                    }
                }
            }
        }
        self.queue.push_line(start, end, first_index, events)
    }

    /// The source has nothing more for now: everything before `position` is processed, so
    /// the acknowledged place moves there at once (to the next file as soon as a rotated one
    /// is finished). False once the queue is closed.
    pub fn caught_up(&mut self, position: P) -> bool {
        self.quiet = 0;
        self.queue.advance_to(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::{Match, Rule};
    use crate::detect::testing::{self, exec_rule};
    use crate::source::stream::StreamSource;
    use std::sync::Arc;

    fn detector() -> Detector {
        let rule = exec_rule();
        let second = Rule {
            name: "pod-touch".into(),
            matcher: Match {
                resource: Some("pods".into()),
                ..Match::default()
            },
            ..rule.clone()
        };
        testing::detector(vec![rule, second])
    }

    const EXEC: &str = r#"{"stage":"ResponseComplete","verb":"create","user":{"username":"a"},"objectRef":{"resource":"pods","namespace":"n","name":"p","subresource":"exec"}}"#;

    #[test]
    fn the_resume_point_skips_accepted_events_of_its_record_only() {
        let input = format!("{EXEC}\n{EXEC}\nnot json\n");
        let l = EXEC.len() as u64 + 1;
        for (skip, at, want) in [
            (1, 0, vec![(0, 1), (l, 0)]),
            (2, 0, vec![(0, 2), (l, 0)]),
            // Only the first record read is the resume point's (reading starts there).
            (1, l, vec![(0, 0), (l, 0)]),
            // A place that is not the start of a record: nothing is skipped.
            (1, 3, vec![(0, 0), (l, 0)]),
        ] {
            let src = StreamSource::new(input.as_bytes(), 1 << 20);
            let resume = ResumePoint { position: at, skip };
            let mut stage = Stage::new(src, detector(), Some(resume));
            let mut got = Vec::new();
            let m = Metrics::new();
            loop {
                let step = stage.step();
                count(&m, &step);
                match step {
                    Step::Record {
                        start,
                        first_index,
                        verdict,
                        events,
                        ..
                    } => {
                        if !matches!(verdict, Verdict::Malformed(_)) {
                            assert_eq!(events.len() as u32 + first_index, 2);
                            got.push((start, first_index));
                        }
                    }
                    Step::End => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, want, "skip {skip} at {at}");
            assert_eq!(m.malformed_lines.load(Ordering::Relaxed), 1);
            let matched = 4 - u64::from(skip) * u64::from(at == 0);
            let counted: u64 = m.events_matched.lock().unwrap().values().sum();
            assert_eq!(counted, matched);
        }
    }

    #[test]
    fn the_feeder_queues_events_and_batches_quiet_records() {
        let q: Arc<Queue<u64>> = Queue::new(2, Arc::new(Metrics::new()));
        let mut f = Feeder::new(&q, Duration::from_millis(1));
        let ev = || {
            let mut out = Vec::new();
            detector().detect(EXEC.as_bytes(), &mut out);
            out
        };
        assert!(f.record(0, 10, 0, Vec::new(), || true));
        assert_eq!(
            q.ack_position(),
            None,
            "one quiet record does not take the lock"
        );
        assert!(f.caught_up(10));
        assert_eq!(q.ack_position(), Some((10, 0)));
        assert!(f.record(10, 20, 0, ev(), || true));
        assert_eq!((q.len(), q.ack_position()), (2, Some((10, 0))));
        // Full: `wait` runs, and giving up stops the feeder without queueing.
        let mut waits = 0;
        assert!(!f.record(20, 30, 0, ev(), || {
            waits += 1;
            waits < 3
        }));
        assert_eq!((waits, q.len()), (3, 2));
        for _ in 0..ADVANCE_EVERY - 1 {
            assert!(f.record(30, 40, 0, Vec::new(), || true));
        }
        assert_eq!(q.ack_position(), Some((10, 0)), "events still pending");
        q.close();
        assert!(!f.record(40, 50, 0, ev(), || true));
    }
}
