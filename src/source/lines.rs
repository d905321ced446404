//! The one bounded line reader behind every input (the file follower, `replay`, stdin).
//!
//! A [`LineBuffer`] holds bytes read from an input at known offsets and hands out complete
//! lines with their byte span, in the manner of ripgrep's `LineBuffer`: the caller asks for
//! room ([`LineBuffer::space`]), reads into it (a `pread` at [`LineBuffer::read_offset`], or a
//! plain `read`), says how much arrived ([`LineBuffer::commit`]), then takes lines
//! ([`LineBuffer::next_line`]) until it needs more. At the end of an input that will not grow
//! (a drained rotated file, the end of a stream) [`LineBuffer::end_of_input`] makes the
//! unterminated last line complete.
//!
//! The edge rules, the same for every input:
//! - a line ends at `\n`; one `\r` right before it is not part of the line (CRLF logs);
//! - a line longer than `max_line` bytes (without its line ending) is never held whole. With a
//!   [`Spec`] ([`LineBuffer::stream_long_lines`]) its bytes are streamed through a
//!   [`Pruner`] as they arrive, and what the rules read comes out as small records
//!   ([`Found::Pruned`]: one for an event, one per item for an `EventList`); without one, its
//!   bytes are discarded ([`Found::Unreadable`]). Either way the buffer never grows past
//!   `max_line` + two read chunks, and shrinks back after a long line;
//! - a newline is searched for once per byte, however the input trickles in.
//!
//! What this module does not do: open, read or watch files, or evaluate lines.

use crate::source::bytes::find_byte;
use crate::source::prune::{Caps, PruneError, Pruned, Pruner, Spec};

/// `MAX_LINE_BYTES`' default: longer lines are streamed (or, without a spec, skipped).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

/// Bytes of an over-long line fed to its pruner at a time (the records they yield are taken
/// before more is fed).
const FEED: usize = 8 << 10;

/// What one turn of [`LineBuffer::over_long`] came to.
enum Step {
    Again,
    Out(Option<Found>),
}

/// What [`LineBuffer::next_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A complete line: read its bytes with [`LineBuffer::bytes`].
    Line(Span),
    /// A record pruned out of a line longer than the cap: read its bytes with
    /// [`LineBuffer::pruned`]. `start` is the line's start; `end` is the line's end for its
    /// last record and equals `start` for the others (the line is not done before its last).
    Pruned { start: u64, end: u64 },
    /// A line longer than the cap that could not be read (in part: `end == start` while more
    /// of the line follows); `[start, end)` is its span, line ending included.
    Unreadable {
        start: u64,
        end: u64,
        why: Unreadable,
    },
}

/// Why a line over the cap was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// No spec to stream it with: skipped unread.
    OverCap,
    /// The pruner could not read it (or one of its records) unambiguously within its caps.
    Pruner(PruneError),
    /// A cloud log message cut short by the log service (CloudWatch appends `[Truncated...]`
    /// past 256 KB): what is missing cannot be guessed. The `auditID`, when readable.
    Truncated { audit_id: Option<String> },
    /// A record of no input format the agent reads (`format`: `AUDIT_FORMAT`); `head`: its
    /// first bytes, sanitised.
    UnknownFormat { format: &'static str, head: String },
    /// A record that is not an audit event by its own account (an AKS diagnostic record of
    /// another category, a CloudWatch control message, a GKE entry of another service).
    NotAudit { what: String },
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::OverCap => f.write_str("longer than MAX_LINE_BYTES; skipped unread"),
            Unreadable::Pruner(e) => write!(f, "{e}"),
            Unreadable::Truncated { .. } => f.write_str(
                "the log service truncated the message (it ends in `[Truncated...]`); the event cannot be read whole",
            ),
            Unreadable::UnknownFormat { format, head } => write!(
                f,
                "matches no input format of AUDIT_FORMAT={format}; it starts with `{head}`"
            ),
            Unreadable::NotAudit { what } => write!(f, "not an audit event: {what}"),
        }
    }
}

/// Where a line is: its input offsets `[start, end)` (the line ending included in `end`) and
/// where its bytes (the line ending excluded) sit in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    at: usize,
    len: usize,
}

/// Discarding (or streaming) bytes up to the next newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    No,
    /// An over-long line that started at this offset.
    OverLong(u64),
    /// The rest of a line whose beginning was never read (a start in the middle of a line).
    Partial,
}

/// Streaming of over-long lines.
#[derive(Debug)]
struct Long {
    spec: &'static Spec,
    container_kind: &'static str,
    caps: Caps,
    /// The pruner of the line being streamed.
    pruner: Option<Pruner>,
    /// The line's span once its end is known.
    line: Option<(u64, u64)>,
    line_start: u64,
    /// Records handed out for the current line.
    handed: u64,
    /// The record handed out last (its bytes).
    record: Vec<u8>,
}

/// A bounded buffer of input bytes that yields complete lines. See the module documentation.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// `buf[start..end]` is read but not handed out yet.
    start: usize,
    end: usize,
    /// `buf[start..scanned]` is known to hold no newline (a growing line is not rescanned).
    scanned: usize,
    /// Input offset of `buf[0]`.
    base: u64,
    max_line: usize,
    chunk: usize,
    skip: Skip,
    /// The input ended for good: the pending bytes are the last line.
    at_end: bool,
    long: Option<Long>,
    /// An over-long line skipped unread (no spec), to be reported.
    unread: Option<(u64, u64)>,
}

impl LineBuffer {
    /// A reader handing out lines of at most `max_line` bytes, reading `chunk` bytes at a time
    /// at least (the buffer starts at two chunks).
    pub fn new(max_line: usize, chunk: usize) -> LineBuffer {
        let chunk = chunk.max(64);
        LineBuffer {
            buf: vec![0; 2 * chunk],
            start: 0,
            end: 0,
            scanned: 0,
            base: 0,
            max_line: max_line.max(1),
            chunk,
            skip: Skip::No,
            at_end: false,
            long: None,
            unread: None,
        }
    }

    /// Lines over the cap are streamed through a [`Pruner`] with `spec` instead of skipped.
    pub fn stream_long_lines(
        mut self,
        spec: &'static Spec,
        container_kind: &'static str,
        caps: Caps,
    ) -> LineBuffer {
        self.long = Some(Long {
            spec,
            container_kind,
            caps,
            pruner: None,
            line: None,
            line_start: 0,
            handed: 0,
            record: Vec::new(),
        });
        self
    }

    /// Forgets everything buffered; the next byte read is at input offset `offset`.
    pub fn reset(&mut self, offset: u64) {
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        self.base = offset;
        self.skip = Skip::No;
        self.at_end = false;
        if let Some(l) = &mut self.long {
            l.pruner = None;
            l.line = None;
        }
    }

    /// The bytes up to the next newline are the rest of a line whose beginning was never read
    /// (the input was opened in the middle of it): they are dropped, not handed out.
    pub fn skip_partial_line(&mut self) {
        self.skip = Skip::Partial;
    }

    /// The input offset of the next byte not handed out: after the last line returned (while
    /// an over-long line is being read: its start).
    pub fn position(&self) -> u64 {
        match (self.skip, &self.long) {
            (Skip::OverLong(start), _) => start,
            (_, Some(Long { line: Some(_), .. }))
            | (
                _,
                Some(Long {
                    pruner: Some(_), ..
                }),
            ) => self.long.as_ref().map_or(0, |l| l.line_start),
            _ => self.offset(self.start),
        }
    }

    /// The input offset the next read must start at.
    pub fn read_offset(&self) -> u64 {
        self.offset(self.end)
    }

    /// Bytes allocated (bounded by `max_line` + two chunks, plus a pruner's kept bytes).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The longest line handed out whole.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    fn offset(&self, i: usize) -> u64 {
        self.base + i as u64
    }

    /// The bytes of a line just returned by [`LineBuffer::next_line`]; valid until the next
    /// [`LineBuffer::space`].
    pub fn bytes(&self, span: &Span) -> &[u8] {
        &self.buf[span.at..span.at + span.len]
    }

    /// The bytes of the record just returned as [`Found::Pruned`].
    pub fn pruned(&self) -> &[u8] {
        self.long.as_ref().map_or(&[][..], |l| &l.record)
    }

    /// Whether the pending, unterminated line is already over the cap whatever ends it (one
    /// more byte may still be the `\r` of a CRLF ending, which does not count).
    fn too_long_so_far(&self) -> bool {
        let pending = self.end - self.start;
        pending > self.max_line + 1
            || pending == self.max_line + 1 && self.buf[self.end - 1] != b'\r'
    }

    /// The input ended for good (a stream's end, a rotated file read to its end): the bytes
    /// after the last newline are the last line. Take it (and, for an over-long one, its
    /// records) with [`LineBuffer::next_line`]; afterwards the buffer is empty.
    pub fn end_of_input(&mut self) {
        self.at_end = true;
    }

    /// The next complete line (or record of an over-long one) in what was read, or `None`
    /// when more input is needed (or, after [`LineBuffer::end_of_input`], when all is taken).
    pub fn next_line(&mut self) -> Option<Found> {
        loop {
            if let Some(found) = self.take_pruned() {
                return Some(found);
            }
            if let Skip::OverLong(line_start) = self.skip {
                match self.over_long(line_start) {
                    Step::Again => continue,
                    Step::Out(found) => return found,
                }
            }
            let Some(i) = find_byte(&self.buf[self.scanned..self.end], b'\n') else {
                self.scanned = self.end;
                if self.at_end {
                    return self.last_line();
                }
                if self.skip == Skip::No && self.too_long_so_far() {
                    self.begin_over_long(self.start, None);
                    continue;
                }
                if self.skip == Skip::Partial {
                    // Never hold the rest of a line that is being dropped.
                    self.start = self.end;
                    self.scanned = self.end;
                }
                return None;
            };
            let nl = self.scanned + i;
            let s = self.start;
            let e = if nl > s && self.buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            if self.skip == Skip::No && e - s > self.max_line {
                // A whole line over the cap arrived in one read: streamed like any other.
                self.begin_over_long(s, Some(nl));
                continue;
            }
            self.start = nl + 1;
            self.scanned = nl + 1;
            if std::mem::replace(&mut self.skip, Skip::No) == Skip::Partial {
                continue;
            }
            return Some(Found::Line(Span {
                start: self.offset(s),
                end: self.offset(nl + 1),
                at: s,
                len: e - s,
            }));
        }
    }

    /// At the end of the input: the unterminated last line, then nothing; the buffer is then
    /// positioned at the end.
    fn last_line(&mut self) -> Option<Found> {
        let (s, e) = (self.start, self.end);
        if self.skip == Skip::No && e - s > self.max_line {
            self.begin_over_long(s, None);
            return self.next_line();
        }
        let (start, end) = (self.offset(s), self.offset(e));
        let skip = std::mem::replace(&mut self.skip, Skip::No);
        // The bytes stay in `buf[s..e]` until the next `space`, so the line can be read.
        self.base = end;
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        match skip {
            Skip::Partial | Skip::OverLong(_) => None,
            Skip::No if e > s => Some(Found::Line(Span {
                start,
                end,
                at: s,
                len: e - s,
            })),
            Skip::No => None,
        }
    }

    /// The line starting at `buf[at]` is over the cap: from now on its bytes are fed to a
    /// pruner (or discarded, without a spec) as they are taken, never all held. `newline`: the
    /// index of its newline when it is already buffered.
    fn begin_over_long(&mut self, at: usize, newline: Option<usize>) {
        let start = self.offset(at);
        self.skip = Skip::OverLong(start);
        self.start = at;
        self.scanned = newline.unwrap_or(self.end);
        if let Some(l) = &mut self.long {
            l.pruner = Some(Pruner::new(l.spec, l.container_kind, l.caps));
            l.line = None;
            l.line_start = start;
            l.handed = 0;
        }
    }

    /// One turn of reading an over-long line: feed (or drop) its next slice, or end it at its
    /// newline (or at the end of the input).
    fn over_long(&mut self, line_start: u64) -> Step {
        let newline = find_byte(&self.buf[self.scanned..self.end], b'\n').map(|i| self.scanned + i);
        self.scanned = newline.unwrap_or(self.end);
        let limit = newline.unwrap_or(self.end);
        if self.start < limit {
            // A slice at a time, so that the records it yields are taken before the next one
            // is fed: the pruner never holds more than a slice's worth.
            let to = limit.min(self.start + FEED);
            if let Some(p) = self.long.as_mut().and_then(|l| l.pruner.as_mut()) {
                p.feed(&self.buf[self.start..to]);
            }
            self.start = to;
            return Step::Again;
        }
        let end = match newline {
            Some(nl) => {
                self.start = nl + 1;
                self.scanned = nl + 1;
                self.offset(nl + 1)
            }
            None if self.at_end => self.offset(self.end),
            None => {
                // Everything buffered was taken: give the room back to the next read.
                self.start = self.end;
                return Step::Out(None);
            }
        };
        self.skip = Skip::No;
        match &mut self.long {
            Some(l) => {
                if let Some(p) = &mut l.pruner {
                    let _ = p.finish();
                }
                l.line = Some((line_start, end));
            }
            None => self.unread = Some((line_start, end)),
        }
        Step::Again
    }

    /// The next record of the over-long line being streamed: one is held back until the line
    /// ends, so that the last one can carry the line's end.
    fn take_pruned(&mut self) -> Option<Found> {
        if let Some((start, end)) = self.unread.take() {
            return Some(Found::Unreadable {
                start,
                end,
                why: Unreadable::OverCap,
            });
        }
        let l = self.long.as_mut()?;
        let p = l.pruner.as_mut()?;
        let line = l.line;
        if p.ready() < 2 && (line.is_none() || p.ready() == 0) {
            if let Some((start, end)) = line {
                // The line is done and every record was handed out.
                let error = p.error().cloned();
                let empty_container = l.handed == 0 && error.is_none();
                l.pruner = None;
                l.line = None;
                if let Some(e) = error {
                    // The rest of the line (after the records handed out) was unreadable.
                    return Some(Found::Unreadable {
                        start,
                        end,
                        why: Unreadable::Pruner(e),
                    });
                }
                if empty_container {
                    // A list without items: nothing to evaluate, but the line is read.
                    l.record =
                        format!("{{\"kind\":\"{}\",\"items\":[]}}", l.container_kind).into_bytes();
                    return Some(Found::Pruned { start, end });
                }
            }
            return None;
        }
        let Pruned { record, .. } = p.take()?;
        let last = line.is_some() && p.ready() == 0 && p.error().is_none();
        let (start, end) = match line {
            Some((s, e)) if last => (s, e),
            _ => (l.line_start, l.line_start),
        };
        if last {
            l.pruner = None;
            l.line = None;
        }
        l.handed += 1;
        match record {
            Ok(bytes) => {
                l.record = bytes;
                Some(Found::Pruned { start, end })
            }
            Err(e) => Some(Found::Unreadable {
                start,
                end,
                why: Unreadable::Pruner(e),
            }),
        }
    }

    /// Room for the next read, at input offset [`LineBuffer::read_offset`]; at least one chunk.
    /// Moves the unread bytes to the front, gives back the memory of a long line once it is
    /// gone, and grows (one chunk at a time) only while one line is longer than the buffer.
    pub fn space(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < self.chunk {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.base += self.start as u64;
                self.end -= self.start;
                self.scanned -= self.start;
                self.start = 0;
            }
            if self.buf.len() > 4 * self.chunk && self.end < self.chunk {
                self.buf.truncate(2 * self.chunk);
                self.buf.shrink_to_fit();
            }
            if self.buf.len() - self.end < self.chunk {
                let want = self.end + self.chunk;
                self.buf.reserve_exact(want - self.buf.len());
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`LineBuffer::space`].
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Everything buffered from input offset `from` (at or after the start of the last line
    /// handed out) to the end of what was read; the buffer is then empty. For a reader that
    /// must look at a whole document rather than lines.
    pub fn take_from(&mut self, from: u64) -> Vec<u8> {
        let at = from.saturating_sub(self.base).min(self.end as u64) as usize;
        let out = self.buf[at..self.end].to_vec();
        let end = self.read_offset();
        self.reset(end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in reads of at most `step` bytes, collecting what comes out (a line's
    /// bytes, or `None` for a skipped one) with its span.
    fn run(input: &[u8], max_line: usize, step: usize) -> Vec<(Option<Vec<u8>>, u64, u64)> {
        let mut lb = LineBuffer::new(max_line, 64);
        let mut out = Vec::new();
        let mut at = 0;
        let take = |lb: &LineBuffer, f: Found, out: &mut Vec<_>| match f {
            Found::Line(s) => out.push((Some(lb.bytes(&s).to_vec()), s.start, s.end)),
            Found::Unreadable { start, end, .. } => out.push((None, start, end)),
            Found::Pruned { start, end } => out.push((Some(lb.pruned().to_vec()), start, end)),
        };
        loop {
            while let Some(f) = lb.next_line() {
                take(&lb, f, &mut out);
            }
            if at == input.len() {
                break;
            }
            let room = lb.space();
            let n = room.len().min(step).min(input.len() - at);
            room[..n].copy_from_slice(&input[at..at + n]);
            lb.commit(n);
            at += n;
        }
        lb.end_of_input();
        while let Some(f) = lb.next_line() {
            take(&lb, f, &mut out);
        }
        out
    }

    #[test]
    fn lines_spans_crlf_and_the_last_unterminated_line() {
        let out = run(b"ab\r\n\ncd\r\r\nlast", 100, 3);
        assert_eq!(
            out,
            vec![
                (Some(b"ab".to_vec()), 0, 4),
                (Some(b"".to_vec()), 4, 5),
                // Only one `\r` before the newline belongs to the line ending.
                (Some(b"cd\r".to_vec()), 5, 10),
                (Some(b"last".to_vec()), 10, 14),
            ]
        );
    }

    #[test]
    fn over_long_lines_are_skipped_in_bounded_memory() {
        let long = vec![b'x'; 10_000];
        let mut input = b"ok\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nfine\n");
        input.extend_from_slice(&long);
        for step in [1, 7, 64, 5000, 1 << 20] {
            let out = run(&input, 100, step);
            assert_eq!(
                out,
                vec![
                    (Some(b"ok".to_vec()), 0, 3),
                    (None, 3, 10_004),
                    (Some(b"fine".to_vec()), 10_004, 10_009),
                    (None, 10_009, 20_009),
                ],
                "step {step}"
            );
        }
        // A line of exactly the cap is a line; the CR of a CRLF does not count.
        let out = run(b"12345\r\n123456\n", 5, 2);
        assert_eq!(out, vec![(Some(b"12345".to_vec()), 0, 7), (None, 7, 14)]);
        let mut lb = LineBuffer::new(100, 64);
        for _ in 0..1000 {
            let room = lb.space();
            let n = room.len();
            room.fill(b'y');
            lb.commit(n);
            assert!(lb.next_line().is_none());
            assert!(lb.capacity() <= 100 + 4 * 64, "{}", lb.capacity());
        }
        assert_eq!(lb.position(), 0, "the start of the line being discarded");
    }

    #[test]
    fn partial_first_line_and_positions() {
        let mut lb = LineBuffer::new(100, 64);
        lb.reset(1000);
        lb.skip_partial_line();
        let room = lb.space();
        room[..9].copy_from_slice(b"tail\nab\nc");
        lb.commit(9);
        assert_eq!(lb.read_offset(), 1009);
        let Some(Found::Line(s)) = lb.next_line() else {
            panic!()
        };
        assert_eq!((lb.bytes(&s), s.start, s.end), (&b"ab"[..], 1005, 1008));
        assert_eq!(lb.next_line(), None);
        assert_eq!(lb.position(), 1008);
        assert_eq!(lb.take_from(1008), b"c");
        assert_eq!((lb.position(), lb.read_offset()), (1009, 1009));
    }

    proptest! {
        #[test]
        fn same_lines_whatever_the_read_sizes(
            input in proptest::collection::vec(
                prop_oneof![6 => Just(b'a'), 2 => Just(b'\n'), 1 => Just(b'\r')], 0..400),
            max_line in 1usize..40,
            step in 1usize..90,
        ) {
            // The oracle: split on '\n', strip one '\r', skip what is longer than the cap.
            let mut want = Vec::new();
            let mut at = 0u64;
            let parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                if last && part.is_empty() {
                    break;
                }
                let end = at + part.len() as u64 + u64::from(!last);
                let body = if !last && part.last() == Some(&b'\r') { &part[..part.len() - 1] } else { part };
                if body.len() > max_line {
                    want.push((None, at, end));
                } else {
                    want.push((Some(body.to_vec()), at, end));
                }
                at = end;
            }
            prop_assert_eq!(run(&input, max_line, step), want);
        }

    }
}
