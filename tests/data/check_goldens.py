#!/usr/bin/env python3
"""Checks the detection goldens against an oracle written independently of src/ (CI runs it).

The oracle is ../shared/tools/gen.py's faithful Python port of the Go agent's engine
(match_rule, normalise_workload_name, its template tokens) plus the fixes our agent documents
(README "Rules", ARCHITECTURE.md "Detect", src/event.rs limits):

  1. config.ignore_namespaces, K8S_NAMESPACE (unset here) and per-rule ignore_namespaces are
     applied (exact names; an event without a namespace is never excluded).
  2. `annotation` also matches requestObject.metadata.annotations (kubectl annotate).
  3. entity refs mapped onto the backend's alphabet ([A-Za-z0-9_-] namespace, plus '.' in the
     workload; anything else becomes '-'), namespace <= 63 and the whole ref <= 200 characters,
     empty parts become default/unknown.
  4. control characters stripped from every value in the description (Go: only the actor),
     description <= 500, actor <= 200 characters.
  5. timestamp: requestReceivedTimestamp when it is ISO 8601 (YYYY-MM-DDTHH:MM:SS[.frac] and
     Z or +-HH:MM, fields in range) and <= 40 characters, else now ("<now>" in the goldens).
  6. payloads also carry namespace and service.
  7. one act, one event (issue 16): `subresources: [..]` limits a rule to those subresources,
     "" meaning none (our config-drift: the object itself or its scale, not pods/exec or
     pods/portforward); `subresource: ""` means no subresource.
and the agent's reading of a line (ARCHITECTURE.md "Parse", docs/reading.md), where the Go
agent dropped lines:
  7. blank lines (spaces, tabs, CR) give nothing; a line that is not one JSON object (invalid,
     truncated, trailing data, NaN) gives nothing; an unpaired UTF-16 surrogate escape reads as
     U+FFFD (as Go's decoder reads it); nesting deeper than 10 001 containers costs the line
     only when it is inside a field the rules read (elsewhere it is skipped, docs/reading.md);
  8. invalid UTF-8 becomes U+FFFD, one per bad byte; a field of the wrong type reads as empty
     (never a reason to drop the line); the last of duplicated keys wins;
  9. a line that is an EventList (kind "EventList" with an items array) has each item evaluated
     in order (an item that is not an object gives nothing).

Strict: every line of every golden input is judged (nothing is skipped), every event of every
golden is compared (all fields, in order) and so are the counts; the goldens together must
contain an event of every rule of tests/data/rules-all-enabled.yaml (rules.yaml with its
optional rules enabled), and every case of tests/data/edge.cases.txt must be a line of
edge.ndjson. The rules are read with PyYAML (a third YAML parser, neither ours nor
yaml-rust2) and must mean exactly what the Go agent's file with all rules enabled means, as
read by gen.py's port of the Go parser: a rule changed in rules.yaml fails here even when the
goldens were regenerated with it.

Run from the repository root with a Python that has PyYAML (CI: the venv of .ci/lint):
    python3 tests/data/check_goldens.py          exit 0: all equal; 1: a difference; 2: cannot run
Needs ../shared (gen.py and the Go agent's rules file): without it, exit 2 with the reason.
"""
import codecs
import json
import os
import re
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
# ../shared beside the repository, or where HEALERT_SHARED_DIR says (as for the tests).
SHARED = os.environ.get("HEALERT_SHARED_DIR") or os.path.join(ROOT, "..", "shared")
GO_RULES_ALL = os.path.join(SHARED, "compat", "healert-go-rules-all-enabled.yaml")
OUR_RULES_ALL = os.path.join(DATA, "rules-all-enabled.yaml")
MAX_DEPTH = 10001


def cannot_run(why):
    print("check_goldens: cannot run: " + why, file=sys.stderr)
    sys.exit(2)


if not os.path.isfile(os.path.join(SHARED, "tools", "gen.py")) or not os.path.isfile(GO_RULES_ALL):
    cannot_run("../shared (tools/gen.py, compat/healert-go-rules-all-enabled.yaml) is absent")
try:
    import yaml  # PyYAML
except ImportError:
    cannot_run("PyYAML is not installed (use the venv of .ci/lint: target/ci-venv/bin/python)")
sys.path.insert(0, os.path.join(SHARED, "tools"))
import gen  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Rules.

def our_rules(path):
    """Our rules file read with PyYAML, in gen.py's rule shape (plus ignore_namespaces)."""
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    out = []
    for r in doc["rules"]:
        m = r.get("match") or {}
        out.append({"name": r["name"], "description": r.get("description", ""), "severity": r["severity"],
                    "workflow": r["workflow"], "ignore_system": r.get("ignore_system", False) is True,
                    "match": {"resource": m.get("resource", ""), "resources": list(m.get("resources", [])),
                              "subresource": m.get("subresource", ""), "verb": m.get("verb", ""),
                              "verbs": list(m.get("verbs", [])), "annotation": m.get("annotation", ""),
                              "namespace_contains": m.get("namespace_contains", "")},
                    "subresources": [str(x) for x in m.get("subresources", [])],
                    "no_subresource": "subresource" in m and m["subresource"] == "",
                    "ignore_namespaces": list(m.get("ignore_namespaces", []))})
    ignore = list((doc.get("config") or {}).get("ignore_namespaces") or [])
    return out, ignore


RULES, IGNORE = our_rules(OUR_RULES_ALL)


def check_rules_against_the_go_file():
    """Our 16 rules mean what the Go agent's 16 rules mean (gen.py's port of its parser)."""
    text = open(GO_RULES_ALL, encoding="utf-8").read()
    go = gen.parse_rules_yaml(text)
    go_ignore = gen.parse_ignore_namespaces(text)
    # The one documented change of meaning (fix 7); without it, ours must equal Go's.
    documented = {"config-drift": ["", "scale"]}
    problems = []
    for r in RULES:
        want = documented.get(r["name"], [])
        if r["subresources"] != want or r["no_subresource"]:
            problems.append("rule %s: subresources %s, documented %s" % (r["name"], r["subresources"], want))
    dropped = ("ignore_namespaces", "subresources", "no_subresource")
    ours = [{k: v for k, v in r.items() if k not in dropped} for r in RULES]
    if [r["name"] for r in ours] != [r["name"] for r in go]:
        problems.append("rule names/order: ours %s, Go %s" % ([r["name"] for r in ours], [r["name"] for r in go]))
    else:
        for a, b in zip(ours, go):
            if a != b:
                problems.append("rule %s differs:\n    ours %s\n    Go   %s" % (a["name"], a, b))
    if any(r["ignore_namespaces"] for r in RULES):
        problems.append("a rule of ours has ignore_namespaces, which the Go file has not")
    if IGNORE != go_ignore:
        problems.append("config.ignore_namespaces: ours %s, Go %s" % (IGNORE, go_ignore))
    return problems


# ---------------------------------------------------------------------------------------------
# Reading a line as the agent does.

def per_byte_replace(err):
    return ("\ufffd" * (err.end - err.start), err.end)


codecs.register_error("healert_per_byte", per_byte_replace)


class NotJson(Exception):
    pass


def depth(text):
    """Deepest container nesting of JSON text (brackets inside strings do not count)."""
    d = best = 0
    in_str = esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            d += 1
            best = max(best, d)
        elif c in "]}":
            d -= 1
    return best


def has_surrogate(v):
    if isinstance(v, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, list):
        return any(has_surrogate(x) for x in v)
    if isinstance(v, dict):
        return any(has_surrogate(k) or has_surrogate(x) for k, x in v.items())
    return False


def no_constants(name):
    raise NotJson("%s is not JSON" % name)


def lone_to_fffd(v):
    """Lone surrogates (Python keeps them as such) become U+FFFD, keys included."""
    if isinstance(v, str):
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in v)
    if isinstance(v, list):
        return [lone_to_fffd(x) for x in v]
    if isinstance(v, dict):
        return {lone_to_fffd(k): lone_to_fffd(x) for k, x in v.items()}
    return v


READ_FIELDS = ("kind", "stage", "verb", "auditID", "requestReceivedTimestamp", "user", "objectRef",
               "annotations", "requestObject", "responseObject", "items")


def parse(text):
    """One JSON value (RFC 8259: NaN/Infinity refused). Deeper than MAX_DEPTH only where the
    rules read costs the line."""
    too_deep = depth(text) > MAX_DEPTH
    try:
        v = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        raise NotJson(str(e))
    if too_deep:
        if not isinstance(v, dict):
            raise NotJson("nesting deeper than %d" % MAX_DEPTH)
        read = {"user": obj(v.get("user")).get("username"), "objectRef": v.get("objectRef"),
                "annotations": v.get("annotations"),
                "req": obj(obj(v.get("requestObject")).get("metadata")).get("annotations"),
                "resp": obj(obj(v.get("responseObject")).get("metadata")).get("annotations"),
                "items": v.get("items")}
        for k in ("kind", "stage", "verb", "auditID", "requestReceivedTimestamp"):
            read[k] = v.get(k)
        for name, x in read.items():
            if depth(json.dumps(x)) > MAX_DEPTH - 3:
                raise NotJson("nesting deeper than %d in %s" % (MAX_DEPTH, name))
    return lone_to_fffd(v)


def obj(v):
    return v if isinstance(v, dict) else {}


def s(v):
    return v if isinstance(v, str) else ""


def fields(ev):
    """The audit event with only the fields the engine reads; wrong types read as empty."""
    ref = obj(ev.get("objectRef"))

    def annotations(v):
        return {k: x for k, x in obj(v).items() if isinstance(x, str)}

    return {"stage": s(ev.get("stage")), "verb": s(ev.get("verb")),
            "user": {"username": s(obj(ev.get("user")).get("username"))},
            "objectRef": {k: s(ref.get(k)) for k in ("resource", "subresource", "namespace", "name")},
            "annotations": annotations(ev.get("annotations")),
            "responseObject": {"metadata": {"annotations": annotations(
                obj(obj(ev.get("responseObject")).get("metadata")).get("annotations"))}},
            "requestAnnotations": annotations(
                obj(obj(ev.get("requestObject")).get("metadata")).get("annotations")),
            "requestReceivedTimestamp": s(ev.get("requestReceivedTimestamp"))}


# ---------------------------------------------------------------------------------------------
# The engine: gen.py's port of Go plus the documented fixes.

ISO = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def iso8601(ts):
    m = ISO.match(ts)
    if not m or len(ts) > 40:
        return False
    mo, d, h, mi, se = (int(m.group(i)) for i in range(2, 7))
    return 1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and se <= 60


def strip(v):
    return "".join(c for c in v if ord(c) >= 0x20 and ord(c) != 0x7F)


def entity_part(v, dot, mx, empty):
    out = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" or (dot and c == ".") else "-" for c in v[:mx])
    return out or empty


def matches(rule, f):
    ns = f["objectRef"]["namespace"]
    if ns and ns in rule["ignore_namespaces"]:
        return False
    sub = f["objectRef"]["subresource"]
    if rule["subresources"] and sub not in rule["subresources"]:
        return False
    if rule["no_subresource"] and sub:
        return False
    if gen.match_rule(rule, f):
        return True
    ann = rule["match"]["annotation"]
    if not ann:
        return False
    k, _, v = ann.partition("=")
    loose = dict(rule, match=dict(rule["match"], annotation=""))
    return f["requestAnnotations"].get(k) == v and gen.match_rule(loose, f)


def events_of(ev):
    """The payloads for one audit event (a dict)."""
    f = fields(ev)
    if f["stage"] != "ResponseComplete":
        return []
    ref = f["objectRef"]
    ns = ref["namespace"]
    if ns and ns in IGNORE:
        return []
    user = f["user"]["username"]
    vals = {"{actor}": strip(user), "{resource}": strip(ref["resource"]), "{namespace}": strip(ns),
            "{name}": strip(ref["name"]), "{verb}": strip(f["verb"])}
    ens = entity_part(ns or "default", False, 63, "default")
    raw = ref["name"] or ref["resource"]
    wl = entity_part(gen.normalise_workload_name(raw), True, 200 - 11 - len(ens), "unknown")
    ts = f["requestReceivedTimestamp"]
    ts = ts if iso8601(ts) else "<now>"
    out = []
    for r in RULES:
        if matches(r, f):
            out.append({"entity_ref": "component:%s/%s" % (ens, wl), "type": r["name"], "severity": r["severity"],
                        "actor": strip(user)[:200], "workflow": r["workflow"],
                        "description": strip(gen._TOK.sub(lambda mo: vals[mo.group(0)], r["description"]))[:500],
                        "timestamp": ts, "namespace": ens, "service": wl})
    return out


def events_of_line(raw):
    """(payloads, what the line is) for one line without its newline."""
    text = raw.decode("utf-8", errors="healert_per_byte")
    if text.strip(" \t\r\n") == "":
        return [], "blank"
    try:
        v = parse(text)
    except NotJson as e:
        return [], "malformed (%s)" % str(e)[:60]
    if not isinstance(v, dict):
        return [], "malformed (not an object)"
    if v.get("kind") == "EventList" and isinstance(v.get("items"), list):
        out = []
        for item in v["items"]:
            if isinstance(item, dict):
                out.extend(events_of(item))
        return out, "EventList of %d items" % len(v["items"])
    return events_of(v), "event"


# ---------------------------------------------------------------------------------------------

def golden_pairs():
    pairs = [(os.path.join(DATA, p + ".ndjson"), os.path.join(DATA, p + ".events.jsonl"))
             for p in ("gen-mix", "edge", "sample/audit")]
    samples = os.path.join(DATA, "audit-samples")
    for name in sorted(os.listdir(samples)):
        if name.endswith(".ndjson") or name.endswith(".json"):
            stem = name.rsplit(".", 1)[0]
            pairs.append((os.path.join(samples, name), os.path.join(DATA, "samples", stem + ".events.jsonl")))
    return pairs


def main():
    problems = ["rules: " + p for p in check_rules_against_the_go_file()]
    fired = set()
    pairs = golden_pairs()
    if len(pairs) != 11:
        problems.append("expected 3 generated/edge inputs and 8 vendored samples, found %d inputs" % len(pairs))
    total = 0
    for inp, exp in pairs:
        name = os.path.relpath(inp, DATA)
        ours = [json.loads(l) for l in open(exp, encoding="utf-8")]
        data = open(inp, "rb").read()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the last line's newline
        first = next((l.strip() for l in lines if l.strip()), b"")
        if first == b"{" or (first.startswith(b"{") and b'"EventList"' in first and not first.endswith(b"}")):
            problems.append("%s: starts a multi-line document, which this oracle does not model" % name)
        want, origin, kinds = [], [], {}
        for n, raw in enumerate(lines, 1):
            evs, what = events_of_line(raw)
            kinds[what.split(" (")[0]] = kinds.get(what.split(" (")[0], 0) + 1
            want.extend(evs)
            origin.extend([n] * len(evs))
        fired.update(e["type"] for e in want)
        for i, (a, b) in enumerate(zip(want, ours)):
            if a != b:
                problems.append("%s: event %d (from line %d) differs:\n    oracle %s\n    golden %s"
                                % (name, i + 1, origin[i], json.dumps(a), json.dumps(b)))
                break
        if len(want) != len(ours):
            problems.append("%s: the oracle gives %d events, the golden holds %d" % (name, len(want), len(ours)))
        total += len(want)
        print("%-75s %4d lines %4d events (%s)" % (name, len(lines), len(want),
                                                   ", ".join("%s %d" % kv for kv in sorted(kinds.items()))))
    missing = [r["name"] for r in RULES if r["name"] not in fired]
    if missing:
        problems.append("no golden event of rule(s) %s: every rule of rules.yaml must be pinned" % missing)
    if len(RULES) != 16:
        problems.append("rules-all-enabled.yaml has %d rules, expected rules.yaml's 5 + 11 optional" % len(RULES))
    cases = [l for l in open(os.path.join(DATA, "edge.cases.txt"), encoding="utf-8") if not l.startswith("#")]
    edge_lines = open(os.path.join(DATA, "edge.ndjson"), "rb").read().count(b"\n")
    if len(cases) != edge_lines:
        problems.append("edge.cases.txt names %d cases, edge.ndjson has %d lines" % (len(cases), edge_lines))
    for p in problems:
        print("FAIL " + p)
    print("check_goldens: %d events in %d goldens, %d rules fired, %d edge cases: %s"
          % (total, len(pairs), len(fired), len(cases), "FAILED" if problems else "all equal"))
    EXIT[0] = 1 if problems else 0


EXIT = [2]

if __name__ == "__main__":
    # json nests one C call per level: 10 001 levels need a deeper limit and a stack to match.
    sys.setrecursionlimit(50000)
    threading.stack_size(512 << 20)
    t = threading.Thread(target=main)
    t.start()
    t.join()
    sys.exit(EXIT[0])
