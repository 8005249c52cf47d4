//! Optional token authentication with roles, shared by HTTP and the PostgreSQL protocol. In:
//! per-user tokens and roles from the server config, and a request's credentials. Out: the
//! authenticated [`Principal`] (user and role), or why not.
//!
//! With no tokens configured (the default, for a server on loopback) everything is allowed
//! and PostgreSQL clients may use any user and database name. With tokens, a PostgreSQL
//! client sends its token as the password (cleartext password exchange), and an HTTP request
//! sends `Authorization: Bearer <token>` or `Authorization: Basic base64(user:token)`;
//! `GET /health` and the web console's static files stay open.
//!
//! Roles: `read` may query (HTTP, PostgreSQL), read table specs and status, the console and
//! metrics; `admin` may also create and drop tables and ingest. Tokens are compared as
//! SHA-256 digests in constant time against every configured token, so neither the time to
//! answer nor its length tells how much of a token matched or which user holds it.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, specs and status, console, metrics.
    Read,
    /// Also create, drop and ingest.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

/// One configured user.
#[derive(Debug, Clone)]
struct Entry {
    user: String,
    digest: [u8; 32],
    role: Role,
}

/// Configured users; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    entries: Vec<Entry>,
}

/// Why credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("malformed Basic credentials")]
    MalformedBasic,
    #[error("unsupported authorization scheme {0:?}; use Bearer or Basic")]
    Scheme(String),
    #[error("invalid token")]
    InvalidToken,
    #[error("invalid credentials for user {0:?}")]
    InvalidCredentials(String),
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Auth {
    /// Users with their tokens and roles.
    pub fn new(users: impl IntoIterator<Item = (String, String, Role)>) -> Self {
        Auth {
            entries: users
                .into_iter()
                .map(|(user, token, role)| Entry {
                    user,
                    digest: digest(token.as_bytes()),
                    role,
                })
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The entry whose token is `token` (and, when given, whose user is `user`), looked up
    /// in constant time over every entry.
    fn find(&self, user: Option<&str>, token: &[u8]) -> Option<&Entry> {
        let presented = digest(token);
        let mut found = u32::MAX;
        for (i, e) in self.entries.iter().enumerate() {
            let mut hit = e.digest.ct_eq(&presented);
            if let Some(u) = user {
                hit &= e.user.as_bytes().ct_eq(u.as_bytes());
            }
            found.conditional_assign(&(i as u32), hit);
        }
        self.entries.get(found as usize)
    }

    /// The principal `user` logs in as with `token` (PostgreSQL); `None` when refused.
    /// With authentication off, anyone is an admin.
    pub fn login(&self, user: &str, token: &str) -> Option<Principal> {
        if !self.enabled() {
            return Some(Principal {
                user: user.to_string(),
                role: Role::Admin,
            });
        }
        self.find(Some(user), token.as_bytes()).map(|e| Principal {
            user: e.user.clone(),
            role: e.role,
        })
    }

    /// The principal an HTTP `Authorization` header authenticates (`None` with
    /// authentication off), or why it does not.
    pub fn check_header(&self, header: Option<&str>) -> Result<Option<Principal>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let h = header.ok_or(AuthError::Missing)?;
        let (scheme, value) = h.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .find(None, value.as_bytes())
                .map(|e| {
                    Some(Principal {
                        user: e.user.clone(),
                        role: e.role,
                    })
                })
                .ok_or(AuthError::InvalidToken);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| AuthError::MalformedBasic)?;
            let text = String::from_utf8(decoded).map_err(|_| AuthError::MalformedBasic)?;
            let (user, token) = text.split_once(':').ok_or(AuthError::MalformedBasic)?;
            return self
                .login(user, token)
                .map(Some)
                .ok_or_else(|| AuthError::InvalidCredentials(user.to_string()));
        }
        Err(AuthError::Scheme(scheme.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new([
            ("grafana".to_string(), "s3cret".to_string(), Role::Read),
            ("ops".to_string(), "other".to_string(), Role::Admin),
        ])
    }

    #[test]
    fn tokens_authenticate_users_with_roles() {
        let off = Auth::default();
        assert_eq!(off.login("anyone", "anything").unwrap().role, Role::Admin);
        assert_eq!(off.check_header(None), Ok(None));

        let on = auth();
        assert_eq!(on.login("grafana", "s3cret").unwrap().role, Role::Read);
        assert_eq!(on.login("ops", "other").unwrap().role, Role::Admin);
        assert!(on.login("grafana", "s3cre").is_none());
        assert!(
            on.login("grafana", "other").is_none(),
            "another user's token"
        );
        assert!(on.login("other", "s3cret").is_none());
        assert_eq!(
            on.check_header(Some("Bearer s3cret")),
            Ok(Some(Principal {
                user: "grafana".into(),
                role: Role::Read
            }))
        );
        assert_eq!(
            on.check_header(Some("Bearer nope")),
            Err(AuthError::InvalidToken)
        );
        assert_eq!(on.check_header(None), Err(AuthError::Missing));
        // "grafana:s3cret"
        assert_eq!(
            on.check_header(Some("Basic Z3JhZmFuYTpzM2NyZXQ="))
                .unwrap()
                .unwrap()
                .user,
            "grafana"
        );
        assert!(on.check_header(Some("Basic Z3JhZmFuYTp4")).is_err());
        // Trailing garbage after valid base64 is refused, not ignored.
        assert_eq!(
            on.check_header(Some("Basic Z3JhZmFuYTpzM2NyZXQ=!!")),
            Err(AuthError::MalformedBasic)
        );
        assert_eq!(
            on.check_header(Some("Basic Z3JhZmFuYTpzM2NyZXQ=Zg")),
            Err(AuthError::MalformedBasic)
        );
        assert_eq!(
            on.check_header(Some("Digest x")),
            Err(AuthError::Scheme("Digest".into()))
        );
    }
}
