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
use crate::detect::{Detector, FrictionEvent, LineVerdict, Verdict};
use crate::operate::metrics::Metrics;
use crate::source::{Next, Place, Source};

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
    },
    /// A line over `MAX_LINE_BYTES` was skipped unread (counted by the source).
    Skipped { start: P, end: P },
    /// Nothing to read now: the caller waits a poll interval.
    Idle,
    /// The source ended.
    End,
}

/// A source and the detector it feeds. See the module documentation.
pub struct Stage<S: Source> {
    source: S,
    detector: Detector,
    resume: Option<ResumePoint<S::Pos>>,
    events: Vec<FrictionEvent>,
}

impl<S: Source> Stage<S> {
    pub fn new(source: S, detector: Detector, resume: Option<ResumePoint<S::Pos>>) -> Stage<S> {
        Stage {
            source,
            detector,
            resume,
            events: Vec::new(),
        }
    }

    /// Reads and evaluates the next record.
    pub fn step(&mut self) -> Step<S::Pos> {
        let (start, end, verdict) = match self.source.next() {
            Next::Record(r) => {
                let verdict = self.detector.detect_record(r.bytes, &mut self.events);
                (r.start, r.end, verdict)
            }
            Next::Skipped { start, end } => return Step::Skipped { start, end },
            Next::Idle => return Step::Idle,
            Next::End => return Step::End,
        };
        let mut first_index = 0u32;
        if let Some(resume) = self.resume.take() {
            // A clean stop in the middle of a record: its first `skip` events were accepted.
            // Only the record that starts exactly there (same file, whose fingerprint may
            // have grown since, same offset) is concerned.
            if resume.skip > 0 && resume.position.same_place(&start) {
                let n = (resume.skip as usize).min(self.events.len());
                self.events.drain(..n);
                first_index = n as u32;
            }
        }
        // Only records with events allocate: the next detection starts a new vector.
        let events = std::mem::take(&mut self.events);
        Step::Record {
            start,
            end,
            first_index,
            verdict,
            events,
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

/// Counts one record's verdict and events into `m` (the engine counts nothing itself).
pub fn count(m: &Metrics, verdict: &Verdict, events: &[FrictionEvent]) {
    let add = |c: &std::sync::atomic::AtomicU64, n: u64| {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    };
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
    for e in events {
        m.inc_matched(&e.kind);
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
    use crate::detect::rules::{Match, Rule, RuleSet, Severity, Template};
    use crate::detect::DetectOptions;
    use crate::source::stream::StreamSource;
    use std::sync::Arc;

    fn detector() -> Detector {
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
            suppress: None,
            same_act: None,
            fixtures: Vec::new(),
        };
        let second = Rule {
            name: "pod-touch".into(),
            matcher: Match {
                resource: Some("pods".into()),
                ..Match::default()
            },
            ..rule.clone()
        };
        Detector::new(
            RuleSet {
                rules: vec![rule, second],
                ignore_namespaces: vec![],
            },
            DetectOptions::default(),
        )
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
                match stage.step() {
                    Step::Record {
                        start,
                        first_index,
                        verdict,
                        events,
                        ..
                    } => {
                        count(&m, &verdict, &events);
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
