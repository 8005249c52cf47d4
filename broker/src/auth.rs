//! Optional password authentication, shared by HTTP and the PostgreSQL protocol. In: per-user
//! tokens from the server config, and a request's credentials. Out: allowed, or a reason.
//!
//! With no tokens configured (the default, for a server on loopback) everything is allowed
//! and PostgreSQL clients may use any user and database name. With tokens, a PostgreSQL
//! client sends its token as the password (cleartext password exchange), and an HTTP request
//! sends `Authorization: Bearer <token>` or `Authorization: Basic base64(user:token)`;
//! `GET /health` and the web console's static files stay open.

use std::collections::BTreeMap;

/// Per-user tokens; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: BTreeMap<String, String>,
}

/// Compares without an early exit, so timing does not tell how much of a token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(tokens: BTreeMap<String, String>) -> Self {
        Auth { tokens }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether `user` may log in with `token`.
    pub fn check(&self, user: &str, token: &str) -> bool {
        !self.enabled()
            || self
                .tokens
                .get(user)
                .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
    }

    /// The user an HTTP `Authorization` header authenticates, or why it does not.
    pub fn check_header(&self, header: Option<&str>) -> Result<Option<String>, String> {
        if !self.enabled() {
            return Ok(None);
        }
        let h = header.ok_or("authentication required: send Authorization: Bearer <token>")?;
        let (scheme, value) = h
            .trim()
            .split_once(' ')
            .ok_or("malformed Authorization header")?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .tokens
                .iter()
                .find(|(_, t)| same(t.as_bytes(), value.as_bytes()))
                .map(|(u, _)| Some(u.clone()))
                .ok_or_else(|| "invalid token".to_string());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(value).ok_or("malformed Basic credentials")?;
            let text = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
            let (user, token) = text.split_once(':').ok_or("malformed Basic credentials")?;
            return if self.check(user, token) {
                Ok(Some(user.to_string()))
            } else {
                Err(format!("invalid credentials for user {user:?}"))
            };
        }
        Err(format!(
            "unsupported authorization scheme {scheme:?}; use Bearer or Basic"
        ))
    }
}

/// Standard base64 (with or without padding).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_users() {
        let off = Auth::default();
        assert!(off.check("anyone", "anything"));
        assert_eq!(off.check_header(None), Ok(None));

        let on = Auth::new(BTreeMap::from([(
            "grafana".to_string(),
            "s3cret".to_string(),
        )]));
        assert!(on.check("grafana", "s3cret"));
        assert!(!on.check("grafana", "s3cre"));
        assert!(!on.check("other", "s3cret"));
        assert_eq!(
            on.check_header(Some("Bearer s3cret")),
            Ok(Some("grafana".into()))
        );
        assert!(on.check_header(Some("Bearer nope")).is_err());
        assert!(on
            .check_header(None)
            .unwrap_err()
            .contains("authentication required"));
        // "grafana:s3cret"
        assert_eq!(
            on.check_header(Some("Basic Z3JhZmFuYTpzM2NyZXQ=")),
            Ok(Some("grafana".into()))
        );
        assert!(on.check_header(Some("Basic Z3JhZmFuYTp4")).is_err());
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
    }
}
