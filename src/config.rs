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
    #[serde(default)]
    pub pg: PgSection,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub tables: TablesSection,
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// The `server` and `broker` roles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The token servers and brokers present to each other (Flight calls); default: the
    /// `BASALT_CLUSTER_TOKEN` environment variable. Required for both roles.
    pub token: Option<String>,
    /// Milliseconds between gossip rounds (default 250; a dead node is detected after about
    /// eight intervals).
    #[serde(default = "default_gossip_ms")]
    pub gossip_interval_ms: u64,
    /// Name of the cluster: nodes gossiping under another name are ignored (default
    /// `basalt`).
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// How long a server stopping gracefully waits for its segments to be loaded elsewhere
    /// (default 60 s).
    #[serde(default = "default_drain_secs")]
    pub drain_timeout_secs: u64,
    /// How often a broker re-reads the metastore for tables and segments published
    /// elsewhere, in milliseconds (default 1000).
    #[serde(default = "default_sync_ms")]
    pub sync_interval_ms: u64,
    /// Most rows of a join's small side a broker sends to every server with the fragment
    /// that joins the large side there (default 100,000); a larger side is joined on the
    /// broker.
    #[serde(default = "default_broadcast_rows")]
    pub broadcast_max_rows: usize,
    /// Most bytes (in memory) of a join's small side sent to servers (default 16 MiB).
    #[serde(default = "default_broadcast_bytes")]
    pub broadcast_max_bytes: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            token: None,
            gossip_interval_ms: default_gossip_ms(),
            cluster_id: default_cluster_id(),
            drain_timeout_secs: default_drain_secs(),
            sync_interval_ms: default_sync_ms(),
            broadcast_max_rows: default_broadcast_rows(),
            broadcast_max_bytes: default_broadcast_bytes(),
        }
    }
}

fn default_gossip_ms() -> u64 {
    250
}
fn default_cluster_id() -> String {
    "basalt".into()
}
fn default_drain_secs() -> u64 {
    60
}
fn default_sync_ms() -> u64 {
    1000
}
fn default_broadcast_rows() -> usize {
    basalt_broker::cluster::Broadcast::default().max_rows
}
fn default_broadcast_bytes() -> usize {
    basalt_broker::cluster::Broadcast::default().max_bytes
}

impl ClusterSection {
    /// The cluster token: the config's, else `BASALT_CLUSTER_TOKEN`.
    pub fn token(&self) -> Result<String, String> {
        let t = self
            .token
            .clone()
            .or_else(|| std::env::var("BASALT_CLUSTER_TOKEN").ok())
            .unwrap_or_default();
        if t.len() < 16 {
            return Err("the server and broker roles need a cluster token of at least 16 characters: set BASALT_CLUSTER_TOKEN or [cluster] token".into());
        }
        Ok(t)
    }
}

/// Where table specs may put their data.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Deep stores a table spec's `deep_store` may name, as URL roots (`s3://bucket/prefix`,
    /// `file:///abs/dir`). Empty (the default): the server's own deep store and data dir.
    #[serde(default)]
    pub allowed_roots: Vec<String>,
}

/// Limits on what one table spec may ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesSection {
    /// Columns a table may have (default 1000).
    #[serde(default = "default_max_columns")]
    pub max_columns: usize,
    /// Partitions a table may consume or generate (default 1024).
    #[serde(default = "default_max_partitions")]
    pub max_partitions: usize,
    /// `${env:NAME}` secret references (Kafka properties, an Iceberg REST catalog's
    /// `credential`) may only name variables with this prefix (default `BASALT_SECRET_`).
    #[serde(default = "default_secret_prefix")]
    pub secret_env_prefix: String,
    /// How often tables with a `warehouse` block are checked for segments to tier, in
    /// seconds (default 60).
    #[serde(default = "default_tier_interval")]
    pub tier_interval_secs: u64,
    /// Iceberg REST catalogs a spec may name, as URL prefixes (`http://catalog:8181/`);
    /// empty: none (a spec could otherwise make the server call any address).
    #[serde(default)]
    pub allowed_catalog_uris: Vec<String>,
}

fn default_tier_interval() -> u64 {
    60
}

fn default_max_columns() -> usize {
    1000
}
fn default_max_partitions() -> usize {
    1024
}
fn default_secret_prefix() -> String {
    "BASALT_SECRET_".into()
}

impl Default for TablesSection {
    fn default() -> Self {
        TablesSection {
            max_columns: default_max_columns(),
            max_partitions: default_max_partitions(),
            secret_env_prefix: default_secret_prefix(),
            tier_interval_secs: default_tier_interval(),
            allowed_catalog_uris: Vec::new(),
        }
    }
}

impl TablesSection {
    /// The limits as the table store takes them.
    pub fn policy(&self, storage: &StorageSection) -> basalt_ingest::policy::TablePolicy {
        basalt_ingest::policy::TablePolicy {
            max_columns: self.max_columns,
            max_partitions: self.max_partitions,
            allowed_roots: storage.allowed_roots.clone(),
            secret_env_prefix: self.secret_env_prefix.clone(),
            allowed_catalog_uris: self.allowed_catalog_uris.clone(),
        }
    }
}

/// Password authentication for HTTP and the PostgreSQL protocol (off by default).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Per-user tokens: `user = "token"` (role `read`) or `user = { token = "...", role =
    /// "admin" }`. A PostgreSQL client logs in as `user` with the token as its password; an
    /// HTTP client sends `Authorization: Bearer <token>` (or Basic `user:token`). `read`
    /// queries and reads specs, status, console and metrics; `admin` also creates, drops and
    /// ingests. Empty (the default): no authentication.
    #[serde(default)]
    pub tokens: std::collections::BTreeMap<String, TokenEntry>,
}

/// One user's token, with its role.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenEntry {
    /// A token with the `read` role.
    Plain(String),
    WithRole(TokenWithRole),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenWithRole {
    pub token: String,
    pub role: basalt_broker::auth::Role,
}

impl TokenEntry {
    fn token(&self) -> &str {
        match self {
            TokenEntry::Plain(t) => t,
            TokenEntry::WithRole(t) => &t.token,
        }
    }
}

impl AuthSection {
    /// The configured users as the broker's authenticator takes them.
    pub fn auth(&self) -> basalt_broker::Auth {
        basalt_broker::Auth::new(self.tokens.iter().map(|(user, e)| {
            let role = match e {
                TokenEntry::Plain(_) => basalt_broker::auth::Role::Read,
                TokenEntry::WithRole(t) => t.role,
            };
            (user.clone(), e.token().to_string(), role)
        }))
    }
}

/// The PostgreSQL protocol's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSection {
    /// Sessions at once; more get SQLSTATE 53300 (default 100).
    #[serde(default = "default_pg_connections")]
    pub max_connections: usize,
    /// Longest message a client may send, in bytes (default 16 MiB).
    #[serde(default = "default_pg_message")]
    pub max_message_bytes: usize,
    /// Seconds a session may sit idle between queries before it is closed (default 600).
    #[serde(default = "default_pg_idle")]
    pub idle_timeout_secs: u64,
}

fn default_pg_connections() -> usize {
    100
}
fn default_pg_message() -> usize {
    16 << 20
}
fn default_pg_idle() -> u64 {
    600
}

impl Default for PgSection {
    fn default() -> Self {
        PgSection {
            max_connections: default_pg_connections(),
            max_message_bytes: default_pg_message(),
            idle_timeout_secs: default_pg_idle(),
        }
    }
}

impl PgSection {
    pub fn limits(&self) -> basalt_broker::pg::conn::PgLimits {
        basalt_broker::pg::conn::PgLimits {
            max_connections: self.max_connections,
            max_message_bytes: self.max_message_bytes,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
        }
    }
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
    /// Listen on a non-loopback address without `[auth] tokens` (default false: refused).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Host names the HTTP API answers to while authentication is off, besides IP addresses
    /// and `localhost` (DNS rebinding guard).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://host[:port]`) allowed to call the HTTP API besides the
    /// server's own.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
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
    /// Answer one-table aggregations without GROUP BY by Basalt's own plan rather than
    /// DataFusion's (default true; per query: `useDirectPlan=false`).
    #[serde(default = "default_true")]
    pub direct_plan: bool,
    /// The longest timeout a request may ask for (`timeoutMs`, `statement_timeout`), in
    /// milliseconds (default 300000).
    #[serde(default = "default_max_timeout")]
    pub max_timeout_ms: u64,
    /// Memory all running queries may hold together, in bytes (default: half the machine's).
    #[serde(default)]
    pub shared_memory_bytes: Option<usize>,
    /// Queries running at once (default 4 per core); more wait for a turn.
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Queries waiting for a turn; more are refused with HTTP 503 / SQLSTATE 53300
    /// (default 256).
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// Bytes one encoded answer may have (default 256 MiB).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Longest SQL text, in bytes (default 4 MiB).
    #[serde(default = "default_max_sql")]
    pub max_sql_bytes: usize,
    /// Operators one statement may have (default 4096).
    #[serde(default = "default_max_terms")]
    pub max_expression_terms: usize,
    /// Relations one statement may name (default 256).
    #[serde(default = "default_max_relations")]
    pub max_relations: usize,
    /// Memory one `analyst` query may use (`workload=analyst`), in bytes (default: a
    /// quarter of the machine's memory).
    #[serde(default)]
    pub analyst_memory_limit_bytes: Option<usize>,
    /// Default timeout of an `analyst` query in milliseconds (default: `max_timeout_ms`).
    #[serde(default)]
    pub analyst_timeout_ms: Option<u64>,
    /// Where `analyst` queries spill sorts, aggregations and joins beyond their memory
    /// (default `<data_dir>/spill`).
    #[serde(default)]
    pub spill_dir: Option<std::path::PathBuf>,
    /// Bytes of spill files all queries may hold together (default 50 GiB).
    #[serde(default = "default_max_spill")]
    pub max_spill_bytes: u64,
}

fn default_max_spill() -> u64 {
    50 << 30
}

fn default_max_timeout() -> u64 {
    300_000
}
fn default_max_queued() -> usize {
    256
}
fn default_max_response() -> usize {
    256 << 20
}
fn default_max_sql() -> usize {
    4 << 20
}
fn default_max_terms() -> usize {
    4096
}
fn default_max_relations() -> usize {
    256
}

impl QuerySection {
    /// Each query's limits.
    pub fn limits(&self) -> basalt_query::QueryLimits {
        basalt_query::QueryLimits {
            timeout: std::time::Duration::from_millis(self.timeout_ms.min(self.max_timeout_ms)),
            memory_limit: self.memory_limit_bytes,
            max_rows: self.max_rows,
            use_cache: self.result_cache,
            use_star_tree: true,
            direct_plan: self.direct_plan,
            statement: basalt_query::StatementLimits {
                max_sql_bytes: self.max_sql_bytes,
                max_expression_terms: self.max_expression_terms,
                max_relations: self.max_relations,
            },
            max_response_bytes: self.max_response_bytes,
            spill: false,
        }
    }

    /// The limits of an `analyst` query.
    pub fn analyst_limits(&self) -> basalt_query::QueryLimits {
        let timeout = self
            .analyst_timeout_ms
            .unwrap_or(self.max_timeout_ms)
            .min(self.max_timeout_ms);
        self.limits().analyst(
            self.analyst_memory_limit_bytes
                .unwrap_or_else(basalt_query::memory::default_analyst_limit),
            std::time::Duration::from_millis(timeout),
        )
    }

    /// The engine's server-wide limits; spill files under `data_dir` unless `spill_dir`.
    pub fn engine(&self, data_dir: &std::path::Path) -> basalt_query::EngineConfig {
        let d = basalt_query::EngineConfig::default();
        basalt_query::EngineConfig {
            shared_memory_bytes: self.shared_memory_bytes.unwrap_or(d.shared_memory_bytes),
            max_concurrent: self.max_concurrent.unwrap_or(d.max_concurrent),
            max_queued: self.max_queued,
            max_timeout: std::time::Duration::from_millis(self.max_timeout_ms),
            spill_dir: Some(
                self.spill_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("spill")),
            ),
            max_spill_bytes: self.max_spill_bytes,
        }
    }
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
            direct_plan: true,
            max_timeout_ms: default_max_timeout(),
            shared_memory_bytes: None,
            max_concurrent: None,
            max_queued: default_max_queued(),
            max_response_bytes: default_max_response(),
            max_sql_bytes: default_max_sql(),
            max_expression_terms: default_max_terms(),
            max_relations: default_max_relations(),
            analyst_memory_limit_bytes: None,
            analyst_timeout_ms: None,
            spill_dir: None,
            max_spill_bytes: default_max_spill(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Largest ingest request body in bytes (default 1 GiB).
    #[serde(default = "default_body")]
    pub max_body_bytes: u64,
    /// Ingest requests decoding at once; more are refused with 503 (default 4).
    #[serde(default = "default_ingests")]
    pub max_concurrent: usize,
    /// Seconds a request body may go without sending a byte before it is refused with 408
    /// (default 30).
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_secs: u64,
    /// Longest NDJSON line or CSV record, in bytes (default 16 MiB).
    #[serde(default = "default_line")]
    pub max_line_bytes: usize,
    /// Rows one ingest request may hold (default 100M): more is refused with 400, and a
    /// Parquet body declaring more is refused before decoding (its rows, not its bytes, are
    /// the work: a few kilobytes of nulls can declare billions).
    #[serde(default = "default_request_rows")]
    pub max_rows_per_request: u64,
    /// Bytes of one segment's rows held in memory while a request decodes (default 256 MiB);
    /// a request holds a few segments at most.
    #[serde(default = "default_segment_bytes")]
    pub max_segment_bytes: u64,
    /// Seconds a real-time table's consumer lease lasts without renewal (default 30): when
    /// the server consuming a table dies, another server sharing its deep store takes the
    /// table over after this long.
    #[serde(default = "default_consumer_lease")]
    pub consumer_lease_secs: u64,
}

fn default_consumer_lease() -> u64 {
    30
}

fn default_body() -> u64 {
    1 << 30
}
fn default_ingests() -> usize {
    4
}
fn default_body_timeout() -> u64 {
    30
}
fn default_line() -> usize {
    16 << 20
}
fn default_request_rows() -> u64 {
    100_000_000
}
fn default_segment_bytes() -> u64 {
    256 << 20
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_body_bytes: default_body(),
            max_concurrent: default_ingests(),
            body_read_timeout_secs: default_body_timeout(),
            max_line_bytes: default_line(),
            max_rows_per_request: default_request_rows(),
            max_segment_bytes: default_segment_bytes(),
            consumer_lease_secs: default_consumer_lease(),
        }
    }
}

impl IngestSection {
    pub fn limits(&self) -> basalt_ingest::IngestLimits {
        basalt_ingest::IngestLimits {
            decode: basalt_ingest::decode::DecodeLimits {
                max_line_bytes: self.max_line_bytes,
                max_rows: self.max_rows_per_request,
                ..Default::default()
            },
            max_segment_bytes: self.max_segment_bytes,
        }
    }
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
        let q = &cfg.query;
        if [
            q.timeout_ms as usize,
            q.max_rows,
            q.memory_limit_bytes,
            q.max_timeout_ms as usize,
            q.shared_memory_bytes.unwrap_or(1),
            q.max_concurrent.unwrap_or(1),
            q.max_response_bytes,
            q.max_sql_bytes,
            q.max_expression_terms,
            q.max_relations,
        ]
        .contains(&0)
        {
            return Err(format!(
                "invalid config {}: query limits must be positive",
                path.display()
            ));
        }
        if cfg.tables.max_columns == 0 || cfg.tables.max_partitions == 0 {
            return Err(format!(
                "invalid config {}: tables.max_columns and tables.max_partitions must be positive",
                path.display()
            ));
        }
        if cfg.tables.secret_env_prefix.len() < 4 {
            return Err(format!(
                "invalid config {}: tables.secret_env_prefix must be at least 4 characters, so \
                 secret references cannot name any environment variable",
                path.display()
            ));
        }
        basalt_ingest::policy::TablePolicy::validate_roots(&cfg.storage.allowed_roots).map_err(
            |e| {
                format!(
                    "invalid config {}: storage.allowed_roots: {e}",
                    path.display()
                )
            },
        )?;
        let i = &cfg.ingest;
        if i.max_concurrent == 0
            || i.body_read_timeout_secs == 0
            || i.max_line_bytes < 1024
            || i.max_rows_per_request == 0
            || i.max_segment_bytes < (1 << 20)
            || i.consumer_lease_secs < 3
        {
            return Err(format!(
                "invalid config {}: ingest.max_concurrent and ingest.body_read_timeout_secs must be positive, ingest.max_line_bytes at least 1024, ingest.max_rows_per_request positive, ingest.max_segment_bytes at least 1 MiB, ingest.consumer_lease_secs at least 3",
                path.display()
            ));
        }
        if cfg.pg.max_connections == 0
            || cfg.pg.max_message_bytes < 1024
            || cfg.pg.idle_timeout_secs == 0
        {
            return Err(format!(
                "invalid config {}: pg.max_connections and pg.idle_timeout_secs must be positive, pg.max_message_bytes at least 1024",
                path.display()
            ));
        }
        if let Some((user, _)) = cfg
            .auth
            .tokens
            .iter()
            .find(|(u, t)| u.is_empty() || t.token().is_empty())
        {
            return Err(format!(
                "invalid config {}: auth.tokens: user {user:?} needs a non-empty name and token",
                path.display()
            ));
        }
        Ok(cfg)
    }
}
