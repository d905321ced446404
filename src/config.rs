//! Environment → typed [`Config`]. Every variable the agent reads is listed once in [`VARS`]
//! (name, default, meaning): `--help`, the README table and `.env.example` are checked against
//! it. A bad value stops the agent at start with the variable's name, the value and an example;
//! all bad values are reported together.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::http_client::BackendUrl;
use crate::log;

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
        "longer audit lines are skipped and counted",
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
        "append events the backend refuses (4xx) here, one JSON line each",
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
        "HEALTH_ADDR",
        "(none: off)",
        "address for /healthz, /readyz and /metrics, e.g. 0.0.0.0:8080",
    ),
    ("LOG_FORMAT", "text", "text | json"),
    ("LOG_LEVEL", "info", "debug | info | warn | error"),
];

/// Where to begin reading when no checkpoint applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    End,
    Beginning,
}

/// The API key; its `Debug` and `Display` show only its length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(s: String) -> ApiKey {
        ApiKey(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", log::Redacted(&self.0))
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", log::Redacted(&self.0))
    }
}

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
    pub health_addr: Option<String>,
    pub log_format: log::Format,
    pub log_level: log::Level,
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

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, Vec<ConfigError>> {
        Config::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads variables through `get` (tests pass a map). Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
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

        let url_text = get("HEALERT_BACKEND_URL").unwrap_or_else(|| "http://localhost:8000".into());
        let backend_url = match BackendUrl::parse(url_text.trim()) {
            Ok(u) => Some(u),
            Err(problem) => {
                err(
                    "HEALERT_BACKEND_URL",
                    &url_text,
                    problem,
                    "http://healert-backend.healert-system:8000",
                );
                None
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
                    Some(ApiKey(k))
                }
            }
        };

        let audit_log_path = PathBuf::from(
            get("AUDIT_LOG_PATH").unwrap_or_else(|| "/var/log/kubernetes/audit/audit.log".into()),
        );
        let rules_path = get("RULES_PATH").map(PathBuf::from);
        let entity_namespace = get("ENTITY_NAMESPACE").unwrap_or_else(|| "default".into());
        if !is_entity_safe(&entity_namespace) {
            err(
                "ENTITY_NAMESPACE",
                &entity_namespace,
                "must be letters, digits, '-' or '_' (it becomes part of entity refs)".into(),
                "default",
            );
        }
        let k8s_namespace = get("K8S_NAMESPACE").map(|s| s.trim().to_string());
        let checkpoint_path = get("CHECKPOINT_PATH").map(PathBuf::from);

        let start_at = match get("START_AT").map(|s| s.trim().to_ascii_lowercase()) {
            None => StartAt::End,
            Some(s) if s == "end" => StartAt::End,
            Some(s) if s == "beginning" || s == "start" => StartAt::Beginning,
            Some(s) => {
                err("START_AT", &s, "must be `end` or `beginning`".into(), "end");
                StartAt::End
            }
        };

        let duration = |var: &'static str, default: Duration, example: &str| match get(var) {
            None => default,
            Some(v) => match parse_duration(&v) {
                Ok(d) => d,
                Err(p) => {
                    err(var, &v, p, example);
                    default
                }
            },
        };
        let poll_interval = duration("POLL_INTERVAL", Duration::from_millis(250), "250ms");
        let http_timeout = duration("HTTP_TIMEOUT", Duration::from_secs(10), "10s");
        let shutdown_grace = duration("SHUTDOWN_GRACE", Duration::from_secs(20), "20s");
        if poll_interval.is_zero() {
            err(
                "POLL_INTERVAL",
                "0",
                "must be greater than zero".into(),
                "250ms",
            );
        }
        if http_timeout < Duration::from_millis(100) {
            err(
                "HTTP_TIMEOUT",
                &format!("{http_timeout:?}"),
                "must be at least 100ms".into(),
                "10s",
            );
        }

        let max_line_bytes = match get("MAX_LINE_BYTES") {
            None => 16 << 20,
            Some(v) => match parse_size(&v) {
                Ok(n) if (1024..=(1 << 30)).contains(&n) => n as usize,
                Ok(_) => {
                    err(
                        "MAX_LINE_BYTES",
                        &v,
                        "must be between 1KiB and 1GiB".into(),
                        "16MiB",
                    );
                    16 << 20
                }
                Err(p) => {
                    err("MAX_LINE_BYTES", &v, p, "16MiB");
                    16 << 20
                }
            },
        };

        let number =
            |var: &'static str, default: u64, min: u64, max: u64, example: &str| match get(var) {
                None => default,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        err(
                            var,
                            &v,
                            format!("must be a whole number from {min} to {max}"),
                            example,
                        );
                        default
                    }
                },
            };
        let queue_capacity = number("QUEUE_CAPACITY", 10_000, 1, 10_000_000, "10000") as usize;
        let max_events_per_minute = number("MAX_EVENTS_PER_MINUTE", 0, 0, 1_000_000, "50") as u32;

        let dead_letter_path = get("DEAD_LETTER_PATH").map(PathBuf::from);
        let health_addr = get("HEALTH_ADDR").map(|s| s.trim().to_string());
        if let Some(a) = &health_addr {
            if a.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                err("HEALTH_ADDR", a, "must be HOST:PORT".into(), "0.0.0.0:8080");
            }
        }

        let log_format = match get("LOG_FORMAT") {
            None => log::Format::Text,
            Some(v) => log::Format::parse(&v).unwrap_or_else(|| {
                err("LOG_FORMAT", &v, "must be `text` or `json`".into(), "json");
                log::Format::Text
            }),
        };
        let log_level = match get("LOG_LEVEL") {
            None => log::Level::Info,
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

        let errs = errs.into_inner();
        match backend_url {
            Some(backend_url) if errs.is_empty() => Ok(Config {
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
                health_addr,
                log_format,
                log_level,
            }),
            _ => Err(errs),
        }
    }

    /// The rules file to load: RULES_PATH, else ./rules.yaml.
    pub fn rules_path_or_default(&self) -> PathBuf {
        self.rules_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("rules.yaml"))
    }
}

fn is_entity_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `250ms`, `10s`, `2m`, `1h`; a bare number means seconds (fractions allowed: `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| "not a duration: use a number with ms, s, m or h".to_string())?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("unknown unit `{u}`: use ms, s, m or h")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 7.0 * 86_400.0 {
        return Err("too long: at most 7 days".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

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
}
