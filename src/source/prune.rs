//! Keeping only what the rules read, from a JSON record of any size, as its bytes stream past.
//!
//! A [`Pruner`] is fed a JSON value in chunks of any size (an audit line over `MAX_LINE_BYTES`,
//! a line whose skipped parts are broken, an `EventList` document of any size) and produces
//! small, compact records that hold only the members a [`Spec`] names, copied verbatim; every
//! other value is skipped as it passes. Its memory is the kept bytes of one record (at most
//! [`Caps::keep`]) plus one bit per nesting level (at most [`Caps::depth`]), whatever the
//! input's size. A member marked [`Keep::Records`] (an `EventList`'s `items`) turns each
//! element of its array into a record of its own, emitted as soon as it is complete.
//!
//! **How far it reads what it skips.** Skipped values are read lexically: strings must end and
//! brackets must match (so where a value ends is never a guess), and nothing else is checked —
//! a bad number, a bad escape or a missing comma inside a skipped value costs nothing. The
//! objects on the way to a kept member must be well formed (`"key": value` pairs separated by
//! commas), and kept values are copied as they are, to be validated by the strict scanner that
//! reads the record afterwards. Anything else — an unterminated string, a `]` closing a `{`,
//! data after the value, a record whose kept members exceed the cap — is an error that says
//! what and where; records completed before it stand.
//!
//! The pruner is generic: the audit event's [`Spec`] lives with the fields it describes
//! (`crate::detect::audit`), and the command that wires a source hands it in.

use std::collections::VecDeque;
use std::fmt;

use crate::source::bytes::find_either;

/// What to keep of an object's members: `(name, what)`, names as decoded JSON strings.
pub type Spec = [(&'static str, Keep)];

/// What to keep of one member's value.
#[derive(Debug)]
pub enum Keep {
    /// The whole value, verbatim.
    Value,
    /// The listed members of an object value (any other type is kept as `null`). The object's
    /// structure must be well formed.
    Members(&'static Spec),
    /// The listed members of an object whose structure may be broken (a request or response
    /// body): a member is recognised lexically, as a string followed by `:` at the object's
    /// own level; anything else there is skipped.
    Search(&'static Spec),
    /// An array whose elements are records of their own, pruned with this spec. Used for the
    /// record list of a container (`EventList.items`): only at the top level, and only while
    /// the container's `kind` is unseen or the given container kind.
    Records(&'static Spec),
}

/// Bounds on what one pruner may hold.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Kept bytes of one record.
    pub keep: usize,
    /// Nesting levels anywhere in the input.
    pub depth: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            keep: KEEP_CAP,
            depth: DEPTH_CAP,
        }
    }
}

/// The most a record may keep: 1 MiB (an annotation map larger than that cannot be evaluated).
pub const KEEP_CAP: usize = 1 << 20;
/// The deepest nesting read: 1 048 576 levels (128 KiB of bits).
pub const DEPTH_CAP: usize = 1 << 20;

/// Why a record, or the rest of the input, could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneErrorKind {
    /// The input is blank.
    Empty,
    /// The top-level value is not an object (or, for a document, not an object or an array).
    NotAnObject,
    /// The input ended inside a value.
    UnexpectedEnd,
    /// A byte that breaks the structure around the kept members (an unquoted key, a missing
    /// `:`...), or a bracket that closes another kind of bracket.
    Unexpected(u8),
    /// Something follows the top-level value.
    TrailingData,
    /// The kept members of one record exceed [`Caps::keep`].
    TooLarge,
    /// Nested deeper than [`Caps::depth`].
    TooDeep,
}

/// A [`PruneErrorKind`] and where: the offset in the input fed so far, and the `auditID` of the
/// record when it was read before the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneError {
    pub kind: PruneErrorKind,
    pub offset: u64,
    pub audit_id: Option<String>,
}

impl fmt::Display for PruneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            PruneErrorKind::Empty => "empty input".to_string(),
            PruneErrorKind::NotAnObject => "not a JSON object".to_string(),
            PruneErrorKind::UnexpectedEnd => "the input ends inside a value".to_string(),
            PruneErrorKind::Unexpected(b) => {
                let shown = if b.is_ascii_graphic() {
                    format!("`{}`", *b as char)
                } else {
                    format!("0x{b:02x}")
                };
                format!("unexpected byte {shown} where the structure must be unambiguous")
            }
            PruneErrorKind::TrailingData => "data after the end of the JSON value".to_string(),
            PruneErrorKind::TooLarge => format!(
                "the fields the rules read are larger than {} KiB",
                KEEP_CAP >> 10
            ),
            PruneErrorKind::TooDeep => format!("nested deeper than {DEPTH_CAP} levels"),
        };
        write!(f, "{what} at byte {}", self.offset)
    }
}

impl std::error::Error for PruneError {}

/// One record the pruner produced: its compact bytes (or why it could not be kept) and the
/// offsets of its value in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub record: Result<Vec<u8>, PruneError>,
    pub start: u64,
    pub end: u64,
}

/// Lexical state within the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Between,
    /// Inside a string; `escape`: the previous byte was a lone `\`.
    Str { sink: Sink, escape: bool },
    /// Inside a number or literal.
    Word { sink: Sink },
}

/// Where the bytes of a string or word go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Skip,
    Out,
    Key,
}

/// What an object frame waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    KeyOrClose,
    Colon,
    Value,
    CommaOrClose,
}

/// An open container the pruner looks into, or a region it copies or skips.
#[derive(Debug)]
enum Frame {
    /// An object whose members are matched against `spec`.
    Members {
        spec: &'static Spec,
        expect: Expect,
        /// What the current member's value is to become.
        keep: Option<&'static Keep>,
        /// Index in `spec` of the current member (to recognise `kind` and `auditID`).
        member: Option<usize>,
        /// No member written to the output yet (for the commas).
        first_out: bool,
        /// The object is a record's root.
        root: bool,
        /// Members are recognised lexically ([`Keep::Search`]).
        lenient: bool,
    },
    /// The array of a container's records.
    Records {
        spec: &'static Spec,
        first: bool,
        expect_value: bool,
    },
    /// A container value copied (`keep`) or skipped; `depth` brackets open in it.
    Region { keep: bool, depth: usize },
}

/// The streaming pruner. See the module documentation.
#[derive(Debug)]
pub struct Pruner {
    spec: &'static Spec,
    container_kind: &'static str,
    caps: Caps,
    /// Whether the top-level value may be an array of records (a document such as gcloud's).
    top_array: bool,
    offset: u64,
    frames: Vec<Frame>,
    lex: Lex,
    /// Bracket kinds of all open regions, one bit per level (1 = object).
    kinds: Vec<u64>,
    kinds_len: usize,
    /// Raw bytes of the key being read (at most [`KEY_MAX`]); `None`: longer than that.
    key: Option<Vec<u8>>,
    /// The record being built.
    out: Vec<u8>,
    /// Offset where the record being built starts; `None` while no record is open.
    record_start: Option<u64>,
    /// The record being built went over the cap or broke: it is dropped at its end.
    record_failed: Option<PruneErrorKind>,
    /// Start in `out` of the kept value being copied (to decode `kind` and `auditID` once
    /// complete).
    value_mark: Option<usize>,
    audit_id: Option<String>,
    /// The top-level object is a container of records (its `items` were seen first).
    container: bool,
    /// `kind` of the top-level object as read so far.
    top_kind: Option<String>,
    started: bool,
    done: bool,
    error: Option<PruneError>,
    ready: VecDeque<Pruned>,
}

/// Keys longer than this are never one of ours.
const KEY_MAX: usize = 64;

impl Pruner {
    /// A pruner for one JSON value: an object pruned with `spec` (or, when its `kind` is
    /// `container_kind` or unseen when a [`Keep::Records`] member starts, a container whose
    /// records are pruned one by one).
    pub fn new(spec: &'static Spec, container_kind: &'static str, caps: Caps) -> Pruner {
        Pruner {
            spec,
            container_kind,
            caps,
            top_array: false,
            offset: 0,
            frames: Vec::new(),
            lex: Lex::Between,
            kinds: Vec::new(),
            kinds_len: 0,
            key: None,
            out: Vec::new(),
            record_start: None,
            record_failed: None,
            value_mark: None,
            audit_id: None,
            container: false,
            top_kind: None,
            started: false,
            done: false,
            error: None,
            ready: VecDeque::new(),
        }
    }

    /// Also accepts a top-level array whose elements are records (a JSON array document).
    pub fn allow_top_array(mut self) -> Pruner {
        self.top_array = true;
        self
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next completed record, if any.
    pub fn take(&mut self) -> Option<Pruned> {
        self.ready.pop_front()
    }

    /// Records completed and not taken yet.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// The error that stopped the pruner, if any (records before it were produced).
    pub fn error(&self) -> Option<&PruneError> {
        self.error.as_ref()
    }

    /// Whether the top-level value is complete (more than whitespace after it is an error).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the top-level value turned out to be a container of records.
    pub fn is_container(&self) -> bool {
        self.container
    }

    /// The input ended: fails when it ended inside the value (or held none).
    pub fn finish(&mut self) -> Result<(), PruneError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if !self.started {
            return Err(self.fail(PruneErrorKind::Empty));
        }
        if !self.done {
            return Err(self.fail(PruneErrorKind::UnexpectedEnd));
        }
        Ok(())
    }

    fn fail(&mut self, kind: PruneErrorKind) -> PruneError {
        let e = PruneError {
            kind,
            offset: self.offset,
            audit_id: self.audit_id.clone(),
        };
        if self.error.is_none() {
            self.error = Some(e.clone());
        }
        e
    }

    /// Feeds the next bytes of the input.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            let n = self.step(bytes);
            self.offset += n as u64;
            bytes = &bytes[n..];
        }
    }

    /// Consumes bytes of `b` (at least one, unless it only changed state); returns how many.
    fn step(&mut self, b: &[u8]) -> usize {
        match self.lex {
            Lex::Str { sink, escape } => self.in_string(b, sink, escape),
            Lex::Word { sink } => {
                let n = b.iter().position(|&c| is_delimiter(c)).unwrap_or(b.len());
                if sink == Sink::Out {
                    self.emit(&b[..n]);
                }
                if n < b.len() {
                    // The delimiter is read again, between tokens.
                    self.lex = Lex::Between;
                    self.value_done();
                }
                n
            }
            Lex::Between => self.between(b),
        }
    }

    /// Inside a string: runs to the next quote or backslash at once.
    fn in_string(&mut self, b: &[u8], sink: Sink, escape: bool) -> usize {
        if escape {
            // The escaped byte (for `\u`, the four hex digits follow as plain bytes).
            self.string_bytes(&b[..1], sink);
            self.lex = Lex::Str {
                sink,
                escape: false,
            };
            return 1;
        }
        let stop = find_either(b, b'"', b'\\').unwrap_or(b.len());
        self.string_bytes(&b[..stop], sink);
        if stop == b.len() {
            return stop;
        }
        self.string_bytes(&b[stop..stop + 1], sink);
        if b[stop] == b'\\' {
            self.lex = Lex::Str { sink, escape: true };
        } else {
            self.lex = Lex::Between;
            if sink == Sink::Key {
                self.key_done();
            } else if !matches!(self.frames.last(), Some(Frame::Region { .. })) {
                // A string inside a copied or skipped container is only part of it.
                self.value_done();
            }
        }
        stop + 1
    }

    fn string_bytes(&mut self, b: &[u8], sink: Sink) {
        match sink {
            Sink::Skip => {}
            Sink::Out => self.emit(b),
            Sink::Key => {
                if let Some(k) = &mut self.key {
                    if k.len() + b.len() > KEY_MAX + 1 {
                        self.key = None;
                    } else {
                        k.extend_from_slice(b);
                    }
                }
            }
        }
    }

    /// Appends kept bytes to the record being built, within the cap.
    fn emit(&mut self, b: &[u8]) {
        if self.record_failed.is_some() || self.record_start.is_none() {
            return;
        }
        if self.out.len() + b.len() > self.caps.keep {
            self.record_failed = Some(PruneErrorKind::TooLarge);
            self.out.clear();
            self.value_mark = None;
            return;
        }
        self.out.extend_from_slice(b);
    }

    fn push_kind(&mut self, object: bool) -> bool {
        if self.kinds_len >= self.caps.depth {
            self.fail(PruneErrorKind::TooDeep);
            return false;
        }
        let (w, bit) = (self.kinds_len / 64, self.kinds_len % 64);
        if w == self.kinds.len() {
            self.kinds.push(0);
        }
        if object {
            self.kinds[w] |= 1 << bit;
        } else {
            self.kinds[w] &= !(1 << bit);
        }
        self.kinds_len += 1;
        true
    }

    /// Pops the innermost bracket if it is of the kind `close` closes.
    fn pop_kind(&mut self, close: u8) -> bool {
        if self.kinds_len == 0 {
            return false;
        }
        let i = self.kinds_len - 1;
        let object = self.kinds[i / 64] & (1 << (i % 64)) != 0;
        if object != (close == b'}') {
            return false;
        }
        self.kinds_len -= 1;
        true
    }

    /// Between tokens: the innermost frame decides.
    fn between(&mut self, b: &[u8]) -> usize {
        if let Some(Frame::Region { keep, .. }) = self.frames.last() {
            // A run without strings or brackets is copied or skipped at once.
            let keep = *keep;
            let n = b
                .iter()
                .position(|&c| matches!(c, b'"' | b'{' | b'}' | b'[' | b']'))
                .unwrap_or(b.len());
            if n > 0 {
                if keep {
                    self.emit(&b[..n]);
                }
                return n;
            }
            self.in_region(b[0]);
            return 1;
        }
        let c = b[0];
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            return 1;
        }
        if self.done {
            self.fail(PruneErrorKind::TrailingData);
            return 1;
        }
        match self.frames.last_mut() {
            None => self.top(c),
            Some(Frame::Region { .. }) => unreachable!("handled above"),
            Some(Frame::Members { .. }) => self.in_members(c),
            Some(Frame::Records { .. }) => self.in_records(c),
        }
        1
    }

    fn top(&mut self, c: u8) {
        self.started = true;
        match c {
            b'{' => {
                self.open_record();
                self.push_members(self.spec, true, false);
            }
            b'[' if self.top_array => {
                self.container = true;
                if self.push_kind(false) {
                    self.frames.push(Frame::Records {
                        spec: self.spec,
                        first: true,
                        expect_value: true,
                    });
                }
            }
            _ => {
                self.fail(PruneErrorKind::NotAnObject);
            }
        }
    }

    fn open_record(&mut self) {
        self.out.clear();
        self.record_start = Some(self.offset);
        self.record_failed = None;
        self.audit_id = None;
    }

    fn push_members(&mut self, spec: &'static Spec, root: bool, lenient: bool) {
        if !self.push_kind(true) {
            return;
        }
        self.emit(b"{");
        self.frames.push(Frame::Members {
            spec,
            expect: Expect::KeyOrClose,
            keep: None,
            member: None,
            first_out: true,
            root,
            lenient,
        });
    }

    fn in_region(&mut self, c: u8) {
        let Some(Frame::Region { keep, .. }) = self.frames.last() else {
            return;
        };
        let keep = *keep;
        match c {
            b'"' => {
                if keep {
                    self.emit(b"\"");
                }
                self.lex = Lex::Str {
                    sink: if keep { Sink::Out } else { Sink::Skip },
                    escape: false,
                };
            }
            b'{' | b'[' if self.push_kind(c == b'{') => {
                if keep {
                    self.emit(&[c]);
                }
                if let Some(Frame::Region { depth, .. }) = self.frames.last_mut() {
                    *depth += 1;
                }
            }
            b'{' | b'[' => {}
            b'}' | b']' => {
                if !self.pop_kind(c) {
                    self.fail(PruneErrorKind::Unexpected(c));
                    return;
                }
                if keep {
                    self.emit(&[c]);
                }
                let closed = match self.frames.last_mut() {
                    Some(Frame::Region { depth, .. }) => {
                        *depth -= 1;
                        *depth == 0
                    }
                    _ => false,
                };
                if closed {
                    self.frames.pop();
                    self.value_done();
                }
            }
            _ => {}
        }
    }

    fn in_members(&mut self, c: u8) {
        let Some(Frame::Members {
            expect,
            keep,
            lenient,
            ..
        }) = self.frames.last()
        else {
            return;
        };
        let (expect, keep, lenient) = (*expect, *keep, *lenient);
        match (expect, c) {
            (Expect::KeyOrClose | Expect::CommaOrClose, b'}') => self.close_members(),
            (Expect::KeyOrClose, b'"') => self.read_key(),
            (Expect::CommaOrClose, b',') => self.set_expect(Expect::KeyOrClose),
            (Expect::Colon, b':') => self.set_expect(Expect::Value),
            (Expect::Value, c) if !lenient || !matches!(c, b'}' | b']' | b',' | b':') => {
                self.member_value(c, keep)
            }
            (_, c) if lenient => {
                // Not a member where one was expected: skip it and look for the next one. A
                // string that turns out not to be a key was skipped already.
                self.set_expect(Expect::KeyOrClose);
                match c {
                    b'"' => self.read_key(),
                    b'}' => self.close_members(),
                    b',' | b':' => {}
                    c => self.skip_value(c),
                }
            }
            (_, c) => {
                self.fail(PruneErrorKind::Unexpected(c));
            }
        }
    }

    fn read_key(&mut self) {
        self.key = Some(Vec::new());
        self.lex = Lex::Str {
            sink: Sink::Key,
            escape: false,
        };
    }

    fn set_expect(&mut self, e: Expect) {
        if let Some(Frame::Members { expect, .. }) = self.frames.last_mut() {
            *expect = e;
        }
    }

    /// A key was read: find what its value becomes.
    fn key_done(&mut self) {
        let key = self.key.take().and_then(|raw| decode_key(&raw));
        let Some(Frame::Members {
            spec,
            expect,
            keep,
            member,
            ..
        }) = self.frames.last_mut()
        else {
            return;
        };
        let found = key.and_then(|k| spec.iter().position(|(name, _)| *name == k));
        *member = found;
        *keep = found.map(|i| &spec[i].1);
        *expect = Expect::Colon;
    }

    /// Writes `"name":` for the current member of the innermost object.
    fn emit_member_name(&mut self) {
        let (name, first) = match self.frames.last_mut() {
            Some(Frame::Members {
                spec,
                member: Some(i),
                first_out,
                ..
            }) => (spec[*i].0, std::mem::replace(first_out, false)),
            _ => return,
        };
        if !first {
            self.emit(b",");
        }
        self.emit(b"\"");
        self.emit(name.as_bytes());
        self.emit(b"\":");
    }

    fn member_value(&mut self, c: u8, keep: Option<&'static Keep>) {
        self.set_expect(Expect::CommaOrClose);
        match keep {
            None => self.skip_value(c),
            Some(Keep::Value) => {
                self.emit_member_name();
                self.value_mark = Some(self.out.len());
                self.copy_value(c);
            }
            Some(Keep::Members(sub) | Keep::Search(sub)) => {
                let lenient = matches!(keep, Some(Keep::Search(_)));
                self.emit_member_name();
                if c == b'{' {
                    self.push_members(sub, false, lenient);
                } else {
                    self.emit(b"null");
                    self.skip_value(c);
                }
            }
            Some(Keep::Records(sub)) => {
                let is_root = matches!(self.frames.last(), Some(Frame::Members { root: true, .. }))
                    && self.frames.len() == 1;
                let kind_ok = self
                    .top_kind
                    .as_deref()
                    .map_or(true, |k| k == self.container_kind);
                if c == b'[' && is_root && kind_ok && self.push_kind(false) {
                    self.container = true;
                    // The container itself is not a record.
                    self.record_start = None;
                    self.out.clear();
                    self.frames.push(Frame::Records {
                        spec: sub,
                        first: true,
                        expect_value: true,
                    });
                } else {
                    self.skip_value(c);
                }
            }
        }
    }

    /// Starts skipping the value that begins with `c`.
    fn skip_value(&mut self, c: u8) {
        match c {
            b'"' => {
                self.lex = Lex::Str {
                    sink: Sink::Skip,
                    escape: false,
                }
            }
            b'{' | b'[' => {
                if self.push_kind(c == b'{') {
                    self.frames.push(Frame::Region {
                        keep: false,
                        depth: 1,
                    });
                }
            }
            b'}' | b']' | b',' | b':' => {
                self.fail(PruneErrorKind::Unexpected(c));
            }
            _ => self.lex = Lex::Word { sink: Sink::Skip },
        }
    }

    /// Starts copying the value that begins with `c`.
    fn copy_value(&mut self, c: u8) {
        match c {
            b'"' => {
                self.emit(b"\"");
                self.lex = Lex::Str {
                    sink: Sink::Out,
                    escape: false,
                };
            }
            b'{' | b'[' => {
                if self.push_kind(c == b'{') {
                    self.emit(&[c]);
                    self.frames.push(Frame::Region {
                        keep: true,
                        depth: 1,
                    });
                }
            }
            b'}' | b']' | b',' | b':' => {
                self.fail(PruneErrorKind::Unexpected(c));
            }
            c => {
                self.emit(&[c]);
                self.lex = Lex::Word { sink: Sink::Out };
            }
        }
    }

    /// A value finished at the current frame's level.
    fn value_done(&mut self) {
        if let Some(at) = self.value_mark.take() {
            self.kept_value_done(at);
        }
        match self.frames.last_mut() {
            None => self.done = true,
            Some(Frame::Records {
                expect_value,
                first,
                ..
            }) => {
                *expect_value = false;
                *first = false;
            }
            _ => {}
        }
    }

    /// A kept scalar or region of the innermost object is complete: remember `kind` (of the
    /// top-level object) and `auditID` (of the record), which decisions and messages need.
    fn kept_value_done(&mut self, at: usize) {
        let Some(Frame::Members {
            spec,
            member: Some(i),
            root,
            ..
        }) = self.frames.last()
        else {
            return;
        };
        let (name, root, top) = (spec[*i].0, *root, self.frames.len() == 1);
        if !root || self.record_failed.is_some() || at > self.out.len() {
            return;
        }
        let value = &self.out[at..];
        let decoded = || decode_string(value).map(|s| s.chars().take(128).collect());
        match name {
            "kind" if top => self.top_kind = decoded(),
            "auditID" => self.audit_id = decoded(),
            _ => {}
        }
    }

    fn close_members(&mut self) {
        if !self.pop_kind(b'}') {
            self.fail(PruneErrorKind::Unexpected(b'}'));
            return;
        }
        let root = matches!(self.frames.pop(), Some(Frame::Members { root: true, .. }));
        self.emit(b"}");
        if root {
            self.record_done();
        }
        self.value_done();
    }

    /// The root object of a record closed: hand the record out (unless it was a container).
    fn record_done(&mut self) {
        let Some(start) = self.record_start.take() else {
            return;
        };
        let record = match self.record_failed.take() {
            Some(kind) => Err(PruneError {
                kind,
                offset: start,
                audit_id: self.audit_id.clone(),
            }),
            None => Ok(std::mem::take(&mut self.out)),
        };
        self.ready.push_back(Pruned {
            record,
            start,
            end: self.offset + 1,
        });
    }

    fn in_records(&mut self, c: u8) {
        let Some(Frame::Records {
            spec,
            expect_value,
            first,
        }) = self.frames.last()
        else {
            return;
        };
        let (spec, expect_value, first) = (*spec, *expect_value, *first);
        match c {
            b']' if !expect_value || first => {
                if !self.pop_kind(b']') {
                    self.fail(PruneErrorKind::Unexpected(c));
                    return;
                }
                self.frames.pop();
                self.value_done();
            }
            b',' if !expect_value => {
                if let Some(Frame::Records { expect_value, .. }) = self.frames.last_mut() {
                    *expect_value = true;
                }
            }
            b'{' if expect_value => {
                self.open_record();
                self.push_members(spec, true, false);
            }
            c if expect_value => {
                // Not an object: a record that cannot be an event (kept as `null`).
                self.ready.push_back(Pruned {
                    record: Ok(b"null".to_vec()),
                    start: self.offset,
                    end: self.offset + 1,
                });
                self.skip_value(c);
            }
            c => {
                self.fail(PruneErrorKind::Unexpected(c));
            }
        }
    }
}

fn is_delimiter(c: u8) -> bool {
    matches!(
        c,
        b' ' | b'\t' | b'\r' | b'\n' | b',' | b':' | b'}' | b']' | b'{' | b'[' | b'"'
    )
}

/// A key's raw bytes (without quotes) decoded; `None` when longer than [`KEY_MAX`] or not a
/// valid string.
fn decode_key(raw: &[u8]) -> Option<String> {
    // The closing quote was appended with the bytes.
    let raw = raw.strip_suffix(b"\"")?;
    if raw.len() > KEY_MAX {
        return None;
    }
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw).ok().map(str::to_string);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    decode_string(&quoted)
}

/// A kept JSON string value (with its quotes) decoded; `None` when it is not a string.
pub fn decode_string(value: &[u8]) -> Option<String> {
    let v = value.trim_ascii();
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return Some(String::from_utf8_lossy(inner).into_owned());
    }
    // Escapes: decode the common ones; `\uXXXX` (with surrogate pairs) as JSON does.
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *inner.get(i + 1)?;
        i += 2;
        match e {
            b'"' | b'\\' | b'/' => out.push(e),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let hex = |at: usize| -> Option<u32> {
                    let h = inner.get(at..at + 4)?;
                    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                };
                let hi = hex(i)?;
                i += 4;
                let ch = if (0xD800..0xDC00).contains(&hi)
                    && inner.get(i..i + 2) == Some(b"\\u")
                    && hex(i + 2).is_some_and(|lo| (0xDC00..0xE000).contains(&lo))
                {
                    let lo = hex(i + 2)?;
                    i += 6;
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                } else {
                    char::from_u32(hi)
                };
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.unwrap_or('\u{FFFD}').encode_utf8(&mut tmp).as_bytes());
            }
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// What [`prune_all`] produced.
#[derive(Debug)]
pub struct PrunedAll {
    pub records: Vec<Pruned>,
    /// How the input ended: `Err` when it could not be read to its end.
    pub end: Result<(), PruneError>,
    /// The value was a container of records (an `EventList`).
    pub container: bool,
}

/// Prunes a whole value held in memory: every record, and how it ended.
pub fn prune_all(
    input: &[u8],
    spec: &'static Spec,
    container_kind: &'static str,
    caps: Caps,
) -> PrunedAll {
    let mut p = Pruner::new(spec, container_kind, caps);
    p.feed(input);
    let end = p.finish();
    let mut records = Vec::new();
    while let Some(r) = p.take() {
        records.push(r);
    }
    PrunedAll {
        records,
        end,
        container: p.is_container(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static INNER: &Spec = &[("name", Keep::Value)];
    static ITEM: &Spec = &[
        ("kind", Keep::Value),
        ("a", Keep::Value),
        ("o", Keep::Members(INNER)),
    ];
    static TOP: &Spec = &[
        ("kind", Keep::Value),
        ("a", Keep::Value),
        ("o", Keep::Members(INNER)),
        ("items", Keep::Records(ITEM)),
    ];

    /// Prunes `input` fed in pieces of `step` bytes: the records as strings (errors as `!kind`)
    /// and how it ended.
    fn run(input: &str, step: usize) -> (Vec<String>, Result<(), PruneErrorKind>) {
        let mut p = Pruner::new(TOP, "List", Caps { keep: 64, depth: 8 });
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(step.max(1)) {
            p.feed(chunk);
            while let Some(r) = p.take() {
                out.push(show(r));
            }
        }
        let end = p.finish().map_err(|e| e.kind);
        while let Some(r) = p.take() {
            out.push(show(r));
        }
        (out, end)
    }

    fn show(r: Pruned) -> String {
        match r.record {
            Ok(b) => String::from_utf8(b).unwrap(),
            Err(e) => format!("!{:?}", e.kind),
        }
    }

    /// Same result whatever the chunking.
    fn check(input: &str, want: &[&str], end: Result<(), PruneErrorKind>) {
        for step in [1, 2, 3, 7, 64, input.len().max(1)] {
            let (got, got_end) = run(input, step);
            assert_eq!(got, want, "step {step}: {input}");
            assert_eq!(got_end, end, "step {step}: {input}");
        }
    }

    #[test]
    fn keeps_the_named_members_verbatim_and_skips_the_rest() {
        check(
            r#" {"x":[1,{"y":"}"}],"a":"v\"\\","o":{"name":12e3,"z":{"q":[]}},"b":tru , "kind" : "E" } "#,
            &[r#"{"a":"v\"\\","o":{"name":12e3},"kind":"E"}"#],
            Ok(()),
        );
        // Kept containers are copied as written; a wrong type under Members becomes null.
        check(
            r#"{"a":{"k": [1, "x"]},"o":"str"}"#,
            &[r#"{"a":{"k": [1, "x"]},"o":null}"#],
            Ok(()),
        );
        // Escaped keys are decoded before matching.
        check(r#"{"\u0061":1}"#, &[r#"{"a":1}"#], Ok(()));
    }

    #[test]
    fn broken_skipped_values_cost_nothing_broken_structure_is_an_error() {
        // Bad literal, bad number, bad escape, missing commas, inside a skipped value.
        check(
            r#"{"x":{"p": nul, "q" 01. "\q" [}]},"a":1}"#,
            &[],
            Err(PruneErrorKind::Unexpected(b'}')),
        );
        check(
            r#"{"x":{"p": nul, "q" 01. "\q" []},"a":1}"#,
            &[r#"{"a":1}"#],
            Ok(()),
        );
        // The structure around kept members must be well formed.
        check(r#"{"a" 1}"#, &[], Err(PruneErrorKind::Unexpected(b'1')));
        check(r#"{a:1}"#, &[], Err(PruneErrorKind::Unexpected(b'a')));
        check(
            r#"{"a":1}{"a":2}"#,
            &[r#"{"a":1}"#],
            Err(PruneErrorKind::TrailingData),
        );
        check(
            r#"{"a":"unterminated"#,
            &[],
            Err(PruneErrorKind::UnexpectedEnd),
        );
        check("  ", &[], Err(PruneErrorKind::Empty));
        check("[1]", &[], Err(PruneErrorKind::NotAnObject));
        check(
            r#"{"x":[[[[[[[[[1]]]]]]]]]}"#,
            &[],
            Err(PruneErrorKind::TooDeep),
        );
    }

    #[test]
    fn a_record_over_the_cap_is_an_error_with_its_audit_id() {
        let big = "y".repeat(100);
        let input = format!(r#"{{"kind":"E","a":"{big}"}}"#);
        check(&input, &["!TooLarge"], Ok(()));
        let mut p = Pruner::new(TOP, "List", Caps { keep: 64, depth: 8 });
        static WITH_ID: &Spec = &[("auditID", Keep::Value), ("a", Keep::Value)];
        let mut q = Pruner::new(WITH_ID, "List", Caps { keep: 64, depth: 8 });
        q.feed(format!(r#"{{"auditID":"id-7","a":"{big}"}}"#).as_bytes());
        assert!(q.finish().is_ok());
        let r = q.take().unwrap();
        let e = r.record.unwrap_err();
        assert_eq!(
            (e.kind, e.audit_id.as_deref()),
            (PruneErrorKind::TooLarge, Some("id-7"))
        );
        p.feed(b"{}");
        assert_eq!(p.take().unwrap().record.unwrap(), b"{}");
    }

    #[test]
    fn container_records_stream_one_by_one() {
        let input = r#"{"kind":"List","items":[{"a":1,"x":[2]},7,{"a":"two","kind":"I"}],"a":9}"#;
        check(
            input,
            &[r#"{"a":1}"#, "null", r#"{"a":"two","kind":"I"}"#],
            Ok(()),
        );
        // `kind` after `items`: still a container (it was unseen when the items started).
        check(
            r#"{"items":[{"a":1}],"kind":"List"}"#,
            &[r#"{"a":1}"#],
            Ok(()),
        );
        // Another kind seen first: `items` is an ordinary skipped member.
        check(
            r#"{"kind":"E","items":[{"a":1}],"a":2}"#,
            &[r#"{"kind":"E","a":2}"#],
            Ok(()),
        );
        // A broken item ends the stream; the items before it stand.
        check(
            r#"{"kind":"List","items":[{"a":1},{"a":2 "b"}]}"#,
            &[r#"{"a":1}"#],
            Err(PruneErrorKind::Unexpected(b'"')),
        );
        // Each record's offsets.
        let all = prune_all(input.as_bytes(), TOP, "List", Caps::default());
        assert!(all.end.is_ok() && all.container);
        let spans: Vec<(u64, u64)> = all.records.iter().map(|r| (r.start, r.end)).collect();
        let first = input.find("{\"a\":1").unwrap() as u64;
        assert_eq!(spans[0], (first, first + r#"{"a":1,"x":[2]}"#.len() as u64));
    }

    #[test]
    fn a_top_level_array_of_records_when_allowed() {
        let mut p = Pruner::new(ITEM, "List", Caps::default()).allow_top_array();
        p.feed(b"[\n {\"a\": 1},\n {\"a\": 2}\n]\n");
        assert!(p.finish().is_ok());
        assert!(p.is_container());
        let got: Vec<String> = std::iter::from_fn(|| p.take()).map(show).collect();
        assert_eq!(got, [r#"{"a":1}"#, r#"{"a":2}"#]);
    }

    #[test]
    fn decodes_kept_strings() {
        assert_eq!(
            decode_string(br#""a\u00e9\ud83d\ude00\n""#).as_deref(),
            Some("aé😀\n")
        );
        assert_eq!(decode_string(br#""\udc00x""#).as_deref(), Some("\u{FFFD}x"));
        assert_eq!(decode_string(b"12"), None);
    }
}
