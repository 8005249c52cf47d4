//! Browser-facing guards of the HTTP API: cross-site requests (CSRF) and DNS rebinding. In:
//! a request's `Host` and `Origin` headers and the operator's allowed names. Out: the
//! request passes, or a 403 naming the header that was refused.
//!
//! - A request whose `Origin` is not the server's own (the `Host` it was sent to) or one the
//!   operator allows is refused: a page on another site cannot make a visitor's browser
//!   create, drop, ingest or query. (Form posts carry content types the API refuses with
//!   415 anyway; this also covers `fetch` with any content type.)
//! - While authentication is off, `Host` must be an IP address, `localhost`, or a name the
//!   operator allows: a page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) sends
//!   its own domain as `Host` and is refused.

/// The names the operator allows besides the server's own.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Host names (without port) accepted while authentication is off, besides IP
    /// addresses and `localhost` (`[server] allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) allowed besides the server's own
    /// (`[server] allowed_origins`).
    pub allowed_origins: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("cross-site request refused: Origin {origin:?} is not this server ({host:?}); allow it with [server] allowed_origins")]
    CrossSite { origin: String, host: String },
    #[error("Host {0:?} is not an address of this server; while authentication is off only IP addresses, localhost and [server] allowed_hosts are accepted (DNS rebinding guard)")]
    Host(String),
}

impl GuardError {
    /// The reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GuardError::CrossSite { .. } => "cross_site_origin",
            GuardError::Host(_) => "host_not_allowed",
        }
    }
}

/// The host part of a `Host` header value (`name`, `1.2.3.4`, `[::1]`), lowercased.
fn host_name(host: &str) -> String {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h, |(n, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                h
            }
        })
    };
    name.to_ascii_lowercase()
}

/// `scheme://host[:port]` → `host[:port]`, lowercased.
fn origin_authority(origin: &str) -> Option<String> {
    let (_, rest) = origin.trim().split_once("://")?;
    Some(rest.trim_end_matches('/').to_ascii_lowercase())
}

impl Guard {
    /// Checks a request's `Host` and `Origin` headers; `auth` says whether tokens are
    /// configured.
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        auth: bool,
    ) -> Result<(), GuardError> {
        let host_value = host.unwrap_or("").trim();
        if let Some(origin) = origin {
            let same = origin_authority(origin)
                .is_some_and(|a| !host_value.is_empty() && a == host_value.to_ascii_lowercase());
            let allowed = self
                .allowed_origins
                .iter()
                .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin.trim()));
            if !same && !allowed {
                return Err(GuardError::CrossSite {
                    origin: origin.to_string(),
                    host: host_value.to_string(),
                });
            }
        }
        if !auth {
            if let Some(h) = host {
                let name = host_name(h);
                let ok = name.parse::<std::net::IpAddr>().is_ok()
                    || name == "localhost"
                    || self
                        .allowed_hosts
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(&name));
                if !ok {
                    return Err(GuardError::Host(h.to_string()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_and_local_hosts_pass() {
        let g = Guard::default();
        for (host, origin) in [
            (Some("127.0.0.1:8099"), None),
            (Some("127.0.0.1:8099"), Some("http://127.0.0.1:8099")),
            (Some("localhost:8099"), Some("http://localhost:8099")),
            (Some("[::1]:8099"), None),
            (Some("10.1.2.3"), None),
            (None, None),
        ] {
            g.check(host, origin, false).unwrap();
        }
    }

    #[test]
    fn cross_site_and_rebinding_are_refused() {
        let g = Guard {
            allowed_hosts: vec!["basalt.internal".into()],
            allowed_origins: vec!["https://console.example.com".into()],
        };
        let e = g
            .check(Some("127.0.0.1:8099"), Some("http://evil.example"), true)
            .unwrap_err();
        assert_eq!(e.reason(), "cross_site_origin");
        assert!(g
            .check(Some("127.0.0.1:8099"), Some("null"), false)
            .is_err());
        // Same host, another port: another origin.
        assert!(g
            .check(Some("127.0.0.1:8099"), Some("http://127.0.0.1:3000"), false)
            .is_err());
        g.check(
            Some("127.0.0.1:8099"),
            Some("https://console.example.com"),
            false,
        )
        .unwrap();
        let e = g.check(Some("evil.example:8099"), None, false).unwrap_err();
        assert_eq!(e.reason(), "host_not_allowed");
        g.check(Some("basalt.internal:8099"), None, false).unwrap();
        // With tokens the Host is not checked (a rebound page has no token).
        g.check(Some("evil.example:8099"), None, true).unwrap();
    }
}
