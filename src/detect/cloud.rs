//! Audit events where managed clusters and cloud CLIs put them, read as audit events: the
//! input of `AUDIT_SOURCE=stdin` and of `replay`.
//!
//! [`CloudSource`] reads a byte stream record by record, deciding per record (never by file
//! name) what each one is ([`Format::Auto`], or only the shapes one `AUDIT_FORMAT` names):
//!
//! - **audit**: `audit.k8s.io` Event lines, `EventList` documents (compact on a line or
//!   pretty-printed over many);
//! - **EKS**: `aws logs tail` lines (`<time> <stream> <json>`, `<time> <json>`, ANSI colour codes
//!   tolerated, `--format json`'s multi-line events), `aws logs filter-log-events` /
//!   `get-log-events` output (`events[].message`), CloudWatch subscription records
//!   (`logEvents[].message`, decoded from gzip+base64 first); a message CloudWatch cut at
//!   256 KB (`[Truncated...]`) is counted and logged, never guessed;
//! - **GKE**: Cloud Audit Log entries (`protoPayload` of `google.cloud.audit.AuditLog`), one per
//!   line or in the JSON array `gcloud … --format=json` prints, read element by element as it
//!   arrives; each is mapped to the audit fields the rules read ([`gke_event`]);
//! - **AKS**: diagnostic records (`{"records":[…]}` Event Hubs bodies, one record per line in
//!   storage exports), `properties.log` as a string or an object; other categories than
//!   `kube-audit`/`kube-audit-admin` are skipped and counted.
//!
//! UTF-8 byte-order marks are dropped where a line starts. A complete line goes the fast way:
//! an audit event is handed out as it is (its span in the stream, no copy), an envelope is
//! unwrapped with the JSON scanner. A document over several lines (a line holding only `{`, an
//! array of objects, or an unfinished object naming a list) is streamed through a [`Pruner`] with
//! [`INPUT_SPEC`], item by item, in bounded memory; so is a line over `MAX_LINE_BYTES`.
//!
//! What it hands out is always an audit event (or what cannot be one, for the detector to
//! count as malformed). A JSON record of no known shape, one `AUDIT_FORMAT` excludes, one of
//! another category or service, or a truncated message is skipped with its reason
//! ([`Unreadable`]); the pipeline counts and logs it.

use std::collections::VecDeque;
use std::io::{self, Read};

use crate::detect::audit::{event_spec, BODY, EVENT_LIST};
use crate::detect::json::{write_str, ErrorKind, Peek, Scanner};
use crate::operate::log::sanitize;
use crate::source::bytes::find_byte;
use crate::source::lines::{Found, LineBuffer};
use crate::source::prune::{prune_all, Caps, Keep, PruneError, Pruner, Spec};
use crate::source::{Next, Read as How, Record, Source, Unreadable};

/// Which envelopes are read (`AUDIT_FORMAT`). Audit events themselves are read whatever it
/// says: they are unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Every format below, decided record by record.
    #[default]
    Auto,
    /// Audit events and `EventList`s only.
    Audit,
    /// CloudWatch: `aws logs tail` lines, `filter-log-events` output, subscription records.
    Eks,
    /// Cloud Audit Log entries.
    Gke,
    /// Azure diagnostic records.
    Aks,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Auto,
        Format::Audit,
        Format::Eks,
        Format::Gke,
        Format::Aks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Audit => "audit",
            Format::Eks => "eks",
            Format::Gke => "gke",
            Format::Aks => "aks",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
    }

    fn accepts(self, shape: Shape) -> bool {
        match shape {
            Shape::Gke => matches!(self, Format::Auto | Format::Gke),
            Shape::AksBody | Shape::AksRecord => matches!(self, Format::Auto | Format::Aks),
            Shape::CloudWatch | Shape::LogEvents | Shape::LogEvent => {
                matches!(self, Format::Auto | Format::Eks)
            }
            _ => true,
        }
    }

    /// `aws logs tail` prefixes are read.
    fn tail_prefixes(self) -> bool {
        matches!(self, Format::Auto | Format::Eks)
    }
}

/// [`event_spec`] with the members of the envelopes read here, then the members given.
macro_rules! input_spec {
    ($($extra:expr),* $(,)?) => {
        event_spec!(
            ("protoPayload", Keep::Members(PROTO_PAYLOAD)),
            ("insertId", Keep::Value),
            ("timestamp", Keep::Value),
            ("labels", Keep::Value),
            ("operation", Keep::Members(OPERATION)),
            ("category", Keep::Value),
            ("properties", Keep::Members(PROPERTIES)),
            ("message", Keep::Value),
            $($extra,)*
        )
    };
}

/// What the pruner keeps of a record of any input format: the audit event's members (as
/// `crate::detect::audit::EVENT_SPEC` keeps them), the record lists of the containers, and the
/// members of the envelopes read here.
pub static INPUT_SPEC: &Spec = input_spec!(
    ("items", Keep::Records(INPUT_ITEM_SPEC)),
    ("records", Keep::Records(INPUT_ITEM_SPEC)),
    ("logEvents", Keep::Records(INPUT_ITEM_SPEC)),
    ("events", Keep::Records(INPUT_ITEM_SPEC)),
);

/// A record of a list: [`INPUT_SPEC`] without the lists.
pub static INPUT_ITEM_SPEC: &Spec = input_spec!();

static PROTO_PAYLOAD: &Spec = &[
    ("methodName", Keep::Value),
    ("resourceName", Keep::Value),
    ("serviceName", Keep::Value),
    ("authenticationInfo", Keep::Members(AUTHENTICATION_INFO)),
    ("request", Keep::Search(BODY)),
    ("response", Keep::Search(BODY)),
    ("timestamp", Keep::Value),
];
static AUTHENTICATION_INFO: &Spec = &[("principalEmail", Keep::Value)];
static OPERATION: &Spec = &[("first", Keep::Value), ("last", Keep::Value)];
static PROPERTIES: &Spec = &[("log", Keep::Value)];

/// What a JSON object is, by its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// An audit event or an `EventList`.
    Audit,
    /// A Cloud Audit Log entry.
    Gke,
    /// `{"records":[…]}`.
    AksBody,
    /// One diagnostic record.
    AksRecord,
    /// A CloudWatch subscription record (`logEvents`).
    CloudWatch,
    /// `filter-log-events` / `get-log-events` output (`events`).
    LogEvents,
    /// One CloudWatch log event (`message`).
    LogEvent,
    /// Valid JSON of no known shape.
    Unknown,
    /// Not valid JSON (or not an object).
    Invalid,
    /// The text ends inside the object; `list`: it names a list of records (a document that
    /// continues on the next lines).
    Incomplete { list: bool },
}

/// Decides what the object `v` is from its members, reading only as far as a member that
/// decides it (an audit line from kube-apiserver is decided by its first one, `kind`).
fn shape(v: &[u8]) -> Shape {
    let mut s = Scanner::new(v);
    let incomplete = |e: crate::detect::json::JsonError| {
        if e.kind == ErrorKind::UnexpectedEnd {
            Shape::Incomplete {
                list: names_a_list(v),
            }
        } else {
            Shape::Invalid
        }
    };
    if let Err(e) = s.begin_object() {
        return incomplete(e);
    }
    let mut first = true;
    let mut saw_kind = false;
    loop {
        let key = match s.next_key_bytes(first) {
            Ok(Some(k)) => k,
            Ok(None) => break,
            Err(e) => return incomplete(e),
        };
        first = false;
        // `kind` and `apiVersion` are read (their value consumed); other keys decide alone.
        let decided = match &*key {
            b"kind" => {
                saw_kind = true;
                match s.string_or_empty(1) {
                    Ok(k) if k == "Event" || k == "EventList" => return Shape::Audit,
                    Ok(_) => continue,
                    Err(e) => return incomplete(e),
                }
            }
            b"apiVersion" => match s.string_or_empty(1) {
                Ok(a) if a.starts_with("audit.k8s.io/") => return Shape::Audit,
                Ok(_) => continue,
                Err(e) => return incomplete(e),
            },
            b"auditID"
            | b"stage"
            | b"verb"
            | b"objectRef"
            | b"requestURI"
            | b"level"
            | b"requestReceivedTimestamp"
            | b"stageTimestamp"
            | b"user"
            | b"impersonatedUser"
            | b"sourceIPs"
            | b"userAgent"
            | b"responseStatus"
            | b"requestObject"
            | b"responseObject"
            | b"items" => Some(Shape::Audit),
            b"protoPayload" | b"insertId" | b"logName" | b"receiveTimestamp" => Some(Shape::Gke),
            b"records" => Some(Shape::AksBody),
            b"category" | b"properties" | b"operationName" | b"resourceId" => {
                Some(Shape::AksRecord)
            }
            b"logEvents" | b"messageType" => Some(Shape::CloudWatch),
            b"events" => Some(Shape::LogEvents),
            b"message" => Some(Shape::LogEvent),
            _ => None,
        };
        if let Some(d) = decided {
            return d;
        }
        if let Err(e) = s.skip_value(1) {
            return incomplete(e);
        }
    }
    if saw_kind {
        Shape::Audit
    } else {
        Shape::Unknown
    }
}

/// Whether an unfinished object names a list of records (an `EventList`, an AKS body, a
/// CloudWatch record or `filter-log-events` output opened on this line).
fn names_a_list(v: &[u8]) -> bool {
    [
        &b"\"EventList\""[..],
        b"\"items\"",
        b"\"records\"",
        b"\"logEvents\"",
        b"\"events\"",
    ]
    .iter()
    .any(|n| v.windows(n.len()).any(|w| w == *n))
}

/// What CloudWatch appends to a message it cut at 256 KB.
const TRUNCATED: &[u8] = b"[Truncated...]";

fn is_truncated(text: &[u8]) -> bool {
    text.trim_ascii_end().ends_with(TRUNCATED)
}

/// The `auditID` of a (truncated) audit event, if it comes before the cut.
fn audit_id_of(text: &[u8]) -> Option<String> {
    let all = prune_all(text, INPUT_SPEC, EVENT_LIST, Caps::default());
    match all.end {
        Err(e) => e.audit_id,
        Ok(()) => None,
    }
}

/// The first bytes of a record, for a log line.
fn head(b: &[u8]) -> String {
    let cut = &b[..b.len().min(64)];
    let mut h = sanitize(&String::from_utf8_lossy(cut), 64);
    if b.len() > 64 {
        h.push('…');
    }
    h
}

/// One record out of an envelope: an audit event's bytes, or why there is none.
type Unwrapped = Result<Vec<u8>, Unreadable>;

/// The members of object `v` named in `names`, as raw value spans (the last of duplicates).
fn members<'a, const N: usize>(v: &'a [u8], names: [&str; N]) -> Option<[Option<&'a [u8]>; N]> {
    let mut s = Scanner::new(v);
    s.begin_object().ok()?;
    let mut out = [None; N];
    let mut first = true;
    while let Some(k) = s.next_key_bytes(first).ok()? {
        first = false;
        let (a, b) = s.skip_value(1).ok()?;
        if let Some(i) = names.iter().position(|n| n.as_bytes() == &*k) {
            out[i] = Some(&v[a..b]);
        }
    }
    Some(out)
}

/// A raw JSON value as a string, if it is one.
fn string(raw: Option<&[u8]>) -> Option<String> {
    let raw = raw?;
    let mut s = Scanner::new(raw);
    match s.peek().ok()? {
        Peek::String => s.string().ok().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A raw JSON value if it is an object.
fn object(raw: Option<&[u8]>) -> Option<&[u8]> {
    raw.filter(|r| r.first() == Some(&b'{'))
}

/// The items of the array member `list` of object `v`, as raw spans (empty if absent).
fn list_items<'a>(v: &'a [u8], list: &str) -> Vec<&'a [u8]> {
    let Some([Some(raw)]) = members(v, [list]) else {
        return Vec::new();
    };
    crate::detect::audit::items(raw).unwrap_or_default()
}

/// An audit event taken out of a text field (a CloudWatch message, an AKS `properties.log`
/// string): the event's JSON, or why it is not one.
fn inner_event(text: &str, what: &str) -> Unwrapped {
    let t = text.trim();
    if is_truncated(t.as_bytes()) {
        return Err(Unreadable::Truncated {
            audit_id: audit_id_of(t.as_bytes()),
        });
    }
    if !t.starts_with('{') {
        return Err(Unreadable::NotAudit {
            what: format!("{what} that is not JSON (`{}`)", head(t.as_bytes())),
        });
    }
    Ok(t.as_bytes().to_vec())
}

/// One CloudWatch log event (`{"message": "<audit event>", ...}`).
fn log_event(v: &[u8]) -> Unwrapped {
    let Some([message]) = members(v, ["message"]) else {
        return Err(unknown(v, Format::Eks));
    };
    match string(message) {
        Some(m) => inner_event(&m, "a CloudWatch message"),
        None => Err(unknown(v, Format::Eks)),
    }
}

/// One Azure diagnostic record: the audit event of `properties.log` (a string or an object)
/// when its category is `kube-audit` or `kube-audit-admin`.
fn aks_record(v: &[u8]) -> Unwrapped {
    let Some([category, properties]) = members(v, ["category", "properties"]) else {
        return Err(unknown(v, Format::Aks));
    };
    if let Some(c) = string(category) {
        if c != "kube-audit" && c != "kube-audit-admin" {
            return Err(Unreadable::NotAudit {
                what: format!("an AKS record of category `{}`", sanitize(&c, 64)),
            });
        }
    }
    let log = object(properties)
        .and_then(|p| members(p, ["log"]))
        .and_then(|[l]| l);
    match log {
        Some(raw) if raw.first() == Some(&b'{') => Ok(raw.to_vec()),
        Some(raw) => match string(Some(raw)) {
            Some(text) => inner_event(&text, "an AKS record's log"),
            None => Err(unknown(v, Format::Aks)),
        },
        None => Err(unknown(v, Format::Aks)),
    }
}

fn unknown(v: &[u8], format: Format) -> Unreadable {
    Unreadable::UnknownFormat {
        format: format.as_str(),
        head: head(v),
    }
}

/// `v1`, `v1beta1`, `v2alpha3`.
fn is_version(t: &str) -> bool {
    let Some(rest) = t.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let rest = &rest[digits..];
    if rest.is_empty() {
        return true;
    }
    let tail = rest
        .strip_prefix("alpha")
        .or_else(|| rest.strip_prefix("beta"));
    tail.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// What a GKE entry says of the request: verb, resource, subresource, namespace, name.
#[derive(Debug, Default, PartialEq, Eq)]
struct GkeTarget {
    verb: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

/// `io.k8s.core.v1.pods.exec.create` → verb `create`, resource `pods`, subresource `exec`
/// (the verb is the last dot-token; a subresource precedes it).
fn parse_method(method: &str) -> Option<GkeTarget> {
    let rest = method.strip_prefix("io.k8s.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let mut t = GkeTarget {
        verb: tokens.last()?.to_string(),
        ..GkeTarget::default()
    };
    if let Some(v) = tokens.iter().position(|t| is_version(t)) {
        let after = &tokens[v + 1..];
        if after.len() >= 2 {
            t.resource = after[0].to_string();
        }
        if after.len() == 3 {
            t.subresource = after[1].to_string();
        }
    }
    Some(t)
}

/// `GROUP/VERSION/namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]` or, cluster-scoped,
/// `GROUP/VERSION/RESOURCE[/NAME[/SUBRESOURCE]]` (`core` for the core group).
fn parse_resource_name(name: &str, t: &mut GkeTarget) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() < 3 || !is_version(parts[1]) || parts.iter().any(|p| p.is_empty()) {
        return false;
    }
    let rest = &parts[2..];
    let (ns, object) = if rest[0] == "namespaces"
        && rest.len() >= 3
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"))
    {
        (rest[1], &rest[2..])
    } else {
        ("", rest)
    };
    if object.len() > 3 {
        return false;
    }
    t.namespace = ns.to_string();
    t.resource = object[0].to_string();
    t.name = object.get(1).map_or(String::new(), |s| s.to_string());
    if let Some(sub) = object.get(2) {
        t.subresource = sub.to_string();
    }
    true
}

/// A Cloud Audit Log entry of GKE mapped to an audit event holding the fields the rules read:
/// `verb` and the subresource from `protoPayload.methodName`; resource, namespace, name (and
/// subresource) from `protoPayload.resourceName`; the actor from
/// `protoPayload.authenticationInfo.principalEmail`; `auditID` from `insertId`; the time from
/// `timestamp`; `annotations` from the entry's `labels` (where GKE puts the authorization
/// annotations); request and response bodies from `protoPayload.request`/`response`. GKE logs
/// completed requests: the stage is `ResponseComplete`, except for the opening entry of a
/// long-running operation (`operation.first` without `operation.last`), which is
/// `ResponseStarted` so that one exec or watch counts once. Entries of other services, or
/// without a Kubernetes method, are not audit events.
pub fn gke_event(v: &[u8]) -> Result<Vec<u8>, Unreadable> {
    let Some([proto, insert_id, timestamp, labels, operation]) = members(
        v,
        [
            "protoPayload",
            "insertId",
            "timestamp",
            "labels",
            "operation",
        ],
    ) else {
        return Err(unknown(v, Format::Gke));
    };
    let Some(proto) = object(proto) else {
        return Err(unknown(v, Format::Gke));
    };
    let Some([method, resource_name, service, auth, request, response, proto_time]) = members(
        proto,
        [
            "methodName",
            "resourceName",
            "serviceName",
            "authenticationInfo",
            "request",
            "response",
            "timestamp",
        ],
    ) else {
        return Err(unknown(v, Format::Gke));
    };
    let method = string(method).unwrap_or_default();
    if let Some(svc) = string(service).filter(|s| s != "k8s.io") {
        return Err(Unreadable::NotAudit {
            what: format!("a Cloud Audit Log entry of {}", sanitize(&svc, 64)),
        });
    }
    let Some(mut target) = parse_method(&method) else {
        return Err(Unreadable::NotAudit {
            what: format!(
                "a Cloud Audit Log entry without a Kubernetes method (methodName `{}`)",
                sanitize(&method, 80)
            ),
        });
    };
    if let Some(rn) = string(resource_name) {
        let from_method = std::mem::take(&mut target.subresource);
        if !parse_resource_name(&rn, &mut target) || target.subresource.is_empty() {
            target.subresource = from_method;
        }
    }
    let principal = object(auth)
        .and_then(|a| members(a, ["principalEmail"]))
        .and_then(|[p]| string(p))
        .unwrap_or_default();
    let time = string(timestamp)
        .or_else(|| string(proto_time))
        .unwrap_or_default();
    let (first, last) = object(operation)
        .and_then(|o| members(o, ["first", "last"]))
        .map_or((false, false), |[f, l]| {
            (f == Some(&b"true"[..]), l == Some(&b"true"[..]))
        });
    let stage = if first && !last {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };

    let mut out = String::with_capacity(256);
    out.push_str("{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"auditID\":");
    write_str(&mut out, &string(insert_id).unwrap_or_default());
    out.push_str(",\"stage\":");
    write_str(&mut out, stage);
    out.push_str(",\"verb\":");
    write_str(&mut out, &target.verb);
    out.push_str(",\"user\":{\"username\":");
    write_str(&mut out, &principal);
    out.push_str("},\"objectRef\":{\"resource\":");
    write_str(&mut out, &target.resource);
    for (k, val) in [
        ("namespace", &target.namespace),
        ("name", &target.name),
        ("subresource", &target.subresource),
    ] {
        if !val.is_empty() {
            out.push_str(",\"");
            out.push_str(k);
            out.push_str("\":");
            write_str(&mut out, val);
        }
    }
    out.push_str("},\"requestReceivedTimestamp\":");
    write_str(&mut out, &time);
    let mut bytes = out.into_bytes();
    // Raw JSON objects, validated by the scanner that found them.
    for (k, raw) in [
        ("annotations", object(labels)),
        ("requestObject", object(request)),
        ("responseObject", object(response)),
    ] {
        if let Some(raw) = raw {
            bytes.extend_from_slice(b",\"");
            bytes.extend_from_slice(k.as_bytes());
            bytes.extend_from_slice(b"\":");
            bytes.extend_from_slice(raw);
        }
    }
    bytes.push(b'}');
    Ok(bytes)
}

/// The audit events of a complete object of shape `s` (not [`Shape::Audit`]).
fn unwrap_object(v: &[u8], s: Shape, out: &mut Vec<Unwrapped>) {
    match s {
        Shape::Gke => out.push(gke_event(v)),
        Shape::AksRecord => out.push(aks_record(v)),
        Shape::LogEvent => out.push(log_event(v)),
        Shape::AksBody => out.extend(list_items(v, "records").into_iter().map(|i| {
            if shape(i) == Shape::AksRecord || i.first() == Some(&b'{') {
                aks_record(i)
            } else {
                Err(unknown(i, Format::Aks))
            }
        })),
        Shape::CloudWatch => {
            let control = members(v, ["messageType"])
                .and_then(|[t]| string(t))
                .is_some_and(|t| t == "CONTROL_MESSAGE");
            if control {
                out.push(Err(Unreadable::NotAudit {
                    what: "a CloudWatch subscription control message".into(),
                }));
            } else {
                out.extend(list_items(v, "logEvents").into_iter().map(log_event));
            }
        }
        Shape::LogEvents => out.extend(list_items(v, "events").into_iter().map(log_event)),
        Shape::Unknown => out.push(Err(unknown(v, Format::Auto))),
        Shape::Audit | Shape::Invalid | Shape::Incomplete { .. } => out.push(Ok(v.to_vec())),
    }
}

/// Drops what cannot be part of a record at the start of a line: UTF-8 byte-order marks and
/// ANSI escape sequences, then, for EKS, an `aws logs tail` prefix. Returns where the record
/// starts in `raw`, or — when escape sequences had to be removed — in `scratch` (`true`).
///
/// Escape sequences are looked for only before the line's first `{`: a CLI colours its own
/// prefix (`aws logs tail --color on`: the time and the stream), never the record, and a raw ESC
/// inside a JSON value is invalid JSON anyway. So a record line costs one short search, not a
/// pass over all its bytes.
fn clean(raw: &[u8], scratch: &mut Vec<u8>, tail: bool) -> (usize, bool) {
    let head = find_byte(raw, b'{').unwrap_or(raw.len());
    let (text, in_scratch) = if raw[..head].contains(&0x1b) {
        scratch.clear();
        let mut i = 0;
        while i < head {
            if raw[i] != 0x1b {
                scratch.push(raw[i]);
                i += 1;
                continue;
            }
            i += 1;
            if raw.get(i) == Some(&b'[') {
                // CSI: parameters and intermediates, then one final byte.
                i += 1;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
            }
            i += 1;
        }
        // A sequence's final byte may be the `{` itself; the record starts after the sequence.
        scratch.extend_from_slice(&raw[i.max(head).min(raw.len())..]);
        (&scratch[..], true)
    } else {
        (raw, false)
    };
    let mut at = 0;
    loop {
        while at < text.len() && matches!(text[at], b' ' | b'\t') {
            at += 1;
        }
        if text[at..].starts_with(b"\xef\xbb\xbf") {
            at += 3;
            continue;
        }
        break;
    }
    if tail {
        if let Some(p) = tail_prefix(&text[at..]) {
            at += p;
        }
    }
    (at, in_scratch)
}

/// Length of an `aws logs tail` prefix (`<time> <stream> ` or `<time> `) before a JSON value.
fn tail_prefix(b: &[u8]) -> Option<usize> {
    let date = b.get(..5)?;
    if !(date[..4].iter().all(u8::is_ascii_digit) && date[4] == b'-') {
        return None;
    }
    let mut i = 0;
    // The time, then at most one more token (the log stream).
    for _ in 0..2 {
        while i < b.len() && !matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        match b.get(i) {
            Some(b'{' | b'[') => return Some(i),
            None => return None,
            _ => {}
        }
    }
    None
}

/// A record waiting to be handed out.
enum Out {
    Record {
        bytes: Vec<u8>,
        start: u64,
        end: u64,
        how: How,
    },
    Skipped {
        start: u64,
        end: u64,
        why: Unreadable,
    },
}

/// A JSON document that spans lines, streamed through its own pruner.
struct Document {
    pruner: Pruner,
    /// Stream offset of the pruner's offset 0, as of the line being fed (bytes dropped by
    /// [`clean`] shift it).
    shift: i64,
    /// Stream offset where it started.
    start: u64,
}

/// Bytes asked for per read (the buffer starts at two of them).
const CHUNK: usize = 512 << 10;

/// A [`Source`] over a stream of audit records in any of the formats of [`Format`]. See the
/// module documentation. Places are byte offsets into the stream.
pub struct CloudSource<R> {
    input: R,
    lines: LineBuffer,
    scratch: Vec<u8>,
    eof: bool,
    /// The last read found nothing yet (a live input): [`Next::Idle`].
    idle: bool,
    error: Option<io::Error>,
    st: State,
}

/// Everything but the input and its line buffer (borrowed apart from them).
struct State {
    format: Format,
    caps: Caps,
    pending: VecDeque<Out>,
    doc: Option<Document>,
    /// An over-long line that broke a document: its records are dropped.
    discard_from: Option<u64>,
    record: Vec<u8>,
    /// End of the record handed out last.
    position: u64,
    lines: u64,
    documents: u64,
    lists: u64,
    /// The document being read held cloud envelopes (not an `EventList`'s events).
    doc_envelopes: bool,
}

/// What a line came to.
enum Route {
    /// Hand the line's record out as it is.
    Fast,
    /// Queued (or nothing to hand out).
    Done,
}

impl<R: Read> CloudSource<R> {
    /// Lines longer than `max_line` are streamed through a pruner (see
    /// [`LineBuffer::stream_long_lines`]).
    pub fn new(input: R, max_line: usize, format: Format) -> CloudSource<R> {
        let caps = Caps::default();
        CloudSource {
            input,
            lines: LineBuffer::new(max_line, CHUNK).stream_long_lines(INPUT_SPEC, EVENT_LIST, caps),
            scratch: Vec::new(),
            eof: false,
            idle: false,
            error: None,
            st: State {
                format,
                caps,
                pending: VecDeque::new(),
                doc: None,
                discard_from: None,
                record: Vec::new(),
                position: 0,
                lines: 0,
                documents: 0,
                lists: 0,
                doc_envelopes: false,
            },
        }
    }

    /// The read error that ended the stream early, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Lines read so far (a last unterminated line included once read).
    pub fn lines_read(&self) -> u64 {
        self.st.lines
    }

    /// Bytes read and handed out (or consumed) so far.
    pub fn bytes_read(&self) -> u64 {
        self.lines.position()
    }

    /// Multi-line documents read, and how many of them were lists of audit events
    /// (`EventList`s, arrays of events).
    pub fn documents(&self) -> (u64, u64) {
        (self.st.documents, self.st.lists)
    }

    pub fn format(&self) -> Format {
        self.st.format
    }

    fn fill(&mut self) {
        loop {
            match self.input.read(self.lines.space()) {
                Ok(0) => self.eof = true,
                Ok(n) => self.lines.commit(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A live input with nothing new (see `source::stream::Background`).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.idle = true,
                Err(e) => {
                    self.error = Some(e);
                    self.eof = true;
                }
            }
            return;
        }
    }
}

impl State {
    /// One complete line, `raw` at `[start, end)` of the stream (its record starts at
    /// `start + at`).
    fn line(&mut self, body: &[u8], body_at: u64, start: u64, end: u64) -> Route {
        if let Some(doc) = &mut self.doc {
            doc.shift = body_at as i64 - doc.pruner.offset() as i64;
            doc.pruner.feed(body);
            doc.pruner.feed(b"\n");
            self.drain_document(end, false);
            return Route::Done;
        }
        let Some(&first) = body.first() else {
            return Route::Fast;
        };
        if is_truncated(body) {
            self.skip(
                start,
                end,
                Unreadable::Truncated {
                    audit_id: audit_id_of(body),
                },
            );
            return Route::Done;
        }
        match first {
            b'[' => {
                // An array of records (gcloud's output) holds objects; any other array is
                // not a record at all, and the detector says so.
                let next = body[1..].trim_ascii_start().first();
                if next.map_or(true, |&c| c == b'{') {
                    self.begin_document(body, body_at, end, true);
                    Route::Done
                } else {
                    Route::Fast
                }
            }
            b'{' => match shape(body) {
                Shape::Audit | Shape::Invalid => Route::Fast,
                Shape::Incomplete { list } => {
                    if list || body.trim_ascii_end() == b"{" {
                        self.begin_document(body, body_at, end, false);
                        Route::Done
                    } else {
                        // A line cut off: the detector says so.
                        Route::Fast
                    }
                }
                s if !self.format.accepts(s) || s == Shape::Unknown => {
                    // No format, or one AUDIT_FORMAT excludes.
                    self.skip(start, end, unknown(body, self.format));
                    Route::Done
                }
                s => {
                    let mut got = Vec::new();
                    unwrap_object(body, s, &mut got);
                    let n = got.len();
                    if n == 0 {
                        // An empty list: the line is read, nothing to evaluate.
                        self.pending.push_back(Out::Record {
                            bytes: b"{\"kind\":\"EventList\",\"items\":[]}".to_vec(),
                            start,
                            end,
                            how: How::Unwrapped,
                        });
                    }
                    for (i, u) in got.into_iter().enumerate() {
                        let e = if i + 1 == n { end } else { start };
                        self.unwrapped_out(u, start, e);
                    }
                    Route::Done
                }
            },
            _ => Route::Fast,
        }
    }

    fn unwrapped_out(&mut self, u: Unwrapped, start: u64, end: u64) {
        match u {
            Ok(bytes) => self.pending.push_back(Out::Record {
                bytes,
                start,
                end,
                how: How::Unwrapped,
            }),
            Err(why) => self.skip(start, end, why),
        }
    }

    fn skip(&mut self, start: u64, end: u64, why: Unreadable) {
        self.pending.push_back(Out::Skipped { start, end, why });
    }

    fn begin_document(&mut self, body: &[u8], body_at: u64, end: u64, array: bool) {
        let pruner = Pruner::new(INPUT_SPEC, EVENT_LIST, self.caps);
        let pruner = if array {
            pruner.allow_top_array()
        } else {
            pruner
        };
        let mut doc = Document {
            pruner,
            shift: body_at as i64,
            start: body_at,
        };
        doc.pruner.feed(body);
        doc.pruner.feed(b"\n");
        self.doc = Some(doc);
        self.drain_document(end, false);
    }

    /// Hands out what the document's pruner completed; ends the document when it is complete
    /// or broken (`at_end`: the input ended), `line_end` being where the last fed line ends.
    fn drain_document(&mut self, line_end: u64, at_end: bool) {
        let Some(doc) = &mut self.doc else { return };
        let mut ready = Vec::new();
        while let Some(p) = doc.pruner.take() {
            let at = |o: u64| (o as i64 + doc.shift).max(0) as u64;
            ready.push((p.record, at(p.start), at(p.end)));
        }
        let broken = if at_end {
            doc.pruner.finish().err()
        } else {
            doc.pruner.error().cloned()
        };
        let done = broken.is_some() || doc.pruner.is_done();
        let list = doc.pruner.is_container();
        let start = doc.start;
        for (record, s, e) in ready {
            self.pruned(record, s, e, How::Item);
        }
        if let Some(e) = broken {
            let from = (e.offset as i64 + self.doc.as_ref().map_or(0, |d| d.shift)).max(0) as u64;
            // Never before a record already handed out of it.
            let after = self.pending.back().map_or(start, |o| match o {
                Out::Record { start, .. } | Out::Skipped { start, .. } => *start,
            });
            let from = from.max(start).max(after).max(self.position).min(line_end);
            self.skip(from, line_end, Unreadable::Pruner(e));
        }
        if done {
            self.doc = None;
            self.documents += 1;
            self.lists += u64::from(list && !std::mem::take(&mut self.doc_envelopes));
        }
    }

    /// A record the pruner kept (of a document, or of a line over the cap).
    fn pruned(&mut self, record: Result<Vec<u8>, PruneError>, start: u64, end: u64, how: How) {
        let bytes = match record {
            Ok(b) => b,
            Err(e) => {
                self.skip(start, end, Unreadable::Pruner(e));
                return;
            }
        };
        match shape(&bytes) {
            Shape::Audit | Shape::Invalid | Shape::Incomplete { .. } => {
                self.pending.push_back(Out::Record {
                    bytes,
                    start,
                    end,
                    how,
                })
            }
            s if !self.format.accepts(s) || s == Shape::Unknown => {
                let why = unknown(&bytes, self.format);
                self.skip(start, end, why)
            }
            s => {
                self.doc_envelopes |= self.doc.is_some();
                let mut got = Vec::new();
                unwrap_object(&bytes, s, &mut got);
                let n = got.len();
                for (i, u) in got.into_iter().enumerate() {
                    let e = if i + 1 == n { end } else { start };
                    self.unwrapped_out(u, start, e);
                }
            }
        }
    }
}

impl<R: Read> Source for CloudSource<R> {
    type Pos = u64;

    fn next(&mut self) -> Next<'_, u64> {
        loop {
            if let Some(out) = self.st.pending.pop_front() {
                return match out {
                    Out::Record {
                        bytes,
                        start,
                        end,
                        how,
                    } => {
                        self.st.record = bytes;
                        self.st.position = end;
                        Next::Record(Record {
                            bytes: &self.st.record,
                            start,
                            end,
                            how,
                        })
                    }
                    Out::Skipped { start, end, why } => {
                        self.st.position = end;
                        Next::Skipped { start, end, why }
                    }
                };
            }
            let found = match self.lines.next_line() {
                Some(f) => f,
                None if self.eof => {
                    if self.st.doc.is_some() {
                        let end = self.lines.position();
                        self.st.drain_document(end, true);
                        continue;
                    }
                    return Next::End;
                }
                None => {
                    self.fill();
                    if self.eof {
                        self.lines.end_of_input();
                    }
                    if std::mem::take(&mut self.idle) {
                        return Next::Idle;
                    }
                    continue;
                }
            };
            match found {
                Found::Line(span) => {
                    self.st.lines += 1;
                    let (at, in_scratch) = {
                        let raw = self.lines.bytes(&span);
                        // No prefix inside a document: its lines are JSON only.
                        let tail = self.st.format.tail_prefixes() && self.st.doc.is_none();
                        clean(raw, &mut self.scratch, tail)
                    };
                    let route = {
                        let raw = self.lines.bytes(&span);
                        let text = if in_scratch { &self.scratch[..] } else { raw };
                        // Offsets in the stream are exact unless escapes were removed.
                        let body_at = span.start + at.min(raw.len()) as u64;
                        self.st.line(&text[at..], body_at, span.start, span.end)
                    };
                    if let Route::Fast = route {
                        self.st.position = span.end;
                        let bytes = if in_scratch {
                            &self.scratch[at..]
                        } else {
                            &self.lines.bytes(&span)[at..]
                        };
                        return Next::Record(Record {
                            bytes,
                            start: span.start,
                            end: span.end,
                            how: How::Whole,
                        });
                    }
                }
                Found::Pruned { start, end } => {
                    if end > start {
                        self.st.lines += 1;
                    }
                    if self.st.discard_from == Some(start) {
                        if end > start {
                            self.st.discard_from = None;
                        }
                        continue;
                    }
                    if self.st.doc.is_some() {
                        self.break_document(start, end);
                        continue;
                    }
                    let bytes = self.lines.pruned().to_vec();
                    self.st.pruned(Ok(bytes), start, end, How::Streamed);
                }
                Found::Unreadable { start, end, why } => {
                    if end > start {
                        self.st.lines += 1;
                    }
                    if self.st.discard_from == Some(start) {
                        if end > start {
                            self.st.discard_from = None;
                        }
                        continue;
                    }
                    if self.st.doc.is_some() {
                        self.break_document(start, end);
                        continue;
                    }
                    self.st.position = end;
                    return Next::Skipped { start, end, why };
                }
            }
        }
    }

    fn position(&self) -> u64 {
        if self.st.pending.is_empty() && self.st.doc.is_none() {
            self.lines.position()
        } else {
            self.st.position
        }
    }

    fn describe(&self, place: &u64) -> String {
        format!("offset {place}")
    }
}

impl<R: Read> CloudSource<R> {
    /// A line of a document longer than `MAX_LINE_BYTES`: the document cannot be read on.
    fn break_document(&mut self, line_start: u64, line_end: u64) {
        if self.st.doc.take().is_none() {
            return;
        }
        self.st.documents += 1;
        if line_end == line_start {
            self.st.discard_from = Some(line_start);
        }
        // Unreadable from this line on; what came before it was handed out.
        self.st
            .skip(line_start, line_end.max(line_start), Unreadable::OverCap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], format: Format) -> Vec<String> {
        let mut src = CloudSource::new(input, 1 << 20, format);
        let mut out = Vec::new();
        loop {
            match src.next() {
                Next::Record(r) => out.push(String::from_utf8_lossy(r.bytes).into_owned()),
                Next::Skipped { why, .. } => {
                    out.push(format!("!{}", crate::pipeline::drop_reason(&why)))
                }
                Next::Idle => panic!("a stream is never idle"),
                Next::End => return out,
            }
        }
    }

    const EV: &str = r#"{"kind":"Event","auditID":"a1","stage":"ResponseComplete","verb":"get","user":{"username":"u"},"objectRef":{"resource":"secrets","namespace":"n","name":"s"}}"#;

    #[test]
    fn shapes() {
        assert_eq!(shape(EV.as_bytes()), Shape::Audit);
        assert_eq!(
            shape(br#"{"annotations":{},"apiVersion":"audit.k8s.io/v1"}"#),
            Shape::Audit
        );
        assert_eq!(shape(br#"{"kind": 0}"#), Shape::Audit);
        assert_eq!(shape(br#"{"protoPayload":{}}"#), Shape::Gke);
        assert_eq!(shape(br#"{"records":[]}"#), Shape::AksBody);
        assert_eq!(shape(br#"{"operationName":"x"}"#), Shape::AksRecord);
        assert_eq!(
            shape(br#"{"messageType":"DATA_MESSAGE"}"#),
            Shape::CloudWatch
        );
        assert_eq!(shape(br#"{"events":[]}"#), Shape::LogEvents);
        assert_eq!(shape(br#"{"timestamp":1,"message":"x"}"#), Shape::LogEvent);
        assert_eq!(shape(br#"{"foo":1}"#), Shape::Unknown);
        assert_eq!(shape(br#"{"foo":1"#), Shape::Incomplete { list: false });
        assert_eq!(
            shape(br#"{"kind":"EventList","items":["#),
            Shape::Audit,
            "decided by kind before the end"
        );
        assert_eq!(shape(br#"{"records":["#), Shape::AksBody);
        assert_eq!(shape(b"{"), Shape::Incomplete { list: false });
        assert_eq!(shape(br#"{"x":1,"#), Shape::Incomplete { list: false });
        assert_eq!(shape(br#"{"x":tru}"#), Shape::Invalid);
    }

    #[test]
    fn tail_prefixes_bom_and_colours() {
        let detailed = format!("2025-12-09T12:57:46.000000+00:00 kube-apiserver-audit-0123 {EV}");
        let short = format!("2025-12-09T12:57:46 {EV}");
        let coloured = format!(
            "\x1b[32m2025-12-09T12:57:46.000000+00:00\x1b[0m \x1b[36mkube-apiserver-audit-0123\x1b[0m {EV}"
        );
        let bom = format!("\u{feff}{EV}");
        for line in [detailed, short, coloured, bom] {
            assert_eq!(collect(line.as_bytes(), Format::Auto), [EV], "{line:?}");
        }
        // Escape sequences are a prefix's: one inside the record is left there (and makes the
        // record invalid JSON, as it is), not silently removed.
        let mut scratch = Vec::new();
        let inside = format!("{}\x1b[0m{}", &EV[..10], &EV[10..]);
        assert_eq!(clean(inside.as_bytes(), &mut scratch, true), (0, false));
        let coloured = format!("\x1b[32m2025-12-09T12:57:46\x1b[0m {inside}");
        let (at, in_scratch) = clean(coloured.as_bytes(), &mut scratch, true);
        assert!(in_scratch);
        assert_eq!(&scratch[at..], inside.as_bytes());
        // Not read as a prefix where EKS is not asked for.
        let short = format!("2025-12-09T12:57:46 {EV}");
        assert_eq!(collect(short.as_bytes(), Format::Gke), [short.as_str()]);
        // A truncated message is never guessed.
        let cut = format!("2025-12-09T12:57:46 {}[Truncated...]", &EV[..60]);
        assert_eq!(collect(cut.as_bytes(), Format::Eks), ["!truncated"]);
    }

    #[test]
    fn cloudwatch_envelopes() {
        let msg = {
            let mut s = String::new();
            write_str(&mut s, EV);
            s
        };
        let filter = format!(
            "{{\n    \"events\": [\n        {{\n            \"logStreamName\": \"s\",\n            \"message\": {msg}\n        }},\n        {{\"message\": {msg}}}\n    ],\n    \"searchedLogStreams\": []\n}}\n"
        );
        assert_eq!(collect(filter.as_bytes(), Format::Eks), [EV, EV]);
        let sub = format!(
            "{{\"messageType\":\"DATA_MESSAGE\",\"logEvents\":[{{\"id\":\"1\",\"message\":{msg}}},{{\"id\":\"2\",\"message\":\"CWL CONTROL\"}}]}}"
        );
        assert_eq!(collect(sub.as_bytes(), Format::Auto), [EV, "!not_audit"]);
        assert_eq!(collect(sub.as_bytes(), Format::Aks), ["!unknown_format"]);
        let control =
            r#"{"messageType":"CONTROL_MESSAGE","logEvents":[{"message":"CWL CONTROL MESSAGE"}]}"#;
        assert_eq!(collect(control.as_bytes(), Format::Eks), ["!not_audit"]);
    }

    #[test]
    fn aks_records() {
        let mut log = String::new();
        write_str(&mut log, &format!("{EV}\n"));
        let body = format!(
            "{{\"records\": [{{\"category\":\"kube-audit\",\"properties\":{{\"log\":{log}}}}}, {{\"category\":\"kube-apiserver\",\"properties\":{{\"log\":\"I0101 klog text\"}}}}, {{\"category\":\"kube-audit-admin\",\"properties\":{{\"log\":{EV}}}}}]}}"
        );
        assert_eq!(
            collect(body.as_bytes(), Format::Aks),
            [EV, "!not_audit", EV]
        );
        // Pretty, with a byte-order mark.
        let pretty = format!(
            "\u{feff}{{\n  \"category\": \"kube-audit\",\n  \"properties\": {{\n    \"log\": {log}\n  }}\n}}\n"
        );
        assert_eq!(collect(pretty.as_bytes(), Format::Auto), [EV]);
    }

    #[test]
    fn gke_entries_map_to_the_fields_the_rules_read() {
        let exec = r#"{"insertId":"i-1","labels":{"authorization.k8s.io/decision":"allow"},"protoPayload":{"@type":"type.googleapis.com/google.cloud.audit.AuditLog","authenticationInfo":{"principalEmail":"alice@example.com"},"methodName":"io.k8s.core.v1.pods.exec.create","resourceName":"core/v1/namespaces/shop/pods/web-1/exec","serviceName":"k8s.io"},"timestamp":"2025-01-01T00:00:00Z"}"#;
        let got = gke_event(exec.as_bytes()).unwrap();
        let f = crate::detect::audit::extract(&got).unwrap();
        assert_eq!(
            (
                &*f.stage,
                &*f.verb,
                &*f.username,
                &*f.resource,
                &*f.subresource,
                &*f.namespace,
                &*f.name,
                &*f.audit_id,
                &*f.request_received_timestamp
            ),
            (
                "ResponseComplete",
                "create",
                "alice@example.com",
                "pods",
                "exec",
                "shop",
                "web-1",
                "i-1",
                "2025-01-01T00:00:00Z"
            )
        );
        assert!(f.annotation_is("authorization.k8s.io/decision", "allow"));
        for (method, name, want) in [
            // Cluster-scoped, no subresource.
            (
                "io.k8s.rbac.v1.clusterroles.create",
                "rbac.authorization.k8s.io/v1/clusterroles/admin",
                ("create", "clusterroles", "", "", "admin"),
            ),
            // A list in a namespace.
            (
                "io.k8s.core.v1.pods.list",
                "core/v1/namespaces/default/pods",
                ("list", "pods", "", "default", ""),
            ),
            // The namespace object itself.
            (
                "io.k8s.core.v1.namespaces.delete",
                "core/v1/namespaces/team-a",
                ("delete", "namespaces", "", "", "team-a"),
            ),
            // Exec logged as get (kubectl 1.30+), resourceName without the subresource.
            (
                "io.k8s.core.v1.pods.exec.get",
                "core/v1/namespaces/shop/pods/web-1",
                ("get", "pods", "exec", "shop", "web-1"),
            ),
            // A non-resource URL: no resource.
            ("io.k8s.readyz", "/readyz", ("readyz", "", "", "", "")),
        ] {
            let e = format!(
                r#"{{"protoPayload":{{"methodName":"{method}","resourceName":"{name}"}}}}"#
            );
            let got = gke_event(e.as_bytes()).unwrap();
            let f = crate::detect::audit::extract(&got).unwrap();
            assert_eq!(
                (
                    &*f.verb,
                    &*f.resource,
                    &*f.subresource,
                    &*f.namespace,
                    &*f.name
                ),
                want,
                "{method} {name}"
            );
        }
        // The opening entry of a long-running operation does not count twice.
        let first = r#"{"operation":{"first":true,"id":"x"},"protoPayload":{"methodName":"io.k8s.core.v1.pods.exec.create"}}"#;
        let f = gke_event(first.as_bytes()).unwrap();
        assert_eq!(
            &*crate::detect::audit::extract(&f).unwrap().stage,
            "ResponseStarted"
        );
        // Another service's entry is not an audit event.
        let gce = r#"{"protoPayload":{"methodName":"v1.compute.instances.insert","serviceName":"compute.googleapis.com"}}"#;
        assert!(matches!(
            gke_event(gce.as_bytes()),
            Err(Unreadable::NotAudit { .. })
        ));
    }

    #[test]
    fn a_gcloud_array_element_by_element_whatever_the_chunks() {
        let entry = |n: u32| {
            format!(
                "  {{\n    \"insertId\": \"id-{n}\",\n    \"protoPayload\": {{\n      \"methodName\": \"io.k8s.core.v1.secrets.get\",\n      \"resourceName\": \"core/v1/namespaces/n/secrets/s{n}\"\n    }}\n  }}"
            )
        };
        let doc = format!("[\n{},\n{}\n]\n", entry(1), entry(2));
        let got = collect(doc.as_bytes(), Format::Gke);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].contains("\"auditID\":\"id-1\"") && got[1].contains("s2"),
            "{got:?}"
        );
        // Seven bytes per read: the same.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(7).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut src = CloudSource::new(Trickle(doc.as_bytes()), 1 << 20, Format::Auto);
        let mut n = 0;
        while let Next::Record(r) = src.next() {
            assert_eq!(String::from_utf8_lossy(r.bytes), got[n]);
            n += 1;
        }
        assert_eq!(n, 2);
        // gcloud killed before `]`: the elements read stand, the rest is said to be missing.
        let cut = &doc[..doc.rfind(']').unwrap()];
        assert_eq!(collect(cut.as_bytes(), Format::Auto)[2], "!malformed");
    }

    #[test]
    fn unknown_records_are_skipped_and_lines_keep_their_old_meaning() {
        let input = format!("{{\"foo\":1}}\n\nnot json\n{EV}\n");
        assert_eq!(
            collect(input.as_bytes(), Format::Auto),
            ["!unknown_format", "", "not json", EV]
        );
        // An array of something else than records is a line like any other (malformed).
        assert_eq!(collect(b"[1,2,3]\n", Format::Auto), ["[1,2,3]"]);
        // A GKE entry where only AKS is asked for.
        assert_eq!(
            collect(
                br#"{"protoPayload":{"methodName":"io.k8s.core.v1.pods.get"}}"#,
                Format::Aks
            ),
            ["!unknown_format"]
        );
    }

    /// Fuzz finding: a line over the cap inside a document ends it, after the records before.
    #[test]
    fn a_document_line_over_the_cap_ends_the_document_in_order() {
        let mut msg = String::new();
        write_str(&mut msg, EV);
        let doc = format!(
            "{{\n  \"events\": [\n    {{\"message\": {msg}}},\n    {{\"message\": \"{}\"}}\n  ]\n}}\n{EV}\n",
            "x".repeat(3000)
        );
        let mut src = CloudSource::new(doc.as_bytes(), 1024, Format::Auto);
        let mut got = Vec::new();
        loop {
            match src.next() {
                Next::Record(r) => {
                    got.push((r.start, String::from_utf8_lossy(r.bytes).into_owned()))
                }
                Next::Skipped { start, why, .. } => {
                    got.push((start, format!("!{}", crate::pipeline::drop_reason(&why))))
                }
                Next::Idle => panic!("a slice is never idle"),
                Next::End => break,
            }
        }
        let texts: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(texts[0], EV);
        assert_eq!(texts[1], "!over_max_line");
        assert_eq!(texts.last(), Some(&EV));
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "{got:?}");
    }

    #[test]
    fn the_input_spec_keeps_what_the_audit_spec_keeps() {
        use crate::detect::audit::{EVENT_SPEC, ITEM_SPEC};
        for (name, _) in EVENT_SPEC.iter().chain(ITEM_SPEC.iter()) {
            assert!(INPUT_SPEC.iter().any(|(n, _)| n == name), "{name}");
            if *name != "items" {
                assert!(INPUT_ITEM_SPEC.iter().any(|(n, _)| n == name), "{name}");
            }
        }
    }
}
