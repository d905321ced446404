//! The bounded, ordered queue between detection and the one sender thread.
//!
//! The producer (the pipeline stage) pushes each processed record's events in input order, and
//! moves the acknowledged place past records without events ([`Queue::advance_to`]); the
//! sender takes the event at the front, and pops it only once the backend accepted it (or
//! refused it for good). So the front is always the oldest unacknowledged event and
//! [`Queue::ack_position`] is exactly what a checkpoint may record.
//!
//! The queue does not know what a place is (`P`: a file position for the follower, a byte
//! offset for `replay --send`); it only keeps them in order. Pushing never blocks: the producer
//! waits for room first ([`Queue::wait_for_room`]), so it can do its own chores (liveness,
//! holding rotated files open) while delivery is behind.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::deliver::suppress::{Decision, SummaryKey, Suppressor};
use crate::detect::FrictionEvent;
use crate::operate::metrics::Metrics;

/// One processed record whose events are not all acknowledged yet.
#[derive(Debug)]
struct Line<P> {
    start: P,
    /// Index within the record of `events[0]`.
    next_index: u32,
    events: VecDeque<FrictionEvent>,
}

#[derive(Debug)]
pub(crate) struct Inner<P> {
    lines: VecDeque<Line<P>>,
    /// Events in `lines` (pending + the one in flight).
    len: usize,
    last_end: Option<P>,
    closed: bool,
    /// Repeat suppression, changed only as events are acknowledged (see `deliver::suppress`).
    suppress: Option<Suppressor>,
    /// Send every open window's summary once the queue is closed and empty (`replay --send`);
    /// `run` keeps them in its state file instead.
    flush_at_close: bool,
}

/// What the sender does next.
#[derive(Debug)]
pub(crate) enum Job {
    /// The front event (still queued).
    Event(FrictionEvent),
    /// A closed window's summary (not in the queue).
    Summary(SummaryKey, FrictionEvent),
}

/// What [`Queue::wait_for_room`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Below capacity: a push goes through.
    Free,
    /// Still full after the wait.
    Full,
    /// Closed (shutdown): the producer stops.
    Closed,
}

/// The bounded queue between detection and delivery, shared as `Arc<Queue<P>>`.
#[derive(Debug)]
pub struct Queue<P> {
    inner: Mutex<Inner<P>>,
    /// Signalled when events arrive, the queue closes or a sender is told to stop.
    pub(crate) items: Condvar,
    /// Signalled when room frees up or the queue closes.
    space: Condvar,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl<P: Copy> Queue<P> {
    /// A queue holding at most `capacity` events (at least 1); its depth is shown in `metrics`.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Queue<P>> {
        Arc::new(Queue {
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                len: 0,
                last_end: None,
                closed: false,
                suppress: None,
                flush_at_close: false,
            }),
            items: Condvar::new(),
            space: Condvar::new(),
            capacity: capacity.max(1),
            metrics,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<P>> {
        // A panic elsewhere while holding the lock leaves the queue consistent (every update
        // is a few plain assignments), so keep going rather than lose the events.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Producer side, once per record with events, in input order: `[start, end)` is the
    /// record's span, `first_index` the index within the record of `events[0]` (non-zero only
    /// for the record a resume point skips into). Never blocks (call
    /// [`Queue::wait_for_room`] first). False once the queue is closed: the producer stops.
    pub fn push_line(
        &self,
        start: P,
        end: P,
        first_index: u32,
        events: Vec<FrictionEvent>,
    ) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if !events.is_empty() {
            g.len += events.len();
            g.lines.push_back(Line {
                start,
                next_index: first_index,
                events: events.into(),
            });
            self.items.notify_all();
        }
        g.last_end = Some(end);
        self.metrics
            .queue_depth
            .store(g.len as i64, Ordering::Relaxed);
        true
    }

    /// Producer side: everything before `end` is processed and produced no event still to
    /// deliver (records without events, skipped lines, the end of a finished file). False once
    /// the queue is closed.
    pub fn advance_to(&self, end: P) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        g.last_end = Some(end);
        true
    }

    /// Waits up to `timeout` for the queue to be below capacity.
    pub fn wait_for_room(&self, timeout: Duration) -> Room {
        let mut g = self.lock();
        if !g.closed && g.len >= self.capacity {
            g = self
                .space
                .wait_timeout(g, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if g.closed {
            Room::Closed
        } else if g.len >= self.capacity {
            Room::Full
        } else {
            Room::Free
        }
    }

    /// What the checkpoint should record now: Some((start of the oldest unacknowledged event's
    /// record, its index in that record)) while events are pending or in flight; else
    /// Some((end of the last record processed, 0)); None before anything was processed.
    pub fn ack_position(&self) -> Option<(P, u32)> {
        let g = self.lock();
        match g.lines.front() {
            Some(l) => Some((l.start, l.next_index)),
            None => g.last_end.map(|e| (e, 0)),
        }
    }

    /// Events pending or in flight.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// No event pending or in flight, and no summary still owed at close.
    pub fn is_empty(&self) -> bool {
        let g = self.lock();
        g.len == 0
            && !(g.flush_at_close && g.suppress.as_ref().is_some_and(|s| s.pending_repeats() > 0))
    }

    /// Turns on repeat suppression with `s` (a fresh or a restored state). `flush_at_close`:
    /// summarise every open window once the queue is closed and empty (`replay --send`).
    pub fn enable_suppression(&self, s: Suppressor, flush_at_close: bool) {
        let mut g = self.lock();
        self.metrics
            .suppress_windows
            .store(s.open_windows() as i64, Ordering::Relaxed);
        g.suppress = Some(s);
        g.flush_at_close = flush_at_close;
    }

    /// [`Queue::ack_position`] and `f` applied to the suppression state, under one lock: what
    /// a checkpoint and its state file must record together.
    pub fn snapshot<T>(&self, f: impl FnOnce(Option<(P, u32)>, Option<&mut Suppressor>) -> T) -> T {
        let mut g = self.lock();
        let ack = match g.lines.front() {
            Some(l) => Some((l.start, l.next_index)),
            None => g.last_end.map(|e| (e, 0)),
        };
        f(ack, g.suppress.as_mut())
    }

    /// The sender's next job: a due summary, else the front event; repeats at the front are
    /// acknowledged here (counted, not sent). `None`: nothing to do now (`closed` tells whether
    /// anything will come), with how long to wait at most.
    pub(crate) fn next_job(g: &mut Inner<P>, metrics: &Metrics) -> Result<Job, (bool, Duration)> {
        loop {
            let closed_empty = g.closed && g.lines.is_empty();
            let front = g.lines.front().and_then(|l| l.events.front()).cloned();
            let flush = g.flush_at_close && closed_empty;
            let Some(sup) = g.suppress.as_mut() else {
                return match front {
                    Some(ev) => Ok(Job::Event(ev)),
                    None => Err((g.closed, Duration::from_secs(1))),
                };
            };
            // One reading of the clock for both questions: a window that ends now is
            // summarised before its key can open a new one.
            if let Some(ev) = &front {
                sup.observe(ev);
            }
            let now = sup.now_ms();
            if let Some((k, ev)) = sup.due(flush, now) {
                return Ok(Job::Summary(k, ev));
            }
            let Some(front) = front else {
                let wait = sup
                    .next_end_in()
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1));
                return Err((g.closed, wait));
            };
            let d = sup.decide(&front, now);
            if d == Decision::Send {
                return Ok(Job::Event(front));
            }
            sup.apply(&front, d);
            metrics.inc_suppressed(&front.kind, d == Decision::SameAct);
            Queue::pop_locked(g, metrics);
        }
    }

    /// Acknowledges a summary (accepted or dead-lettered): its window closes.
    pub(crate) fn summary_done(&self, key: &SummaryKey, kind: &str) {
        let mut g = self.lock();
        if let Some(s) = g.suppress.as_mut() {
            s.summary_done(key);
            self.metrics
                .suppress_windows
                .store(s.open_windows() as i64, Ordering::Relaxed);
        }
        self.metrics.inc_summary(kind);
    }

    fn pop_locked(g: &mut Inner<P>, metrics: &Metrics) -> Option<FrictionEvent> {
        let mut popped = None;
        let mut emptied = false;
        if let Some(line) = g.lines.front_mut() {
            popped = line.events.pop_front();
            line.next_index = line.next_index.saturating_add(u32::from(popped.is_some()));
            emptied = line.events.is_empty();
        }
        if emptied {
            g.lines.pop_front();
        }
        g.len -= usize::from(popped.is_some());
        metrics.queue_depth.store(g.len as i64, Ordering::Relaxed);
        popped
    }

    /// No more pushes; wakes a waiting producer (and the sender, which drains what is left).
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        drop(g);
        self.space.notify_all();
        self.items.notify_all();
    }

    /// Acknowledges the front event (it was accepted or dead-lettered); with suppression on, it
    /// opens its window now.
    pub(crate) fn pop_front(&self) {
        let mut g = self.lock();
        let popped = Queue::pop_locked(&mut g, &self.metrics);
        if let (Some(ev), Some(s)) = (popped, g.suppress.as_mut()) {
            if !s.apply(&ev, Decision::Send) {
                self.metrics
                    .suppress_overflow
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.metrics
                .suppress_windows
                .store(s.open_windows() as i64, Ordering::Relaxed);
        }
        drop(g);
        self.space.notify_all();
    }

    /// Wakes a producer waiting for room (the sender acknowledged repeats without sending).
    pub(crate) fn notify_space(&self) {
        self.space.notify_all();
    }

    /// Wakes a sender sleeping in a backoff or waiting for events.
    pub(crate) fn wake(&self) {
        let _g = self.lock();
        self.items.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::event as ev;

    fn queue(capacity: usize) -> (Arc<Queue<u64>>, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        (Queue::new(capacity, Arc::clone(&m)), m)
    }

    #[test]
    fn ack_position_follows_the_oldest_unacknowledged_event() {
        let (q, m) = queue(10);
        assert_eq!(q.ack_position(), None);
        assert!(q.advance_to(10));
        assert_eq!(q.ack_position(), Some((10, 0)));
        assert!(q.push_line(10, 20, 1, vec![ev(1), ev(2)]));
        assert!(q.advance_to(30));
        assert!(q.push_line(30, 40, 0, vec![ev(3)]));
        assert_eq!((q.len(), q.ack_position()), (3, Some((10, 1))));
        assert_eq!(m.queue_depth.load(Ordering::Relaxed), 3);
        q.pop_front();
        assert_eq!(q.ack_position(), Some((10, 2)));
        q.pop_front();
        assert_eq!(q.ack_position(), Some((30, 0)));
        q.pop_front();
        assert_eq!((q.len(), q.ack_position()), (0, Some((40, 0))));
        assert_eq!(m.queue_depth.load(Ordering::Relaxed), 0);
        q.close();
        assert!(!q.push_line(40, 50, 0, vec![ev(4)]));
        assert!(!q.advance_to(50));
    }

    /// The sender's view with suppression on audit time: the first is sent, the repeat is
    /// acknowledged without a POST, and a later event of the same key past the window's end
    /// first gets the window's summary out, then opens a new window (never the other way
    /// round, which would drop the summary).
    #[test]
    fn suppression_acknowledges_repeats_and_summarises_before_a_new_window() {
        use crate::deliver::suppress::{Clock, Suppressor};
        let (q, m) = queue(10);
        q.enable_suppression(
            Suppressor::new(Duration::from_secs(600), Clock::EventTime),
            true,
        );
        let at = |ts: &str| FrictionEvent {
            timestamp: ts.into(),
            ..ev(1)
        };
        assert!(q.push_line(0, 1, 0, vec![at("2026-01-01T00:00:00Z")]));
        assert!(q.push_line(1, 2, 0, vec![at("2026-01-01T00:00:05Z")]));
        assert!(q.push_line(2, 3, 0, vec![at("2026-01-01T00:20:00Z")]));
        let mut jobs = Vec::new();
        loop {
            let job = Queue::next_job(&mut q.lock(), &m);
            match job {
                Ok(Job::Event(e)) => {
                    jobs.push(format!("event {}", e.timestamp));
                    q.pop_front();
                }
                Ok(Job::Summary(k, e)) => {
                    jobs.push(format!("summary {}", e.description));
                    q.summary_done(&k, &e.kind);
                }
                Err(_) => break,
            }
            if jobs.len() == 3 {
                q.close();
            }
        }
        assert_eq!(
            jobs,
            [
                "event 2026-01-01T00:00:00Z",
                "summary exec \"1\" (1 more time in 10m)",
                "event 2026-01-01T00:20:00Z",
            ]
        );
        assert_eq!(q.ack_position(), Some((3, 0)));
        assert!(q.is_empty());
        assert_eq!(
            m.events_suppressed.lock().unwrap().get("kubectl-exec"),
            Some(&1)
        );
    }

    #[test]
    fn a_full_queue_makes_the_producer_wait_until_room_or_close() {
        let (q, _) = queue(2);
        assert_eq!(q.wait_for_room(Duration::ZERO), Room::Free);
        assert!(q.push_line(0, 1, 0, vec![ev(1), ev(2)]));
        assert_eq!(q.wait_for_room(Duration::from_millis(1)), Room::Full);
        let q2 = Arc::clone(&q);
        let waiter = std::thread::spawn(move || q2.wait_for_room(Duration::from_secs(60)));
        q.pop_front();
        assert_eq!(waiter.join().unwrap(), Room::Free);
        assert!(q.push_line(1, 2, 0, vec![ev(3)]));
        let q3 = Arc::clone(&q);
        let waiter = std::thread::spawn(move || q3.wait_for_room(Duration::from_secs(60)));
        q.close();
        assert_eq!(waiter.join().unwrap(), Room::Closed);
    }
}
