//! The YAML subset that rules files are written in, parsed into a tree of [`Node`]s that keep
//! their line:column.
//!
//! Supported: block mappings and block sequences by indentation (including a sequence at the
//! same indentation as its key, and `- key: value` items), one-line or multi-line flow
//! sequences (`[a, b]`), plain, 'single' and "double" quoted scalars (with YAML escapes), full
//! line and trailing `#` comments, blank lines, one leading `---`, CRLF line ends and a UTF-8
//! BOM. Everything else YAML has — anchors, aliases, tags, block scalars (`|`, `>`), flow
//! mappings (`{}`), several documents, directives, multi-line plain or quoted scalars, complex
//! keys — is an error with line:column and a hint, never a silent misparse. So are tabs outside
//! quotes and duplicate keys in one mapping.
//!
//! Scalars stay strings (no `true`/`42` interpretation: the rules layer decides what a field
//! means). A key with nothing after it (`resource:`) is [`Value::Null`], distinct from `""`.
//! Input is capped at [`MAX_INPUT_BYTES`] and nesting at [`MAX_DEPTH`]; the parser recurses
//! only up to that depth, so hostile input (10 000 nested `[`) gives an error, not a stack
//! overflow. This is the only YAML parser in the agent: the running agent, `validate` and
//! `replay` all go through [`parse`] (via `rules::parse_rules`).

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

/// Largest rules file accepted. Real rules files are a few KB; the cap keeps a wrong path
/// (an audit log, a binary) from being read into memory and scanned.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// Deepest nesting of mappings/sequences. Rules files need 5; the cap bounds recursion.
pub const MAX_DEPTH: usize = 64;

/// One node of the tree, with the 1-based line and column where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub line: usize,
    pub col: usize,
    pub value: Value,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Nothing was written (`key:` at the end of a line, a bare `-`, an empty file).
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique (a duplicate is a parse error).
    Map(Vec<Entry>),
}

/// A scalar's text (quotes removed, escapes resolved) and how it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    pub style: Style,
}

/// How a scalar was quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
}

/// One `key: value` of a mapping; `line`/`col` are the key's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub line: usize,
    pub col: usize,
    pub value: Node,
}

impl Node {
    /// The scalar text, if this node is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// "a string", "a list", ... for messages like "`verbs` must be a list, not a string".
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "empty",
            Value::Scalar(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A syntax error: where (1-based line:column), what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for YamlError {}

/// Parses one YAML document of the supported subset.
pub fn parse(src: &[u8]) -> Result<Node, YamlError> {
    if src.len() > MAX_INPUT_BYTES {
        return Err(YamlError {
            line: 1,
            col: 1,
            message: format!(
                "the file is larger than the limit of {MAX_INPUT_BYTES} bytes (1 MiB)"
            ),
            hint: Some(
                "rules files are a few KB: check that the path points at the rules file".into(),
            ),
        });
    }
    let src = src.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(src);
    let text = match std::str::from_utf8(src) {
        Ok(t) => t,
        Err(e) => {
            let good = &src[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&good[start..]).chars().count() + 1;
            return Err(YamlError {
                line,
                col,
                message: "the file is not valid UTF-8".into(),
                hint: Some("save the file as UTF-8".into()),
            });
        }
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    for (i, l) in lines.iter_mut().enumerate() {
        if let Some(s) = l.strip_suffix('\r') {
            *l = s;
        }
        if let Some((off, c)) = l
            .char_indices()
            .find(|&(_, c)| c != '\t' && (c.is_control() || c == '\u{feff}'))
        {
            return Err(YamlError {
                line: i + 1,
                col: l[..off].chars().count() + 1,
                message: format!("control character U+{:04X} is not allowed", c as u32),
                hint: Some("remove it (a stray carriage return or binary data?)".into()),
            });
        }
    }
    let mut p = Parser {
        lines,
        li: 0,
        col_memo: Cell::new((usize::MAX, 0, 0)),
    };
    p.document()
}

/// A parse position: the parser moves line by line; `li` is the line being looked at.
struct Parser<'a> {
    lines: Vec<&'a str>,
    li: usize,
    /// (line, byte offset, characters before it) of the last column computed: positions on a
    /// line are mostly asked for left to right, so counting resumes there instead of from the
    /// line start (a 1 MiB one-line `[a,a,...]` would otherwise be quadratic).
    col_memo: Cell<(usize, usize, usize)>,
}

type R<T> = Result<T, YamlError>;

fn is_blank(c: Option<u8>) -> bool {
    matches!(c, None | Some(b' ') | Some(b'\t'))
}

fn is_flow_indicator(c: u8) -> bool {
    matches!(c, b',' | b'[' | b']' | b'{' | b'}')
}

impl<'a> Parser<'a> {
    fn line(&self) -> &'a str {
        self.lines.get(self.li).copied().unwrap_or("")
    }

    fn byte(&self, pos: usize) -> Option<u8> {
        self.line().as_bytes().get(pos).copied()
    }

    /// 1-based column of byte offset `pos` in the current line, counted in characters.
    fn col(&self, pos: usize) -> usize {
        let l = self.line();
        let pos = pos.min(l.len());
        let (memo_line, memo_pos, memo_chars) = self.col_memo.get();
        let (from, chars) = if memo_line == self.li && memo_pos <= pos {
            (memo_pos, memo_chars)
        } else {
            (0, 0)
        };
        let chars = chars + l.get(from..pos).map_or(pos - from, |s| s.chars().count());
        self.col_memo.set((self.li, pos, chars));
        chars + 1
    }

    fn err(
        &self,
        pos: usize,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) -> YamlError {
        YamlError {
            line: self.li + 1,
            col: self.col(pos),
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn node(&self, pos: usize, value: Value) -> Node {
        Node {
            line: self.li + 1,
            col: self.col(pos),
            value,
        }
    }

    /// Skips blank and comment-only lines from `li`; returns the indentation of the next line
    /// with content (leaving `li` on it), or None at the end. Rejects tab indentation and
    /// document markers here, so every caller gets the same message.
    fn peek_content(&mut self) -> R<Option<usize>> {
        while self.li < self.lines.len() {
            let l = self.line();
            let indent = l.bytes().take_while(|&b| b == b' ').count();
            let rest = l[indent..].trim_start_matches([' ', '\t']);
            if rest.is_empty() || rest.starts_with('#') {
                self.li += 1;
                continue;
            }
            if l.as_bytes().get(indent) == Some(&b'\t') {
                return Err(self.err(
                    indent,
                    "tab character used for indentation",
                    Some("YAML indents with spaces only: replace the tab with spaces".into()),
                ));
            }
            if indent == 0 {
                let b = l.as_bytes();
                if (l.starts_with("---") || l.starts_with("...")) && is_blank(b.get(3).copied()) {
                    return Err(self.err(
                        0,
                        format!(
                            "a document marker `{}` after the start of the document",
                            &l[..3]
                        ),
                        Some("a rules file is a single YAML document: remove this line".into()),
                    ));
                }
                if l.starts_with('%') {
                    return Err(self.err(
                        0,
                        "YAML directives (`%...`) are not supported",
                        Some("remove the directive line".into()),
                    ));
                }
            }
            return Ok(Some(indent));
        }
        Ok(None)
    }

    fn document(&mut self) -> R<Node> {
        // One leading `---` is allowed (directives before it are rejected by peek_content).
        while self.li < self.lines.len() {
            let l = self.line();
            let t = l.trim_start_matches([' ', '\t']);
            if t.is_empty() || t.starts_with('#') {
                self.li += 1;
                continue;
            }
            if l.starts_with("---") && is_blank(l.as_bytes().get(3).copied()) {
                let after = self.skip_spaces(3)?;
                if !self.at_line_end(after) {
                    return Err(self.err(
                        after,
                        "content on the `---` line is not supported",
                        Some("start the document on the line after `---`".into()),
                    ));
                }
                self.li += 1;
            }
            break;
        }
        let Some(indent) = self.peek_content()? else {
            return Ok(Node {
                line: 1,
                col: 1,
                value: Value::Null,
            });
        };
        let root = self.block_node(indent, None, 1)?;
        if self.peek_content()?.is_some() {
            return Err(self.err(
                self.line().len() - self.line().trim_start_matches([' ', '\t']).len(),
                "unexpected content: this line does not fit the indentation of the lines above",
                Some("align it with the keys it belongs with".into()),
            ));
        }
        Ok(root)
    }

    /// Skips spaces from `pos`; a tab there is an error (it is invisible and ambiguous).
    fn skip_spaces(&self, mut pos: usize) -> R<usize> {
        loop {
            match self.byte(pos) {
                Some(b' ') => pos += 1,
                Some(b'\t') => {
                    // A tab right before a comment or the line end is harmless.
                    let rest = self.line()[pos..].trim_start_matches([' ', '\t']);
                    if rest.is_empty() || rest.starts_with('#') {
                        return Ok(self.line().len() - rest.len());
                    }
                    return Err(self.err(
                        pos,
                        "tab character outside a quoted string",
                        Some("use spaces instead of tabs".into()),
                    ));
                }
                _ => return Ok(pos),
            }
        }
    }

    /// True when nothing but an optional comment follows `pos` (which is after whitespace or
    /// at the start of the content).
    fn at_line_end(&self, pos: usize) -> bool {
        matches!(self.byte(pos), None | Some(b'#'))
    }

    /// `#` starts a comment only at a line start or after whitespace (`a#b` is a value).
    fn is_comment_start(&self, pos: usize) -> bool {
        self.byte(pos) == Some(b'#')
            && (pos == 0 || matches!(self.byte(pos - 1), Some(b' ') | Some(b'\t')))
    }

    fn depth_check(&self, pos: usize, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(self.err(
                pos,
                format!("nesting is deeper than {MAX_DEPTH} levels"),
                Some(
                    "rules files nest 5 levels deep; this file is not a rules file or is malformed"
                        .into(),
                ),
            ));
        }
        Ok(())
    }

    fn is_seq_entry(&self, pos: usize) -> bool {
        self.byte(pos) == Some(b'-') && is_blank(self.byte(pos + 1))
    }

    /// A node that starts at byte `pos` of line `li` (at the start of the line's content or
    /// after `- ` on it) and owns every following line indented more than `pos`.
    fn block_node(&mut self, pos: usize, owner: Option<usize>, depth: usize) -> R<Node> {
        self.depth_check(pos, depth)?;
        if self.is_seq_entry(pos) {
            return self.block_seq(pos, depth);
        }
        if self.key_at(pos)?.is_some() {
            return self.block_map(pos, depth);
        }
        let (node, end) = self.inline_value(pos, owner, depth)?;
        self.end_of_value(end)?;
        self.li += 1;
        Ok(node)
    }

    /// After a value that ended at `end`: only spaces and a comment may follow.
    fn end_of_value(&self, end: usize) -> R<()> {
        let after = self.skip_spaces(end)?;
        match self.byte(after) {
            None => Ok(()),
            Some(b'#') if self.is_comment_start(after) => Ok(()),
            Some(b':') => Err(self.err(
                after,
                "unexpected `:` after a value (`a: b: c` is not valid YAML)",
                Some("if the value contains `: `, put it in quotes".into()),
            )),
            Some(_) => Err(self.err(
                after,
                "unexpected text after the value",
                Some("put the whole value in quotes, or start a comment with ` #`".into()),
            )),
        }
    }

    /// Checks that the line after a finished entry of a block collection indented at `indent`
    /// is not indented deeper (which would mean a continued value or a misplaced key).
    fn next_entry_indent(&mut self, indent: usize) -> R<Option<usize>> {
        match self.peek_content()? {
            Some(i) if i > indent => Err(self.err(
                i,
                "unexpected indentation",
                Some(
                    "a value cannot continue on the next line (put it on one line, quoted if \
                     needed); otherwise align this line with the keys it belongs with"
                        .into(),
                ),
            )),
            other => Ok(other),
        }
    }

    fn block_seq(&mut self, indent: usize, depth: usize) -> R<Node> {
        let (line, col) = (self.li + 1, self.col(indent));
        let mut items = Vec::new();
        loop {
            // At `-` on line li, column `indent`.
            let after = self.skip_spaces(indent + 1)?;
            let item = if self.at_line_end(after) {
                let null = self.node(indent, Value::Null);
                self.li += 1;
                match self.peek_content()? {
                    Some(i) if i > indent => self.block_node(i, Some(indent), depth + 1)?,
                    _ => null,
                }
            } else {
                self.block_node(after, Some(indent), depth + 1)?
            };
            items.push(item);
            match self.next_entry_indent(indent)? {
                Some(i) if i == indent && self.is_seq_entry(i) => continue,
                _ => break,
            }
        }
        Ok(Node {
            line,
            col,
            value: Value::Seq(items),
        })
    }

    /// If a mapping key starts at `pos`, returns it with the byte offset just after its `:`.
    fn key_at(&self, pos: usize) -> R<Option<(String, usize)>> {
        let (text, end) = match self.byte(pos) {
            Some(b'"') | Some(b'\'') => {
                let (s, end) = self.quoted(pos)?;
                (s.text, end)
            }
            Some(c) if !self.plain_can_start(pos, c) => return Ok(None),
            Some(_) => {
                let end = self.plain_end(pos, false)?;
                (
                    self.line()[pos..end]
                        .trim_end_matches([' ', '\t'])
                        .to_string(),
                    end,
                )
            }
            None => return Ok(None),
        };
        let after = self.skip_spaces(end)?;
        if self.byte(after) == Some(b':') && is_blank(self.byte(after + 1)) {
            Ok(Some((text, after + 1)))
        } else {
            Ok(None)
        }
    }

    fn block_map(&mut self, indent: usize, depth: usize) -> R<Node> {
        let (line, col) = (self.li + 1, self.col(indent));
        let mut entries: Vec<Entry> = Vec::new();
        // Key → line, for duplicate detection in one pass.
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            let Some((key, after_colon)) = self.key_at(indent)? else {
                let hint = if self.is_seq_entry(indent) {
                    "a list item cannot stand among keys: indent it under the key it belongs to"
                } else {
                    "write `key: value` (with a space after the colon), aligned with the other keys"
                };
                return Err(self.err(
                    indent,
                    "expected a `key: value` entry here",
                    Some(hint.into()),
                ));
            };
            let (kline, kcol) = (self.li + 1, self.col(indent));
            if let Some(first) = seen.get(&key) {
                return Err(self.err(
                    indent,
                    format!(
                        "duplicate key `{}` in this mapping",
                        crate::operate::log::sanitize(&key, 80)
                    ),
                    Some(format!(
                        "`{}` is already set on line {}: keep only one of them",
                        crate::operate::log::sanitize(&key, 80),
                        first
                    )),
                ));
            }
            let vpos = self.skip_spaces(after_colon)?;
            let value = if self.at_line_end(vpos) {
                self.li += 1;
                match self.peek_content()? {
                    Some(i) if i > indent => self.block_node(i, Some(indent), depth + 1)?,
                    // A list may sit at the same indentation as its key.
                    Some(i) if i == indent && self.is_seq_entry(i) => {
                        self.block_seq(i, depth + 1)?
                    }
                    _ => Node {
                        line: kline,
                        col: kcol,
                        value: Value::Null,
                    },
                }
            } else {
                if self.is_seq_entry(vpos) {
                    return Err(self.err(
                        vpos,
                        "a list cannot start on the same line as its key",
                        Some("move `- item` to the next line, indented under the key".into()),
                    ));
                }
                if self.key_at(vpos)?.is_some() {
                    return Err(self.err(
                        vpos,
                        "a mapping cannot start on the same line as its key",
                        Some(
                            "if this is text, put it in quotes; if it is a nested key, move it \
                             to the next line, indented"
                                .into(),
                        ),
                    ));
                }
                let (v, end) = self.inline_value(vpos, Some(indent), depth + 1)?;
                self.end_of_value(end)?;
                self.li += 1;
                v
            };
            seen.insert(key.clone(), kline);
            entries.push(Entry {
                key,
                line: kline,
                col: kcol,
                value,
            });
            match self.next_entry_indent(indent)? {
                Some(i) if i == indent => {
                    // A `- ` line here ends a same-indentation list of an outer key, which is
                    // only valid if this mapping is not the owner of that indentation level.
                    if self.is_seq_entry(i) {
                        break;
                    }
                    continue;
                }
                _ => break,
            }
        }
        Ok(Node {
            line,
            col,
            value: Value::Map(entries),
        })
    }

    fn plain_can_start(&self, pos: usize, c: u8) -> bool {
        match c {
            b'-' | b'?' | b':' => !is_blank(self.byte(pos + 1)),
            b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'\''
            | b'"' | b'%' | b'@' | b'`' => false,
            _ => true,
        }
    }

    /// Byte offset where a plain scalar starting at `pos` ends (trailing spaces included).
    fn plain_end(&self, pos: usize, flow: bool) -> R<usize> {
        let b = self.line().as_bytes();
        let mut i = pos;
        while i < b.len() {
            match b[i] {
                b'\t' => {
                    let rest = self.line()[i..].trim_start_matches([' ', '\t']);
                    if rest.is_empty() || rest.starts_with('#') {
                        return Ok(i);
                    }
                    return Err(self.err(
                        i,
                        "tab character in an unquoted value",
                        Some("replace the tab with a space, or quote the value".into()),
                    ));
                }
                b'#' if i > pos && b[i - 1] == b' ' => return Ok(i),
                b':' if {
                    let n = b.get(i + 1).copied();
                    is_blank(n) || (flow && n.is_some_and(is_flow_indicator))
                } =>
                {
                    return Ok(i)
                }
                c if flow && is_flow_indicator(c) => return Ok(i),
                _ => i += 1,
            }
        }
        Ok(i)
    }

    /// A scalar or a flow sequence starting at `pos` (not a block collection). `owner` is the
    /// indentation of the block collection it belongs to (flow continuation lines must be
    /// indented deeper). Returns the node and the byte offset after it on the final line.
    fn inline_value(&mut self, pos: usize, owner: Option<usize>, depth: usize) -> R<(Node, usize)> {
        self.depth_check(pos, depth)?;
        let c = self.byte(pos).unwrap_or(b' ');
        match c {
            b'"' | b'\'' => {
                let (s, end) = self.quoted(pos)?;
                Ok((self.node(pos, Value::Scalar(s)), end))
            }
            b'[' => self.flow_seq(pos, owner, depth),
            _ if self.plain_can_start(pos, c) => {
                let end = self.plain_end(pos, false)?;
                let text = self.line()[pos..end]
                    .trim_end_matches([' ', '\t'])
                    .to_string();
                Ok((
                    self.node(
                        pos,
                        Value::Scalar(Scalar {
                            text,
                            style: Style::Plain,
                        }),
                    ),
                    end,
                ))
            }
            _ => Err(self.unsupported(pos, c)),
        }
    }

    /// The error for a value starting with an indicator the subset does not support.
    fn unsupported(&self, pos: usize, c: u8) -> YamlError {
        let (msg, hint): (&str, &str) = match c {
            b'&' => (
                "anchors (`&name`) are not supported",
                "write the value out in full",
            ),
            b'*' => (
                "aliases (`*name`) are not supported",
                "write the value out in full",
            ),
            b'!' => (
                "tags (`!tag`) are not supported",
                "remove the tag; values are plain strings",
            ),
            b'|' | b'>' => (
                "block scalars (`|`, `>`) are not supported",
                "write the text on one line, in quotes",
            ),
            b'{' => (
                "flow mappings (`{...}`) are not supported",
                "write the mapping as indented `key: value` lines",
            ),
            b'?' => (
                "complex keys (`? key`) are not supported",
                "write `key: value` with a plain or quoted key",
            ),
            b'-' => (
                "a list item (`- `) is not allowed here",
                "put list items on their own lines, indented under their key",
            ),
            b':' => ("a value cannot start with `: `", "put the value in quotes"),
            b'#' => (
                "expected a value",
                "a comment needs text before it, or remove it",
            ),
            _ => (
                "this character cannot start an unquoted value",
                "put the value in quotes",
            ),
        };
        self.err(pos, msg, Some(hint.into()))
    }

    /// A quoted scalar starting at the quote at `pos`; it must close on the same line.
    fn quoted(&self, pos: usize) -> R<(Scalar, usize)> {
        let l = self.line();
        let q = l.as_bytes()[pos];
        let unterminated = || {
            self.err(
                pos,
                if q == b'"' {
                    "unterminated double-quoted string"
                } else {
                    "unterminated single-quoted string"
                },
                Some(format!(
                    "close it with {} on the same line (strings spanning lines are not supported)",
                    q as char
                )),
            )
        };
        let mut out = String::new();
        let mut it = l[pos + 1..].char_indices().peekable();
        if q == b'\'' {
            while let Some((i, c)) = it.next() {
                if c == '\'' {
                    if let Some((_, '\'')) = it.peek() {
                        it.next();
                        out.push('\'');
                        continue;
                    }
                    return Ok((
                        Scalar {
                            text: out,
                            style: Style::SingleQuoted,
                        },
                        pos + 1 + i + 1,
                    ));
                }
                out.push(c);
            }
            return Err(unterminated());
        }
        while let Some((i, c)) = it.next() {
            match c {
                '"' => {
                    return Ok((
                        Scalar {
                            text: out,
                            style: Style::DoubleQuoted,
                        },
                        pos + 1 + i + 1,
                    ))
                }
                '\\' => {
                    let Some((_, e)) = it.next() else {
                        return Err(unterminated());
                    };
                    let simple = match e {
                        '0' => Some('\0'),
                        'a' => Some('\u{7}'),
                        'b' => Some('\u{8}'),
                        't' | '\t' => Some('\t'),
                        'n' => Some('\n'),
                        'v' => Some('\u{b}'),
                        'f' => Some('\u{c}'),
                        'r' => Some('\r'),
                        'e' => Some('\u{1b}'),
                        ' ' => Some(' '),
                        '"' => Some('"'),
                        '/' => Some('/'),
                        '\\' => Some('\\'),
                        'N' => Some('\u{85}'),
                        '_' => Some('\u{a0}'),
                        'L' => Some('\u{2028}'),
                        'P' => Some('\u{2029}'),
                        _ => None,
                    };
                    if let Some(ch) = simple {
                        out.push(ch);
                        continue;
                    }
                    let digits = match e {
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        _ => {
                            return Err(self.err(
                                pos + 1 + i,
                                format!(
                                    "unknown escape `\\{}` in a double-quoted string",
                                    e.escape_debug()
                                ),
                                Some("write `\\\\` for a backslash, or use single quotes".into()),
                            ))
                        }
                    };
                    let start = pos + 1 + i + 2;
                    let hex = l.get(start..start + digits).unwrap_or("");
                    let ch = (hex.len() == digits && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u32::from_str_radix(hex, 16).ok())
                        .flatten()
                        .and_then(char::from_u32);
                    let Some(ch) = ch else {
                        return Err(self.err(
                            pos + 1 + i,
                            format!("invalid escape `\\{e}`: expected {digits} hex digits of a Unicode character"),
                            Some(format!("write e.g. `\\{e}{}`", "0041".get(..digits).unwrap_or("00000041"))),
                        ));
                    };
                    out.push(ch);
                    for _ in 0..digits {
                        it.next();
                    }
                }
                c => out.push(c),
            }
        }
        Err(unterminated())
    }

    /// Moves from `pos` over spaces, comments and line breaks inside `[...]`. Continuation
    /// lines must be indented deeper than `owner`. Returns the position of the next token.
    fn flow_space(
        &mut self,
        mut pos: usize,
        owner: Option<usize>,
        open: (usize, usize),
    ) -> R<usize> {
        loop {
            pos = self.skip_spaces(pos)?;
            if self.byte(pos).is_some() && !self.is_comment_start(pos) {
                return Ok(pos);
            }
            // Line end or comment: continue on the next line.
            self.li += 1;
            if self.li >= self.lines.len() {
                self.li -= 1;
                return Err(YamlError {
                    line: open.0,
                    col: open.1,
                    message: "unterminated flow sequence: `[` is never closed".into(),
                    hint: Some("add the closing `]`".into()),
                });
            }
            let l = self.line();
            let indent = l.bytes().take_while(|&b| b == b' ').count();
            let rest = l[indent..].trim_start_matches([' ', '\t']);
            if !rest.is_empty() && !rest.starts_with('#') && owner.is_some_and(|o| indent <= o) {
                return Err(YamlError {
                    line: open.0,
                    col: open.1,
                    message: "unterminated flow sequence: `[` is not closed before the next key".into(),
                    hint: Some("add the closing `]` (continuation lines must be indented deeper than the key)".into()),
                });
            }
            pos = 0;
        }
    }

    fn flow_seq(&mut self, pos: usize, owner: Option<usize>, depth: usize) -> R<(Node, usize)> {
        self.depth_check(pos, depth)?;
        let open = (self.li + 1, self.col(pos));
        let mut items = Vec::new();
        let mut p = pos + 1;
        loop {
            p = self.flow_space(p, owner, open)?;
            let c = self.byte(p).unwrap_or(b' ');
            match c {
                b']' => break,
                b',' => {
                    return Err(self.err(
                        p,
                        "empty entry in a flow sequence",
                        Some("remove the extra `,`".into()),
                    ))
                }
                b'[' => {
                    let (n, end) = self.flow_seq(p, owner, depth + 1)?;
                    items.push(n);
                    p = end;
                }
                b'"' | b'\'' => {
                    let (s, end) = self.quoted(p)?;
                    items.push(self.node(p, Value::Scalar(s)));
                    p = end;
                }
                _ if self.plain_can_start(p, c) => {
                    let end = self.plain_end(p, true)?;
                    let text = self.line()[p..end]
                        .trim_end_matches([' ', '\t'])
                        .to_string();
                    items.push(self.node(
                        p,
                        Value::Scalar(Scalar {
                            text,
                            style: Style::Plain,
                        }),
                    ));
                    p = end;
                }
                _ => return Err(self.unsupported(p, c)),
            }
            p = self.flow_space(p, owner, open)?;
            match self.byte(p) {
                Some(b',') => p += 1,
                Some(b']') => break,
                Some(b':') => {
                    return Err(self.err(
                        p,
                        "`key: value` pairs inside `[...]` (flow mappings) are not supported",
                        Some("write the mapping as indented `key: value` lines".into()),
                    ))
                }
                _ => {
                    return Err(self.err(
                        p,
                        "expected `,` or `]` in a flow sequence",
                        Some("separate items with `,` and close the list with `]`".into()),
                    ))
                }
            }
        }
        Ok((
            Node {
                line: open.0,
                col: open.1,
                value: Value::Seq(items),
            },
            p + 1,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::Scalar(Scalar {
            text: text.into(),
            style: Style::Plain,
        })
    }

    fn err(src: &str) -> YamlError {
        parse(src.as_bytes()).unwrap_err()
    }

    #[test]
    fn mapping_sequence_and_positions() {
        let n = parse(b"a: 1\nb:\n  - x\n  - y: 2\n    z: [p, 'q''s', \"r\\n\"]\n").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(m[0].key, "a");
        assert_eq!(m[0].value.value, s("1"));
        let Value::Seq(items) = &m[1].value.value else {
            panic!()
        };
        assert_eq!((items[0].line, items[0].col), (3, 5));
        let Value::Map(inner) = &items[1].value else {
            panic!()
        };
        assert_eq!((inner[1].line, inner[1].col), (5, 5));
        let Value::Seq(f) = &inner[1].value.value else {
            panic!()
        };
        assert_eq!(f[1].as_str(), Some("q's"));
        assert_eq!(f[2].as_str(), Some("r\n"));
        assert_eq!((f[2].line, f[2].col), (5, 20));
    }

    #[test]
    fn null_compact_seq_comments_bom_crlf() {
        let n = parse(b"\xEF\xBB\xBF---\r\n# c\r\nk:\r\n- a # t\r\n- 'b#c'\r\nn:\r\nu: a#b\r\n")
            .unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        let Value::Seq(items) = &m[0].value.value else {
            panic!()
        };
        assert_eq!(items[0].as_str(), Some("a"));
        assert_eq!(items[1].as_str(), Some("b#c"));
        assert_eq!(m[1].value.value, Value::Null);
        assert_eq!(m[2].value.as_str(), Some("a#b"));
        assert_eq!(parse(b"# only\n").unwrap().value, Value::Null);
    }

    #[test]
    fn multi_line_flow_sequence() {
        let n = parse(b"k: [a,\n  b, # c\n  ]\nz: 1\n").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(
            m[0].value.value,
            Value::Seq(vec![
                Node {
                    line: 1,
                    col: 5,
                    value: s("a")
                },
                Node {
                    line: 2,
                    col: 3,
                    value: s("b")
                },
            ])
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = err("a: 1\nb: &x 2\n");
        assert_eq!((e.line, e.col), (2, 4));
        assert!(e.message.contains("anchors"));
        assert_eq!(
            err("a:\n\t- x\n").message,
            "tab character used for indentation"
        );
        assert!(err("a: {b: 1}\n").message.contains("flow mappings"));
        assert!(err("a: [b: 1]\n").message.contains("flow mappings"));
        assert!(err("a: *x\n").message.contains("aliases"));
        assert!(err("a: !t x\n").message.contains("tags"));
        assert!(err("a: |\n  x\n").message.contains("block scalars"));
        assert!(err("a: 1\n---\nb: 2\n").message.contains("document marker"));
        let e = err("a: 1\nb: 2\na: 3\n");
        assert_eq!((e.line, e.col), (3, 1));
        assert!(e.hint.unwrap().contains("line 1"));
        let e = err("a: \"abc\n");
        assert_eq!(
            (e.line, e.col, e.message.as_str()),
            (1, 4, "unterminated double-quoted string")
        );
        let e = err("a: long\n  continued\n");
        assert_eq!((e.line, e.message.as_str()), (2, "unexpected indentation"));
        assert!(err("a: b: c\n").message.contains("same line"));
        assert!(err("a: \"b\": c\n").message.contains("same line"));
        assert!(err("a: \"b\" c\n").message.contains("unexpected text"));
        assert!(err("a: \"\\q\"\n").message.contains("unknown escape"));
        assert!(err("a: [x\nb: 1\n").message.contains("unterminated flow"));
        assert!(err("a:\n  b: 1\n c: 2\n")
            .message
            .contains("unexpected indentation"));
        assert!(err("  a: 1\nb: 2\n").message.contains("does not fit"));
    }

    /// Inputs near the size limit shaped to hit quadratic paths (column counting on one long
    /// line, duplicate-key checks in a wide mapping) parse in one pass.
    #[test]
    fn wide_inputs_near_the_limit_parse() {
        let mut one_line = String::from("k: [");
        while one_line.len() < MAX_INPUT_BYTES - 16 {
            one_line.push_str("é,");
        }
        one_line.push_str("x]\n");
        let n = parse(one_line.as_bytes()).unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        let Value::Seq(items) = &m[0].value.value else {
            panic!()
        };
        let last = items.last().unwrap();
        assert_eq!(last.col, one_line.chars().count() - 2);
        let wide: String = (0..60_000).map(|i| format!("k{i}: v\n")).collect();
        assert!(wide.len() < MAX_INPUT_BYTES);
        let Value::Map(m) = parse(wide.as_bytes()).unwrap().value else {
            panic!()
        };
        assert_eq!(m.len(), 60_000);
        let dup = format!("{wide}k7: again\n");
        let e = parse(dup.as_bytes()).unwrap_err();
        assert_eq!((e.line, e.col), (60_001, 1));
        assert!(e.hint.unwrap().contains("line 8"));
    }

    #[test]
    fn limits_are_errors_not_crashes() {
        let big = vec![b'#'; MAX_INPUT_BYTES + 1];
        assert!(err(std::str::from_utf8(&big).unwrap())
            .message
            .contains("larger than the limit"));
        let deep = "[".repeat(10_000);
        assert!(err(&deep).message.contains("nesting"));
        let dashes = "- ".repeat(10_000) + "x";
        assert!(err(&dashes).message.contains("nesting"));
        let e = parse(b"a: \xff\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 4));
    }
}
