//! A std-only JSON (RFC 8259) scanner over `&[u8]`, built for the audit hot path, and the
//! string writer used for the payloads we send.
//!
//! Nothing here builds a tree: [`Scanner`] walks a document token by token, decodes the few
//! strings a caller asks for (borrowed when they hold no escape) and skips everything else
//! while still validating it, so a line is accepted exactly when it is valid JSON. Skipping is
//! iterative (a bit stack of container kinds, no recursion), strings are searched eight bytes at
//! a time, and nesting is capped at [`MAX_DEPTH`] levels, so no input — however deep or long —
//! can overflow the stack or cost more than linear time. Invalid UTF-8 inside a string is not an
//! error: each invalid byte becomes U+FFFD, as Go's decoder (kube-apiserver, the Go agent) does.

use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted, counting the outermost container: the Go agent's limit of 10 000
/// levels below the event object, plus the event object itself.
pub const MAX_DEPTH: usize = 10_001;

/// What went wrong while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input ended inside a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue a value here.
    UnexpectedByte(u8),
    /// Something follows the document.
    TrailingData,
    /// A raw control character (< 0x20) inside a string.
    ControlInString(u8),
    /// `\` followed by something other than `" \ / b f n r t u`.
    BadEscape,
    /// `\u` not followed by four hex digits.
    BadUnicodeEscape,
    /// A number that does not follow the JSON grammar (`01`, `1.`, `-`, `1e`).
    BadNumber,
    /// `tru`, `nul`…
    BadLiteral,
    /// Deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Valid JSON, but the document is not an object.
    NotAnObject,
    /// Blank input.
    Empty,
}

/// A scanning error: what, and where (1-based line and column, column counted in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub kind: ErrorKind,
    /// Byte offset in the scanned input.
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl JsonError {
    fn at(input: &[u8], offset: usize, kind: ErrorKind) -> JsonError {
        let offset = offset.min(input.len());
        let before = &input[..offset];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        JsonError {
            kind,
            offset,
            line,
            column: offset - line_start + 1,
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, fix) = match self.kind {
            ErrorKind::UnexpectedEnd => (
                "input ends inside a value".to_string(),
                "the line was probably cut off (partial write or truncation)",
            ),
            ErrorKind::UnexpectedByte(b) => (
                format!("unexpected byte {}", show_byte(b)),
                "expected a JSON value, `,`, `:` or a closing bracket here",
            ),
            ErrorKind::TrailingData => (
                "data after the end of the JSON document".to_string(),
                "one document per line: two events glued together or garbage appended",
            ),
            ErrorKind::ControlInString(b) => (
                format!("raw control character {} inside a string", show_byte(b)),
                "control characters must be escaped (\\n, \\u0001...)",
            ),
            ErrorKind::BadEscape => (
                "invalid escape in a string".to_string(),
                "only \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX are allowed",
            ),
            ErrorKind::BadUnicodeEscape => (
                "\\u escape without four hex digits".to_string(),
                "write \\u followed by exactly four hex digits",
            ),
            ErrorKind::BadNumber => (
                "malformed number".to_string(),
                "numbers look like -12, 0.5 or 1e9 (no leading zeros, digits after . and e)",
            ),
            ErrorKind::BadLiteral => (
                "malformed literal".to_string(),
                "the only bare words are true, false and null",
            ),
            ErrorKind::TooDeep => (
                format!("nesting deeper than {MAX_DEPTH} levels"),
                "kube-apiserver never writes this; the line is corrupt or hostile",
            ),
            ErrorKind::NotAnObject => (
                "the document is not a JSON object".to_string(),
                "an audit event is one JSON object per line",
            ),
            ErrorKind::Empty => ("empty document".to_string(), "expected one JSON object"),
        };
        write!(
            f,
            "invalid JSON at {}:{}: {what} ({fix})",
            self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Eight bytes at `i` (the caller checks `i + 8 <= b.len()`), little-endian so the lowest set
/// flag bit is the first matching byte.
#[inline(always)]
fn load8(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// High bit set in each byte of `w` that is `"`, `\` or < 0x20 (exact for the lowest one).
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    let q = w ^ (ONES * b'"' as u64);
    let bs = w ^ (ONES * b'\\' as u64);
    let zq = q.wrapping_sub(ONES) & !q;
    let zb = bs.wrapping_sub(ONES) & !bs;
    let ctl = w.wrapping_sub(ONES * 0x20) & !w;
    (zq | zb | ctl) & HIGHS
}

/// Index of the first `"`, `\` or control byte at or after `i`, or `b.len()`.
#[inline(always)]
fn find_string_stop(b: &[u8], mut i: usize) -> usize {
    while i + 16 <= b.len() {
        let m = string_stops(load8(b, i));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        let m = string_stops(load8(b, i + 8));
        if m != 0 {
            return i + 8 + (m.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// Appends `bytes` to `out` as UTF-8, each invalid byte replaced by U+FFFD (Go's rule: one
/// replacement per byte, not per maximal invalid sequence).
pub fn push_lossy(out: &mut String, mut bytes: &[u8]) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let good = e.valid_up_to();
                // The prefix is valid by construction, so this never replaces anything.
                out.push_str(&String::from_utf8_lossy(&bytes[..good]));
                out.push('\u{FFFD}');
                bytes = &bytes[good + 1..];
            }
        }
    }
}

/// Bytes → text, borrowing when they are valid UTF-8.
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let mut s = String::with_capacity(bytes.len() + 8);
            push_lossy(&mut s, bytes);
            Cow::Owned(s)
        }
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u16> {
    let d = b.get(i..i + 4)?;
    let mut v = 0u16;
    for &c in d {
        let x = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | x as u16;
    }
    Some(v)
}

/// The containers currently open while skipping: one bit per level (1 = object). The first
/// 64 levels live in a register; deeper (hostile or odd) input spills into a vector, so the
/// common case never allocates and nothing ever recurses.
struct Kinds {
    low: u64,
    high: Vec<u64>,
    depth: usize,
}

impl Kinds {
    #[inline(always)]
    fn push(&mut self, object: bool) {
        let d = self.depth;
        if d < 64 {
            if object {
                self.low |= 1 << d;
            } else {
                self.low &= !(1 << d);
            }
        } else {
            let (w, b) = ((d - 64) / 64, (d - 64) % 64);
            if w >= self.high.len() {
                self.high.push(0);
            }
            if object {
                self.high[w] |= 1 << b;
            } else {
                self.high[w] &= !(1 << b);
            }
        }
        self.depth += 1;
    }

    #[inline(always)]
    fn top_is_object(&self) -> bool {
        let d = self.depth - 1;
        if d < 64 {
            self.low & (1 << d) != 0
        } else {
            self.high[(d - 64) / 64] & (1 << ((d - 64) % 64)) != 0
        }
    }
}

/// A cursor over one JSON document.
pub struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// What the next value is, without consuming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    Object,
    Array,
    String,
    Other,
}

impl<'a> Scanner<'a> {
    pub fn new(buf: &'a [u8]) -> Scanner<'a> {
        Scanner { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn input(&self) -> &'a [u8] {
        self.buf
    }

    pub fn err(&self, kind: ErrorKind) -> JsonError {
        JsonError::at(self.buf, self.pos, kind)
    }

    fn unexpected(&self) -> JsonError {
        match self.buf.get(self.pos) {
            Some(&b) => self.err(ErrorKind::UnexpectedByte(b)),
            None => self.err(ErrorKind::UnexpectedEnd),
        }
    }

    #[inline(always)]
    pub fn skip_ws(&mut self) {
        // Compact audit lines have no whitespace: one comparison decides the common case.
        while let Some(&b) = self.buf.get(self.pos) {
            if b > b' ' || !(b == b' ' || b == b'\n' || b == b'\r' || b == b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    /// True when only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.buf.len()
    }

    /// Fails unless only whitespace is left.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err(ErrorKind::TrailingData))
        }
    }

    /// Skips whitespace and tells what kind of value comes next.
    pub fn peek(&mut self) -> Result<Peek, JsonError> {
        self.skip_ws();
        match self.buf.get(self.pos) {
            Some(b'{') => Ok(Peek::Object),
            Some(b'[') => Ok(Peek::Array),
            Some(b'"') => Ok(Peek::String),
            Some(_) => Ok(Peek::Other),
            None => Err(self.err(ErrorKind::UnexpectedEnd)),
        }
    }

    #[inline(always)]
    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Consumes `{`; then call [`Scanner::next_key`] until it returns `None`.
    pub fn begin_object(&mut self) -> Result<(), JsonError> {
        self.expect(b'{')
    }

    /// Consumes `[`; then call [`Scanner::next_item`] until it returns false.
    pub fn begin_array(&mut self) -> Result<(), JsonError> {
        self.expect(b'[')
    }

    /// Moves past `,` (or nothing, for the first member) to the next member's key and returns
    /// true, or past the closing `}` and returns false.
    #[inline(always)]
    fn member_follows(&mut self, first: bool) -> Result<bool, JsonError> {
        self.skip_ws();
        match self.buf.get(self.pos) {
            Some(b'}') => {
                self.pos += 1;
                return Ok(false);
            }
            Some(b',') if !first => {
                self.pos += 1;
                self.skip_ws();
            }
            _ if first => {}
            _ => return Err(self.unexpected()),
        }
        if self.buf.get(self.pos) != Some(&b'"') {
            return Err(self.unexpected());
        }
        Ok(true)
    }

    /// The next member's key (the scanner is then at its value), or `None` after the closing
    /// `}`. `first` is true for the first call after [`Scanner::begin_object`].
    pub fn next_key(&mut self, first: bool) -> Result<Option<Cow<'a, str>>, JsonError> {
        if !self.member_follows(first)? {
            return Ok(None);
        }
        let k = self.string()?;
        self.expect(b':')?;
        Ok(Some(k))
    }

    /// Like [`Scanner::next_key`], but the key as bytes: borrowed from the input when it holds
    /// no escape (no UTF-8 check: callers compare it with known ASCII names, which a key with
    /// invalid UTF-8 can never equal either way), decoded otherwise. This keeps the hot path
    /// of walking an audit event free of per-key validation.
    pub fn next_key_bytes(&mut self, first: bool) -> Result<Option<Cow<'a, [u8]>>, JsonError> {
        if !self.member_follows(first)? {
            return Ok(None);
        }
        let start = self.pos + 1;
        let stop = find_string_stop(self.buf, start);
        let key = if self.buf.get(stop) == Some(&b'"') {
            self.pos = stop + 1;
            Cow::Borrowed(&self.buf[start..stop])
        } else {
            Cow::Owned(self.string()?.into_owned().into_bytes())
        };
        if self.buf.get(self.pos) == Some(&b':') {
            self.pos += 1;
        } else {
            self.expect(b':')?;
        }
        Ok(Some(key))
    }

    /// True when another array item follows (the scanner is then at it), false after `]`.
    pub fn next_item(&mut self, first: bool) -> Result<bool, JsonError> {
        self.skip_ws();
        match self.buf.get(self.pos) {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) if first => Ok(true),
            _ => Err(self.unexpected()),
        }
    }

    /// Decodes the string at the cursor (after optional whitespace).
    pub fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.skip_ws();
        if self.buf.get(self.pos) != Some(&b'"') {
            return Err(self.unexpected());
        }
        let start = self.pos + 1;
        let stop = find_string_stop(self.buf, start);
        match self.buf.get(stop) {
            Some(b'"') => {
                self.pos = stop + 1;
                Ok(lossy(&self.buf[start..stop]))
            }
            Some(b'\\') => {
                let mut raw = Vec::with_capacity(stop - start + 16);
                raw.extend_from_slice(&self.buf[start..stop]);
                self.pos = stop;
                self.escaped_tail(Some(&mut raw))?;
                let mut s = String::with_capacity(raw.len());
                push_lossy(&mut s, &raw);
                Ok(Cow::Owned(s))
            }
            Some(&c) => {
                self.pos = stop;
                Err(self.err(ErrorKind::ControlInString(c)))
            }
            None => {
                self.pos = stop;
                Err(self.err(ErrorKind::UnexpectedEnd))
            }
        }
    }

    /// Skips the string at the cursor (which is at its opening quote), validating it.
    #[inline(always)]
    fn skip_string(&mut self) -> Result<(), JsonError> {
        let stop = find_string_stop(self.buf, self.pos + 1);
        if self.buf.get(stop) == Some(&b'"') {
            self.pos = stop + 1;
            return Ok(());
        }
        self.pos = stop;
        self.escaped_tail(None)
    }

    /// Continues a string from `self.pos` (at a `\`, a control byte, the end, or the closing
    /// quote) to just past its closing quote, decoding into `out` when given.
    fn escaped_tail(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<(), JsonError> {
        loop {
            match self.buf.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    let esc = self.pos;
                    let c = match self.buf.get(esc + 1) {
                        Some(&c) => c,
                        None => {
                            self.pos = esc + 1;
                            return Err(self.err(ErrorKind::UnexpectedEnd));
                        }
                    };
                    let simple = match c {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => {
                            self.pos = esc;
                            return Err(self.err(ErrorKind::BadEscape));
                        }
                    };
                    if let Some(v) = simple {
                        if let Some(o) = out.as_deref_mut() {
                            o.push(v);
                        }
                        self.pos = esc + 2;
                    } else {
                        let ch = self.unicode_escape(esc)?;
                        if let Some(o) = out.as_deref_mut() {
                            let mut tmp = [0u8; 4];
                            o.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                        }
                    }
                }
                Some(&c) if c < 0x20 => return Err(self.err(ErrorKind::ControlInString(c))),
                Some(_) => {}
                None => return Err(self.err(ErrorKind::UnexpectedEnd)),
            }
            let stop = find_string_stop(self.buf, self.pos);
            if let Some(o) = out.as_deref_mut() {
                o.extend_from_slice(&self.buf[self.pos..stop]);
            }
            self.pos = stop;
        }
    }

    /// Decodes `\uXXXX` (and its low-surrogate partner) at `esc`; leaves `pos` after it.
    /// RFC 8259's grammar accepts any four hex digits; like Go's decoder (kube-apiserver, the
    /// Go agent), a surrogate escape that is not half of a high+low pair becomes U+FFFD, and
    /// an escape after a lone high surrogate is decoded on its own.
    fn unicode_escape(&mut self, esc: usize) -> Result<char, JsonError> {
        let Some(hi) = hex4(self.buf, esc + 2) else {
            self.pos = esc;
            return Err(self.err(ErrorKind::BadUnicodeEscape));
        };
        self.pos = esc + 6;
        if !(0xD800..=0xDFFF).contains(&hi) {
            return Ok(char::from_u32(hi as u32).unwrap_or('\u{FFFD}'));
        }
        let lo_at = esc + 6;
        let lo = (hi < 0xDC00
            && self.buf.get(lo_at) == Some(&b'\\')
            && self.buf.get(lo_at + 1) == Some(&b'u'))
        .then(|| hex4(self.buf, lo_at + 2))
        .flatten()
        .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
        let Some(lo) = lo else {
            return Ok('\u{FFFD}');
        };
        self.pos = lo_at + 6;
        let cp = 0x10000 + (((hi as u32) - 0xD800) << 10) + ((lo as u32) - 0xDC00);
        Ok(char::from_u32(cp).unwrap_or('\u{FFFD}'))
    }

    fn skip_number(&mut self) -> Result<(), JsonError> {
        let b = self.buf;
        let mut i = self.pos;
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > s
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => {
                self.pos = i;
                return Err(self.err(ErrorKind::BadNumber));
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                self.pos = i;
                return Err(self.err(ErrorKind::BadNumber));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !digits(&mut i) {
                self.pos = i;
                return Err(self.err(ErrorKind::BadNumber));
            }
        }
        self.pos = i;
        Ok(())
    }

    fn skip_literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err(ErrorKind::BadLiteral))
        }
    }

    /// Skips one scalar at the cursor (no containers).
    #[inline(always)]
    fn skip_scalar(&mut self, c: u8) -> Result<(), JsonError> {
        match c {
            b'"' => self.skip_string(),
            b't' => self.skip_literal(b"true"),
            b'f' => self.skip_literal(b"false"),
            b'n' => self.skip_literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            c => Err(self.err(ErrorKind::UnexpectedByte(c))),
        }
    }

    /// Skips (and validates) one value; `depth` is the number of containers already open
    /// around it, counted against [`MAX_DEPTH`]. Returns the value's byte span.
    pub fn skip_value(&mut self, depth: usize) -> Result<(usize, usize), JsonError> {
        self.skip_ws();
        let start = self.pos;
        let Some(&c) = self.buf.get(self.pos) else {
            return Err(self.err(ErrorKind::UnexpectedEnd));
        };
        if c != b'{' && c != b'[' {
            self.skip_scalar(c)?;
            return Ok((start, self.pos));
        }
        let room = MAX_DEPTH.saturating_sub(depth);
        let mut kinds = Kinds {
            low: 0,
            high: Vec::new(),
            depth: 0,
        };
        // Kind of the innermost open container (mirrors the top of `kinds`).
        let mut obj = false;
        'value: loop {
            // At the start of a value.
            self.skip_ws();
            let Some(&c) = self.buf.get(self.pos) else {
                return Err(self.err(ErrorKind::UnexpectedEnd));
            };
            match c {
                b'{' | b'[' => {
                    if kinds.depth >= room {
                        return Err(self.err(ErrorKind::TooDeep));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let close = if c == b'{' { b'}' } else { b']' };
                    if self.buf.get(self.pos) == Some(&close) {
                        // An empty container: nothing to push.
                        self.pos += 1;
                    } else {
                        kinds.push(c == b'{');
                        obj = c == b'{';
                        if c == b'{' {
                            self.member_key()?;
                        }
                        continue 'value;
                    }
                }
                c => self.skip_scalar(c)?,
            }
            // After a complete value: close containers or move to the next member/item.
            loop {
                if kinds.depth == 0 {
                    return Ok((start, self.pos));
                }
                self.skip_ws();
                match self.buf.get(self.pos) {
                    Some(b',') => {
                        self.pos += 1;
                        if obj {
                            self.skip_ws();
                            self.member_key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if obj => {
                        self.pos += 1;
                        kinds.depth -= 1;
                        obj = kinds.depth > 0 && kinds.top_is_object();
                    }
                    Some(b']') if !obj => {
                        self.pos += 1;
                        kinds.depth -= 1;
                        obj = kinds.depth > 0 && kinds.top_is_object();
                    }
                    _ => return Err(self.unexpected()),
                }
            }
        }
    }

    /// Skips `"key" :` inside an object being skipped.
    #[inline(always)]
    fn member_key(&mut self) -> Result<(), JsonError> {
        if self.buf.get(self.pos) != Some(&b'"') {
            return Err(self.unexpected());
        }
        self.skip_string()?;
        if self.buf.get(self.pos) == Some(&b':') {
            self.pos += 1;
            return Ok(());
        }
        self.expect(b':')
    }

    /// The string value at the cursor, or "" (after skipping it) when the value is of another
    /// type: the audit fields treat a wrong type as absent.
    pub fn string_or_empty(&mut self, depth: usize) -> Result<Cow<'a, str>, JsonError> {
        if self.peek()? == Peek::String {
            self.string()
        } else {
            self.skip_value(depth)?;
            Ok(Cow::Borrowed(""))
        }
    }
}

/// Checks that `input` is exactly one valid JSON document.
pub fn validate(input: &[u8]) -> Result<(), JsonError> {
    let mut s = Scanner::new(input);
    if s.at_end() {
        return Err(s.err(ErrorKind::Empty));
    }
    s.skip_value(0)?;
    s.finish()
}

/// Appends `s` to `out` as a JSON string literal: quotes, backslashes and control characters
/// (C0, DEL, and the C1 range) escaped, U+2028/U+2029 too so the payload is also safe
/// JavaScript.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => Some(""),
            _ => None,
        };
        if let Some(e) = esc {
            out.push_str(&s[last..i]);
            if e.is_empty() {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            } else {
                out.push_str(e);
            }
            last = i + c.len_utf8();
        }
    }
    out.push_str(&s[last..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        validate(s.as_bytes()).is_ok()
    }

    fn decode(s: &str) -> Result<String, JsonError> {
        let mut sc = Scanner::new(s.as_bytes());
        let v = sc.string()?.into_owned();
        sc.finish()?;
        Ok(v)
    }

    #[test]
    fn grammar_table() {
        for good in [
            "{}",
            "[]",
            " {\"a\" : [1, -2.5e+3, true, false, null, \"x\"]} ",
            "0",
            "-0.0e0",
            "\"\"",
            "[[[]],{}]",
            "{\"a\":{\"b\":{}}}",
            "1E9",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "",
            "  ",
            "{",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "01",
            "1.",
            "-",
            "1e",
            "+1",
            ".5",
            "tru",
            "nul",
            "[1 2]",
            "{} {}",
            "{}x",
            "\"a",
            "[\"\\x\"]",
            "[1]]",
            "{\"a\":1]",
            "[}",
            "NaN",
            "\u{feff}{}",
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn escapes_and_surrogates() {
        assert_eq!(
            decode(r#""a\"\\\/\b\f\n\r\t\u0026\u00e9""#).unwrap(),
            "a\"\\/\u{8}\u{c}\n\r\t&é"
        );
        assert_eq!(decode(r#""\ud83d\ude00!""#).unwrap(), "😀!");
        // Lone surrogates are valid JSON (RFC 8259's grammar) and decode to U+FFFD, as Go's
        // decoder does; the escape after a lone high surrogate is decoded on its own.
        for (lone, want) in [
            (r#""\ud83d""#, "\u{FFFD}"),
            (r#""\ud83dx""#, "\u{FFFD}x"),
            (r#""\ude00""#, "\u{FFFD}"),
            (r#""\udc00\udc00""#, "\u{FFFD}\u{FFFD}"),
            (r#""\ud83d\u0041""#, "\u{FFFD}A"),
            (r#""\ud800\ud83d\ude00""#, "\u{FFFD}😀"),
        ] {
            assert_eq!(decode(lone).unwrap(), want, "{lone}");
            assert!(ok(&format!("[{lone}]")), "{lone}");
        }
        for bad in [r#""\u12""#, r#""\u12g4""#, r#""\ud800\u12""#] {
            assert!(decode(bad).is_err(), "{bad}");
            assert!(!ok(&format!("[{bad}]")), "{bad}");
        }
        assert_eq!(
            decode("\"a\u{1}\"").unwrap_err().kind,
            ErrorKind::ControlInString(1)
        );
        assert!(!ok("[\"a\tb\"]"));
    }

    #[test]
    fn invalid_utf8_becomes_replacement_per_byte() {
        let mut sc = Scanner::new(b"\"a\xe2\x82b\xff\"");
        assert_eq!(sc.string().unwrap(), "a\u{FFFD}\u{FFFD}b\u{FFFD}");
        let mut sc = Scanner::new(b"\"\\n\xc3\"");
        assert_eq!(sc.string().unwrap(), "\n\u{FFFD}");
        assert!(validate(b"[\"\xff\xfe\"]").is_ok());
        assert!(validate(b"[\xff]").is_err());
    }

    #[test]
    fn long_strings_cross_word_boundaries() {
        for n in 0..40 {
            for tail in ["\"", "\\n\"", "\u{1}\""] {
                let s = format!("\"{}{}", "x".repeat(n), tail);
                let r = decode(&s);
                if tail.starts_with('\u{1}') {
                    assert_eq!(r.unwrap_err().offset, n + 1, "{n}");
                } else {
                    assert!(r.is_ok(), "{n} {tail}");
                }
            }
        }
    }

    #[test]
    fn depth_limit_is_exact_and_iterative() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(ok(&nest(MAX_DEPTH)));
        let e = validate(nest(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooDeep);
        let objs = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(ok(&objs));
        // Ten million '[' are rejected without recursion, at the first level too deep.
        let huge = vec![b'['; 10_000_000];
        assert_eq!(validate(&huge).unwrap_err().offset, MAX_DEPTH);
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = validate(b"{\n  \"a\": tru\n}").unwrap_err();
        assert_eq!((e.line, e.column), (2, 8));
        let m = e.to_string();
        assert!(
            m.contains("2:8") && m.contains("true, false and null"),
            "{m}"
        );
        let e = validate(b"{\"a\":1} x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TrailingData);
        assert_eq!(e.column, 9);
    }

    #[test]
    fn writer_escapes_and_round_trips() {
        let mut o = String::new();
        write_str(&mut o, "a\"b\\c\nd\u{1}\u{7f}\u{85}é\u{2028}");
        assert_eq!(o, "\"a\\\"b\\\\c\\nd\\u0001\\u007f\\u0085é\\u2028\"");
        let mut sc = Scanner::new(o.as_bytes());
        assert_eq!(sc.string().unwrap(), "a\"b\\c\nd\u{1}\u{7f}\u{85}é\u{2028}");
    }
}
