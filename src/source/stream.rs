//! A byte stream read once to its end (`replay FILE`, `replay -`): complete lines through the
//! shared [`LineBuffer`], places as byte offsets into the stream; and [`Background`], a stream
//! read on a thread of its own so that a live pipe (`run` on stdin) never blocks its reader.

use std::io::{self, Read};

use crate::source::lines::{Found, LineBuffer};
use crate::source::prune::{Caps, Spec};
use crate::source::{Next, Read as How, Record, Source};

/// Bytes asked for per read at least: large reads keep the syscall cost of a whole-file scan
/// small; the buffer starts at two of them (1 MiB).
const CHUNK: usize = 512 << 10;

/// A [`Source`] over any `Read`. A read error ends the stream; [`StreamSource::take_error`]
/// says why.
pub struct StreamSource<R> {
    input: R,
    lines: LineBuffer,
    eof: bool,
    error: Option<io::Error>,
}

impl<R: Read> StreamSource<R> {
    /// Lines longer than `max_line` bytes are skipped unread.
    pub fn new(input: R, max_line: usize) -> StreamSource<R> {
        StreamSource {
            input,
            lines: LineBuffer::new(max_line, CHUNK),
            eof: false,
            error: None,
        }
    }

    /// Lines longer than `max_line` are streamed through a pruner with `spec` (see
    /// [`LineBuffer::stream_long_lines`]).
    pub fn streaming_long_lines(
        mut self,
        spec: &'static Spec,
        container_kind: &'static str,
        caps: Caps,
    ) -> StreamSource<R> {
        self.lines = self.lines.stream_long_lines(spec, container_kind, caps);
        self
    }

    /// The read error that ended the stream early, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Everything from offset `from` (the start of the last record handed out, or later) to
    /// the end of the stream, in memory: for an input that turned out to be one document
    /// rather than lines. The stream is at its end afterwards.
    pub fn rest_from(&mut self, from: u64) -> io::Result<Vec<u8>> {
        let mut all = self.lines.take_from(from);
        self.input.read_to_end(&mut all)?;
        self.eof = true;
        let end = from + all.len() as u64;
        self.lines.reset(end);
        Ok(all)
    }

    fn fill(&mut self) {
        loop {
            match self.input.read(self.lines.space()) {
                Ok(0) => self.eof = true,
                Ok(n) => self.lines.commit(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.error = Some(e);
                    self.eof = true;
                }
            }
            return;
        }
    }
}

impl<R: Read> Source for StreamSource<R> {
    type Pos = u64;

    fn next(&mut self) -> Next<'_, u64> {
        loop {
            let found = match self.lines.next_line() {
                Some(f) => f,
                None if self.eof => return Next::End,
                None => {
                    self.fill();
                    if self.eof {
                        self.lines.end_of_input();
                    }
                    continue;
                }
            };
            return match found {
                Found::Line(span) => Next::Record(Record {
                    bytes: self.lines.bytes(&span),
                    start: span.start,
                    end: span.end,
                    how: How::Whole,
                }),
                Found::Pruned { start, end } => Next::Record(Record {
                    bytes: self.lines.pruned(),
                    start,
                    end,
                    how: How::Streamed,
                }),
                Found::Unreadable { start, end, why } => Next::Skipped { start, end, why },
            };
        }
    }

    fn position(&self) -> u64 {
        self.lines.position()
    }

    fn describe(&self, place: &u64) -> String {
        format!("offset {place}")
    }
}

/// A `Read` fed by a thread of its own (stdin of `run`), so that its caller never blocks on
/// it: `WouldBlock` while nothing new arrived, `Ok(0)` once the input ended, a read error as
/// it happened. At most a few chunks wait between the thread and the caller.
pub struct Background {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Background {
    /// Starts the reading thread.
    pub fn spawn<R: Read + Send + 'static>(mut input: R, name: &str) -> io::Result<Background> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                let mut buf = vec![0u8; 64 << 10];
                match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            })?;
        Ok(Background {
            rx,
            chunk: Vec::new(),
            at: 0,
            ended: false,
        })
    }
}

impl Read for Background {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use std::sync::mpsc::TryRecvError;
        if self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.try_recv() {
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(TryRecvError::Empty) => return Err(io::ErrorKind::WouldBlock.into()),
                Err(TryRecvError::Disconnected) => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most 7 bytes per read.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(7).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn collect<R: Read>(src: &mut StreamSource<R>) -> Vec<(Option<Vec<u8>>, u64, u64)> {
        let mut out = Vec::new();
        loop {
            match src.next() {
                Next::Record(r) => out.push((Some(r.bytes.to_vec()), r.start, r.end)),
                Next::Skipped { start, end, .. } => out.push((None, start, end)),
                Next::Idle => panic!("a stream is never idle"),
                Next::End => return out,
            }
        }
    }

    #[test]
    fn records_with_offsets_then_end() {
        let input = b"a\r\n\nxxxxxxxxxx\nlast";
        for trickle in [false, true] {
            let out = if trickle {
                collect(&mut StreamSource::new(Trickle(input), 5))
            } else {
                collect(&mut StreamSource::new(&input[..], 5))
            };
            assert_eq!(
                out,
                vec![
                    (Some(b"a".to_vec()), 0, 3),
                    (Some(b"".to_vec()), 3, 4),
                    (None, 4, 15),
                    (Some(b"last".to_vec()), 15, 19),
                ]
            );
        }
    }

    #[test]
    fn a_read_error_ends_the_stream_and_is_kept() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut s = StreamSource::new(Broken, 100);
        assert!(matches!(s.next(), Next::End));
        assert_eq!(
            s.take_error().map(|e| e.to_string()).as_deref(),
            Some("disk on fire")
        );
    }
}
