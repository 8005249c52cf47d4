//! The server's TOML configuration (`--config FILE`); command-line flags override it.
//! Unknown keys are rejected so a typo is an error, not a silently ignored setting.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub query: QuerySection,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub auth: AuthSection,
}

/// Password authentication for HTTP and the PostgreSQL protocol (off by default).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Per-user tokens, `user = "token"`. A PostgreSQL client logs in as `user` with the token
    /// as its password; an HTTP client sends `Authorization: Bearer <token>` (or Basic
    /// `user:token`). Empty (the default): no authentication.
    #[serde(default)]
    pub tokens: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Where local state lives (default: `./basalt-data`).
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:8099).
    pub http_addr: Option<String>,
    /// PostgreSQL wire protocol listen address (default 127.0.0.1:5433).
    pub pg_addr: Option<String>,
    /// Deep store URL: `file:///path` or `s3://bucket/prefix` (default `<data_dir>/deepstore`).
    pub deep_store: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySection {
    /// Default query timeout in milliseconds (default 10000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Memory one query may use, in bytes (default 1 GiB).
    #[serde(default = "default_memory")]
    pub memory_limit_bytes: usize,
    /// Rows one result may hold (default 1,000,000).
    #[serde(default = "default_rows")]
    pub max_rows: usize,
    /// Answer a query repeated over unchanged batch tables from the result cache (default
    /// true; real-time tables are never cached).
    #[serde(default = "default_true")]
    pub result_cache: bool,
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> u64 {
    10_000
}
fn default_memory() -> usize {
    1 << 30
}
fn default_rows() -> usize {
    1_000_000
}

impl Default for QuerySection {
    fn default() -> Self {
        QuerySection {
            timeout_ms: default_timeout(),
            memory_limit_bytes: default_memory(),
            max_rows: default_rows(),
            result_cache: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Largest ingest request body in bytes (default 1 GiB).
    #[serde(default = "default_body")]
    pub max_body_bytes: u64,
}

fn default_body() -> u64 {
    1 << 30
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_body_bytes: default_body(),
        }
    }
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
        if cfg.query.timeout_ms == 0 || cfg.query.max_rows == 0 || cfg.query.memory_limit_bytes == 0
        {
            return Err(format!(
                "invalid config {}: query limits must be positive",
                path.display()
            ));
        }
        if let Some((user, _)) = cfg
            .auth
            .tokens
            .iter()
            .find(|(u, t)| u.is_empty() || t.is_empty())
        {
            return Err(format!(
                "invalid config {}: auth.tokens: user {user:?} needs a non-empty name and token",
                path.display()
            ));
        }
        Ok(cfg)
    }
}
