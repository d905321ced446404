//! Logging to stderr, as text or one JSON object per line (`LOG_FORMAT`), filtered by
//! `LOG_LEVEL`.
//!
//! Every message and field value passes through [`sanitize`] here, in one place, so a value
//! copied from the audit log or from the backend can never forge a log line or smuggle
//! terminal escapes. Repeated conditions go through a [`Throttle`].

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Format {
    Text = 0,
    Json = 1,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);

/// Sets the level and format for the rest of the process.
pub fn init(level: Level, format: Format) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    FORMAT.store(format as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Longest field value written to a log line; the rest is cut with `…`.
pub const MAX_FIELD_CHARS: usize = 512;

/// Makes an untrusted string safe for one log line or one payload field: a URL's password is
/// masked ([`mask_userinfo`]), control characters (< 0x20, 0x7F, and the C1 range) and the
/// characters that make text display as something else ([`is_spoofing`]) become `\u{..}`,
/// and it is cut to `max_chars` characters.
pub fn sanitize(s: &str, max_chars: usize) -> String {
    let s = mask_userinfo(s);
    let mut out = String::with_capacity(s.len().min(max_chars + 8));
    for (n, c) in s.chars().enumerate() {
        if n >= max_chars {
            out.push('…');
            break;
        }
        if c.is_control() || is_spoofing(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// `scheme://user:secret@host...` → `scheme://user:***@host...` for every URL in `s` (a URL
/// ends at whitespace or a quote; its userinfo ends at its last `@`, so a password holding `/`
/// or `@` is masked whole); userinfo without `:` (a token) becomes `***`. Borrowed when there
/// is nothing to mask. Every message goes through [`sanitize`], which applies this first, so
/// no message shows a password from a URL, whole or cut.
pub fn mask_userinfo(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("://") || !s.contains('@') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        let token = &tail[..end];
        match token.rfind('@') {
            Some(at) => {
                let info = &token[..at];
                match info.split_once(':') {
                    Some((user, _)) if !user.contains('/') => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    _ => out.push_str("***"),
                }
                out.push_str(&token[at..]);
            }
            None => out.push_str(token),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Characters that are not control characters but change how the text around them reads:
/// the bidirectional controls (embeddings and overrides U+202A–U+202E, isolates
/// U+2066–U+2069, the marks U+200E, U+200F and U+061C), which can show `exe.gpj` as `jpg.exe`,
/// and the line and paragraph separators U+2028/U+2029, which start a new line in many
/// viewers (a forged log line). Escaped wherever control characters are.
pub fn is_spoofing(c: char) -> bool {
    matches!(c,
        '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{061c}'
        | '\u{2028}'
        | '\u{2029}')
}

/// Writes one log record. Use the `info!`/`warn!`/`error!`/`debug!` macros.
pub fn emit(level: Level, msg: &dyn Display, fields: &[(&str, &dyn Display)]) {
    if !enabled(level) {
        return;
    }
    let line = render(
        level,
        FORMAT.load(Ordering::Relaxed),
        &crate::operate::clock::rfc3339_millis(crate::operate::clock::now_unix_ms()),
        msg,
        fields,
    );
    let stderr = std::io::stderr();
    let mut lock = stderr.lock();
    // Nowhere to report a failing stderr: drop the line rather than panic.
    let _ = lock.write_all(line.as_bytes());
}

/// Formats one record (exposed for tests).
pub fn render(
    level: Level,
    format: u8,
    ts: &str,
    msg: &dyn Display,
    fields: &[(&str, &dyn Display)],
) -> String {
    let msg = sanitize(&msg.to_string(), 4 * MAX_FIELD_CHARS);
    let mut out = String::with_capacity(128);
    if format == Format::Json as u8 {
        out.push_str("{\"ts\":");
        json_str(&mut out, ts);
        out.push_str(",\"level\":");
        json_str(&mut out, level.as_str());
        out.push_str(",\"msg\":");
        json_str(&mut out, &msg);
        for (k, v) in fields {
            out.push(',');
            json_str(&mut out, k);
            out.push(':');
            json_str(&mut out, &sanitize(&v.to_string(), MAX_FIELD_CHARS));
        }
        out.push_str("}\n");
    } else {
        let _ = write!(out, "{ts} {:<5} {msg}", level.as_str().to_ascii_uppercase());
        for (k, v) in fields {
            let v = sanitize(&v.to_string(), MAX_FIELD_CHARS);
            if v.is_empty() || v.contains([' ', '"', '=']) {
                let _ = write!(out, " {k}={v:?}");
            } else {
                let _ = write!(out, " {k}={v}");
            }
        }
        out.push('\n');
    }
    out
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Logs at info level: `info!("message", "key" => value, ...)`.
#[macro_export]
macro_rules! info {
    ($msg:expr $(, $k:literal => $v:expr)* $(,)?) => {
        $crate::operate::log::emit($crate::operate::log::Level::Info, &$msg, &[$(($k, &$v as &dyn ::std::fmt::Display)),*])
    };
}

/// Logs at warn level: `warn!("message", "key" => value, ...)`.
#[macro_export]
macro_rules! warn {
    ($msg:expr $(, $k:literal => $v:expr)* $(,)?) => {
        $crate::operate::log::emit($crate::operate::log::Level::Warn, &$msg, &[$(($k, &$v as &dyn ::std::fmt::Display)),*])
    };
}

/// Logs at error level: `error!("message", "key" => value, ...)`.
#[macro_export]
macro_rules! error {
    ($msg:expr $(, $k:literal => $v:expr)* $(,)?) => {
        $crate::operate::log::emit($crate::operate::log::Level::Error, &$msg, &[$(($k, &$v as &dyn ::std::fmt::Display)),*])
    };
}

/// Logs at debug level: `debug!("message", "key" => value, ...)`.
#[macro_export]
macro_rules! debug {
    ($msg:expr $(, $k:literal => $v:expr)* $(,)?) => {
        $crate::operate::log::emit($crate::operate::log::Level::Debug, &$msg, &[$(($k, &$v as &dyn ::std::fmt::Display)),*])
    };
}

/// Rate-limits a repeated condition (backend down, file missing): the first occurrence is
/// logged at once, later ones at most once per `every`, each reporting how many were
/// suppressed in between. A change of condition (a new `key`) is logged at once.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    key: String,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            key: String::new(),
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed_since_last_log)` when this occurrence should be logged.
    pub fn hit(&mut self, key: &str) -> Option<u64> {
        self.hit_at(key, Instant::now())
    }

    pub fn hit_at(&mut self, key: &str, now: Instant) -> Option<u64> {
        let due = match self.last {
            None => true,
            Some(t) => self.key != key || now.duration_since(t) >= self.every,
        };
        if due {
            let n = self.suppressed;
            self.suppressed = 0;
            self.last = Some(now);
            if self.key != key {
                self.key = key.to_string();
            }
            Some(n)
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Forgets the condition (it cleared), so its next occurrence is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
        self.key.clear();
    }
}

/// A `Display` adapter that shows only a secret's length: `<redacted, 32 bytes>`.
pub struct Redacted<'a>(pub &'a str);

impl Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<none>")
        } else {
            write!(f, "<redacted, {} bytes>", self.0.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_controls_and_truncates() {
        assert_eq!(sanitize("a\nb\x1b[31m", 100), "a\\u{a}b\\u{1b}[31m");
        assert_eq!(sanitize("héllo", 2), "hé…");
        assert_eq!(sanitize("\u{85}x", 10), "\\u{85}x");
    }

    #[test]
    fn a_url_password_is_masked_before_anything_is_cut() {
        for (given, shown) in [
            ("http://u:PW@h:8000/api", "http://u:***@h:8000/api"),
            ("http://u:P/W@h", "http://u:***@h"),
            ("http://u:P@W@h", "http://u:***@h"),
            ("http://tok3n@h", "http://***@h"),
            (
                "x=\"http://u:PW@h\" and https://a:B@c d",
                "x=\"http://u:***@h\" and https://a:***@c d",
            ),
            ("http://h/path no at", "http://h/path no at"),
            ("mail a@b, see http://h", "mail a@b, see http://h"),
        ] {
            assert_eq!(mask_userinfo(given), shown, "{given}");
            assert_eq!(mask_userinfo(shown), shown, "idempotent: {shown}");
        }
        // Masked before the cut: no prefix of the password survives.
        assert_eq!(sanitize("http://u:Pw5ecr3tXy@backend", 12), "http://u:***…");
        let t = render(
            Level::Error,
            1,
            "T",
            &"bad http://u:PW@h",
            &[("v", &"ftp://a:PW@b")],
        );
        assert!(!t.contains("PW"), "{t}");
    }

    #[test]
    fn sanitize_escapes_bidi_controls_and_line_separators() {
        let spoof = [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{2028}', '\u{2029}',
        ];
        for c in spoof {
            assert!(is_spoofing(c));
            let s = sanitize(&format!("a{c}b"), 100);
            assert_eq!(s, format!("a\\u{{{:x}}}b", c as u32));
        }
        assert_eq!(sanitize("eve\u{202e}gpj.exe", 100), "eve\\u{202e}gpj.exe");
        // Neighbours and ordinary right-to-left text are left alone.
        for c in [
            '\u{2065}', '\u{206a}', '\u{200d}', '\u{2070}', '\u{5d0}', '\u{627}',
        ] {
            assert!(!is_spoofing(c), "{:x}", c as u32);
        }
        // Through a whole record, text and json.
        let t = render(
            Level::Info,
            0,
            "T",
            &"m\u{2028}x",
            &[("actor", &"a\u{202e}b")],
        );
        assert_eq!(t, "T INFO  m\\u{2028}x actor=a\\u{202e}b\n");
        let j = render(Level::Info, 1, "T", &"m", &[("actor", &"a\u{2066}b")]);
        assert!(j.contains("\"actor\":\"a\\\\u{2066}b\""), "{j}");
    }

    #[test]
    fn text_and_json_records() {
        let t = render(
            Level::Warn,
            0,
            "T",
            &"backend down",
            &[("status", &503), ("why", &"a b")],
        );
        assert_eq!(t, "T WARN  backend down status=503 why=\"a b\"\n");
        let j = render(Level::Info, 1, "T", &"m\"x", &[("k", &"v\n")]);
        assert_eq!(
            j,
            "{\"ts\":\"T\",\"level\":\"info\",\"msg\":\"m\\\"x\",\"k\":\"v\\\\u{a}\"}\n"
        );
    }

    #[test]
    fn throttle_logs_first_then_once_per_period_with_count() {
        let mut t = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.hit_at("down", t0), Some(0));
        assert_eq!(t.hit_at("down", t0 + Duration::from_secs(1)), None);
        assert_eq!(t.hit_at("down", t0 + Duration::from_secs(2)), None);
        assert_eq!(t.hit_at("down", t0 + Duration::from_secs(61)), Some(2));
        assert_eq!(t.hit_at("401", t0 + Duration::from_secs(62)), Some(0));
        t.reset();
        assert_eq!(t.hit_at("401", t0 + Duration::from_secs(63)), Some(0));
    }

    #[test]
    fn redacted_shows_length_only() {
        assert_eq!(Redacted("secret-key").to_string(), "<redacted, 10 bytes>");
        assert_eq!(Redacted("").to_string(), "<none>");
    }
}
