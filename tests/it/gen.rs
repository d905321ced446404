//! Deterministic generator of realistic Kubernetes audit logs (`audit.k8s.io/v1` NDJSON), std
//! only, shared by the integration tests (`mod gen;` in `tests/it/main.rs`), the soak test and
//! the bench harness (`benches/bench.rs` includes this file by path).
//!
//! It mirrors `../shared/tools/gen.py` (same field layout and key order, same traffic mix:
//! kubelet and controller traffic, add-on service accounts, human noise and near misses, human
//! friction, request/response bodies of 3–8 KB, RequestReceived/ResponseStarted stages) but is
//! fast enough to write hundreds of MB in seconds and needs no Python. It uses its own xorshift
//! PRNG, so its output is not byte-identical to gen.py's; it is identical for equal options.
//!
//! Alongside the log it computes the friction events the agent must emit for the 5 enabled
//! rules of the repository's `rules.yaml` (the same 5 as the Go agent's file), with Go
//! matching semantics plus the two fixes our agent documents (src/detect.rs):
//! `config.ignore_namespaces` is applied, and the bypass annotation also counts in
//! `requestObject.metadata.annotations`. The Go agent's counts are reported too. That oracle is written independently of `src/` on
//! purpose: it checks the agent instead of echoing it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Write};

/// The enabled rules of `rules.yaml` (and of the Go agent's file), in file order (events of
/// one line come in this order).
pub const RULES: [&str; 5] = [
    "kubectl-exec",
    "pipeline-skip",
    "config-drift",
    "port-forward",
    "emergency-access",
];

/// `config.ignore_namespaces` of `rules.yaml` (and of the Go agent's file).
pub const IGNORE_NAMESPACES: [&str; 8] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "cert-manager",
    "istio-system",
    "monitoring",
    "argocd",
    "vault",
];

/// The annotation the `pipeline-skip` rule looks for.
pub const BYPASS_KEY: &str = "policy.admission.k8s.io/bypass";

/// Kinds of human API calls that match rules (gen.py's `--kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pods/exec` create (80 %) or get: kubectl-exec (+ config-drift on create).
    Exec,
    /// `pods/portforward` create: port-forward + config-drift.
    PortForward,
    /// get secrets: emergency-access.
    SecretGet,
    /// patch/update of deployments (and the scale subresource): config-drift.
    PatchDeploy,
    /// patch of a deployment carrying the bypass annotation: pipeline-skip + config-drift.
    Bypass,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Exec,
        Kind::PortForward,
        Kind::SecretGet,
        Kind::PatchDeploy,
        Kind::Bypass,
    ];
}

/// What to generate. `Default` matches gen.py's defaults.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of lines to write.
    pub lines: u64,
    pub seed: u64,
    /// Fraction of API calls that are human rule-matching calls (a call is 1–3 lines).
    pub match_fraction: f64,
    /// Fraction of calls by humans that (mostly) do not match: list, logs, delete, near misses.
    pub human_noise_fraction: f64,
    /// Share of human calls aimed at ignore-listed namespaces (kube-system & co).
    pub human_system_ns_fraction: f64,
    /// Fraction of system calls carrying requestObject/responseObject (3–8 KB each).
    pub body_fraction: f64,
    /// Probability that a call also logs a RequestReceived line.
    pub rr_fraction: f64,
    /// Which matching kinds to draw from (non-empty).
    pub kinds: Vec<Kind>,
    /// Microseconds since the epoch of the first event; `None`: 2025-01-01 + `seed` days.
    pub start_unix_micros: Option<u64>,
    /// Keep every expected event in [`GenSummary::expected`] (off for huge logs).
    pub keep_expected: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            lines: 1000,
            seed: 1,
            match_fraction: 0.01,
            human_noise_fraction: 0.02,
            human_system_ns_fraction: 0.1,
            body_fraction: 0.2,
            rr_fraction: 0.3,
            kinds: Kind::ALL.to_vec(),
            start_unix_micros: None,
            keep_expected: true,
        }
    }
}

/// One friction event the agent must emit (fields as in the `POST /events` payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The rule name (the payload's `type`).
    pub rule: &'static str,
    pub severity: &'static str,
    pub workflow: &'static str,
    /// `component:{namespace}/{workload}`.
    pub entity_ref: String,
    pub actor: String,
    pub description: String,
    /// The line's requestReceivedTimestamp: unique per API call, so (rule, timestamp)
    /// identifies an event at the sink.
    pub timestamp: String,
}

/// What was written and what the agent must make of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenSummary {
    pub lines: u64,
    /// Bytes written, newlines included.
    pub bytes: u64,
    pub calls: u64,
    pub lines_with_bodies: u64,
    /// RequestReceived, ResponseStarted, ResponseComplete.
    pub lines_by_stage: [u64; 3],
    /// Lines yielding at least one event (agent semantics: ignore_namespaces applied).
    pub matching_lines: u64,
    pub expected_events: u64,
    /// Expected events per rule, indexed like [`RULES`].
    pub expected_by_rule: [u64; 5],
    /// Go agent semantics (no ignore_namespaces), for comparison with gen.py `--expect-out`.
    pub go_matching_lines: u64,
    pub go_expected_events: u64,
    /// Every expected event in log order (empty unless `keep_expected`).
    pub expected: Vec<Expected>,
}

impl GenSummary {
    /// Expected events of one rule (0 for an unknown name).
    pub fn by_rule(&self, rule: &str) -> u64 {
        RULES
            .iter()
            .position(|r| *r == rule)
            .map_or(0, |i| self.expected_by_rule[i])
    }
}

/// Writes `opts.lines` lines to `out` and says what the agent must find in them.
pub fn generate(opts: &GenOptions, out: &mut impl Write) -> io::Result<GenSummary> {
    let mut g = Generator::new(opts.clone());
    let mut buf = Vec::with_capacity(1 << 20);
    while g.summary().lines < opts.lines {
        g.next_line(&mut buf);
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(g.into_summary())
}

/// A line-at-a-time generator (the soak test paces its writes with it).
pub struct Generator {
    opts: GenOptions,
    rng: Rng,
    /// Current time in microseconds since the epoch; advances 1–2500 µs per call.
    now_us: u64,
    bodies: Vec<String>,
    /// Lines of the current call not yet handed out, with their expected events.
    pending: VecDeque<Pending>,
    summary: GenSummary,
}

impl Generator {
    pub fn new(opts: GenOptions) -> Generator {
        assert!(!opts.kinds.is_empty(), "GenOptions.kinds must not be empty");
        let mut rng = Rng::new(opts.seed);
        let now_us = opts.start_unix_micros.unwrap_or_else(|| {
            let days = 20_089 + opts.seed % 36_500; // 2025-01-01 is day 20089
            days * 86_400_000_000
        });
        let mut g = Generator {
            opts,
            rng: Rng::new(0),
            now_us,
            bodies: Vec::new(),
            pending: VecDeque::new(),
            summary: GenSummary::default(),
        };
        // Like gen.py: a pool of Deployment bodies reused by system calls.
        for _ in 0..64 {
            let app = *rng.pick(&APPS);
            let ns = *rng.pick(&APP_NS);
            let body = deployment_json(&mut rng, app, ns, None);
            g.bodies.push(body);
        }
        g.rng = rng;
        g
    }

    pub fn summary(&self) -> &GenSummary {
        &self.summary
    }

    pub fn into_summary(self) -> GenSummary {
        self.summary
    }

    /// Appends one line (with its `\n`) to `buf`; returns how many events it must yield.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> usize {
        if self.pending.is_empty() {
            self.next_call();
        }
        let Some(Pending {
            line,
            expected,
            stage,
            has_body,
        }) = self.pending.pop_front()
        else {
            unreachable!("next_call always queues at least one line")
        };
        let s = &mut self.summary;
        s.lines += 1;
        s.bytes += line.len() as u64;
        s.lines_by_stage[stage] += 1;
        if has_body {
            s.lines_with_bodies += 1;
        }
        buf.extend_from_slice(&line);
        let n = expected.len();
        if n > 0 {
            s.matching_lines += 1;
            s.expected_events += n as u64;
            for e in &expected {
                if let Some(i) = RULES.iter().position(|r| *r == e.rule) {
                    s.expected_by_rule[i] += 1;
                }
            }
            if self.opts.keep_expected {
                s.expected.extend(expected);
            }
        }
        n
    }

    fn next_call(&mut self) {
        let x = self.rng.f64();
        let call = if x < self.opts.match_fraction {
            self.human_match_call()
        } else if x < self.opts.match_fraction + self.opts.human_noise_fraction {
            self.human_noise_call()
        } else {
            self.system_call()
        };
        self.summary.calls += 1;
        self.lines_for(call);
    }

    fn human(&mut self) -> (String, Vec<String>, &'static str, String) {
        let r = &mut self.rng;
        let u = *r.pick(&HUMANS);
        let groups = if u.starts_with("system:") || u == "kubernetes-admin" {
            strings(&["system:masters", "system:authenticated"])
        } else {
            strings(&["developers", "system:authenticated"])
        };
        let ua = *r.pick(&HUMAN_UA);
        let ip = format!("192.168.{}.{}", r.below(256), 1 + r.below(254));
        (u.to_string(), groups, ua, ip)
    }

    fn human_ns(&mut self) -> String {
        if self.rng.f64() < self.opts.human_system_ns_fraction {
            self.rng.pick(&SYS_NS).to_string()
        } else {
            self.rng.pick(&APP_NS).to_string()
        }
    }

    fn human_match_call(&mut self) -> Call {
        let kind = self.opts.kinds[self.rng.below(self.opts.kinds.len() as u64) as usize];
        let (u, g, ua, ip) = self.human();
        let ns = self.human_ns();
        let mut c = Call::new(
            u,
            g,
            ua.to_string(),
            "get",
            "pods",
            ns,
            String::new(),
            Some(ip),
        );
        c.human = true;
        match kind {
            Kind::Exec => {
                c.verb = if self.rng.f64() < 0.8 {
                    "create"
                } else {
                    "get"
                };
                c.name = pod_name(&mut self.rng, None);
                c.sub = "exec";
                c.code = 101;
                c.long_running = true;
            }
            Kind::PortForward => {
                c.verb = "create";
                c.name = pod_name(&mut self.rng, None);
                c.sub = "portforward";
                c.code = 101;
                c.long_running = true;
            }
            Kind::SecretGet => {
                c.resource = "secrets";
                c.name = self.rng.pick(&SECRETS).to_string();
            }
            Kind::PatchDeploy => {
                let app = *self.rng.pick(&APPS);
                c.resource = "deployments";
                c.name = app.to_string();
                let y = self.rng.f64();
                if y < 0.2 {
                    c.verb = "patch";
                    c.sub = "scale";
                    c.req = Some(format!(
                        "{{\"spec\":{{\"replicas\":{}}}}}",
                        self.rng.below(10)
                    ));
                } else {
                    let obj = deployment_json(&mut self.rng, app, &c.ns, None);
                    if y < 0.8 {
                        c.verb = "patch";
                        let h = hash(&mut self.rng, 7);
                        c.req = Some(format!(
                            "{{\"spec\":{{\"template\":{{\"spec\":{{\"containers\":[{{\"name\":\"{app}\",\"image\":\"registry.example.com/{app}:{h}\"}}]}}}}}}}}"
                        ));
                    } else {
                        c.verb = "update";
                        c.req = Some(obj.clone());
                    }
                    c.resp = Some(obj);
                }
            }
            Kind::Bypass => {
                let app = *self.rng.pick(&APPS);
                c.verb = "patch";
                c.resource = "deployments";
                c.name = app.to_string();
                c.req = Some(format!(
                    "{{\"metadata\":{{\"annotations\":{{\"{BYPASS_KEY}\":\"true\"}}}}}}"
                ));
                c.resp = Some(deployment_json(&mut self.rng, app, &c.ns, Some("true")));
                c.resp_bypass = Some("true");
                c.req_bypass = true;
                c.audit_ann_bypass = Some(self.rng.f64() < 0.3);
            }
        }
        c
    }

    fn human_noise_call(&mut self) -> Call {
        let (u, g, ua, ip) = self.human();
        let ns = self.human_ns();
        let mut c = Call::new(
            u,
            g,
            ua.to_string(),
            "list",
            "pods",
            ns,
            String::new(),
            Some(ip),
        );
        c.human = true;
        let y = self.rng.f64();
        if y < 0.35 {
            c.resource = *self
                .rng
                .pick(&["pods", "deployments", "services", "events"]);
        } else if y < 0.55 {
            c.verb = "get";
            c.name = pod_name(&mut self.rng, None);
            c.sub = "log";
        } else if y < 0.65 {
            c.verb = "delete";
            c.name = pod_name(&mut self.rng, None);
        } else if y < 0.75 {
            // bypass=true in the request of a service: the Go agent missed it (it looked at
            // audit annotations and responseObject only); ours reports pipeline-skip.
            c.verb = "patch";
            c.resource = "services";
            c.name = self.rng.pick(&APPS).to_string();
            c.req = Some(format!(
                "{{\"metadata\":{{\"annotations\":{{\"{BYPASS_KEY}\":\"true\"}}}}}}"
            ));
            c.req_bypass = true;
        } else if y < 0.85 {
            // bypass=false on a deployment: config-drift yes, pipeline-skip no.
            let app = *self.rng.pick(&APPS);
            c.verb = "patch";
            c.resource = "deployments";
            c.name = app.to_string();
            c.resp = Some(deployment_json(&mut self.rng, app, &c.ns, Some("false")));
            c.resp_bypass = Some("false");
        } else if y < 0.92 {
            c.resource = "secrets";
        } else {
            c.verb = "get";
            c.resource = "configmaps";
            c.name = format!("{}-config", self.rng.pick(&APPS));
        }
        c
    }

    fn system_call(&mut self) -> Call {
        let r = &mut self.rng;
        let x = r.f64();
        if x < 0.30 {
            // kubelet
            let node = node_name(r);
            let user = format!("system:node:{node}");
            let groups = strings(&["system:nodes", "system:authenticated"]);
            let ua = "kubelet/v1.29.3 (linux/amd64) kubernetes/6813625".to_string();
            let y = r.f64();
            let mut c = Call::new(user, groups, ua, "get", "leases", String::new(), node, None);
            if y < 0.35 {
                c.verb = *r.pick(&["update", "get"]);
                c.ns = "kube-node-lease".into();
            } else if y < 0.55 {
                c.verb = "patch";
                c.resource = "pods";
                c.ns = pick_ns_any(r).into();
                c.name = pod_name(r, None);
                c.sub = "status";
            } else if y < 0.7 {
                c.resource = "secrets";
                c.ns = r.pick(&APP_NS).to_string();
                c.name = r.pick(&SECRETS).to_string();
            } else if y < 0.85 {
                c.verb = *r.pick(&["get", "patch"]);
                c.resource = "nodes";
                c.sub = *r.pick(&["", "status"]);
            } else {
                c.verb = *r.pick(&["get", "list", "watch"]);
                c.resource = "configmaps";
                c.ns = r.pick(&APP_NS).to_string();
                c.name = "kube-root-ca.crt".into();
                c.long_running = c.verb == "watch";
            }
            c.ip = format!("10.0.{}.{}", r.below(256), 1 + r.below(254));
            return self.with_body(c);
        }
        if x < 0.62 {
            // core controllers as service accounts
            let ctl = *r.pick(&CONTROLLERS);
            let user = format!("system:serviceaccount:kube-system:{ctl}");
            let groups = strings(&[
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated",
            ]);
            let ua = format!(
                "kube-controller-manager/v1.29.3 (linux/amd64) kubernetes/6813625/system:serviceaccount:kube-system:{ctl}"
            );
            let res = *r.pick(&[
                "deployments",
                "replicasets",
                "pods",
                "endpointslices",
                "events",
                "jobs",
                "statefulsets",
                "daemonsets",
            ]);
            let verb = *r.pick(&[
                "update", "patch", "create", "get", "list", "watch", "delete",
            ]);
            let ns = pick_ns_any(r).to_string();
            let name = if matches!(verb, "list" | "watch") {
                String::new()
            } else if matches!(res, "deployments" | "statefulsets" | "daemonsets" | "jobs") {
                r.pick(&APPS).to_string()
            } else {
                pod_name(r, None)
            };
            let mut c = Call::new(user, groups, ua, verb, res, ns, name, None);
            if matches!(verb, "update" | "patch") && r.f64() < 0.5 {
                c.sub = "status";
            }
            c.code = if verb == "create" { 201 } else { 200 };
            c.long_running = verb == "watch";
            c.sa = true;
            return self.with_body(c);
        }
        if x < 0.82 {
            // add-on service accounts (operators, monitoring, gitops)
            let (ns0, sa) = *r.pick(&SA_APPS);
            let user = format!("system:serviceaccount:{ns0}:{sa}");
            let groups = vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns0}"),
                "system:authenticated".to_string(),
            ];
            let ua = format!("{sa}/v2.{}.{} (linux/amd64)", r.below(12), r.below(9));
            let (res, _, namespaced) = *r.pick(&RES_INFO);
            let verb = *r.pick(&["get", "list", "watch", "list", "watch", "patch", "update"]);
            let ns = if namespaced {
                pick_ns_any(r).to_string()
            } else {
                String::new()
            };
            let name = if matches!(verb, "list" | "watch") {
                String::new()
            } else if res == "pods" {
                pod_name(r, None)
            } else {
                r.pick(&APPS).to_string()
            };
            let mut c = Call::new(user, groups, ua, verb, res, ns, name, None);
            c.long_running = verb == "watch";
            c.sa = true;
            return self.with_body(c);
        }
        // other internal system users
        let user = *r.pick(&[
            "system:kube-scheduler",
            "system:kube-controller-manager",
            "system:apiserver",
            "system:k3s-supervisor",
            "system:kube-proxy",
            "system:anonymous",
        ]);
        let groups = if user == "system:anonymous" {
            strings(&["system:unauthenticated"])
        } else {
            strings(&["system:authenticated"])
        };
        let ua = format!(
            "{}/v1.29.3 (linux/amd64) kubernetes/6813625",
            &user["system:".len()..]
        );
        let mut c = Call::new(
            user.into(),
            groups,
            ua,
            "get",
            "",
            String::new(),
            String::new(),
            None,
        );
        if user == "system:kube-scheduler" {
            c.verb = "create";
            c.resource = "pods";
            c.ns = r.pick(&APP_NS).to_string();
            c.name = pod_name(r, None);
            c.sub = "binding";
            c.code = 201;
        } else if user == "system:anonymous" {
            c.code = 403;
        } else {
            let res = *r.pick(&[
                "leases",
                "endpoints",
                "services",
                "namespaces",
                "customresourcedefinitions",
                "pods",
            ]);
            c.resource = res;
            c.verb = *r.pick(&["get", "list", "watch", "update"]);
            if namespaced(res) {
                c.ns = r.pick(&SYS_NS).to_string();
            }
        }
        self.with_body(c)
    }

    /// System calls carry bodies from the pool with probability `body_fraction`.
    fn with_body(&mut self, mut c: Call) -> Call {
        if self.rng.f64() < self.opts.body_fraction {
            let i = self.rng.below(self.bodies.len() as u64) as usize;
            c.resp = Some(self.bodies[i].clone());
            if matches!(c.verb, "update" | "patch" | "create") {
                let j = self.rng.below(self.bodies.len() as u64) as usize;
                c.req = Some(self.bodies[j].clone());
            }
        }
        c
    }

    /// Serialises one call into 1–3 lines (gen.py's `lines_for`) and queues them.
    fn lines_for(&mut self, c: Call) {
        let r = &mut self.rng;
        let (grp, ver) = api_group_version(c.resource);
        let mut uri = String::with_capacity(160);
        if c.resource.is_empty() {
            uri.push_str("/healthz");
        } else {
            if grp.is_empty() {
                uri.push_str("/api/v1");
            } else {
                uri.push_str("/apis/");
                uri.push_str(grp);
                uri.push('/');
                uri.push_str(ver);
            }
            if !c.ns.is_empty() {
                uri.push_str("/namespaces/");
                uri.push_str(&c.ns);
            }
            uri.push('/');
            uri.push_str(c.resource);
            for part in [c.name.as_str(), c.sub] {
                if !part.is_empty() {
                    uri.push('/');
                    uri.push_str(part);
                }
            }
        }
        if c.verb == "watch" {
            uri.push_str(&format!(
                "?allowWatchBookmarks=true&resourceVersion={}&timeout=8m{}s&watch=true",
                1_000_000 + r.below(99_000_000),
                r.below(60)
            ));
        } else if c.sub == "exec" {
            uri.push_str("?command=%2Fbin%2Fsh&container=app&stdin=true&stdout=true&tty=true");
        } else if c.sub == "portforward" {
            uri.push_str("?ports=8080");
        }
        let mut objref = String::new();
        if !c.resource.is_empty() {
            objref.push_str(",\"objectRef\":{\"resource\":\"");
            objref.push_str(c.resource);
            objref.push('"');
            if !c.ns.is_empty() {
                objref.push_str(",\"namespace\":\"");
                objref.push_str(&c.ns);
                objref.push('"');
            }
            if !c.name.is_empty() {
                objref.push_str(",\"name\":\"");
                objref.push_str(&c.name);
                objref.push('"');
            }
            if !grp.is_empty() {
                objref.push_str(",\"apiGroup\":\"");
                objref.push_str(grp);
                objref.push('"');
            }
            objref.push_str(",\"apiVersion\":\"");
            objref.push_str(ver);
            objref.push('"');
            // kube-apiserver records the resourceVersion of updates it was given.
            if c.verb == "update" && !c.name.is_empty() {
                objref.push_str(&format!(
                    ",\"resourceVersion\":\"{}\"",
                    1_000_000 + r.below(99_000_000)
                ));
            }
            if !c.sub.is_empty() {
                objref.push_str(",\"subresource\":\"");
                objref.push_str(c.sub);
                objref.push('"');
            }
            objref.push('}');
        }
        self.now_us += 1 + r.below(2499);
        let t0 = self.now_us;
        let audit_id = uuid(r);
        let level = if c.req.is_some() || c.resp.is_some() {
            "RequestResponse"
        } else {
            "Metadata"
        };
        let ann = match c.audit_ann_bypass {
            Some(with_key) => {
                let mut a =
                    String::from("{\"authorization.k8s.io/decision\":\"allow\",\"authorization.k8s.io/reason\":\"\"");
                if with_key {
                    a.push_str(&format!(",\"{BYPASS_KEY}\":\"true\""));
                }
                a.push('}');
                a
            }
            None => format!(
                "{{\"authorization.k8s.io/decision\":\"allow\",\"authorization.k8s.io/reason\":\"RBAC: allowed by ClusterRoleBinding \\\"system:{}\\\" of ClusterRole \\\"system:{}\\\" to Group \\\"{}\\\"\"}}",
                if c.human { "human" } else { "system" },
                if c.resource.is_empty() { "discovery" } else { c.resource },
                c.groups[0]
            ),
        };
        let mut stages: Vec<usize> = Vec::with_capacity(3);
        if r.f64() < self.opts.rr_fraction {
            stages.push(0);
        }
        if c.long_running {
            stages.push(1);
        }
        stages.push(2);
        let rrt = rfc3339_micros(t0);
        let mut t = t0;
        for stage in stages {
            t += 50 + r.below(29_950);
            let mut s = String::with_capacity(
                900 + c.req.as_ref().map_or(0, |x| x.len())
                    + c.resp.as_ref().map_or(0, |x| x.len()),
            );
            s.push_str("{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"");
            s.push_str(level);
            s.push_str("\",\"auditID\":\"");
            s.push_str(&audit_id);
            s.push_str("\",\"stage\":\"");
            s.push_str(STAGES[stage]);
            s.push_str("\",\"requestURI\":\"");
            s.push_str(&uri);
            s.push_str("\",\"verb\":\"");
            s.push_str(c.verb);
            s.push_str("\",\"user\":{\"username\":\"");
            s.push_str(&c.user);
            s.push_str("\",\"groups\":[");
            for (i, g) in c.groups.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push('"');
                s.push_str(g);
                s.push('"');
            }
            s.push(']');
            if c.user.starts_with("system:serviceaccount:") {
                let (uid, pod, pod_uid) = (uuid(r), pod_name(r, None), uuid(r));
                s.push_str(&format!(
                    ",\"uid\":\"{uid}\",\"extra\":{{\"authentication.kubernetes.io/pod-name\":[\"{pod}\"],\"authentication.kubernetes.io/pod-uid\":[\"{pod_uid}\"]}}"
                ));
            }
            s.push_str("},\"sourceIPs\":[\"");
            s.push_str(&c.ip);
            s.push_str("\"],\"userAgent\":\"");
            s.push_str(&c.ua);
            s.push('"');
            s.push_str(&objref);
            if stage != 0 {
                s.push_str(&format!(
                    ",\"responseStatus\":{{\"metadata\":{{}},\"code\":{}",
                    c.code
                ));
                if c.code == 403 {
                    s.push_str(",\"status\":\"Failure\",\"reason\":\"Forbidden\",\"message\":\"forbidden: User \\\"system:anonymous\\\" cannot get path \\\"/healthz\\\"\"");
                }
                s.push('}');
            }
            if let Some(req) = &c.req {
                s.push_str(",\"requestObject\":");
                s.push_str(req);
            }
            if stage == 2 {
                if let Some(resp) = &c.resp {
                    s.push_str(",\"responseObject\":");
                    s.push_str(resp);
                }
            }
            s.push_str(",\"requestReceivedTimestamp\":\"");
            s.push_str(&rrt);
            s.push_str("\",\"stageTimestamp\":\"");
            s.push_str(&rfc3339_micros(t));
            s.push('"');
            if stage != 0 {
                s.push_str(",\"annotations\":");
                s.push_str(&ann);
            }
            s.push_str("}\n");
            let mut expected = Vec::new();
            if stage == 2 {
                let go = expected_events(&c, &rrt, false);
                if !go.is_empty() {
                    self.summary.go_matching_lines += 1;
                    self.summary.go_expected_events += go.len() as u64;
                }
                // Our agent applies config.ignore_namespaces; the Go agent did not.
                if !IGNORE_NAMESPACES.contains(&c.ns.as_str()) {
                    expected = expected_events(&c, &rrt, true);
                }
            }
            self.pending.push_back(Pending {
                line: s.into_bytes(),
                expected,
                stage,
                has_body: c.req.is_some() || (stage == 2 && c.resp.is_some()),
            });
        }
    }
}

/// One serialised line waiting to be handed out.
struct Pending {
    line: Vec<u8>,
    /// Events the agent must emit for it (agent semantics).
    expected: Vec<Expected>,
    /// Index into [`STAGES`].
    stage: usize,
    has_body: bool,
}

const STAGES: [&str; 3] = ["RequestReceived", "ResponseStarted", "ResponseComplete"];

/// One API call before serialisation (gen.py's `call` dict).
struct Call {
    user: String,
    groups: Vec<String>,
    ua: String,
    verb: &'static str,
    resource: &'static str,
    ns: String,
    name: String,
    sub: &'static str,
    code: u16,
    ip: String,
    req: Option<String>,
    resp: Option<String>,
    /// The bypass annotation's value in responseObject.metadata.annotations, if any.
    resp_bypass: Option<&'static str>,
    /// requestObject.metadata.annotations carries bypass=true.
    req_bypass: bool,
    /// Custom audit annotations; `Some(true)`: they include bypass=true.
    audit_ann_bypass: Option<bool>,
    long_running: bool,
    human: bool,
    sa: bool,
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    fn new(
        user: String,
        groups: Vec<String>,
        ua: String,
        verb: &'static str,
        resource: &'static str,
        ns: String,
        name: String,
        ip: Option<String>,
    ) -> Call {
        Call {
            user,
            groups,
            ua,
            verb,
            resource,
            ns,
            name,
            sub: "",
            code: 200,
            ip: ip.unwrap_or_default(),
            req: None,
            resp: None,
            resp_bypass: None,
            req_bypass: false,
            audit_ann_bypass: None,
            long_running: false,
            human: false,
            sa: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle: the Go agent's matching of the 5 active rules, on the in-memory call.
// ---------------------------------------------------------------------------------------------

/// Go's `isInternalSystemActor`.
pub fn is_internal_system_actor(user: &str) -> bool {
    user.starts_with("system:") && user != "system:admin" && user != "system:masters"
}

/// Go's `normaliseWorkloadName`: strips ReplicaSet/pod hashes, StatefulSet ordinals and
/// DaemonSet suffixes.
pub fn normalise_workload_name(name: &str) -> String {
    if name.is_empty() {
        return "unknown".into();
    }
    let alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let parts: Vec<&str> = name.split('-').collect();
    let n = parts.len();
    // -[a-z0-9]{5,10}-[a-z0-9]{5}$
    if n >= 3 {
        let (a, b) = (parts[n - 2], parts[n - 1]);
        if (5..=10).contains(&a.len()) && alnum(a) && b.len() == 5 && alnum(b) {
            return parts[..n - 2].join("-");
        }
    }
    if n >= 2 {
        let b = parts[n - 1];
        // -[0-9]+$
        if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) {
            return parts[..n - 1].join("-");
        }
        // -[a-z0-9]*[0-9][a-z0-9]*$
        if alnum(b) && b.bytes().any(|c| c.is_ascii_digit()) {
            return parts[..n - 1].join("-");
        }
    }
    name.to_string()
}

/// `agent`: our agent's semantics (the bypass annotation also counts in requestObject);
/// else the Go agent's (audit annotations and responseObject only).
fn rule_matches(rule: usize, c: &Call, agent: bool) -> bool {
    if is_internal_system_actor(&c.user) {
        return false; // all five rules have ignore_system: true
    }
    match rule {
        0 => c.resource == "pods" && c.sub == "exec",
        1 => {
            matches!(c.verb, "patch" | "update" | "create")
                && (c.audit_ann_bypass == Some(true)
                    || c.resp_bypass == Some("true")
                    || (agent && c.req_bypass))
        }
        2 => {
            matches!(
                c.resource,
                "pods"
                    | "deployments"
                    | "statefulsets"
                    | "daemonsets"
                    | "replicasets"
                    | "jobs"
                    | "cronjobs"
            ) && matches!(c.verb, "create" | "update" | "patch")
                // One act, one event (our rules.yaml, issue 16): the object itself or its
                // scale, not pods/exec or pods/portforward. The Go agent matched any.
                && (!agent || c.sub.is_empty() || c.sub == "scale")
        }
        3 => c.resource == "pods" && c.sub == "portforward",
        4 => c.resource == "secrets" && c.verb == "get",
        _ => false,
    }
}

fn expected_events(c: &Call, timestamp: &str, agent: bool) -> Vec<Expected> {
    let raw = if c.name.is_empty() {
        c.resource
    } else {
        &c.name
    };
    let ns = if c.ns.is_empty() { "default" } else { &c.ns };
    let entity_ref = format!("component:{ns}/{}", normalise_workload_name(raw));
    let mut out = Vec::new();
    for (i, rule) in RULES.iter().enumerate() {
        if !rule_matches(i, c, agent) {
            continue;
        }
        let (res, name, nsr, actor, verb) = (c.resource, &c.name, &c.ns, &c.user, c.verb);
        let (severity, workflow, description) = match i {
            0 => (
                "high",
                "deploy",
                format!("kubectl exec on {res}/{name} (ns:{nsr}) by {actor}"),
            ),
            1 => (
                "high",
                "deploy",
                format!("Policy gate bypassed on {res}/{name} (ns:{nsr}) by {actor}"),
            ),
            2 => (
                "high",
                "deploy",
                format!("Direct {verb} on {res}/{name} (ns:{nsr}) by {actor}"),
            ),
            3 => (
                "medium",
                "debug",
                format!("kubectl port-forward to {res}/{name} (ns:{nsr}) by {actor}"),
            ),
            _ => (
                "medium",
                "incident",
                format!("Direct secret access: {name} in {nsr} by {actor}"),
            ),
        };
        out.push(Expected {
            rule,
            severity,
            workflow,
            entity_ref: entity_ref.clone(),
            actor: c.user.clone(),
            description,
            timestamp: timestamp.to_string(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Odd and huge lines for robustness tests and benches.
// ---------------------------------------------------------------------------------------------

/// A valid, matching audit line (a human `kubectl exec` in namespace `default`: one act, so
/// [`LONG_LINE_EVENTS`] event, kubectl-exec, with the repository's rules) of exactly `bytes`
/// bytes including its `\n`, padded with a long string inside `requestObject`. `bytes` below
/// ~700 is rounded up to the minimum.
pub fn long_line(bytes: usize) -> Vec<u8> {
    long_line_with(bytes, "2025-06-01T12:00:00.000001Z")
}

/// The events one [`long_line`] yields with the repository's rules (kubectl-exec; config-drift
/// leaves exec to it).
pub const LONG_LINE_EVENTS: u64 = 1;

/// [`long_line`] with a chosen requestReceivedTimestamp (identifies the event at a sink).
pub fn long_line_with(bytes: usize, timestamp: &str) -> Vec<u8> {
    let head = "{\"kind\":\"Event\",\"apiVersion\":\"audit.k8s.io/v1\",\"level\":\"Request\",\"auditID\":\"0b6f0c0e-5d43-4c3e-9b8e-5a1c2d3e4f50\",\"stage\":\"ResponseComplete\",\"requestURI\":\"/api/v1/namespaces/default/pods/big-7d9f8c6b5-x2x4z/exec?command=sh\",\"verb\":\"create\",\"user\":{\"username\":\"alice@example.com\",\"groups\":[\"developers\",\"system:authenticated\"]},\"sourceIPs\":[\"192.168.1.10\"],\"userAgent\":\"kubectl/v1.30.1 (linux/amd64)\",\"objectRef\":{\"resource\":\"pods\",\"namespace\":\"default\",\"name\":\"big-7d9f8c6b5-x2x4z\",\"apiVersion\":\"v1\",\"subresource\":\"exec\"},\"responseStatus\":{\"metadata\":{},\"code\":101},\"requestObject\":{\"padding\":\"";
    let tail = format!(
        "\"}},\"requestReceivedTimestamp\":\"{timestamp}\",\"stageTimestamp\":\"{timestamp}\",\"annotations\":{{\"authorization.k8s.io/decision\":\"allow\"}}}}\n"
    );
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut v = Vec::with_capacity(head.len() + pad + tail.len());
    v.extend_from_slice(head.as_bytes());
    // A realistic filler: base64-ish text, as in a large ConfigMap or Secret payload.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    v.extend((0..pad).map(|i| ALPHABET[(i * 7 + i / 64) % 64]));
    v.extend_from_slice(tail.as_bytes());
    v
}

/// Lines an agent must survive without stopping (each ends with `\n`): blank, not JSON,
/// truncated, wrong types, deep nesting, escapes and raw UTF-8, no objectRef, invalid UTF-8,
/// a NUL byte, duplicate keys, numbers where strings belong. None of them yields an event
/// except the two marked in [`ODD_MATCHING`]; lines whose parse is a policy choice (invalid
/// UTF-8, a lone surrogate escape: Go replaces them with U+FFFD) are aimed at `configmaps`,
/// which no rule matches, so they yield nothing either way.
pub fn odd_lines() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"\n".to_vec(),
        b"   \t \n".to_vec(),
        b"not json at all\n".to_vec(),
        b"{\"kind\":\"Event\",\"stage\":\"ResponseComplete\",\"verb\":\"cre\n".to_vec(),
        b"{\"kind\": 0}\n".to_vec(),
        b"[1,2,3]\n".to_vec(),
        b"null\n".to_vec(),
        b"{\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"user\":{\"username\":\"alice\"},\"objectRef\":{\"resource\":\"secrets\",\"namespace\":\"default\",\"name\":\"x\"},\"requestReceivedTimestamp\":\"2025-06-01T12:00:00.000002Z\"} trailing\n".to_vec(),
        b"{\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"user\":{\"username\":\"alice\xff\xfe\"},\"objectRef\":{\"resource\":\"configmaps\"}}\n".to_vec(),
        b"{\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"user\":{\"username\":\"al\x00ice\"}}\n".to_vec(),
        b"{\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"user\":{\"username\":42},\"objectRef\":{\"resource\":[\"secrets\"]}}\n".to_vec(),
        b"{\"kind\":\"Event\",\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"requestURI\":\"/healthz\",\"user\":{\"username\":\"bob\"}}\n".to_vec(),
        b"{\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"user\":{\"username\":\"\\ud800\"},\"objectRef\":{\"resource\":\"configmaps\"}}\n".to_vec(),
        b"{\"a\":1e999999,\"b\":-0.0e-7,\"c\":123456789012345678901234567890}\n".to_vec(),
    ];
    let mut deep = Vec::new();
    deep.extend_from_slice(b"{\"stage\":\"ResponseComplete\",\"x\":");
    deep.extend_from_slice(&[b'['; 100_000]);
    deep.extend_from_slice(&[b']'; 100_000]);
    deep.extend_from_slice(b"}\n");
    v.push(deep);
    // The two valid matching lines: escapes + raw UTF-8 in the actor, and duplicate keys
    // (last one wins in Go's encoding/json).
    v.push("{\"stage\":\"ResponseComplete\",\"verb\":\"get\",\"user\":{\"username\":\"j\\u00fcrgen \\u0026 zo\u{eb}\"},\"objectRef\":{\"resource\":\"secrets\",\"namespace\":\"team-a\",\"name\":\"db\"},\"requestReceivedTimestamp\":\"2025-06-01T12:00:00.000003Z\"}\n".as_bytes().to_vec());
    v.push(b"{\"stage\":\"ResponseComplete\",\"verb\":\"list\",\"verb\":\"get\",\"user\":{\"username\":\"bob\"},\"objectRef\":{\"resource\":\"secrets\",\"namespace\":\"dev\",\"name\":\"tok\"},\"requestReceivedTimestamp\":\"2025-06-01T12:00:00.000004Z\"}\n".to_vec());
    v
}

/// Indexes into [`odd_lines`] of the lines that are valid matching events (emergency-access).
pub const ODD_MATCHING: [usize; 2] = [15, 16];

// ---------------------------------------------------------------------------------------------
// Vocabulary (as in gen.py) and small helpers.
// ---------------------------------------------------------------------------------------------

const HASH: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const APPS: [&str; 16] = [
    "payments-api",
    "checkout",
    "cart-service",
    "frontend",
    "search",
    "inventory",
    "auth-gateway",
    "notification-worker",
    "billing",
    "recommendation",
    "ledger",
    "orders",
    "shipping",
    "catalog",
    "image-resizer",
    "user-profile",
];
const STS: [&str; 6] = [
    "postgres",
    "redis",
    "kafka",
    "zookeeper",
    "elasticsearch",
    "mongodb",
];
const APP_NS: [&str; 8] = [
    "default",
    "production",
    "production-eu",
    "staging",
    "dev",
    "team-a",
    "team-b",
    "payments",
];
const SYS_NS: [&str; 8] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "cert-manager",
    "monitoring",
    "argocd",
    "istio-system",
    "vault",
];
const HUMANS: [&str; 8] = [
    "system:admin",
    "kubernetes-admin",
    "alice@example.com",
    "bob.smith@corp.example",
    "carol@example.com",
    "oidc:dave",
    "erin",
    "frank@example.org",
];
const HUMAN_UA: [&str; 6] = [
    "kubectl/v1.29.3 (linux/amd64) kubernetes/6813625",
    "kubectl/v1.30.1 (darwin/arm64) kubernetes/6911225",
    "kubectl/v1.28.4 (windows/amd64) kubernetes/bae2c62",
    "k9s/v0.32.4 (linux/amd64)",
    "Lens/6.5.2",
    "kubectl/v1.31.0 (darwin/amd64) kubernetes/9edcffc",
];
const SECRETS: [&str; 8] = [
    "db-credentials",
    "stripe-api-key",
    "tls-cert",
    "registry-pull-secret",
    "jwt-signing-key",
    "aws-credentials",
    "smtp-password",
    "oauth-client-secret",
];
const CONTROLLERS: [&str; 12] = [
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "namespace-controller",
    "statefulset-controller",
    "daemon-set-controller",
    "job-controller",
    "cronjob-controller",
    "horizontal-pod-autoscaler",
    "generic-garbage-collector",
    "node-controller",
    "pvc-protection-controller",
];
const SA_APPS: [(&str, &str); 8] = [
    ("argocd", "argocd-application-controller"),
    ("monitoring", "prometheus-k8s"),
    ("cert-manager", "cert-manager"),
    ("kube-system", "coredns"),
    ("istio-system", "istiod"),
    ("monitoring", "kube-state-metrics"),
    ("kube-system", "metrics-server"),
    ("ci", "gitlab-runner"),
];
/// resource, apiGroup/version, namespaced.
const RES_INFO: [(&str, &str, bool); 27] = [
    ("pods", "v1", true),
    ("nodes", "v1", false),
    ("configmaps", "v1", true),
    ("secrets", "v1", true),
    ("services", "v1", true),
    ("endpoints", "v1", true),
    ("events", "v1", true),
    ("namespaces", "v1", false),
    ("serviceaccounts", "v1", true),
    ("persistentvolumeclaims", "v1", true),
    ("persistentvolumes", "v1", false),
    ("leases", "coordination.k8s.io/v1", true),
    ("endpointslices", "discovery.k8s.io/v1", true),
    ("deployments", "apps/v1", true),
    ("replicasets", "apps/v1", true),
    ("statefulsets", "apps/v1", true),
    ("daemonsets", "apps/v1", true),
    ("jobs", "batch/v1", true),
    ("cronjobs", "batch/v1", true),
    ("ingresses", "networking.k8s.io/v1", true),
    ("networkpolicies", "networking.k8s.io/v1", true),
    ("roles", "rbac.authorization.k8s.io/v1", true),
    ("clusterroles", "rbac.authorization.k8s.io/v1", false),
    (
        "customresourcedefinitions",
        "apiextensions.k8s.io/v1",
        false,
    ),
    ("horizontalpodautoscalers", "autoscaling/v2", true),
    (
        "validatingwebhookconfigurations",
        "admissionregistration.k8s.io/v1",
        false,
    ),
    (
        "certificatesigningrequests",
        "certificates.k8s.io/v1",
        false,
    ),
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn api_group_version(resource: &str) -> (&'static str, &'static str) {
    let gv = RES_INFO
        .iter()
        .find(|r| r.0 == resource)
        .map_or("v1", |r| r.1);
    match gv.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", gv),
    }
}

fn namespaced(resource: &str) -> bool {
    RES_INFO
        .iter()
        .find(|r| r.0 == resource)
        .map_or(true, |r| r.2)
}

fn pick_ns_any(r: &mut Rng) -> &'static str {
    let i = r.below(16) as usize;
    if i < 8 {
        APP_NS[i]
    } else {
        SYS_NS[i - 8]
    }
}

fn node_name(r: &mut Rng) -> String {
    let i = r.below(16);
    if i < 12 {
        format!("node-{:02}", i + 1)
    } else {
        let k = i - 11;
        format!("ip-10-0-{k}-{}.ec2.internal", k * 7)
    }
}

fn hash(r: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| HASH[r.below(HASH.len() as u64) as usize] as char)
        .collect()
}

fn pod_name(r: &mut Rng, app: Option<&str>) -> String {
    let x = r.f64();
    if x < 0.75 {
        let app = app.unwrap_or_else(|| *r.pick(&APPS));
        let n = 8 + r.below(3) as usize;
        format!("{app}-{}-{}", hash(r, n), hash(r, 5))
    } else if x < 0.9 {
        format!("{}-{}", r.pick(&STS), r.below(5))
    } else if x < 0.97 {
        let d = *r.pick(&["fluent-bit", "node-exporter", "kube-proxy", "calico-node"]);
        format!("{d}-{}", hash(r, 5))
    } else {
        r.pick(&["debug-pod", "tmp-shell", "netshoot"]).to_string()
    }
}

fn uuid(r: &mut Rng) -> String {
    let (a, b) = (r.next(), r.next());
    let a = (a & !0xF000) | 0x4000; // version 4
    let b = (b & !(0xC000 << 48)) | (0x8000 << 48); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (kube-apiserver's MicroTime).
pub fn rfc3339_micros(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let (y, m, d) = healert_agent::operate::clock::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        unix_us % 1_000_000
    )
}

/// A Deployment object of 3–8 KB as the API server returns it (gen.py's `deployment_obj`).
fn deployment_json(r: &mut Rng, app: &str, ns: &str, bypass: Option<&str>) -> String {
    let target = 3000 + r.below(5000) as usize;
    let ver = format!("1.{}.{}", r.below(30), r.below(30));
    let managed = *r.pick(&["Helm", "argocd", "kustomize"]);
    let team = *r.pick(&["core", "payments", "growth", "platform"]);
    let labels = format!(
        "{{\"app.kubernetes.io/name\":\"{app}\",\"app.kubernetes.io/instance\":\"{app}-{ns}\",\"app.kubernetes.io/version\":\"{ver}\",\"app.kubernetes.io/managed-by\":\"{managed}\",\"team\":\"{team}\"}}"
    );
    let mut annotations = format!(
        "{{\"deployment.kubernetes.io/revision\":\"{}\",\"meta.helm.sh/release-name\":\"{app}\",\"meta.helm.sh/release-namespace\":\"{ns}\"",
        1 + r.below(299)
    );
    if let Some(b) = bypass {
        annotations.push_str(&format!(",\"{BYPASS_KEY}\":\"{b}\""));
    }
    annotations.push('}');
    let image_tag = hash(r, 12);
    let (lim_cpu, lim_mem, req_cpu, req_mem) = (
        200 + r.below(1800),
        128 + r.below(3968),
        50 + r.below(450),
        64 + r.below(960),
    );
    let uid = uuid(r);
    let rv = 1_000_000 + r.below(99_000_000);
    let generation = 1 + r.below(399);
    let created = format!(
        "2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        1 + r.below(12),
        1 + r.below(28),
        r.below(24),
        r.below(60),
        r.below(60)
    );
    let replicas = 1 + r.below(11);
    let rs_hash = hash(r, 10);
    let base = format!(
        concat!(
            "{{\"kind\":\"Deployment\",\"apiVersion\":\"apps/v1\",\"metadata\":{{\"name\":\"{app}\",\"namespace\":\"{ns}\",\"uid\":\"{uid}\",",
            "\"resourceVersion\":\"{rv}\",\"generation\":{generation},\"creationTimestamp\":\"{created}\",\"labels\":{labels},\"annotations\":{annotations},",
            "\"managedFields\":[{{\"manager\":\"helm\",\"operation\":\"Update\",\"apiVersion\":\"apps/v1\",\"time\":\"2024-11-02T10:11:12Z\",\"fieldsType\":\"FieldsV1\",",
            "\"fieldsV1\":{{\"f:metadata\":{{\"f:annotations\":{{\".\":{{}},\"f:meta.helm.sh/release-name\":{{}}}}}},\"f:spec\":{{\"f:replicas\":{{}},\"f:template\":{{\"f:spec\":{{\"f:containers\":{{}}}}}}}}}}}},",
            "{{\"manager\":\"kube-controller-manager\",\"operation\":\"Update\",\"apiVersion\":\"apps/v1\",\"time\":\"2024-11-02T10:11:20Z\",\"fieldsType\":\"FieldsV1\",\"subresource\":\"status\",",
            "\"fieldsV1\":{{\"f:status\":{{\"f:availableReplicas\":{{}},\"f:conditions\":{{}},\"f:readyReplicas\":{{}}}}}}}}]}},",
            "\"spec\":{{\"replicas\":{replicas},\"selector\":{{\"matchLabels\":{{\"app.kubernetes.io/name\":\"{app}\"}}}},\"template\":{{\"metadata\":{{\"labels\":{labels}}},",
            "\"spec\":{{\"containers\":[{{\"name\":\"{app}\",\"image\":\"registry.example.com/{ns}/{app}:{image_tag}\",",
            "\"ports\":[{{\"name\":\"http\",\"containerPort\":8080,\"protocol\":\"TCP\"}},{{\"name\":\"metrics\",\"containerPort\":9090,\"protocol\":\"TCP\"}}],",
            "\"env\":[{env}],\"resources\":{{\"limits\":{{\"cpu\":\"{lim_cpu}m\",\"memory\":\"{lim_mem}Mi\"}},\"requests\":{{\"cpu\":\"{req_cpu}m\",\"memory\":\"{req_mem}Mi\"}}}},",
            "\"livenessProbe\":{{\"httpGet\":{{\"path\":\"/healthz\",\"port\":8080,\"scheme\":\"HTTP\"}},\"initialDelaySeconds\":10,\"timeoutSeconds\":1,\"periodSeconds\":10,\"successThreshold\":1,\"failureThreshold\":3}},",
            "\"readinessProbe\":{{\"httpGet\":{{\"path\":\"/ready\",\"port\":8080,\"scheme\":\"HTTP\"}},\"timeoutSeconds\":1,\"periodSeconds\":5,\"successThreshold\":1,\"failureThreshold\":3}},",
            "\"terminationMessagePath\":\"/dev/termination-log\",\"terminationMessagePolicy\":\"File\",\"imagePullPolicy\":\"IfNotPresent\",",
            "\"volumeMounts\":[{{\"name\":\"config\",\"mountPath\":\"/etc/{app}\"}},{{\"name\":\"tmp\",\"mountPath\":\"/tmp\"}}]}}],",
            "\"restartPolicy\":\"Always\",\"terminationGracePeriodSeconds\":30,\"dnsPolicy\":\"ClusterFirst\",\"serviceAccountName\":\"{app}\",\"securityContext\":{{\"runAsNonRoot\":true}},",
            "\"schedulerName\":\"default-scheduler\",\"volumes\":[{{\"name\":\"config\",\"configMap\":{{\"name\":\"{app}-config\",\"defaultMode\":420}}}},{{\"name\":\"tmp\",\"emptyDir\":{{}}}}]}}}},",
            "\"strategy\":{{\"type\":\"RollingUpdate\",\"rollingUpdate\":{{\"maxUnavailable\":\"25%\",\"maxSurge\":\"25%\"}}}},\"revisionHistoryLimit\":10,\"progressDeadlineSeconds\":600}},",
            "\"status\":{{\"observedGeneration\":3,\"replicas\":3,\"updatedReplicas\":3,\"readyReplicas\":3,\"availableReplicas\":3,",
            "\"conditions\":[{{\"type\":\"Available\",\"status\":\"True\",\"lastUpdateTime\":\"2024-11-02T10:11:20Z\",\"lastTransitionTime\":\"2024-11-02T10:11:20Z\",\"reason\":\"MinimumReplicasAvailable\",\"message\":\"Deployment has minimum availability.\"}},",
            "{{\"type\":\"Progressing\",\"status\":\"True\",\"lastUpdateTime\":\"2024-11-02T10:11:20Z\",\"lastTransitionTime\":\"2024-10-01T08:00:00Z\",\"reason\":\"NewReplicaSetAvailable\",\"message\":\"ReplicaSet \\\"{app}-{rs_hash}\\\" has successfully progressed.\"}}]}}}}"
        ),
        app = app,
        ns = ns,
        uid = uid,
        rv = rv,
        generation = generation,
        created = created,
        labels = labels,
        annotations = annotations,
        replicas = replicas,
        image_tag = image_tag,
        env = "\u{1}",
        lim_cpu = lim_cpu,
        lim_mem = lim_mem,
        req_cpu = req_cpu,
        req_mem = req_mem,
        rs_hash = rs_hash,
    );
    // Pad with env entries until the object reaches its target size (like gen.py).
    let mut env = String::new();
    let mut i = 0;
    let fixed = base.len() - 1;
    while fixed + env.len() < target {
        if i > 0 {
            env.push(',');
        }
        let k = *r.pick(&[
            "FEATURE_FLAG",
            "DB_HOST",
            "CACHE_TTL",
            "LOG_LEVEL",
            "OTEL_ENDPOINT",
            "UPSTREAM_URL",
        ]);
        env.push_str(&format!(
            "{{\"name\":\"{k}_{i}\",\"value\":\"{app}-{}.{ns}.svc.cluster.local:{}\"}}",
            hash(r, 4),
            1024 + r.below(64511)
        ));
        i += 1;
    }
    base.replacen('\u{1}', &env, 1)
}

/// xorshift64* seeded through splitmix64: deterministic, fast, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (n > 0); the modulo bias is irrelevant for test data.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The rules file at `rules` with repeat suppression taken out (its `suppress:` and `same_act:`
/// lines dropped), written to `out`: this oracle counts every match, so the runs that compare
/// the agent with it (the soak, the bench) use these rules with `SUPPRESS_WINDOW=0`.
/// Suppression has its own tests (`rules_testing`).
pub fn rules_without_suppression(rules: &std::path::Path, out: &std::path::Path) -> io::Result<()> {
    let text: String = std::fs::read_to_string(rules)?
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with("suppress:") && !t.starts_with("same_act:")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn gen(opts: &GenOptions) -> (Vec<u8>, GenSummary) {
        let mut out = Vec::new();
        let s = generate(opts, &mut out).unwrap();
        (out, s)
    }

    fn opts(lines: u64, seed: u64) -> GenOptions {
        GenOptions {
            lines,
            seed,
            ..GenOptions::default()
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let (a, sa) = gen(&opts(3000, 7));
        let (b, sb) = gen(&opts(3000, 7));
        assert!(a == b, "same options must give the same bytes");
        assert_eq!(sa, sb);
        let (c, _) = gen(&opts(3000, 8));
        assert!(a != c, "another seed must give another log");
    }

    #[test]
    fn every_line_is_valid_json_and_counted() {
        let (out, s) = gen(&GenOptions {
            body_fraction: 0.5,
            ..opts(4000, 3)
        });
        assert_eq!(s.bytes, out.len() as u64);
        assert_eq!(*out.last().unwrap(), b'\n');
        let mut lines = 0;
        let mut bodies = 0;
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value =
                serde_json::from_slice(line).unwrap_or_else(|e| panic!("line {}: {e}", lines + 1));
            assert_eq!(v["kind"], "Event");
            assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
            assert!(v["auditID"].as_str().unwrap().len() == 36);
            if v.get("requestObject").is_some() || v.get("responseObject").is_some() {
                bodies += 1;
                assert_eq!(v["level"], "RequestResponse");
            }
            lines += 1;
        }
        assert_eq!(lines, 4000);
        assert_eq!(s.lines, 4000);
        assert_eq!(s.lines_with_bodies, bodies);
        assert_eq!(s.lines_by_stage.iter().sum::<u64>(), 4000);
        assert!(s.lines_by_stage[0] > 0 && s.lines_by_stage[1] > 0);
        // Bodies are Deployments of 3-8 KB: lines with a response body are that long.
        let big = out
            .split(|b| *b == b'\n')
            .filter(|l| l.len() > 3000 && l.len() < 20_000)
            .count();
        assert!(big > 400, "only {big} lines carry a 3-8 KB body");
    }

    /// Independent re-evaluation of the 5 Go rules on the parsed JSON (gen.py's `match_rule`),
    /// so the serialised lines and the in-memory oracle cannot drift apart.
    fn reparse_expected(out: &[u8]) -> (Vec<(String, String, String)>, u64) {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let mut agent = Vec::new();
        let mut go = 0;
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            if v["stage"] != "ResponseComplete" {
                continue;
            }
            let user = s(&v["user"]["username"]);
            let (res, sub, ns, verb) = (
                s(&v["objectRef"]["resource"]),
                s(&v["objectRef"]["subresource"]),
                s(&v["objectRef"]["namespace"]),
                s(&v["verb"]),
            );
            let internal =
                user.starts_with("system:") && user != "system:admin" && user != "system:masters";
            if internal {
                continue;
            }
            let go_bypass = v["annotations"][BYPASS_KEY] == "true"
                || v["responseObject"]["metadata"]["annotations"][BYPASS_KEY] == "true";
            let req_bypass = v["requestObject"]["metadata"]["annotations"][BYPASS_KEY] == "true";
            let write = ["patch", "update", "create"].contains(&verb.as_str());
            let hits = [
                res == "pods" && sub == "exec",
                write && (go_bypass || req_bypass),
                [
                    "pods",
                    "deployments",
                    "statefulsets",
                    "daemonsets",
                    "replicasets",
                    "jobs",
                    "cronjobs",
                ]
                .contains(&res.as_str())
                    && ["create", "update", "patch"].contains(&verb.as_str()),
                res == "pods" && sub == "portforward",
                res == "secrets" && verb == "get",
            ];
            for (i, hit) in hits.iter().enumerate() {
                if i == 1 && write && go_bypass || i != 1 && *hit {
                    go += 1;
                }
                // Our config-drift: the object itself or its scale (one act, one event).
                let ours = *hit && (i != 2 || sub.is_empty() || sub == "scale");
                if ours && !IGNORE_NAMESPACES.contains(&ns.as_str()) {
                    agent.push((
                        RULES[i].to_string(),
                        s(&v["requestReceivedTimestamp"]),
                        user.clone(),
                    ));
                }
            }
        }
        (agent, go)
    }

    #[test]
    fn oracle_agrees_with_the_serialised_lines() {
        let (out, s) = gen(&GenOptions {
            match_fraction: 0.05,
            human_system_ns_fraction: 0.3,
            ..opts(20_000, 11)
        });
        let (agent, go) = reparse_expected(&out);
        let mine: Vec<_> = s
            .expected
            .iter()
            .map(|e| (e.rule.to_string(), e.timestamp.clone(), e.actor.clone()))
            .collect();
        assert_eq!(mine, agent);
        assert_eq!(s.go_expected_events, go);
        assert_eq!(s.expected_events, agent.len() as u64);
        assert!(
            s.go_expected_events > s.expected_events,
            "some fall in ignored namespaces"
        );
        for rule in RULES {
            assert!(s.by_rule(rule) > 0, "no {rule} events in 20k lines");
        }
        assert_eq!(s.expected_by_rule.iter().sum::<u64>(), s.expected_events);
        // (rule, timestamp) is unique: the soak test identifies events at the sink by it.
        let keys: BTreeSet<_> = s.expected.iter().map(|e| (e.rule, &e.timestamp)).collect();
        assert_eq!(keys.len(), s.expected.len());
    }

    #[test]
    fn match_fraction_within_tolerance() {
        for (fraction, seed) in [(0.05, 1), (0.001, 2), (0.2, 3)] {
            let (_, s) = gen(&GenOptions {
                match_fraction: fraction,
                human_noise_fraction: 0.0,
                human_system_ns_fraction: 0.0,
                ..opts(60_000, seed)
            });
            // Every human matching call yields exactly one matching ResponseComplete line.
            let got = s.go_matching_lines as f64 / s.calls as f64;
            let expect = fraction * s.calls as f64;
            let tolerance = 4.0 * expect.sqrt() + 2.0;
            assert!(
                (s.go_matching_lines as f64 - expect).abs() <= tolerance,
                "fraction {fraction}: {got} of calls matched ({} of {})",
                s.go_matching_lines,
                s.calls
            );
            assert_eq!(
                s.matching_lines, s.go_matching_lines,
                "no ignored namespaces"
            );
        }
        let (_, s) = gen(&GenOptions {
            match_fraction: 0.0,
            human_noise_fraction: 0.0,
            ..opts(20_000, 4)
        });
        assert_eq!((s.expected_events, s.go_expected_events), (0, 0));
    }

    #[test]
    fn one_kind_only() {
        let (_, s) = gen(&GenOptions {
            match_fraction: 1.0,
            human_noise_fraction: 0.0,
            human_system_ns_fraction: 0.0,
            kinds: vec![Kind::PortForward],
            rr_fraction: 0.0,
            ..opts(300, 5)
        });
        // Each call: ResponseStarted + ResponseComplete; port-forward only (one act, one
        // event: our config-drift does not match pods/portforward).
        assert_eq!(s.calls, 150);
        assert_eq!(s.by_rule("port-forward"), 150);
        assert_eq!(s.by_rule("config-drift"), 0);
        assert_eq!(s.expected_events, 150);
    }

    fn key_sets(out: &[u8]) -> (BTreeSet<Vec<String>>, BTreeSet<String>, BTreeSet<String>) {
        let mut top = BTreeSet::new();
        let mut objref = BTreeSet::new();
        let mut user = BTreeSet::new();
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            let o = v.as_object().unwrap();
            top.insert(o.keys().cloned().collect());
            if let Some(r) = o.get("objectRef").and_then(|r| r.as_object()) {
                objref.extend(r.keys().cloned());
            }
            user.extend(o["user"].as_object().unwrap().keys().cloned());
        }
        (top, objref, user)
    }

    /// Same field layout as gen.py (the reference generator in ../shared/tools; a fresh clone
    /// has no ../shared: then this says so and passes, unless HEALERT_REQUIRE_SHARED=1).
    #[test]
    fn same_shape_as_gen_py() {
        let Some(shared) = crate::support::shared_or_skip("gen::tests::same_shape_as_gen_py")
        else {
            return;
        };
        let py = std::process::Command::new("python3")
            .arg(shared.join("tools/gen.py"))
            .args(["--lines", "3000", "--seed", "9", "--match-fraction", "0.05"])
            .output()
            .expect("python3 runs ../shared/tools/gen.py");
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
        let (out, _) = gen(&GenOptions {
            match_fraction: 0.05,
            ..opts(3000, 9)
        });
        let (py_top, py_ref, py_user) = key_sets(&py.stdout);
        let (top, objref, user) = key_sets(&out);
        assert_eq!(top, py_top, "top-level key sets differ from gen.py");
        assert_eq!(user, py_user);
        // We add objectRef.resourceVersion on updates, as kube-apiserver does.
        let extra: Vec<_> = objref.difference(&py_ref).collect();
        assert_eq!(extra, ["resourceVersion"]);
        assert!(py_ref.is_subset(&objref));
    }

    #[test]
    fn long_line_has_the_exact_size() {
        for size in [1000, 64 * 1024, 3 << 20] {
            let l = long_line(size);
            assert_eq!(l.len(), size);
            assert_eq!(l[size - 1], b'\n');
            let v: Value = serde_json::from_slice(&l).unwrap();
            assert_eq!(v["objectRef"]["subresource"], "exec");
        }
        assert!(long_line(10).len() > 10, "rounded up to a valid line");
        serde_json::from_slice::<Value>(&long_line(10)).unwrap();
    }

    #[test]
    fn odd_lines_are_single_lines_and_two_are_valid() {
        let odd = odd_lines();
        for (i, l) in odd.iter().enumerate() {
            assert_eq!(l.iter().filter(|b| **b == b'\n').count(), 1, "odd line {i}");
            assert_eq!(*l.last().unwrap(), b'\n');
        }
        for i in ODD_MATCHING {
            let v: Value = serde_json::from_slice(&odd[i]).unwrap();
            assert_eq!(v["objectRef"]["resource"], "secrets", "odd line {i}");
            assert_eq!(v["verb"], "get");
        }
        assert!(serde_json::from_slice::<Value>(&odd[2]).is_err());
        assert!(serde_json::from_slice::<Value>(&odd[3]).is_err());
        assert!(serde_json::from_slice::<Value>(&odd[7]).is_err());
    }

    #[test]
    fn workload_names_like_go() {
        for (raw, want) in [
            ("payments-api-7d9f8c6b5-x2x4z", "payments-api"),
            ("postgres-0", "postgres"),
            ("fluent-bit-x7k2p", "fluent-bit"),
            // Go's suffix regex also eats a word of 5-10 letters: a known quirk we keep.
            ("node-exporter-bcdfg", "node"),
            ("a-b-c-12345", "a-b-c"),
            ("debug-pod", "debug-pod"),
            ("checkout", "checkout"),
            ("", "unknown"),
        ] {
            assert_eq!(normalise_workload_name(raw), want, "{raw}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_micros() {
        assert_eq!(
            rfc3339_micros(20_089 * 86_400_000_000),
            "2025-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339_micros(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        let (out, _) = gen(&opts(1, 3));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v["requestReceivedTimestamp"]
            .as_str()
            .unwrap()
            .starts_with("2025-01-04T00:00:00."));
    }
}
