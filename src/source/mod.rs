//! Where audit records come from: the first stage of the pipeline.
//!
//! Every input is a [`Source`]: it hands out records (one audit event's bytes, or a line that
//! holds an `EventList`) with the span they occupy, in input order, and says where its next
//! unread byte is. The pipeline stage (`crate::pipeline`) drives any source the same way, so
//! a new input plugs in here without touching detection or delivery.
//!
//! - [`lines`]: the one bounded line reader every source splits its input with;
//! - [`follow`]: the audit log file followed across rotations, truncations and restarts;
//! - [`stream`]: a byte stream read to its end (`replay FILE`, stdin);
//! - [`position`]: how a byte of a followed file is named ([`position::Position`]);
//! - [`checkpoint`]: the file that records the first unacknowledged position across restarts.
//!
//! Nothing here parses JSON, decides what is friction or talks to the backend.

pub mod bytes;
pub mod checkpoint;
pub mod document;
pub mod follow;
pub mod lines;
pub mod position;
pub mod prune;
pub mod stream;

/// How a source names a place in its input.
pub trait Place: Copy + Eq + std::fmt::Debug + Send + 'static {
    /// Whether `self` and `other` name the same byte (the resume point is checked with it).
    fn same_place(&self, other: &Self) -> bool {
        self == other
    }
}

/// A stream offset.
impl Place for u64 {}

pub use lines::Unreadable;

/// One result of [`Source::next`].
#[derive(Debug)]
pub enum Next<'a, P> {
    /// A complete record.
    Record(Record<'a, P>),
    /// A line (or one record of it, `start == end` while more of the line follows) that could
    /// not be read, and why.
    Skipped { start: P, end: P, why: Unreadable },
    /// Nothing complete now; ask again after a poll interval.
    Idle,
    /// The input ended (a stream read to its end); a followed file never ends.
    End,
}

/// One record, borrowed from the source's buffer until the next call to [`Source::next`].
#[derive(Debug)]
pub struct Record<'a, P> {
    /// The record's bytes, without its line ending.
    pub bytes: &'a [u8],
    /// Where it starts, and where the next record starts (its line ending included). Records
    /// pruned out of one over-long line all start at the line's start; all but the last end
    /// there too (the line is acknowledged only once its last record is).
    pub start: P,
    pub end: P,
    /// How the record was read.
    pub how: Read,
}

/// How a record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The whole line, as written.
    Whole,
    /// Pruned out of a line longer than `MAX_LINE_BYTES` as it streamed past: only what the
    /// rules read.
    Streamed,
    /// One item of a document (an `EventList` read item by item).
    Item,
    /// Taken out of a cloud log envelope: a CloudWatch message, an AKS record's
    /// `properties.log`, or a GKE Cloud Audit Log entry mapped to an audit event. Evaluated
    /// like a whole line (a damaged one is recovered the same way).
    Unwrapped,
}

/// An input of audit records. See the module documentation.
pub trait Source {
    type Pos: Place;

    /// The next record, a skipped over-long line, `Idle` or `End`.
    fn next(&mut self) -> Next<'_, Self::Pos>;

    /// The place of the next byte not handed out yet: what is acknowledged once every record
    /// before it is delivered.
    fn position(&self) -> Self::Pos;

    /// Called about every poll interval while the pipeline cannot take records (delivery is
    /// behind), so the source can keep hold of what it must not lose meanwhile.
    fn hold(&mut self) {}

    /// Where `place` is, for a log line (a file and an offset).
    fn describe(&self, place: &Self::Pos) -> String {
        format!("{place:?}")
    }
}
