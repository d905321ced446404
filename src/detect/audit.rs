//! One `audit.k8s.io/v1` Event line → the few fields detection needs ([`AuditFields`]).
//!
//! [`extract`] walks the line once with the [`crate::json`] scanner: it decodes only the
//! fields the engine uses, validates and skips everything else (requestObject/responseObject
//! can be megabytes) without allocating, and remembers the three annotation maps as byte spans
//! that [`AuditFields::annotation_is`] looks into only when a rule asks. A field that is
//! missing, null or of another type is empty — never an error for the whole line; a
//! duplicated key's last value wins (also for whole objects such as `objectRef`).

use std::borrow::Cow;

use crate::detect::json::{ErrorKind, JsonError, Peek, Scanner};
use crate::source::prune::{Keep, Spec};

/// A pruner spec ([`Spec`]) that keeps what [`extract`] reads of an audit event, then the
/// members given: the one list of an event's members, for every spec that keeps events (here,
/// and `crate::detect::cloud`'s, which adds the cloud envelopes' members).
macro_rules! event_spec {
    ($($extra:expr),* $(,)?) => {
        &[
            ("kind", $crate::source::prune::Keep::Value),
            ("stage", $crate::source::prune::Keep::Value),
            ("verb", $crate::source::prune::Keep::Value),
            ("auditID", $crate::source::prune::Keep::Value),
            ("requestReceivedTimestamp", $crate::source::prune::Keep::Value),
            ("user", $crate::source::prune::Keep::Members($crate::detect::audit::USER)),
            ("objectRef", $crate::source::prune::Keep::Members($crate::detect::audit::OBJECT_REF)),
            ("annotations", $crate::source::prune::Keep::Value),
            ("requestObject", $crate::source::prune::Keep::Search($crate::detect::audit::BODY)),
            ("responseObject", $crate::source::prune::Keep::Search($crate::detect::audit::BODY)),
            $($extra,)*
        ]
    };
}
pub(crate) use event_spec;

/// What [`extract`] reads of an audit event, as a [`crate::source::prune::Pruner`] spec: the
/// members a streamed or damaged record keeps (everything else is skipped as it passes).
pub static EVENT_SPEC: &Spec = event_spec!(("items", Keep::Records(ITEM_SPEC)));

/// An `EventList` item: an event (items are not lists themselves: no `items`).
pub static ITEM_SPEC: &Spec = event_spec!();

/// The container kind whose `items` are events.
pub const EVENT_LIST: &str = "EventList";

/// `user`, `objectRef` and request/response bodies as the specs above keep them (the cloud
/// inputs' spec, `crate::detect::cloud`, keeps them the same way).
pub static USER: &Spec = &[("username", Keep::Value)];
pub static OBJECT_REF: &Spec = &[
    ("resource", Keep::Value),
    ("subresource", Keep::Value),
    ("namespace", Keep::Value),
    ("name", Keep::Value),
];
pub static BODY: &Spec = &[("metadata", Keep::Search(METADATA))];
static METADATA: &Spec = &[("annotations", Keep::Value)];

/// The fields of one audit event that detection uses. Strings borrow from the line unless
/// they held escapes or invalid UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFields<'a> {
    /// `kind`: "Event", or "EventList" for a list document (see [`items`]).
    pub kind: Cow<'a, str>,
    pub stage: Cow<'a, str>,
    pub verb: Cow<'a, str>,
    /// `user.username`.
    pub username: Cow<'a, str>,
    /// `objectRef.*`.
    pub resource: Cow<'a, str>,
    pub subresource: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub request_received_timestamp: Cow<'a, str>,
    pub audit_id: Cow<'a, str>,
    /// The raw (validated) JSON objects of `annotations`,
    /// `responseObject.metadata.annotations` and `requestObject.metadata.annotations`.
    pub annotations: Option<&'a [u8]>,
    pub response_annotations: Option<&'a [u8]>,
    pub request_annotations: Option<&'a [u8]>,
    /// The raw `items` array of an EventList document.
    pub items: Option<&'a [u8]>,
}

impl AuditFields<'_> {
    /// Whether annotation `key` equals `value` in any of the three annotation maps.
    pub fn annotation_is(&self, key: &str, value: &str) -> bool {
        [
            self.annotations,
            self.response_annotations,
            self.request_annotations,
        ]
        .into_iter()
        .flatten()
        .any(|map| lookup(map, key).as_deref() == Some(value))
    }
}

/// The string value of `key` in a raw JSON object (the last one if duplicated), or `None` when
/// absent or not a string.
pub fn lookup<'a>(object: &'a [u8], key: &str) -> Option<Cow<'a, str>> {
    let mut s = Scanner::new(object);
    let mut found = None;
    s.begin_object().ok()?;
    let mut first = true;
    while let Some(k) = s.next_key(first).ok()? {
        first = false;
        if k == key {
            found = match s.peek().ok()? {
                Peek::String => Some(s.string().ok()?),
                _ => {
                    s.skip_value(0).ok()?;
                    None
                }
            };
        } else {
            s.skip_value(0).ok()?;
        }
    }
    found
}

/// Parses one audit line (trailing whitespace allowed). Errors: not valid JSON, or valid JSON
/// that is not an object.
pub fn extract(line: &[u8]) -> Result<AuditFields<'_>, JsonError> {
    let mut s = Scanner::new(line);
    let mut f = AuditFields::default();
    match s.peek() {
        Ok(Peek::Object) => {}
        Ok(_) => {
            // Valid JSON of another type is "not an object"; invalid JSON reports its error.
            s.skip_value(0)?;
            s.finish()?;
            return Err(JsonError {
                kind: ErrorKind::NotAnObject,
                offset: 0,
                line: 1,
                column: 1,
            });
        }
        Err(_) => return Err(s.err(ErrorKind::Empty)),
    }
    s.begin_object()?;
    let mut first = true;
    while let Some(key) = s.next_key_bytes(first)? {
        first = false;
        match &*key {
            b"kind" => f.kind = s.string_or_empty(1)?,
            b"stage" => f.stage = s.string_or_empty(1)?,
            b"verb" => f.verb = s.string_or_empty(1)?,
            b"auditID" => f.audit_id = s.string_or_empty(1)?,
            b"requestReceivedTimestamp" => f.request_received_timestamp = s.string_or_empty(1)?,
            b"user" => {
                f.username = Cow::Borrowed("");
                object_members(&mut s, 1, |s, k| {
                    if k == b"username" {
                        f.username = s.string_or_empty(2)?;
                        Ok(true)
                    } else {
                        Ok(false)
                    }
                })?;
            }
            b"objectRef" => {
                f.resource = Cow::Borrowed("");
                f.subresource = Cow::Borrowed("");
                f.namespace = Cow::Borrowed("");
                f.name = Cow::Borrowed("");
                object_members(&mut s, 1, |s, k| {
                    let slot = match k {
                        b"resource" => &mut f.resource,
                        b"subresource" => &mut f.subresource,
                        b"namespace" => &mut f.namespace,
                        b"name" => &mut f.name,
                        _ => return Ok(false),
                    };
                    *slot = s.string_or_empty(2)?;
                    Ok(true)
                })?;
            }
            b"annotations" => f.annotations = object_span(&mut s, 1)?,
            b"responseObject" => f.response_annotations = metadata_annotations(&mut s)?,
            b"requestObject" => f.request_annotations = metadata_annotations(&mut s)?,
            b"items" => {
                let (a, b) = s.skip_value(1)?;
                f.items = (line[a] == b'[').then_some(&line[a..b]);
            }
            _ => {
                s.skip_value(1)?;
            }
        }
    }
    s.finish()?;
    Ok(f)
}

/// Walks the object at the cursor (opened at `depth` containers), handing each key to `on`,
/// which consumes the value and returns true, or returns false to have it skipped. A value
/// that is not an object is skipped whole.
fn object_members<'a>(
    s: &mut Scanner<'a>,
    depth: usize,
    mut on: impl FnMut(&mut Scanner<'a>, &[u8]) -> Result<bool, JsonError>,
) -> Result<(), JsonError> {
    if s.peek()? != Peek::Object {
        s.skip_value(depth)?;
        return Ok(());
    }
    s.begin_object()?;
    let mut first = true;
    while let Some(k) = s.next_key_bytes(first)? {
        first = false;
        if !on(s, &k)? {
            s.skip_value(depth + 1)?;
        }
    }
    Ok(())
}

/// The span of the value at the cursor if it is an object.
fn object_span<'a>(s: &mut Scanner<'a>, depth: usize) -> Result<Option<&'a [u8]>, JsonError> {
    let (a, b) = s.skip_value(depth)?;
    let input = s.input();
    Ok((input[a] == b'{').then_some(&input[a..b]))
}

/// `X.metadata.annotations` of the requestObject/responseObject at the cursor.
fn metadata_annotations<'a>(s: &mut Scanner<'a>) -> Result<Option<&'a [u8]>, JsonError> {
    let mut found = None;
    object_members(s, 1, |s, k| {
        if k != b"metadata" {
            return Ok(false);
        }
        found = None;
        object_members(s, 2, |s, k| {
            if k == b"annotations" {
                found = object_span(s, 3)?;
                Ok(true)
            } else {
                Ok(false)
            }
        })?;
        Ok(true)
    })?;
    Ok(found)
}

/// The byte spans of the values of a raw JSON array (as found in [`AuditFields::items`]).
pub fn items(array: &[u8]) -> Result<Vec<&[u8]>, JsonError> {
    let mut s = Scanner::new(array);
    let mut out = Vec::new();
    s.begin_array()?;
    let mut first = true;
    while s.next_item(first)? {
        first = false;
        let (a, b) = s.skip_value(1)?;
        out.push(&array[a..b]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_every_field() {
        let line = br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete","requestURI":"/x","verb":"patch","user":{"username":"alice","groups":["g"]},"objectRef":{"resource":"deployments","namespace":"prod","name":"api","apiGroup":"apps","subresource":"scale"},"requestObject":{"metadata":{"annotations":{"k":"req"}}},"responseObject":{"kind":"Deployment","metadata":{"name":"api","annotations":{"k":"resp","n":1}},"spec":{"x":[1,2,{"y":null}]}},"requestReceivedTimestamp":"2025-01-01T00:00:00.000001Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#;
        let f = extract(line).unwrap();
        assert_eq!(
            (
                &*f.kind,
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
                "Event",
                "ResponseComplete",
                "patch",
                "alice",
                "deployments",
                "scale",
                "prod",
                "api",
                "a-1",
                "2025-01-01T00:00:00.000001Z"
            )
        );
        assert!(f.annotation_is("k", "req"));
        assert!(f.annotation_is("k", "resp"));
        assert!(f.annotation_is("authorization.k8s.io/decision", "allow"));
        assert!(!f.annotation_is("k", "other"));
        assert!(!f.annotation_is("n", "1"));
        assert!(matches!(f.verb, Cow::Borrowed(_)));
    }

    #[test]
    fn wrong_types_are_empty_and_last_key_wins() {
        let f = extract(br#"{"stage":"ResponseStarted","stage":"ResponseComplete","verb":7,"user":"bob","objectRef":{"name":"a","resource":"pods"},"objectRef":{"name":"b"},"annotations":[1],"responseObject":{"metadata":{"annotations":{"k":"v"}},"metadata":null}}"#).unwrap();
        assert_eq!(&*f.stage, "ResponseComplete");
        assert_eq!(&*f.verb, "");
        assert_eq!(&*f.username, "");
        assert_eq!((&*f.name, &*f.resource), ("b", ""));
        assert_eq!(f.annotations, None);
        assert_eq!(f.response_annotations, None);
        let f = extract(br#"{"annotations":{"k":"a","k":"b"}}"#).unwrap();
        assert!(f.annotation_is("k", "b") && !f.annotation_is("k", "a"));
    }

    #[test]
    fn escaped_keys_and_values_decode() {
        let f =
            extract(br#"{"st\u0061ge":"Response\u0043omplete","user":{"username":"a\u0026b"}}"#)
                .unwrap();
        assert_eq!(&*f.stage, "ResponseComplete");
        assert_eq!(&*f.username, "a&b");
    }

    #[test]
    fn rejects_invalid_and_non_objects() {
        for bad in [
            &b""[..],
            b"   ",
            b"[1]",
            b"\"x\"",
            b"{\"a\":1",
            b"{\"a\":1}}",
            b"{\"a\":[1,]}",
            b"{\"stage\":\"x\"} {}",
        ] {
            assert!(extract(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(extract(b"[1]").unwrap_err().kind, ErrorKind::NotAnObject);
        assert!(extract(b"{\"kind\": 0}").is_ok());
    }

    #[test]
    fn deep_request_object_does_not_hide_the_event() {
        let depth = crate::detect::json::MAX_DEPTH - 1;
        let line = format!(
            r#"{{"stage":"ResponseComplete","requestObject":{}{},"verb":"create"}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let f = extract(line.as_bytes()).unwrap();
        assert_eq!(&*f.verb, "create");
        let line = format!(
            r#"{{"stage":"ResponseComplete","requestObject":{}{}}}"#,
            "[".repeat(depth + 1),
            "]".repeat(depth + 1)
        );
        assert_eq!(
            extract(line.as_bytes()).unwrap_err().kind,
            ErrorKind::TooDeep
        );
    }

    #[test]
    fn event_list_items() {
        let doc = b"{\"kind\":\"EventList\",\"items\":[{\"verb\":\"get\"},\n {\"verb\":\"list\"}]}";
        let f = extract(doc).unwrap();
        assert_eq!(&*f.kind, "EventList");
        let it = items(f.items.unwrap()).unwrap();
        assert_eq!(it.len(), 2);
        assert_eq!(&*extract(it[1]).unwrap().verb, "list");
    }
}

#[cfg(test)]
mod surrogate_tests {
    use super::*;
    use crate::source::prune::{prune_all, Caps};

    /// A lone surrogate escape in any string, read or skipped, never costs the event: it reads
    /// as U+FFFD where the engine reads it, and the line is evaluated whole, not recovered.
    #[test]
    fn lone_surrogates_in_every_string_position() {
        let base = r#"{"kind":"Event","auditID":"A","stage":"ResponseComplete","verb":"patch","user":{"username":"U","groups":["G"]},"objectRef":{"resource":"R","subresource":"S","namespace":"N","name":"M"},"requestReceivedTimestamp":"T","annotations":{"K":"V"},"requestObject":{"metadata":{"annotations":{"B":"X"}},"spec":"Q"},"responseObject":{"metadata":{"annotations":{"C":"Y"}}},"sourceIPs":["I"]}"#;
        for lone in [r"\udc00", r"\ud800", r"\ud83d\u0041", r"\udfff\udfff"] {
            for slot in [
                "A", "U", "G", "R", "S", "N", "M", "T", "K", "V", "B", "X", "Q", "C", "Y", "I",
            ] {
                let line = base.replacen(&format!("\"{slot}\""), &format!("\"{slot}{lone}\""), 1);
                let f = extract(line.as_bytes()).unwrap_or_else(|e| panic!("{slot} {lone}: {e}"));
                let want = |s: &str| {
                    if s == slot {
                        let tail = if lone == r"\ud83d\u0041" {
                            "\u{FFFD}A"
                        } else if lone == r"\udfff\udfff" {
                            "\u{FFFD}\u{FFFD}"
                        } else {
                            "\u{FFFD}"
                        };
                        format!("{s}{tail}")
                    } else {
                        s.to_string()
                    }
                };
                assert_eq!(f.audit_id, want("A"), "{slot}");
                assert_eq!(f.username, want("U"), "{slot}");
                assert_eq!(
                    (&*f.resource, &*f.subresource, &*f.namespace, &*f.name),
                    (&*want("R"), &*want("S"), &*want("N"), &*want("M")),
                    "{slot}"
                );
                assert_eq!(f.request_received_timestamp, want("T"), "{slot}");
                assert!(f.annotation_is(&want("K"), &want("V")), "{slot}");
                assert!(f.annotation_is(&want("B"), &want("X")), "{slot}");
                assert!(f.annotation_is(&want("C"), &want("Y")), "{slot}");
                // The pruned record (streamed or recovered lines) reads the same.
                let all = prune_all(line.as_bytes(), EVENT_SPEC, EVENT_LIST, Caps::default());
                assert!(all.end.is_ok(), "{slot}");
                let record = all.records[0].record.as_ref().unwrap();
                let p = extract(record).unwrap();
                assert_eq!(
                    (&p.username, &p.name, &p.request_received_timestamp),
                    (&f.username, &f.name, &f.request_received_timestamp),
                    "{slot}"
                );
                assert!(p.annotation_is(&want("B"), &want("X")), "{slot}");
            }
        }
    }
}
