//! Environment → typed [`Config`]: the only module that reads the environment. Every variable
//! the agent reads is listed once in [`VARS`] (name, default, meaning): `--help`, the README
//! table and `.env.example` are checked against it, and the defaults the code uses are parsed
//! from it, so the table cannot drift from the behaviour. A bad value stops the agent at start
//! with the variable's name, the value and an example; all bad values are reported together.
//!
//! `run` refuses to start on any bad value; `replay` and `validate` get a view of the same
//! parsed [`Config`] and refuse only on the variables they use ([`Config::load`] returns the
//! configuration with defaults in place of bad values, and the errors).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::deliver::http_client::{ApiKey, BackendUrl, Client};
use crate::deliver::{DeliveryOptions, RunMode};
use crate::detect::cloud::Format;
use crate::detect::DetectOptions;
use crate::operate::log;
use crate::operate::metrics::AuditSource;
use crate::source::follow::{FollowOptions, StartAt};
use crate::webhook::Token;

/// (name, default, meaning) of every environment variable the agent reads.
pub const VARS: &[(&str, &str, &str)] = &[
    (
        "HEALERT_BACKEND_URL",
        "http://localhost:8000",
        "Healert backend base URL (http only; events go to {url}/events)",
    ),
    (
        "HEALERT_API_KEY",
        "(none)",
        "bearer key for the backend; only its length is ever logged",
    ),
    (
        "AUDIT_LOG_PATH",
        "/var/log/kubernetes/audit/audit.log",
        "the kube-apiserver audit log to follow",
    ),
    ("RULES_PATH", "./rules.yaml", "detection rules file"),
    (
        "ENTITY_NAMESPACE",
        "default",
        "Backstage namespace for cluster-scoped objects",
    ),
    (
        "K8S_NAMESPACE",
        "(none)",
        "the agent's own namespace, excluded from every rule",
    ),
    (
        "CHECKPOINT_PATH",
        "(none: no checkpoint)",
        "file recording the first unacknowledged byte",
    ),
    (
        "START_AT",
        "end",
        "where to start without a usable checkpoint: end | beginning",
    ),
    (
        "POLL_INTERVAL",
        "250ms",
        "wait at end of file before looking again (a quarter of it for 1 s after new lines)",
    ),
    (
        "MAX_LINE_BYTES",
        "16MiB",
        "longer lines are read as they stream past, keeping only what the rules read",
    ),
    (
        "QUEUE_CAPACITY",
        "10000",
        "events buffered between detection and delivery",
    ),
    (
        "HTTP_TIMEOUT",
        "10s",
        "deadline for one whole backend request",
    ),
    (
        "DEAD_LETTER_PATH",
        "(none)",
        "append events the backend refuses for their content (400, 422) here, one JSON line each",
    ),
    (
        "MAX_EVENTS_PER_MINUTE",
        "0",
        "client-side pacing of POST /events (0 = off)",
    ),
    (
        "SHUTDOWN_GRACE",
        "20s",
        "on SIGTERM, time allowed to deliver what is queued",
    ),
    (
        "SUPPRESS_WINDOW",
        "10m",
        "repeats of one rule by one actor on one entity within this window are sent once, then summarised (0 = off; a rule's `suppress:` wins)",
    ),
    (
        "HEALTH_ADDR",
        "(none: off)",
        "address for /healthz, /readyz and /metrics, e.g. 0.0.0.0:8080 (port 0: any free port; the banner names it)",
    ),
    ("LOG_FORMAT", "text", "text | json"),
    ("LOG_LEVEL", "info", "debug | info | warn | error"),
    (
        "HEALERT_MODE",
        "(none)",
        "local | daemonset | webhook: which fix a refused API key's message gives (healert.sh, daemonset.yaml and the webhook Deployment set it)",
    ),
    (
        "AUDIT_SOURCE",
        "file",
        "where audit events come from: file (AUDIT_LOG_PATH) | webhook (kube-apiserver's audit webhook) | stdin (AUDIT_LOG_PATH=- too)",
    ),
    (
        "AUDIT_FORMAT",
        "auto",
        "stdin and replay: auto | audit | eks | gke | aks (auto decides per record)",
    ),
    (
        "AUDIT_WEBHOOK_ADDR",
        "0.0.0.0:8765",
        "webhook: address the audit webhook listens on (plain http)",
    ),
    (
        "AUDIT_WEBHOOK_TOKEN",
        "(none)",
        "webhook: the bearer token the apiserver's webhook kubeconfig carries; only its length is ever logged",
    ),
    (
        "AUDIT_WEBHOOK_INSECURE_NO_TOKEN",
        "false",
        "webhook: true accepts batches without a token (anyone who can reach the port can inject events)",
    ),
    (
        "AUDIT_WEBHOOK_MAX_BODY",
        "64MiB",
        "webhook: largest batch accepted (413 beyond)",
    ),
    (
        "SPOOL_PATH",
        "/var/lib/healert-agent/spool",
        "webhook: directory (created if missing) where accepted batches' friction events are kept until delivered",
    ),
    (
        "SPOOL_MAX_BYTES",
        "256MiB",
        "webhook: undelivered spooled bytes before batches are answered 429",
    ),
];

#[derive(Debug, Clone)]
pub struct Config {
    pub backend_url: BackendUrl,
    pub api_key: Option<ApiKey>,
    pub audit_log_path: PathBuf,
    /// `None` when RULES_PATH is unset (callers fall back to ./rules.yaml and say so).
    pub rules_path: Option<PathBuf>,
    pub entity_namespace: String,
    pub k8s_namespace: Option<String>,
    pub checkpoint_path: Option<PathBuf>,
    pub start_at: StartAt,
    pub poll_interval: Duration,
    pub max_line_bytes: usize,
    pub queue_capacity: usize,
    pub http_timeout: Duration,
    pub dead_letter_path: Option<PathBuf>,
    pub max_events_per_minute: u32,
    pub shutdown_grace: Duration,
    pub suppress_window: Duration,
    pub health_addr: Option<String>,
    pub log_format: log::Format,
    pub log_level: log::Level,
    pub mode: RunMode,
    pub audit_source: AuditSource,
    pub audit_format: Format,
    pub webhook_addr: String,
    pub webhook_token: Option<Token>,
    pub webhook_no_token: bool,
    pub webhook_max_body: u64,
    pub spool_path: PathBuf,
    pub spool_max_bytes: u64,
}

/// One bad variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    /// The value as given (never filled for HEALERT_API_KEY).
    pub value: String,
    pub problem: String,
    pub example: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?}: {} (example: {}={})",
            self.var,
            log::sanitize(&self.value, 200),
            self.problem,
            self.var,
            self.example
        )
    }
}

/// The default of `var` as [`VARS`] gives it (the one place defaults are written).
fn default_of(var: &str) -> &'static str {
    VARS.iter()
        .find(|v| v.0 == var)
        .map(|v| v.1)
        .unwrap_or_default()
}

impl Config {
    /// Reads the process environment; every bad value is an error.
    pub fn from_env() -> Result<Config, Vec<ConfigError>> {
        let (cfg, errs) = Config::load();
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }

    /// Reads the process environment: the configuration, with the default in place of each bad
    /// value, and the errors (a command refuses to start on those that concern it).
    pub fn load() -> (Config, Vec<ConfigError>) {
        Config::parse(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads variables through `get` (tests pass a map); every bad value is an error.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
        let (cfg, errs) = Config::parse(get);
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }

    /// Reads variables through `get`. Empty values count as unset.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> (Config, Vec<ConfigError>) {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let errs = std::cell::RefCell::new(Vec::new());
        let err = |var: &'static str, value: &str, problem: String, example: &str| {
            errs.borrow_mut().push(ConfigError {
                var,
                value: value.to_string(),
                problem,
                example: example.to_string(),
            })
        };

        let default_url = || BackendUrl::parse(default_of("HEALERT_BACKEND_URL"));
        let url_text = get("HEALERT_BACKEND_URL");
        let backend_url = match url_text.as_deref().map(|u| BackendUrl::parse(u.trim())) {
            None => default_url(),
            Some(Ok(u)) => Ok(u),
            Some(Err(problem)) => {
                err(
                    "HEALERT_BACKEND_URL",
                    url_text.as_deref().unwrap_or_default(),
                    problem,
                    "http://healert-backend.healert-system:8000",
                );
                default_url()
            }
        };
        // The default is a constant URL that parses; a failure here is a bug in VARS.
        let backend_url = match backend_url {
            Ok(u) => u,
            Err(problem) => {
                err(
                    "HEALERT_BACKEND_URL",
                    default_of("HEALERT_BACKEND_URL"),
                    format!("the built-in default does not parse: {problem}"),
                    "http://healert-backend.healert-system:8000",
                );
                BackendUrl::localhost()
            }
        };

        let api_key = match get("HEALERT_API_KEY") {
            None => None,
            Some(k) => {
                let k = k.trim().to_string();
                if k.chars().any(|c| c.is_control() || c == ' ') {
                    errs.borrow_mut().push(ConfigError {
                        var: "HEALERT_API_KEY",
                        value: format!("<redacted, {} bytes>", k.len()),
                        problem: "contains spaces or control characters; a bearer key is one token (was the Secret created with a trailing newline inside quotes?)".into(),
                        example: "<the key printed by the backend, no spaces>".into(),
                    });
                    None
                } else {
                    Some(ApiKey::new(k))
                }
            }
        };

        let audit_log_path = PathBuf::from(
            get("AUDIT_LOG_PATH").unwrap_or_else(|| default_of("AUDIT_LOG_PATH").into()),
        );
        let rules_path = get("RULES_PATH").map(PathBuf::from);
        let mut entity_namespace = get("ENTITY_NAMESPACE")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| default_of("ENTITY_NAMESPACE").into());
        if !is_entity_safe(&entity_namespace) {
            err(
                "ENTITY_NAMESPACE",
                &entity_namespace,
                "must be letters, digits, '-' or '_' (it becomes part of entity refs)".into(),
                "default",
            );
            entity_namespace = default_of("ENTITY_NAMESPACE").into();
        }
        let k8s_namespace = get("K8S_NAMESPACE").map(|s| s.trim().to_string());
        let checkpoint_path = get("CHECKPOINT_PATH").map(PathBuf::from);

        let start_at = match get("START_AT")
            .unwrap_or_else(|| default_of("START_AT").into())
            .trim()
            .to_ascii_lowercase()
        {
            s if s == "end" => StartAt::End,
            s if s == "beginning" || s == "start" => StartAt::Beginning,
            s => {
                err("START_AT", &s, "must be `end` or `beginning`".into(), "end");
                StartAt::End
            }
        };

        // Defaults come from VARS and parse with the same functions; a failure is a bug there.
        let duration = |var: &'static str, min: Duration, example: &str| {
            let fallback = parse_duration(default_of(var)).unwrap_or(min);
            match get(var) {
                None => fallback,
                Some(v) => match parse_duration(&v) {
                    Ok(d) if d >= min => d,
                    Ok(_) => {
                        let what = if min.is_zero() {
                            "must be greater than zero".to_string()
                        } else {
                            format!("must be at least {}", human_duration(min))
                        };
                        err(var, &v, what, example);
                        fallback
                    }
                    Err(p) => {
                        err(var, &v, p, example);
                        fallback
                    }
                },
            }
        };
        let poll_interval = duration("POLL_INTERVAL", Duration::from_millis(1), "250ms");
        let http_timeout = duration("HTTP_TIMEOUT", Duration::from_millis(100), "10s");
        let shutdown_grace = duration("SHUTDOWN_GRACE", Duration::ZERO, "20s");
        let suppress_window = duration("SUPPRESS_WINDOW", Duration::ZERO, "10m");

        let max_line_bytes = {
            let fallback = parse_size(default_of("MAX_LINE_BYTES"))
                .map(|n| n as usize)
                .unwrap_or(crate::source::lines::DEFAULT_MAX_LINE_BYTES);
            match get("MAX_LINE_BYTES") {
                None => fallback,
                Some(v) => match parse_size(&v) {
                    Ok(n) if (1024..=(1 << 30)).contains(&n) => n as usize,
                    Ok(_) => {
                        err(
                            "MAX_LINE_BYTES",
                            &v,
                            "must be between 1KiB and 1GiB".into(),
                            "16MiB",
                        );
                        fallback
                    }
                    Err(p) => {
                        err("MAX_LINE_BYTES", &v, p, "16MiB");
                        fallback
                    }
                },
            }
        };

        let number = |var: &'static str, min: u64, max: u64, example: &str| {
            let fallback = default_of(var).parse::<u64>().unwrap_or(min);
            match get(var) {
                None => fallback,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        err(
                            var,
                            &v,
                            format!("must be a whole number from {min} to {max}"),
                            example,
                        );
                        fallback
                    }
                },
            }
        };
        let queue_capacity = number("QUEUE_CAPACITY", 1, 10_000_000, "10000") as usize;
        let max_events_per_minute = number("MAX_EVENTS_PER_MINUTE", 0, 1_000_000, "50") as u32;

        let dead_letter_path = get("DEAD_LETTER_PATH").map(PathBuf::from);
        let mut health_addr = get("HEALTH_ADDR").map(|s| s.trim().to_string());
        if let Some(a) = &health_addr {
            if a.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                err("HEALTH_ADDR", a, "must be HOST:PORT".into(), "0.0.0.0:8080");
                health_addr = None;
            }
        }

        let log_format = match get("LOG_FORMAT") {
            None => log::Format::parse(default_of("LOG_FORMAT")).unwrap_or(log::Format::Text),
            Some(v) => log::Format::parse(&v).unwrap_or_else(|| {
                err("LOG_FORMAT", &v, "must be `text` or `json`".into(), "json");
                log::Format::Text
            }),
        };
        let log_level = match get("LOG_LEVEL") {
            None => log::Level::parse(default_of("LOG_LEVEL")).unwrap_or(log::Level::Info),
            Some(v) => log::Level::parse(&v).unwrap_or_else(|| {
                err(
                    "LOG_LEVEL",
                    &v,
                    "must be debug, info, warn or error".into(),
                    "info",
                );
                log::Level::Info
            }),
        };

        let mode = match get("HEALERT_MODE") {
            None => RunMode::Unspecified,
            Some(v) => RunMode::parse(&v).unwrap_or_else(|| {
                err(
                    "HEALERT_MODE",
                    &v,
                    "must be `local`, `daemonset` or `webhook`".into(),
                    "daemonset",
                );
                RunMode::Unspecified
            }),
        };
        let mut audit_source = match get("AUDIT_SOURCE") {
            None => AuditSource::parse(default_of("AUDIT_SOURCE")).unwrap_or(AuditSource::File),
            Some(v) => AuditSource::parse(&v).unwrap_or_else(|| {
                err(
                    "AUDIT_SOURCE",
                    &v,
                    "must be `file`, `webhook` or `stdin`".into(),
                    "webhook",
                );
                AuditSource::File
            }),
        };
        if audit_log_path.as_os_str() == "-" {
            match audit_source {
                AuditSource::File | AuditSource::Stdin => audit_source = AuditSource::Stdin,
                AuditSource::Webhook => err(
                    "AUDIT_LOG_PATH",
                    "-",
                    "means stdin, but AUDIT_SOURCE=webhook: unset one of them".into(),
                    "/var/log/kubernetes/audit/audit.log",
                ),
            }
        }
        let audit_format = match get("AUDIT_FORMAT") {
            None => Format::parse(default_of("AUDIT_FORMAT")).unwrap_or_default(),
            Some(v) => Format::parse(&v).unwrap_or_else(|| {
                err(
                    "AUDIT_FORMAT",
                    &v,
                    "must be auto, audit, eks, gke or aks".into(),
                    "eks",
                );
                Format::Auto
            }),
        };
        let mut webhook_addr = get("AUDIT_WEBHOOK_ADDR")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| default_of("AUDIT_WEBHOOK_ADDR").into());
        if webhook_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            err(
                "AUDIT_WEBHOOK_ADDR",
                &webhook_addr,
                "must be HOST:PORT".into(),
                "0.0.0.0:8765",
            );
            webhook_addr = default_of("AUDIT_WEBHOOK_ADDR").into();
        }
        let webhook_token = match get("AUDIT_WEBHOOK_TOKEN") {
            None => None,
            Some(t) => {
                let t = t.trim().to_string();
                if t.chars().any(|c| c.is_control() || c == ' ') {
                    errs.borrow_mut().push(ConfigError {
                        var: "AUDIT_WEBHOOK_TOKEN",
                        value: format!("<redacted, {} bytes>", t.len()),
                        problem:
                            "contains spaces or control characters; a bearer token is one word"
                                .into(),
                        example: "<the token of the apiserver's webhook kubeconfig>".into(),
                    });
                    None
                } else {
                    Some(Token::new(t))
                }
            }
        };
        let webhook_no_token = match get("AUDIT_WEBHOOK_INSECURE_NO_TOKEN") {
            None => false,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => {
                    err(
                        "AUDIT_WEBHOOK_INSECURE_NO_TOKEN",
                        &v,
                        "must be true or false".into(),
                        "false",
                    );
                    false
                }
            },
        };
        if audit_source == AuditSource::Webhook && webhook_token.is_none() && !webhook_no_token {
            let given = get("AUDIT_WEBHOOK_TOKEN").is_some();
            if !given {
                err(
                    "AUDIT_WEBHOOK_TOKEN",
                    "",
                    "is required with AUDIT_SOURCE=webhook (requests without it get 401); to accept batches from anyone who can reach the port, set AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true instead".into(),
                    "$(head -c 32 /dev/urandom | base64)",
                );
            }
        }
        let size = |var: &'static str, min: u64, max: u64, example: &str| {
            let fallback = parse_size(default_of(var)).unwrap_or(min);
            match get(var) {
                None => fallback,
                Some(v) => match parse_size(&v) {
                    Ok(n) if (min..=max).contains(&n) => n,
                    Ok(_) => {
                        err(
                            var,
                            &v,
                            format!(
                                "must be between {} and {}",
                                human_size(min),
                                human_size(max)
                            ),
                            example,
                        );
                        fallback
                    }
                    Err(p) => {
                        err(var, &v, p, example);
                        fallback
                    }
                },
            }
        };
        let webhook_max_body = size("AUDIT_WEBHOOK_MAX_BODY", 64 << 10, 4 << 30, "64MiB");
        let spool_max_bytes = size("SPOOL_MAX_BYTES", 64 << 10, 1 << 40, "256MiB");
        let spool_path =
            PathBuf::from(get("SPOOL_PATH").unwrap_or_else(|| default_of("SPOOL_PATH").into()));

        let cfg = Config {
            backend_url,
            api_key,
            audit_log_path,
            rules_path,
            entity_namespace,
            k8s_namespace,
            checkpoint_path,
            start_at,
            poll_interval,
            max_line_bytes,
            queue_capacity,
            http_timeout,
            dead_letter_path,
            max_events_per_minute,
            shutdown_grace,
            suppress_window,
            health_addr,
            log_format,
            log_level,
            mode,
            audit_source,
            audit_format,
            webhook_addr,
            webhook_token,
            webhook_no_token,
            webhook_max_body,
            spool_path,
            spool_max_bytes,
        };
        (cfg, errs.into_inner())
    }

    /// The rules file to load: RULES_PATH, else ./rules.yaml.
    pub fn rules_path_or_default(&self) -> PathBuf {
        self.rules_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(default_of("RULES_PATH")))
    }

    /// The engine's environment-dependent choices (ENTITY_NAMESPACE, K8S_NAMESPACE).
    pub fn detect_options(&self) -> DetectOptions {
        DetectOptions {
            entity_namespace: self.entity_namespace.clone(),
            own_namespace: self.k8s_namespace.clone(),
        }
    }

    /// What the follower follows (AUDIT_LOG_PATH, POLL_INTERVAL, MAX_LINE_BYTES, START_AT).
    pub fn follow_options(&self) -> FollowOptions {
        FollowOptions {
            path: self.audit_log_path.clone(),
            poll_interval: self.poll_interval,
            max_line_bytes: self.max_line_bytes,
            start_at: self.start_at,
        }
    }

    /// The webhook source's checkpoint: CHECKPOINT_PATH, else `checkpoint` in SPOOL_PATH (the
    /// spool is only safe to shorten with one).
    pub fn spool_checkpoint_path(&self) -> PathBuf {
        self.checkpoint_path
            .clone()
            .unwrap_or_else(|| self.spool_path.join("checkpoint"))
    }

    /// The production delivery policy with the operator's knobs (MAX_EVENTS_PER_MINUTE,
    /// DEAD_LETTER_PATH, HEALERT_MODE), checking the backend and the key before the first event.
    pub fn delivery_options(&self) -> DeliveryOptions {
        DeliveryOptions {
            max_events_per_minute: self.max_events_per_minute,
            dead_letter_path: self.dead_letter_path.clone(),
            startup_check: true,
            mode: self.mode,
            ..DeliveryOptions::default()
        }
    }

    /// Where the suppression state is kept: beside the checkpoint (`CHECKPOINT_PATH.suppress`).
    pub fn suppress_state_path(&self) -> Option<PathBuf> {
        self.checkpoint_path.as_ref().map(|p| {
            let mut s = p.as_os_str().to_owned();
            s.push(".suppress");
            PathBuf::from(s)
        })
    }

    /// The backend client (HEALERT_BACKEND_URL, HEALERT_API_KEY, HTTP_TIMEOUT).
    pub fn client(&self) -> Client {
        Client::new(
            self.backend_url.clone(),
            self.api_key.clone(),
            self.http_timeout,
        )
    }
}

/// The variables `replay` reads (with `--send`, also the delivery ones): it refuses to start
/// on a bad value of these, exactly as `run` would, and ignores the others.
pub fn replay_vars(send: bool) -> &'static [&'static str] {
    const SCAN: &[&str] = &[
        "RULES_PATH",
        "ENTITY_NAMESPACE",
        "K8S_NAMESPACE",
        "MAX_LINE_BYTES",
        "SUPPRESS_WINDOW",
        "AUDIT_FORMAT",
    ];
    const SEND: &[&str] = &[
        "RULES_PATH",
        "ENTITY_NAMESPACE",
        "K8S_NAMESPACE",
        "MAX_LINE_BYTES",
        "SUPPRESS_WINDOW",
        "AUDIT_FORMAT",
        "HEALERT_BACKEND_URL",
        "HEALERT_API_KEY",
        "QUEUE_CAPACITY",
        "HTTP_TIMEOUT",
        "DEAD_LETTER_PATH",
        "MAX_EVENTS_PER_MINUTE",
        "SHUTDOWN_GRACE",
        "LOG_FORMAT",
        "LOG_LEVEL",
        "HEALERT_MODE",
    ];
    if send {
        SEND
    } else {
        SCAN
    }
}

/// `64MiB`, `1GiB`, `4096`: a size as `parse_size` reads it back.
pub fn human_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

fn is_entity_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub use crate::operate::clock::{human_duration, parse_duration};

/// `16MiB`, `64KiB`, `1GiB`, `500KB`, or a bare number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "not a size: use a number of bytes, or KiB, MiB, GiB".to_string())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" | "K" | "k" => 1 << 10,
        "MiB" | "Mi" | "M" => 1 << 20,
        "GiB" | "Gi" | "G" => 1 << 30,
        "TiB" | "Ti" | "T" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("unknown unit `{u}`: use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, Vec<ConfigError>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.max_line_bytes, 16 << 20);
        assert_eq!(c.queue_capacity, 10_000);
        assert_eq!(c.start_at, StartAt::End);
        assert_eq!(c.entity_namespace, "default");
        assert!(c.api_key.is_none() && c.checkpoint_path.is_none());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 apples").is_err());
    }

    #[test]
    fn every_bad_value_is_reported_with_name_value_and_example() {
        let e = cfg(&[
            ("POLL_INTERVAL", "fast"),
            ("QUEUE_CAPACITY", "-3"),
            ("START_AT", "middle"),
            ("LOG_FORMAT", "xml"),
        ])
        .unwrap_err();
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text
            .iter()
            .any(|t| t.starts_with("POLL_INTERVAL=\"fast\": ")
                && t.ends_with("(example: POLL_INTERVAL=250ms)")));
        assert!(text.iter().any(|t| t.contains("QUEUE_CAPACITY=\"-3\"")));
        assert!(text.iter().any(|t| t.contains("START_AT=\"middle\"")));
        assert!(text.iter().any(|t| t.contains("LOG_FORMAT=\"xml\"")));
    }

    #[test]
    fn api_key_never_shown() {
        let c = cfg(&[("HEALERT_API_KEY", "s3cr3t-key\n")]).unwrap();
        assert_eq!(c.api_key.as_ref().map(|k| k.expose()), Some("s3cr3t-key"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let e = cfg(&[("HEALERT_API_KEY", "two words")]).unwrap_err();
        assert!(!e[0].to_string().contains("two"));
    }

    #[test]
    fn defaults_are_those_vars_shows() {
        let c = cfg(&[]).unwrap();
        for (name, default, _) in VARS {
            let shown = match *name {
                "HEALERT_BACKEND_URL" => c.backend_url.to_string(),
                "AUDIT_LOG_PATH" => c.audit_log_path.display().to_string(),
                "RULES_PATH" => c.rules_path_or_default().display().to_string(),
                "ENTITY_NAMESPACE" => c.entity_namespace.clone(),
                "START_AT" => "end".into(),
                "POLL_INTERVAL" => human_duration(c.poll_interval),
                "HTTP_TIMEOUT" => human_duration(c.http_timeout),
                "SHUTDOWN_GRACE" => human_duration(c.shutdown_grace),
                "SUPPRESS_WINDOW" => human_duration(c.suppress_window),
                "MAX_LINE_BYTES" => format!("{}MiB", c.max_line_bytes >> 20),
                "QUEUE_CAPACITY" => c.queue_capacity.to_string(),
                "MAX_EVENTS_PER_MINUTE" => c.max_events_per_minute.to_string(),
                "LOG_FORMAT" => "text".into(),
                "LOG_LEVEL" => c.log_level.as_str().into(),
                "AUDIT_SOURCE" => c.audit_source.as_str().into(),
                "AUDIT_FORMAT" => c.audit_format.as_str().into(),
                "AUDIT_WEBHOOK_ADDR" => c.webhook_addr.clone(),
                "AUDIT_WEBHOOK_INSECURE_NO_TOKEN" => c.webhook_no_token.to_string(),
                "AUDIT_WEBHOOK_MAX_BODY" => human_size(c.webhook_max_body),
                "SPOOL_PATH" => c.spool_path.display().to_string(),
                "SPOOL_MAX_BYTES" => human_size(c.spool_max_bytes),
                // No default value: off or unset.
                _ => {
                    assert!(default.starts_with("(none"), "{name}: {default}");
                    continue;
                }
            };
            let want = default.trim_start_matches("./");
            assert_eq!(shown.trim_start_matches("./"), want, "{name}");
        }
        assert_eq!(c.start_at, StartAt::End);
        assert_eq!(c.log_format, log::Format::Text);
        assert_eq!(
            c.max_line_bytes,
            crate::source::lines::DEFAULT_MAX_LINE_BYTES
        );
    }

    #[test]
    fn sources_and_the_webhook_token() {
        let c = cfg(&[("AUDIT_LOG_PATH", "-")]).unwrap();
        assert_eq!(c.audit_source, AuditSource::Stdin);
        let c = cfg(&[("AUDIT_SOURCE", "Stdin"), ("AUDIT_FORMAT", "GKE")]).unwrap();
        assert_eq!(
            (c.audit_source, c.audit_format),
            (AuditSource::Stdin, Format::Gke)
        );
        // The webhook needs a token, or an explicit opt-out.
        let e = cfg(&[("AUDIT_SOURCE", "webhook")]).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].to_string()
                .starts_with("AUDIT_WEBHOOK_TOKEN=\"\": is required"),
            "{}",
            e[0]
        );
        assert!(e[0]
            .to_string()
            .contains("AUDIT_WEBHOOK_INSECURE_NO_TOKEN=true"));
        let c = cfg(&[
            ("AUDIT_SOURCE", "webhook"),
            ("AUDIT_WEBHOOK_INSECURE_NO_TOKEN", "true"),
        ])
        .unwrap();
        assert!(c.webhook_no_token && c.webhook_token.is_none());
        let c = cfg(&[
            ("AUDIT_SOURCE", "webhook"),
            ("AUDIT_WEBHOOK_TOKEN", "t0k3n-secret\n"),
            ("SPOOL_PATH", "/tmp/s"),
        ])
        .unwrap();
        assert_eq!(
            c.webhook_token.as_ref().map(|t| t.expose()),
            Some("t0k3n-secret")
        );
        assert!(!format!("{c:?}").contains("t0k3n"));
        assert_eq!(
            c.spool_checkpoint_path(),
            PathBuf::from("/tmp/s/checkpoint")
        );
        let e = cfg(&[
            ("AUDIT_SOURCE", "kafka"),
            ("AUDIT_FORMAT", "splunk"),
            ("AUDIT_WEBHOOK_ADDR", "8765"),
            ("AUDIT_WEBHOOK_TOKEN", "two words"),
            ("AUDIT_WEBHOOK_MAX_BODY", "1KiB"),
            ("SPOOL_MAX_BYTES", "lots"),
            ("AUDIT_WEBHOOK_INSECURE_NO_TOKEN", "maybe"),
        ])
        .unwrap_err();
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 7, "{text:?}");
        assert!(text.iter().all(|t| !t.contains("two words")));
        assert!(
            text.iter()
                .any(|t| t
                    .contains("AUDIT_WEBHOOK_MAX_BODY=\"1KiB\": must be between 64KiB and 4GiB"))
        );
        let e = cfg(&[
            ("AUDIT_SOURCE", "webhook"),
            ("AUDIT_LOG_PATH", "-"),
            ("AUDIT_WEBHOOK_INSECURE_NO_TOKEN", "true"),
        ])
        .unwrap_err();
        assert!(e[0]
            .to_string()
            .contains("means stdin, but AUDIT_SOURCE=webhook"));
    }

    #[test]
    fn a_bad_value_still_leaves_a_usable_configuration() {
        let (c, errs) = Config::parse(|k| match k {
            "ENTITY_NAMESPACE" => Some("a/b".into()),
            "LOG_FORMAT" => Some("json".into()),
            _ => None,
        });
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].var, "ENTITY_NAMESPACE");
        assert_eq!(c.entity_namespace, "default");
        assert_eq!(c.log_format, log::Format::Json);
        assert!(replay_vars(false).contains(&"ENTITY_NAMESPACE"));
    }
}
