//! One JSON document read as it streams in, record by record: an `EventList` of any size,
//! compact or pretty-printed, has its items handed out one at a time as they complete (each
//! pruned to what the rules read, so each is bounded like a line); a single object is one
//! record. Memory: one read chunk plus one record, whatever the document's size.
//!
//! Used by `replay` for a document on a file or stdin, and by every input where a document
//! arrives whole (a webhook body).

use std::io::{self, Read};

use crate::source::lines::Unreadable;
use crate::source::prune::{Caps, Pruned, Pruner, Spec};
use crate::source::{Next, Read as How, Record, Source};

/// Bytes read at a time.
const CHUNK: usize = 64 << 10;

/// A [`Source`] over one JSON document. Places are byte offsets into the document.
pub struct DocumentSource<R> {
    input: R,
    pruner: Pruner,
    chunk: Vec<u8>,
    /// The record handed out last.
    record: Vec<u8>,
    /// End offset of the record handed out last.
    position: u64,
    /// Newlines read (a pretty-printed document's line count).
    newlines: u64,
    ends_with_newline: bool,
    eof: bool,
    finished: bool,
    error: Option<io::Error>,
}

impl<R: Read> DocumentSource<R> {
    /// Records are pruned with `spec`; a top-level object of kind `container_kind` is a list
    /// of records, and so is a top-level array when `top_array`.
    pub fn new(
        input: R,
        spec: &'static Spec,
        container_kind: &'static str,
        caps: Caps,
        top_array: bool,
    ) -> DocumentSource<R> {
        let pruner = Pruner::new(spec, container_kind, caps);
        DocumentSource {
            input,
            pruner: if top_array {
                pruner.allow_top_array()
            } else {
                pruner
            },
            chunk: vec![0; CHUNK],
            record: Vec::new(),
            position: 0,
            newlines: 0,
            ends_with_newline: false,
            eof: false,
            finished: false,
            error: None,
        }
    }

    /// The read error that ended the document early, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.pruner.offset()
    }

    /// Whether the document turned out to be a list of records (an `EventList`, an array).
    pub fn is_list(&self) -> bool {
        self.pruner.is_container()
    }

    /// Lines read so far (newlines, plus a last unterminated line once at the end).
    pub fn lines_read(&self) -> u64 {
        self.newlines
    }

    fn fill(&mut self) {
        loop {
            match self.input.read(&mut self.chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    let bytes = &self.chunk[..n];
                    self.newlines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                    let last_newline = bytes.last() == Some(&b'\n');
                    self.pruner.feed(bytes);
                    self.ends_with_newline = last_newline;
                }
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

impl<R: Read> Source for DocumentSource<R> {
    type Pos = u64;

    fn next(&mut self) -> Next<'_, u64> {
        loop {
            if let Some(Pruned { record, start, end }) = self.pruner.take() {
                self.position = end;
                return match record {
                    Ok(bytes) => {
                        self.record = bytes;
                        Next::Record(Record {
                            bytes: &self.record,
                            start,
                            end,
                            how: How::Item,
                        })
                    }
                    Err(e) => Next::Skipped {
                        start,
                        end,
                        why: Unreadable::Pruner(e),
                    },
                };
            }
            if self.finished {
                return Next::End;
            }
            if self.eof {
                self.finished = true;
                if !self.ends_with_newline && self.pruner.offset() > 0 {
                    self.newlines += 1;
                }
                if let Err(e) = self.pruner.finish() {
                    // The rest of the document, from where it broke, could not be read.
                    let (start, end) = (e.offset.min(self.pruner.offset()), self.pruner.offset());
                    self.position = end;
                    return Next::Skipped {
                        start,
                        end,
                        why: Unreadable::Pruner(e),
                    };
                }
                continue;
            }
            if self.pruner.error().is_some() {
                // Nothing more can come out of it: do not read the rest.
                self.eof = true;
                continue;
            }
            self.fill();
        }
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn describe(&self, place: &u64) -> String {
        format!("offset {place}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::prune::Keep;

    static ITEM: &Spec = &[("a", Keep::Value)];
    static TOP: &Spec = &[("kind", Keep::Value), ("items", Keep::Records(ITEM))];

    /// The records of `doc`; a top-level array's elements are pruned with the item spec.
    fn collect(doc: &str, top_array: bool) -> Vec<String> {
        let spec = if top_array { ITEM } else { TOP };
        let mut src = DocumentSource::new(doc.as_bytes(), spec, "List", Caps::default(), top_array);
        let mut out = Vec::new();
        loop {
            match src.next() {
                Next::Record(r) => out.push(String::from_utf8_lossy(r.bytes).into_owned()),
                Next::Skipped { why, .. } => out.push(format!("!{why}")),
                Next::Idle => panic!("a document is never idle"),
                Next::End => return out,
            }
        }
    }

    #[test]
    fn items_one_by_one_pretty_or_compact() {
        let pretty = "{\n  \"kind\": \"List\",\n  \"items\": [\n    {\"a\": 1, \"b\": [2]},\n    {\"a\": 2}\n  ]\n}\n";
        assert_eq!(collect(pretty, false), [r#"{"a":1}"#, r#"{"a":2}"#]);
        let compact = r#"{"kind":"List","items":[{"a":1},{"a":2}]}"#;
        assert_eq!(collect(compact, false), [r#"{"a":1}"#, r#"{"a":2}"#]);
        // A single object is one record.
        assert_eq!(
            collect("{\n \"kind\": \"E\"\n}", false),
            [r#"{"kind":"E"}"#]
        );
        // A top-level array, when allowed.
        assert_eq!(
            collect("[{\"a\":1}, {\"a\":2}]", true),
            [r#"{"a":1}"#, r#"{"a":2}"#]
        );
    }

    #[test]
    fn a_broken_document_keeps_the_items_before_the_break() {
        let got = collect(r#"{"kind":"List","items":[{"a":1},{"a":2 3}]}"#, false);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], r#"{"a":1}"#);
        assert!(got[1].starts_with("!unexpected byte `3`"), "{got:?}");
        let got = collect(r#"{"kind":"List","items":[{"a":1}"#, false);
        assert_eq!(got[0], r#"{"a":1}"#);
        assert!(
            got[1].starts_with("!the input ends inside a value"),
            "{got:?}"
        );
    }
}
