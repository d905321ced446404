#!/usr/bin/env python3
"""Regenerates the hand-made test inputs of the detection tests (deterministic).

  tests/data/sample/audit.ndjson  the bundled sample log of the README's first command:
                                  gen.py traffic (all five generated kinds, human noise,
                                  system traffic) with hand-made calls interleaved for the
                                  kinds gen.py lacks, so every enabled and optional rule of
                                  rules.yaml fires (detect::bundled_sample_fires_every_rule).
                                  gen.py is given the Go agent's file with all 16 rules
                                  enabled (the same rules; its line-based parser reads only
                                  block lists, not rules.yaml's `[a, b]`).
  tests/data/edge.ndjson          one line per edge case (see CASES below).

Run from the repository root:  python3 tests/data/make_data.py
Then refresh the expected outputs:  HEALERT_UPDATE_GOLDEN=1 cargo test --test it detect::golden
and review the diff (see tests/it/detect.rs).
"""
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
RULES = os.path.join(SHARED, "compat", "healert-go-rules-all-enabled.yaml")

GROUP = {"deployments": "apps", "horizontalpodautoscalers": "autoscaling", "ingresses": "networking.k8s.io",
         "networkpolicies": "networking.k8s.io", "clusterroles": "rbac.authorization.k8s.io",
         "clusterrolebindings": "rbac.authorization.k8s.io", "roles": "rbac.authorization.k8s.io",
         "rolebindings": "rbac.authorization.k8s.io"}


def event(n, user, verb, resource, ns="", name="", sub="", stage="ResponseComplete", code=200,
          req=None, resp=None, ann=None, ts=True, ua="kubectl/v1.30.1 (darwin/arm64) kubernetes/6911225"):
    """One audit.k8s.io/v1 Event shaped like kube-apiserver's log backend writes it."""
    t = "2025-03-14T09:%02d:%02d.%06dZ" % (n // 60 % 60, n % 60, 1000 + n)
    uri = "/apis/%s/v1" % GROUP[resource] if resource in GROUP else "/api/v1"
    if ns:
        uri += "/namespaces/" + ns
    uri += "/" + resource + ("/" + name if name else "") + ("/" + sub if sub else "")
    ref = {"resource": resource}
    if ns:
        ref["namespace"] = ns
    if name:
        ref["name"] = name
    if resource in GROUP:
        ref["apiGroup"] = GROUP[resource]
    ref["apiVersion"] = "v1"
    if sub:
        ref["subresource"] = sub
    e = {"kind": "Event", "apiVersion": "audit.k8s.io/v1",
         "level": "RequestResponse" if (req or resp) else "Metadata",
         "auditID": "5e0f%04x-1c2d-4e5f-8a9b-%012x" % (n, n * 7919), "stage": stage, "requestURI": uri,
         "verb": verb, "user": {"username": user, "groups": ["system:authenticated"]},
         "sourceIPs": ["192.168.10.%d" % (n % 250 + 1)], "userAgent": ua, "objectRef": ref,
         "responseStatus": {"metadata": {}, "code": code}}
    if req is not None:
        e["requestObject"] = req
    if resp is not None:
        e["responseObject"] = resp
    if ts:
        e["requestReceivedTimestamp"] = t
    e["stageTimestamp"] = t.replace("Z", "1Z")
    e["annotations"] = ann or {"authorization.k8s.io/decision": "allow",
                               "authorization.k8s.io/reason": 'RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole "cluster-admin" to Group "system:masters"'}
    return e


def line(e):
    return json.dumps(e, separators=(",", ":"), ensure_ascii=False)


def sample_extras():
    """Hand-made calls for the rules gen.py never triggers, plus near misses."""
    b = "policy.admission.k8s.io/bypass"
    return [
        event(1, "alice@example.com", "patch", "horizontalpodautoscalers", "production", "payments-api",
              req={"spec": {"maxReplicas": 20}}),
        event(2, "bob.smith@corp.example", "delete", "secrets", "staging", "stripe-api-key"),
        event(3, "carol@example.com", "patch", "configmaps", "team-a", "checkout-config",
              req={"data": {"FEATURE_FLAG_NEW_CART": "true"}}),
        event(4, "kubernetes-admin", "create", "namespaces", "", "feature-x-preview", code=201,
              req={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "feature-x-preview"}}),
        event(5, "system:serviceaccount:openshift-infra:template-instance-controller", "create",
              "clusterrolebindings", "", "system:openshift:scc:privileged", code=201,
              ua="openshift-controller-manager/v0.0.0 (linux/amd64) kubernetes/$Format"),
        event(6, "erin", "patch", "rolebindings", "team-b", "developers-edit"),
        event(7, "system:admin", "patch", "nodes", "", "ip-10-0-1-7.ec2.internal",
              req={"spec": {"unschedulable": True}}),
        event(8, "frank@example.org", "update", "ingresses", "production", "storefront"),
        event(9, "oidc:dave", "delete", "networkpolicies", "payments", "deny-all-ingress"),
        event(10, "kubernetes-admin", "delete", "persistentvolumes", "", "pvc-3f1c9a2e-5b7d-4c1e-9f0a-2b6d8e4c7a91"),
        # kubectl annotate: the bypass annotation only in the patch body (requestObject).
        event(11, "alice@example.com", "patch", "deployments", "production", "payments-api",
              req={"metadata": {"annotations": {b: "true"}}}),
        event(12, "bob.smith@corp.example", "get", "secrets", "production-eu", "db-credentials"),
        event(13, "carol@example.com", "get", "pods", "team-a", "checkout-5d8f9c7b6d-x7k2p", sub="log"),
        event(18, "frank@example.org", "create", "pods", "staging", "postgres-0", sub="portforward", code=101),
        # Near misses: ignored namespace, controller, bypass=false, read of an HPA.
        event(14, "alice@example.com", "create", "pods", "kube-system", "coredns-5d78c9869d-abcde", sub="exec", code=101),
        event(15, "system:serviceaccount:kube-system:horizontal-pod-autoscaler", "update",
              "horizontalpodautoscalers", "production", "payments-api"),
        event(16, "erin", "patch", "deployments", "dev", "search",
              req={"metadata": {"annotations": {b: "false"}}}),
        event(17, "erin", "get", "horizontalpodautoscalers", "dev", "search"),
    ]


def make_sample():
    out = subprocess.run([sys.executable, os.path.join(SHARED, "tools", "gen.py"), "--rules", RULES,
                          "--lines", "170", "--seed", "2025", "--match-fraction", "0.08",
                          "--human-noise-fraction", "0.06", "--body-fraction", "0.01",
                          "--start-time", "2025-03-14T09:00:00Z"],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    extras = [line(e) for e in sample_extras()]
    rnd = random.Random(42)
    slots = sorted(rnd.sample(range(len(out)), len(extras)))
    merged = []
    j = 0
    for i, l in enumerate(out):
        while j < len(slots) and slots[j] == i:
            merged.append(extras[j])
            j += 1
        merged.append(l)
    with open(os.path.join(ROOT, "tests", "data", "sample", "audit.ndjson"), "w") as f:
        f.write("\n".join(merged) + "\n")


def deep(n):
    return "[" * n + "]" * n


def make_edge():
    exec_ = event(100, "alice@example.com", "create", "pods", "production", "payments-api-7d9f8b6c5-xk2pq", sub="exec", code=101)
    L = []
    L.append(("plain exec", line(exec_)))
    L.append(("blank", ""))
    L.append(("whitespace only", "   \t"))
    L.append(("truncated line", line(exec_)[:180]))
    L.append(("not an object", "[1,2,3]"))
    L.append(("wrong types (falco fixture)", '{"kind": 0}'))
    s = line(event(101, "alice@example.com", "get", "pods", "dev", "tmp-shell", sub="exec"))
    L.append(("exec with requestObject nested 10000 deep",
              s[:-1] + ',"requestObject":' + deep(10000) + "}"))
    L.append(("nested 10001 deep: malformed", s[:-1] + ',"requestObject":' + deep(10001) + "}"))
    L.append(("escapes in username", line(exec_).replace('"alice@example.com"', '"al\\u0069ce\\u0026co \\ud83d\\ude00"')))
    L.append(("raw UTF-8 name", line(event(102, "jürgen@exämple.de", "get", "secrets", "production", "schlüssel-ü"))))
    L.append(("control characters in values", line(event(103, "mallory\u001b[31m\n", "patch", "deployments", "dev", "web\u0007app\u007f"))))
    L.append(("no requestReceivedTimestamp (timestamp = now)", line(event(104, "alice@example.com", "get", "secrets", "dev", "tls-cert", ts=False))))
    e = event(105, "alice@example.com", "get", "secrets", "dev", "tls-cert")
    e["requestReceivedTimestamp"] = "yesterday"
    L.append(("timestamp not ISO 8601 (timestamp = now)", line(e)))
    L.append(("duplicate stage: last wins", line(exec_).replace('"stage":"ResponseComplete"', '"stage":"ResponseStarted","stage":"ResponseComplete"')))
    L.append(("ResponseStarted only", line(exec_).replace('"stage":"ResponseComplete"', '"stage":"ResponseStarted"')))
    e = event(106, "alice@example.com", "get", "pods", "dev", "x", sub="exec")
    e["objectRef"] = None
    e["user"] = "alice"
    L.append(("objectRef null, user a string", line(e)))
    L.append(("system:admin exec", line(event(107, "system:admin", "create", "pods", "dev", "postgres-0", sub="exec"))))
    L.append(("system:masters portforward", line(event(108, "system:masters", "create", "pods", "dev", "redis-2", sub="portforward"))))
    L.append(("service account exec: skipped", line(event(109, "system:serviceaccount:ci:gitlab-runner", "create", "pods", "dev", "x-1", sub="exec"))))
    L.append(("kube:admin is human", line(event(110, "kube:admin", "get", "pods", "openshift-etcd", "etcd-master-0", sub="exec"))))
    L.append(("rbac by a controller, RBAC name with colons", line(event(111, "system:serviceaccount:openshift-infra:x", "patch", "clusterroles", "", "system:openshift:scc:restricted"))))
    L.append(("config.ignore_namespaces", line(event(112, "alice@example.com", "create", "pods", "cert-manager", "cert-manager-7d9f8b6c5-abcde", sub="exec"))))
    L.append(("namespace is case-sensitive for ignore", line(event(113, "alice@example.com", "create", "pods", "Kube-System", "dns-1", sub="exec"))))
    L.append(("bypass in audit annotations only", line(event(114, "erin", "update", "deployments", "dev", "api", ann={"policy.admission.k8s.io/bypass": "true"}))))
    L.append(("bypass in requestObject only", line(event(115, "erin", "create", "deployments", "dev", "api", req={"metadata": {"annotations": {"policy.admission.k8s.io/bypass": "true"}}}))))
    L.append(("bypass in responseObject only", line(event(116, "erin", "patch", "statefulsets", "dev", "db", resp={"kind": "StatefulSet", "metadata": {"name": "db", "annotations": {"policy.admission.k8s.io/bypass": "true"}}}))))
    L.append(("bypass=false", line(event(117, "erin", "patch", "deployments", "dev", "api", req={"metadata": {"annotations": {"policy.admission.k8s.io/bypass": "false"}}}))))
    L.append(("bypass on a get: no pipeline-skip", line(event(118, "erin", "get", "deployments", "dev", "api", ann={"policy.admission.k8s.io/bypass": "true"}))))
    L.append(("namespace_contains is case-insensitive", line(event(119, "erin", "get", "secrets", "Production-EU", "k"))))
    L.append(("long name: entity truncated", line(event(120, "erin", "delete", "configmaps", "dev", "cfg-" + "a" * 300))))
    L.append(("long user: actor and description truncated", line(event(121, "u" * 700, "delete", "secrets", "dev", "s"))))
    L.append(("event without objectRef (/healthz)", '{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"h1","stage":"ResponseComplete","requestURI":"/healthz","verb":"get","user":{"username":"alice"},"responseStatus":{"code":200},"requestReceivedTimestamp":"2025-03-14T10:00:00.000001Z"}'))
    L.append(("EventList on one line", json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": [exec_, event(122, "carol@example.com", "get", "secrets", "team-a", "a")]}, separators=(",", ":"))))
    L.append(("CRLF line ending", line(exec_) + "\r"))
    L.append(("invalid escape: malformed", line(exec_).replace("alice", "al\\xice")))
    L.append(("unpaired surrogate: malformed", line(exec_).replace("alice", "al\\ud800ice")))
    L.append(("trailing garbage: malformed", line(exec_) + " x"))
    L.append(("two events glued: malformed", line(exec_) + line(exec_)))
    L.append(("deployment pod name stripped, dots kept", line(event(123, "erin", "create", "pods", "dev", "api.v2-7d9f8b6c5-xk2pq", sub="exec"))))
    with open(os.path.join(ROOT, "tests", "data", "edge.ndjson"), "wb") as f:
        for _, l in L:
            f.write(l.encode("utf-8") + b"\n")
        # Invalid UTF-8 inside strings: each bad byte becomes U+FFFD.
        f.write(line(event(124, "ALICE", "create", "pods", "dev", "p-0", sub="exec")).encode().replace(b"ALICE", b"al\xffce\xe2\x82") + b"\n")
    with open(os.path.join(ROOT, "tests", "data", "edge.cases.txt"), "w") as f:
        f.write("# line number: case of tests/data/edge.ndjson (written by make_data.py)\n")
        for i, (name, _) in enumerate(L, 1):
            f.write("%d: %s\n" % (i, name))
        f.write("%d: invalid UTF-8 in username\n" % (len(L) + 1))


if __name__ == "__main__":
    make_sample()
    make_edge()
