//! A small HTTP/1.1 client over `std::net::TcpStream` for the backend (issue 5).
//!
//! [`BackendUrl`] is parsed at start-up by `config`; the client itself is written in issue 5.

use std::fmt;

/// `http://host[:port][/base-path]`, trailing `/` trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// "" or "/base" (never ends with '/').
    pub base_path: String,
}

impl BackendUrl {
    /// Parses the URL or explains how to fix it.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err("https is not supported: the agent is one static binary without TLS. \
                        Use the backend's in-cluster http address (http://SERVICE.NAMESPACE:PORT), \
                        or run a TLS-terminating proxy or sidecar on loopback and point the agent at \
                        http://127.0.0.1:PORT"
                .into());
        } else if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unsupported scheme `{scheme}`: use http://HOST:PORT"
            ));
        } else {
            return Err("missing scheme: write http://HOST:PORT".into());
        };
        if rest.contains(['?', '#']) {
            return Err("a query or fragment is not allowed in the base URL".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(
                "credentials in the URL are not allowed: put the key in HEALERT_API_KEY".into(),
            );
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| "unterminated IPv6 literal: write http://[::1]:8000".to_string())?;
            // Found by fuzzing (`http://[a[b]:1`): brackets hold an IPv6 address and nothing
            // else, so that the URL prints back to itself.
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!(
                    "`[{}]` is not an IPv6 address: write http://[::1]:8000",
                    crate::log::sanitize(h, 60)
                ));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("missing host: write http://HOST:PORT".into());
        }
        // Found by fuzzing (`http://:1:[]:01`): outside brackets a host never contains `:`,
        // `[` or `]`, else the URL would not print back to itself.
        if !authority.starts_with('[') && host.contains([':', '[', ']']) {
            return Err(
                "bad host: an IPv6 address goes in brackets (http://[::1]:8000), \
                 and a host name contains no `:`, `[` or `]`"
                    .into(),
            );
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the host contains spaces or control characters".into());
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port `{p}`: use a number from 1 to 65535"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the path contains spaces or control characters".into());
        }
        Ok(BackendUrl {
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` for connecting (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.base_path)
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn parses_and_trims() {
        let u = BackendUrl::parse("http://backend.ns:8000/api/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("backend.ns", 8000, "/api")
        );
        let u = BackendUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.to_string(), "http://[::1]:9000");
        assert_eq!(BackendUrl::parse("http://h").unwrap().port, 80);
    }

    #[test]
    fn rejects_with_fix() {
        assert!(BackendUrl::parse("https://x").unwrap_err().contains("TLS"));
        assert!(BackendUrl::parse("ftp://x").unwrap_err().contains("ftp"));
        assert!(BackendUrl::parse("localhost:8000")
            .unwrap_err()
            .contains("scheme"));
        assert!(BackendUrl::parse("http://u:p@h")
            .unwrap_err()
            .contains("HEALERT_API_KEY"));
        assert!(BackendUrl::parse("http://h:99999")
            .unwrap_err()
            .contains("port"));
        assert!(BackendUrl::parse("http://:80")
            .unwrap_err()
            .contains("host"));
        // Regression inputs found by fuzz/fuzz_targets/config_values.rs.
        for bad in [
            "http://:1:[]:01/api/",
            "http://::1",
            "http://a]:80",
            "http://[::1]x",
            "http://[a[b]:01",
            "http://[example.com]:80",
        ] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
