//! The HTTP API's OpenAPI 3.1 contract, served at `GET /openapi.json`. In: the route handlers'
//! `#[utoipa::path]` annotations (collected by `utoipa_axum::routes!` as the router is
//! built, so a route cannot exist without its description) and the schemas below. Out: one
//! `utoipa::openapi::OpenApi` document.
//!
//! The schemas describe the JSON bodies the handlers write; schemathesis checks every
//! response against them in `.ci/run` (`tests/clients/openapi_check.sh`).

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Every error: a status code and a message naming what is wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /tables`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableList {
    /// Every table's name, the unavailable ones included.
    pub tables: Vec<String>,
    pub unavailable: Vec<basalt_ingest::store::Unavailable>,
}

/// `POST /tables`: the table was created, or attached from its deep store.
#[derive(Debug, Serialize, ToSchema)]
pub struct Created {
    /// `created` or `attached`.
    pub status: String,
    pub table: String,
    pub stats: basalt_ingest::store::TableStats,
}

/// `GET /tables/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableDetail {
    pub name: String,
    /// The table spec as created, secrets redacted.
    pub spec: basalt_ingest::TableSpec,
    pub stats: basalt_ingest::store::TableStats,
    pub deep_store: String,
    /// Real-time ingestion status (as `GET /tables/{name}/ingestion`); null for batch tables.
    #[schema(value_type = Option<Object>)]
    pub ingestion: Value,
    /// The warehouse tier (tables with a `warehouse` block): the Iceberg table, the time
    /// boundary, the pinned snapshot id, and what was tiered (segments, rows, data files
    /// and bytes); null for other tables.
    #[schema(value_type = Option<Object>)]
    pub warehouse: Value,
}

/// `GET /tables/{name}` of a table that cannot be loaded now (503).
#[derive(Debug, Serialize, ToSchema)]
pub struct TableUnavailable {
    pub name: String,
    /// `unavailable`.
    pub status: String,
    pub reason: String,
    pub since: String,
    pub deep_store: String,
    pub spec: Option<basalt_ingest::TableSpec>,
}

/// `DELETE /tables/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// `deleted`.
    pub status: String,
    pub table: String,
}

/// `POST /tables/{name}/ingest`: the rows loaded (all of the body's, or none).
#[derive(Debug, Serialize, ToSchema)]
pub struct Ingested {
    pub rows: u64,
}

/// `POST /query/sql`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SqlRequestDoc {
    pub sql: String,
    /// Pinot-style options, `key=value;key=value`: `timeoutMs=N`, `useResultCache=false`,
    /// `useStarTree=false`,
    /// `workload=dashboard|analyst`.
    #[serde(rename = "queryOptions")]
    pub query_options: Option<String>,
}

/// Column names and Pinot types (`INT`, `LONG`, `FLOAT`, `DOUBLE`, `BIG_DECIMAL`, `BOOLEAN`,
/// `TIMESTAMP`, `STRING`, `JSON`, `BYTES`, and `_ARRAY` forms).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSchema {
    pub column_names: Vec<String>,
    pub column_data_types: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultTable {
    pub data_schema: DataSchema,
    /// One array per row, a JSON value per column.
    pub rows: Vec<Vec<Value>>,
}

/// A failed query's reason, with Pinot's error code (150 SQL, 250 timeout, 200 internal, …).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryException {
    pub error_code: i64,
    pub message: String,
}

/// Apache Pinot's broker response: the rows in `resultTable`, or the failure in `exceptions`
/// (a failed query is still a 200, as in Pinot, except 503 when the server is overloaded).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerResponse {
    /// Absent when the query failed.
    pub result_table: Option<ResultTable>,
    pub exceptions: Vec<QueryException>,
    pub num_servers_queried: u64,
    pub num_servers_responded: u64,
    pub num_docs_scanned: u64,
    pub total_docs: u64,
    pub num_segments_queried: u64,
    pub num_segments_matched: u64,
    pub time_used_ms: u64,
    pub num_segments_processed: Option<u64>,
    pub num_segments_pruned_by_broker: Option<u64>,
    pub num_segments_pruned_by_server: Option<u64>,
    pub num_entries_scanned_in_filter: Option<u64>,
    pub num_entries_scanned_post_filter: Option<u64>,
    pub num_groups_limit_reached: Option<bool>,
    /// True when segments with no live replica are missing from the rows (a cluster with
    /// servers down); `exceptions` then names them.
    pub partial_result: Option<bool>,
    /// Basalt: true when Basalt's own plan for one-table aggregations computed the answer
    /// instead of DataFusion's planner (`useDirectPlan=false` turns it off).
    pub direct_plan: Option<bool>,
}

/// A column of a Pinot schema.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldSpec {
    pub name: String,
    pub data_type: String,
    /// False for multi-valued (array) columns; absent otherwise.
    pub single_value_field: Option<bool>,
}

/// The time column in a Pinot schema.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DateTimeFieldSpec {
    pub name: String,
    pub data_type: String,
    pub format: String,
    pub granularity: String,
}

/// `GET /tables/{name}/schema`: Apache Pinot's schema format.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinotSchema {
    pub schema_name: String,
    pub dimension_field_specs: Vec<FieldSpec>,
    pub metric_field_specs: Vec<FieldSpec>,
    pub date_time_field_specs: Vec<DateTimeFieldSpec>,
    pub primary_key_columns: Option<Vec<String>>,
}

/// `GET /health`: always 200 while the server answers; `degraded` names what is wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    pub tables: u64,
    /// Real-time tables not consuming: `{table, state, broker_reachable, error}`.
    #[schema(value_type = Vec<Object>)]
    pub ingestion_problems: Vec<Value>,
    pub tables_unavailable: Vec<basalt_ingest::store::Unavailable>,
    pub deep_store_error: Option<String>,
}

/// A metric model (README: Semantic layer).
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticModelDoc {
    pub model: String,
    pub table: String,
    pub time_dimension: String,
    /// `10s`, `5m`: how far behind now the newest event may be before answers warn.
    pub freshness: Option<String>,
    pub description: Option<String>,
    /// Column names, or `{name, expr}` objects.
    #[schema(value_type = Vec<Object>)]
    pub dimensions: Vec<Value>,
    /// `{name, agg, expr, filter, p, description}`; no `agg`: a derived measure whose `expr`
    /// combines other measures.
    #[schema(value_type = Vec<Object>)]
    pub measures: Vec<Value>,
}

/// `POST /semantic/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticModelStored {
    /// `created` or `replaced`.
    pub status: String,
    pub model: SemanticModelDoc,
}

/// `GET /semantic/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticModelList {
    pub models: Vec<SemanticModelDoc>,
}

/// `DELETE /semantic/models/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticModelDeleted {
    /// `deleted`.
    pub status: String,
    pub model: String,
}

/// `POST /semantic/query`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticQueryDoc {
    pub model: String,
    pub measures: Option<Vec<String>>,
    pub dimensions: Option<Vec<String>>,
    /// `minute`, `hour`, `day`, `week`, `month`, `quarter` or `year`.
    pub grain: Option<String>,
    /// Inclusive start (RFC 3339, `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`, UTC).
    pub from: Option<String>,
    /// Exclusive end.
    pub to: Option<String>,
    /// SQL conditions over the model's dimensions.
    pub filters: Option<Vec<String>>,
    pub limit: Option<u64>,
}

/// Which tier answered which part of the range, and its freshness.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticTier {
    /// `segments` (the serving tier).
    pub tier: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The newest event time the tier holds.
    pub newest_event: Option<String>,
    pub lag_ms: Option<i64>,
}

/// What a semantic query compiled to and which tiers answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticInfo {
    pub model: String,
    /// The request as SQL over `semantic.<model>`.
    pub semantic_sql: String,
    /// The SQL over the table that ran.
    pub sql: String,
    pub tiers: Vec<SemanticTier>,
    /// E.g. the serving tier lagging beyond the model's freshness.
    pub warnings: Vec<String>,
}

/// `POST /semantic/query`: Pinot's broker response plus `semantic`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SemanticResponse {
    #[serde(flatten)]
    pub response: BrokerResponse,
    pub semantic: SemanticInfo,
}

/// The failures of every route behind authentication.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: the middleware writes these bodies
pub enum Guarded {
    /// Credentials missing or wrong (`WWW-Authenticate: Bearer`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A token without the route's role, or a cross-site request.
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// What `POST /query/sql` and `POST /query` answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: the handler writes these bodies
pub enum QueryAnswers {
    /// Rows, or the failure in `exceptions`.
    #[response(status = 200)]
    Answered(BrokerResponse),
    /// Not a query request, or bad query options.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Body over 16 MiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not application/json.
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// Overloaded (Retry-After); the failure in `exceptions`.
    #[response(status = 503)]
    Overloaded(BrokerResponse),
}

/// The document's title, version and description; paths are added as the router is built.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Basalt HTTP API",
        description = "Tables (JSON specs), batch ingest, SQL in Apache Pinot's broker response \
                       shape, health and metrics. With `[auth] tokens` configured, every route \
                       but /health, /openapi.json and the console needs `Authorization: Bearer \
                       TOKEN` (or Basic); creating, dropping and ingesting need an admin token."
    ),
    tags(
        (name = "tables", description = "Table specs, statistics and ingestion status"),
        (name = "ingest", description = "Batch loads"),
        (name = "query", description = "SQL"),
        (name = "semantic", description = "Metric models and semantic queries"),
        (name = "operations", description = "Health, metrics, this document, the console")
    )
)]
pub struct ApiDoc;
