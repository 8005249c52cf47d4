//! The HTTP API (axum). In: admin, ingest and SQL requests. Out: JSON responses; query
//! results in Pinot's broker response shape.
//!
//! Routes: `POST/GET /tables`, `GET/DELETE /tables/{name}`, `POST /tables/{name}/ingest`,
//! `GET /tables/{name}/ingestion` (real-time status), `POST /query/sql` (also `/query`),
//! `GET /health`, `GET /metrics`, `GET /tables/{name}/schema` (Pinot's schema format),
//! `GET /openapi.json` (this API's contract, [`crate::openapi`]); the semantic layer's
//! `/semantic/models` and `/semantic/query` ([`crate::semantic`]); the web console at `GET /`
//! ([`crate::console`]). With tokens
//! configured every route but `/health` and the console's files needs credentials
//! ([`crate::auth`]).
//! Ingest bodies are streamed to a blocking decoder; the byte limit is enforced while reading.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use basalt_ingest::{Format, IngestError, TableSpec, TableStore};
use basalt_query::{QueryEngine, QueryLimits, Workload};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::response;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest ingest body in bytes (default 1 GiB); larger is 413.
    pub max_ingest_bytes: u64,
    /// Ingest requests decoding at once; more get 503 (default 4).
    pub max_concurrent_ingests: usize,
    /// An ingest body that sends nothing for this long gets 408 (default 30 s).
    pub body_read_timeout: Duration,
    /// Query limits applied unless a request overrides the timeout (the `dashboard` class).
    pub query: QueryLimits,
    /// The limits of the `analyst` class (`queryOptions` `workload=analyst`).
    pub analyst: QueryLimits,
    /// How often tables with a warehouse tier are checked for segments to tier (default
    /// 60 s).
    pub tier_interval: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_ingest_bytes: 1 << 30,
            max_concurrent_ingests: 4,
            body_read_timeout: Duration::from_secs(30),
            query: QueryLimits::default(),
            analyst: QueryLimits::default().analyst(
                basalt_query::memory::default_analyst_limit(),
                Duration::from_secs(300),
            ),
            tier_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<TableStore>,
    pub engine: QueryEngine,
    pub metrics: Metrics,
    pub limits: HttpLimits,
    pub auth: crate::auth::Auth,
    pub guard: crate::guard::Guard,
    /// Places for ingest requests decoding at once.
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// A broker's cluster (`None` in `standalone`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The semantic layer: metric models and their queries.
    pub semantic: Arc<basalt_semantic::SemanticLayer>,
    /// The warehouse tier (`standalone`: this process tiers its tables; `None` on a
    /// cluster's broker, see ARCHITECTURE.md).
    pub warehouse: Option<Arc<basalt_warehouse::Warehouse>>,
}

/// How long a broker's batch ingest waits for servers to load what it published.
const INGEST_ROUTABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The API's routes and its OpenAPI document, built together: every route is added through
/// `routes!` from a handler's `#[utoipa::path]`, so the document lists exactly the routes the
/// router serves.
fn routes() -> (
    utoipa_axum::router::OpenApiRouter<AppState>,
    utoipa_axum::router::OpenApiRouter<AppState>,
) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let (schemas, paths, ingest_route) = routes!(ingest);
    let guarded = OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(create_table, list_tables))
        .routes(routes!(get_table, drop_table))
        .routes(routes!(get_ingestion))
        .routes(routes!(tier_now))
        .routes(routes!(get_schema))
        .routes((
            schemas,
            paths,
            ingest_route.layer(DefaultBodyLimit::disable()),
        ))
        .routes(routes!(query_sql))
        .routes(routes!(query_alias))
        .routes(routes!(
            crate::semantic::create_model,
            crate::semantic::list_models
        ))
        .routes(routes!(
            crate::semantic::get_model,
            crate::semantic::delete_model
        ))
        .routes(routes!(crate::semantic::semantic_query))
        .routes(routes!(metrics));
    let open = OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(crate::console::index))
        .routes(routes!(crate::console::file));
    (guarded, open)
}

pub fn router(state: AppState) -> Router {
    let (guarded, open) = routes();
    let (guarded, mut doc) = guarded.split_for_parts();
    let (open, open_doc) = open.split_for_parts();
    doc.merge(open_doc);
    let doc = Arc::new(doc);
    guarded
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_auth,
        ))
        .merge(open)
        .layer(axum::Extension(doc))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser_guard,
        ))
        .layer(DefaultBodyLimit::max(16 << 20))
        .with_state(state)
}

/// The API's OpenAPI 3.1 document (generated from the code).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This API's OpenAPI 3.1 document", body = Object)))]
async fn openapi_json(
    State(s): State<AppState>,
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Response {
    finish(
        &s,
        "openapi",
        Ok(Json(doc.as_ref().clone()).into_response()),
    )
}

/// Refuses cross-site requests and, while authentication is off, foreign `Host` names (see
/// [`crate::guard`]).
async fn browser_guard(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let checked = {
        let h = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        s.guard
            .check(h(header::HOST), h(header::ORIGIN), s.auth.enabled())
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(e) => {
            s.metrics
                .refused
                .with_label_values(&["http", e.reason()])
                .inc();
            tracing::info!(error = %e, "request refused by the browser guard");
            let resp = (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
            count(&s, "forbidden", resp.status());
            resp
        }
    }
}

/// The role a route needs: `admin` for creating, dropping and ingesting, `read` otherwise.
fn required_role(method: &axum::http::Method, path: &str) -> crate::auth::Role {
    use crate::auth::Role;
    let admin = *method == axum::http::Method::DELETE
        || (*method == axum::http::Method::POST
            && (path == "/tables"
                || path == "/semantic/models"
                || path.ends_with("/ingest")
                || path.ends_with("/tier")));
    if admin {
        Role::Admin
    } else {
        Role::Read
    }
}

/// With tokens configured, every route but `/health` and the console's files needs
/// credentials, and admin routes need an admin token (see [`crate::auth`]).
async fn require_auth(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let resp = match s.auth.check_header(header) {
        Ok(None) => return next.run(req).await,
        Ok(Some(p)) => {
            let needed = required_role(req.method(), req.uri().path());
            if p.role >= needed {
                return next.run(req).await;
            }
            (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": format!(
                    "user {:?} has the {} role; {} {} needs {}",
                    p.user,
                    p.role.name(),
                    req.method(),
                    req.uri().path(),
                    needed.name()
                ) })),
            )
                .into_response()
        }
        Err(reason) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"basalt\"")],
            Json(json!({ "error": reason.to_string() })),
        )
            .into_response(),
    };
    count(&s, "unauthorized", resp.status());
    resp
}

/// A request's `Content-Type` as sent, and its media type (parameters dropped, lower case).
pub(crate) fn media_type(headers: &HeaderMap) -> (&str, String) {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (ct, basalt_ingest::decode::media_type(ct))
}

/// Refuses a body that is not declared as JSON (415): the API's JSON routes take nothing
/// else, and a cross-site form post cannot send this content type without a CORS check.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let (ct, base) = media_type(headers);
    if base == "application/json" {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {ct:?} is not accepted here; send application/json"
        )))
    }
}

fn count(state: &AppState, route: &str, status: StatusCode) {
    state
        .metrics
        .http_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
}

pub(crate) fn finish(state: &AppState, route: &str, r: Result<Response, ApiError>) -> Response {
    let resp = match r {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    count(state, route, resp.status());
    resp
}

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid {what}: {e}")))
}

/// Creates a table from its JSON spec (or attaches it when its deep store already holds it).
#[utoipa::path(post, path = "/tables", tag = "tables",
    request_body(content = basalt_ingest::TableSpec, content_type = "application/json",
        description = "A table spec (README: Table spec)"),
    responses(
        (status = 201, description = "Created or attached", body = crate::openapi::Created),
        (status = 400, description = "Invalid spec: the message names the field", body = crate::openapi::ErrorBody),
        crate::openapi::Guarded,
        (status = 409, description = "A table of this name exists", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body over 16 MiB", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 503, description = "The table's deep store cannot be reached", body = crate::openapi::ErrorBody),
    ))]
async fn create_table(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        require_json(&headers)?;
        let mut spec = TableSpec::from_json(&body)?;
        if spec.iceberg_source().is_some() {
            // The catalog it names is opened only once the policy allows it.
            s.store.check_policy(&spec)?;
            let w = s.warehouse.clone().ok_or_else(|| {
                ApiError::Conflict(
                    "this process does not read Iceberg tables (a cluster broker)".into(),
                )
            })?;
            spec = w
                .complete_spec(spec)
                .await
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        let (t, attached) = s.store.create_table(spec).await?;
        // Attached: the table's deep store already held it (same spec); its segments and
        // checkpoints were found there.
        let status = if attached { "attached" } else { "created" };
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                Json(json!({"status": status, "table": t.spec.name, "stats": t.stats()})),
            )
                .into_response(),
        )
    }
    .await;
    finish(&s, "create_table", r)
}

/// Every table, and among them those that cannot be used now (with why).
/// Every table, and those that cannot be used now with why.
#[utoipa::path(get, path = "/tables", tag = "tables",
    responses(
        (status = 200, description = "The tables", body = crate::openapi::TableList),
        crate::openapi::Guarded,
    ))]
async fn list_tables(State(s): State<AppState>) -> Response {
    let unavailable = s.store.unavailable();
    let mut tables = s.store.table_names();
    tables.extend(unavailable.iter().map(|u| u.table.clone()));
    tables.sort();
    let r = Ok(Json(json!({ "tables": tables, "unavailable": unavailable })).into_response());
    finish(&s, "list_tables", r)
}

/// A table's spec, statistics, deep store and ingestion status.
#[utoipa::path(get, path = "/tables/{name}", tag = "tables",
    params(("name" = String, Path, description = "Table name", example = "events")),
    responses(
        (status = 200, description = "The table", body = crate::openapi::TableDetail),
        crate::openapi::Guarded,
        (status = 404, description = "No such table", body = crate::openapi::ErrorBody),
        (status = 503, description = "The table cannot be loaded now", body = crate::openapi::TableUnavailable),
    ))]
async fn get_table(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    if let Some(u) = s.store.unavailable_table(&name) {
        let spec = u.spec.as_ref().map(|s| s.redacted());
        let r = Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "name": u.table,
                "status": "unavailable",
                "reason": u.reason,
                "since": u.since,
                "deep_store": u.deep_store,
                "spec": spec,
            })),
        )
            .into_response());
        return finish(&s, "get_table", r);
    }
    let r = match s.store.table(&name) {
        Some(t) => Ok(Json(json!({
            "name": t.spec.name,
            "spec": t.spec.redacted(),
            "stats": t.stats(),
            "deep_store": t.deep_store(),
            "ingestion": t.ingestion(),
            "warehouse": basalt_warehouse::service::describe(&t),
        }))
        .into_response()),
        None => Err(ApiError::NotFound(format!("table {name:?} does not exist"))),
    };
    finish(&s, "get_table", r)
}

/// The table's schema in Pinot's controller form (pinotdb's SQLAlchemy dialect reflects
/// tables through it).
/// The table's schema in Apache Pinot's format.
#[utoipa::path(get, path = "/tables/{name}/schema", tag = "tables",
    params(("name" = String, Path, description = "Table name", example = "events")),
    responses(
        (status = 200, description = "Pinot schema", body = crate::openapi::PinotSchema),
        crate::openapi::Guarded,
        (status = 404, description = "No such table", body = crate::openapi::ErrorBody),
    ))]
async fn get_schema(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let r = match s.store.table(&name) {
        Some(t) => Ok(Json(crate::pinot_schema::pinot_schema(&t.spec)).into_response()),
        None => Err(ApiError::NotFound(format!("table {name:?} does not exist"))),
    };
    finish(&s, "get_schema", r)
}

/// Real-time ingestion status per partition.
#[utoipa::path(get, path = "/tables/{name}/ingestion", tag = "tables",
    params(("name" = String, Path, description = "Table name", example = "events")),
    responses(
        (status = 200, description = "State, owner, and per partition offsets, lag, rates and quarantine counts", body = Object),
        crate::openapi::Guarded,
        (status = 404, description = "No such table, or a table without a real-time source", body = crate::openapi::ErrorBody),
    ))]
async fn get_ingestion(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let r = match s.store.table(&name) {
        Some(t) => match t.ingestion() {
            Some(st) => Ok(Json(st).into_response()),
            None => Err(ApiError::NotFound(format!(
                "table {name:?} has no real-time source (it is loaded with POST /tables/{name}/ingest)"
            ))),
        },
        None => Err(ApiError::NotFound(format!("table {name:?} does not exist"))),
    };
    finish(&s, "get_ingestion", r)
}

/// Runs a tiering pass of the table now (it also runs every `tier_interval`): segments
/// older than `tier_after` move to its Iceberg table.
#[utoipa::path(post, path = "/tables/{name}/tier", tag = "tables",
    params(("name" = String, Path, description = "Table name", example = "events")),
    responses(
        (status = 200, description = "What the run moved (`moved: false` when nothing was old enough)", body = Object),
        crate::openapi::Guarded,
        (status = 404, description = "No such table", body = crate::openapi::ErrorBody),
        (status = 409, description = "The table has no warehouse block, or this process does not tier (a cluster broker)", body = crate::openapi::ErrorBody),
        (status = 503, description = "The catalog or the warehouse storage cannot be reached", body = crate::openapi::ErrorBody),
    ))]
async fn tier_now(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let r = async {
        let t = s
            .store
            .table(&name)
            .ok_or_else(|| ApiError::NotFound(format!("table {name:?} does not exist")))?;
        if t.spec.warehouse.is_none() {
            return Err(ApiError::Conflict(format!(
                "table {name:?} has no warehouse block"
            )));
        }
        let w = s.warehouse.clone().ok_or_else(|| {
            ApiError::Conflict("this process does not tier tables (a cluster broker)".into())
        })?;
        let now = chrono::Utc::now().timestamp_millis();
        let run = w
            .tier_one(&s.store, &t, now)
            .await
            .map_err(|e| ApiError::Unavailable(format!("tiering {name:?}: {e}")))?;
        Ok(Json(match run {
            Some(r) => json!({
                "moved": true,
                "segments": r.segments,
                "rows": r.rows,
                "data_files": r.data_files,
                "data_bytes": r.data_bytes,
                "snapshot_id": r.snapshot_id,
                "boundary": r.boundary,
                "recovered": r.recovered,
            }),
            None => json!({"moved": false}),
        })
        .into_response())
    }
    .await;
    finish(&s, "tier_now", r)
}

/// Drops a table and its segments.
#[utoipa::path(delete, path = "/tables/{name}", tag = "tables",
    params(("name" = String, Path, description = "Table name", example = "events")),
    responses(
        (status = 200, description = "Dropped", body = crate::openapi::Deleted),
        crate::openapi::Guarded,
        (status = 404, description = "No such table", body = crate::openapi::ErrorBody),
        (status = 409, description = "Another server owns the table", body = crate::openapi::ErrorBody),
        (status = 503, description = "The table's deep store cannot be reached", body = crate::openapi::ErrorBody),
    ))]
async fn drop_table(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let r = async {
        let ingestion = s.store.table(&name).and_then(|t| t.ingestion());
        s.store.drop_table(&name).await?;
        if let Some(st) = ingestion {
            s.metrics.ingestion.forget(&st);
        }
        for g in [
            &s.metrics.table_rows,
            &s.metrics.table_segments,
            &s.metrics.table_bytes,
        ] {
            let _ = g.remove_label_values(&[&name]);
        }
        Ok::<_, ApiError>(Json(json!({"status": "deleted", "table": name})).into_response())
    }
    .await;
    finish(&s, "drop_table", r)
}

/// The body's chunks, failing (and setting `stalled`) when none arrives for `timeout`.
fn with_read_timeout<S>(
    body: S,
    timeout: Duration,
    stalled: Arc<AtomicBool>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
{
    futures::stream::unfold(Some(body), move |state| {
        let stalled = stalled.clone();
        async move {
            let mut body = state?;
            match tokio::time::timeout(timeout, futures::StreamExt::next(&mut body)).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, Ordering::Relaxed);
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stalled",
                    );
                    Some((Err(e), None))
                }
            }
        }
    })
}

/// A reader that fails once more than `limit` bytes went through it.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.total.store(self.read, Ordering::Relaxed);
        if self.read > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "request body exceeds the limit of {} bytes",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// Loads a file's rows, all or none.
#[utoipa::path(post, path = "/tables/{name}/ingest", tag = "ingest",
    params(("name" = String, Path, description = "Table name", example = "events")),
    request_body(description = "NDJSON, CSV with a header row, or Parquet; streamed",
        content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"),
        )),
    responses(
        (status = 200, description = "Rows loaded", body = crate::openapi::Ingested),
        (status = 400, description = "A row or the file is malformed: the message names it", body = crate::openapi::ErrorBody),
        crate::openapi::Guarded,
        (status = 404, description = "No such table", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body stopped arriving", body = crate::openapi::ErrorBody),
        (status = 409, description = "The table cannot take batch loads, or another server owns it", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body over the ingest limit", body = crate::openapi::ErrorBody),
        (status = 415, description = "Another content type", body = crate::openapi::ErrorBody),
        (status = 503, description = "Too many loads at once (Retry-After), or the table is unavailable", body = crate::openapi::ErrorBody),
    ))]
async fn ingest(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        if let Some(u) = s.store.unavailable_table(&name) {
            return Err(ApiError::Unavailable(format!(
                "table {name:?} is unavailable: {}",
                u.reason
            )));
        }
        if s.store.table(&name).is_none() {
            return Err(ApiError::NotFound(format!("table {name:?} does not exist")));
        }
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::UnsupportedMediaType(
                "missing Content-Type; use application/x-ndjson, text/csv or application/vnd.apache.parquet".into(),
            ))?;
        let format = Format::from_content_type(ct)?;
        let Ok(_slot) = s.ingest_slots.clone().try_acquire_owned() else {
            s.metrics.refused.with_label_values(&["http", "ingest_busy"]).inc();
            return Err(ApiError::Busy(format!(
                "{} ingest requests are running (ingest.max_concurrent); try again",
                s.limits.max_concurrent_ingests
            )));
        };
        let limit = s.limits.max_ingest_bytes;
        if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
            if len > limit {
                return Err(ApiError::TooLarge(format!("request body of {len} bytes exceeds the limit of {limit} bytes")));
            }
        }
        let stalled = Arc::new(AtomicBool::new(false));
        let stream = Box::pin(with_read_timeout(
            body.into_data_stream().map_err(std::io::Error::other),
            s.limits.body_read_timeout,
            stalled.clone(),
        ));
        let exceeded = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let reader = Limited {
            inner: SyncIoBridge::new(StreamReader::new(stream)),
            read: 0,
            limit,
            exceeded: exceeded.clone(),
            total: total.clone(),
        };
        let started = Instant::now();
        let result = s.store.ingest(&name, format, Box::new(reader)).await;
        let rows = match result {
            Ok(rows) => rows,
            Err(_) if exceeded.load(Ordering::Relaxed) => {
                s.metrics.ingest_requests.with_label_values(&[&name, "too_large"]).inc();
                return Err(IngestError::TooLarge(limit).into());
            }
            Err(_) if stalled.load(Ordering::Relaxed) => {
                s.metrics.ingest_requests.with_label_values(&[&name, "stalled"]).inc();
                return Err(ApiError::Timeout(format!(
                    "the request body sent nothing for {} s (ingest.body_read_timeout_secs); nothing was ingested",
                    s.limits.body_read_timeout.as_secs()
                )));
            }
            Err(e) => {
                s.metrics.ingest_requests.with_label_values(&[&name, "rejected"]).inc();
                return Err(e.into());
            }
        };
        s.metrics.ingest_requests.with_label_values(&[&name, "ok"]).inc();
        s.metrics.ingested_rows.with_label_values(&[&name]).inc_by(rows);
        tracing::info!(table = %name, rows, bytes = total.load(Ordering::Relaxed), ms = started.elapsed().as_millis() as u64, "ingested");
        if let (Some(c), Some(t)) = (&s.cluster, s.store.table(&name)) {
            // Answer once servers hold the new segments, so a query right after sees them.
            if !c.wait_routable(&t, INGEST_ROUTABLE_WAIT).await {
                tracing::warn!(table = %name, "ingested segments are not loaded on a server yet; queries may report them missing until they are");
            }
        }
        if let Some(t) = s.store.table(&name) {
            let st = t.stats();
            s.metrics.table_rows.with_label_values(&[&name]).set(st.rows as i64);
            s.metrics.table_segments.with_label_values(&[&name]).set(st.segments as i64);
            s.metrics.table_bytes.with_label_values(&[&name]).set(st.bytes as i64);
        }
        Ok(Json(json!({ "rows": rows })).into_response())
    }
    .await;
    finish(&s, "ingest", r)
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    /// Pinot-style options, `key=value;key=value`; `timeoutMs` is honoured.
    #[serde(default, rename = "queryOptions")]
    query_options: Option<String>,
}

/// The limits of a request's class (`workload=dashboard|analyst`, default dashboard), with
/// `timeoutMs=N` (within the server's ceiling), `useResultCache=false` and
/// `useStarTree=false` from Pinot query options applied, and Basalt's `useDirectPlan=false`
/// (DataFusion plans every query); unknown options are ignored as Pinot does.
pub(crate) fn limits_for(
    limits: &HttpLimits,
    engine: &QueryEngine,
    options: Option<&str>,
) -> Result<QueryLimits, ApiError> {
    let mut pairs = Vec::new();
    for kv in options
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ApiError::BadRequest(format!("query option {kv:?} is not key=value")))?;
        pairs.push((k.trim(), v.trim()));
    }
    let workload = match pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("workload"))
    {
        Some((_, v)) => v
            .parse::<Workload>()
            .map_err(|e| ApiError::BadRequest(format!("query option {e}")))?,
        None => Workload::Dashboard,
    };
    let mut l = match workload {
        Workload::Dashboard => limits.query.clone(),
        Workload::Analyst => limits.analyst.clone(),
    };
    for (k, v) in pairs {
        if k.eq_ignore_ascii_case("timeoutMs") {
            let ms: u64 = v.trim().parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query option timeoutMs={v:?} is not a number of milliseconds"
                ))
            })?;
            l.timeout = engine.clamp_timeout(Duration::from_millis(ms));
        } else if k.eq_ignore_ascii_case("useResultCache") {
            l.use_cache = !v.eq_ignore_ascii_case("false");
        } else if k.eq_ignore_ascii_case("useStarTree") {
            l.use_star_tree = !v.eq_ignore_ascii_case("false");
        } else if k.eq_ignore_ascii_case("useDirectPlan") {
            l.direct_plan = !v.eq_ignore_ascii_case("false");
        }
    }
    Ok(l)
}

/// Runs a SQL query.
#[utoipa::path(post, path = "/query/sql", tag = "query",
    request_body(content = crate::openapi::SqlRequestDoc, content_type = "application/json"),
    responses(crate::openapi::QueryAnswers, crate::openapi::Guarded))]
async fn query_sql(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let r = async {
        require_json(&headers)?;
        let req: SqlRequest = parse_json(&body, "query request (expected {\"sql\": \"...\"})")?;
        let limits = limits_for(&s.limits, &s.engine, req.query_options.as_deref())?;
        let result = match s.engine.execute(&req.sql, &limits).await {
            Ok(mut out) => {
                response::success(&mut out, limits.max_response_bytes).map(|body| (body, out))
            }
            Err(e) => Err(e),
        };
        let secs = started.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => crate::metrics::outcome(e),
        };
        s.metrics
            .queries
            .with_label_values(&["http", outcome])
            .inc();
        s.metrics
            .query_seconds
            .with_label_values(&["http", outcome])
            .observe(secs);
        Ok::<_, ApiError>(match result {
            Ok((body, out)) => (
                [(header::CONTENT_TYPE, "application/json")],
                held_body(body, out),
            )
                .into_response(),
            Err(e) => {
                tracing::info!(error = %e, sql = %req.sql, "query failed");
                let body = Json(response::failure(&e, started.elapsed().as_millis() as u64));
                if e.kind() == basalt_query::ErrorKind::Overloaded {
                    // Pinot's body, with a status load balancers and clients retry on.
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        body,
                    )
                        .into_response()
                } else {
                    body.into_response()
                }
            }
        })
    }
    .await;
    finish(&s, "query", r)
}

/// `POST /query`: the same as `POST /query/sql` (Pinot's older path).
#[utoipa::path(post, path = "/query", tag = "query",
    request_body(content = crate::openapi::SqlRequestDoc, content_type = "application/json"),
    responses(crate::openapi::QueryAnswers, crate::openapi::Guarded))]
async fn query_alias(state: State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    query_sql(state, headers, body).await
}

/// A response body that keeps the query's memory reserved until it has been handed to the
/// connection (the encoded answer is the largest thing a query leaves behind).
pub(crate) fn held_body(bytes: Vec<u8>, out: basalt_query::QueryOutput) -> Body {
    let stream = futures::stream::unfold((Some(bytes), Some(out)), |(bytes, out)| async move {
        match bytes {
            Some(b) => Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(b)),
                (None, out),
            )),
            // Polled again once the answer was taken: the reservation is released here.
            None => {
                drop(out);
                None
            }
        }
    });
    Body::from_stream(stream)
}

/// `ok`, or `degraded` with the tables whose real-time ingestion is not consuming (their
/// broker is unreachable, or consumption is restarting after an error, a panic included),
/// the tables that cannot be loaded now and why, and the deep store's error when it cannot
/// be listed. The server itself answers either way, so the status code stays 200.
/// Liveness, and what is degraded.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "The server answers", body = crate::openapi::Health),
        (status = 403, description = "A cross-site request", body = crate::openapi::ErrorBody),
    ))]
async fn health(State(s): State<AppState>) -> Response {
    let mut problems = Vec::new();
    for name in s.store.table_names() {
        if let Some(st) = s.store.table(&name).and_then(|t| t.ingestion()) {
            if st.degraded() {
                problems.push(json!({
                    "table": st.table,
                    "state": st.state,
                    "broker_reachable": st.broker_reachable,
                    "error": st.error,
                }));
            }
        }
    }
    let unavailable = s.store.unavailable();
    let store_error = s.store.store_error();
    let status = if problems.is_empty() && unavailable.is_empty() && store_error.is_none() {
        "ok"
    } else {
        "degraded"
    };
    let r = Ok(Json(json!({
        "status": status,
        "tables": s.store.table_names().len(),
        "ingestion_problems": problems,
        "tables_unavailable": unavailable,
        "deep_store_error": store_error,
    }))
    .into_response());
    finish(&s, "health", r)
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
        crate::openapi::Guarded,
    ))]
async fn metrics(State(s): State<AppState>) -> Response {
    for name in s.store.table_names() {
        if let Some(t) = s.store.table(&name) {
            let st = t.stats();
            s.metrics
                .table_rows
                .with_label_values(&[&name])
                .set(st.rows as i64);
            s.metrics
                .table_segments
                .with_label_values(&[&name])
                .set(st.segments as i64);
            s.metrics
                .table_bytes
                .with_label_values(&[&name])
                .set(st.bytes as i64);
            if let Some(ing) = t.ingestion() {
                s.metrics.ingestion.observe(&ing);
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoTables;

    impl basalt_query::TableSource for NoTables {
        fn table_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn snapshot(
            &self,
            _name: &str,
        ) -> Result<Option<basalt_query::TableSnapshot>, basalt_query::QueryError> {
            Ok(None)
        }
    }

    #[test]
    fn query_options() {
        let limits = HttpLimits::default();
        let base = limits.query.clone();
        let engine = QueryEngine::with_config(
            Arc::new(NoTables),
            basalt_query::EngineConfig {
                max_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        );
        let l = |o: Option<&str>| limits_for(&limits, &engine, o);
        assert_eq!(
            l(Some("timeoutMs=50")).unwrap().timeout,
            Duration::from_millis(50)
        );
        assert_eq!(
            l(Some("useMultistageEngine=true; timeoutMs = 7"))
                .unwrap()
                .timeout,
            Duration::from_millis(7)
        );
        // A request cannot ask for more than the server's ceiling.
        assert_eq!(
            l(Some("timeoutMs=99999999999")).unwrap().timeout,
            Duration::from_secs(60)
        );
        assert!(l(Some("timeoutMs=abc")).is_err());
        assert!(!l(Some("useResultCache=false")).unwrap().use_cache);
        assert!(l(None).unwrap().use_cache);
        assert_eq!(l(None).unwrap().timeout, base.timeout);
        // The class: analyst limits (larger memory, spilling), then the request's timeout.
        let a = l(Some("workload=analyst;timeoutMs=1000")).unwrap();
        assert!(a.spill && !base.spill);
        assert_eq!(a.memory_limit, limits.analyst.memory_limit);
        assert_eq!(a.timeout, Duration::from_millis(1000));
        assert_eq!(
            l(Some("workload=Dashboard")).unwrap().memory_limit,
            base.memory_limit
        );
        let e = l(Some("workload=batch")).unwrap_err();
        assert!(e.to_string().contains("dashboard, analyst"), "{e}");
    }
}
