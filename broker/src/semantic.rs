//! The semantic layer's HTTP routes. In: models (`POST /semantic/models`, JSON or YAML;
//! `GET /semantic/models`, `GET` and `DELETE /semantic/models/{name}`) and semantic queries
//! (`POST /semantic/query`). Out: the stored model, or the answer in Pinot's broker response
//! shape with a `semantic` member: the SQL compiled, the tier that answered each part of the
//! range with its freshness, and warnings. The layer itself is `basalt-semantic`; SQL with
//! `MEASURE()` over `semantic.<model>` goes through `/query/sql` and PostgreSQL unchanged.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use basalt_semantic::{BodyFormat, SemanticError, SemanticQuery};
use serde_json::json;

use crate::error::ApiError;
use crate::http::{finish, held_body, limits_for, media_type, parse_json, require_json, AppState};
use crate::response;

impl From<SemanticError> for ApiError {
    fn from(e: SemanticError) -> Self {
        let msg = e.to_string();
        match e {
            SemanticError::Invalid { .. } => ApiError::BadRequest(msg),
            SemanticError::UnknownModel(_) => ApiError::NotFound(msg),
            SemanticError::Store(e) => ApiError::from(e),
            SemanticError::Contended(_) => ApiError::Busy(msg),
            SemanticError::Corrupt(_) => ApiError::Internal(msg),
            SemanticError::Query(q) => {
                use basalt_query::ErrorKind::*;
                match q.kind() {
                    Overloaded => ApiError::Busy(msg),
                    Timeout => ApiError::Timeout(msg),
                    Unavailable | Io => ApiError::Unavailable(msg),
                    Internal | DataCorrupted => ApiError::Internal(msg),
                    // The request's statement, its data or its limits.
                    _ => ApiError::BadRequest(msg),
                }
            }
        }
    }
}

/// The format of a model body from its `Content-Type`.
fn model_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let (ct, base) = media_type(headers);
    match base.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Ok(BodyFormat::Yaml)
        }
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {ct:?} is not accepted here; send application/json or application/yaml"
        ))),
    }
}

/// Stores a metric model (replacing one of the same name), checked against its table.
#[utoipa::path(post, path = "/semantic/models", tag = "semantic",
    request_body(content = crate::openapi::SemanticModelDoc, content_type = "application/json",
        description = "A model (README: Semantic layer); also accepted as application/yaml"),
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::SemanticModelStored),
        (status = 201, description = "Created", body = crate::openapi::SemanticModelStored),
        (status = 400, description = "Invalid model: the message names the field", body = crate::openapi::ErrorBody),
        crate::openapi::Guarded,
        (status = 413, description = "Body over 16 MiB", body = crate::openapi::ErrorBody),
        (status = 415, description = "Neither JSON nor YAML", body = crate::openapi::ErrorBody),
        (status = 503, description = "The metastore cannot be reached or is contended", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn create_model(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        let format = model_format(&headers)?;
        let (model, created) = s.semantic.put(&body, format).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let body = json!({
            "status": if created { "created" } else { "replaced" },
            "model": serde_json::Value::from(model.as_ref()),
        });
        Ok::<_, ApiError>((status, Json(body)).into_response())
    }
    .await;
    finish(&s, "create_semantic_model", r)
}

/// Every metric model.
#[utoipa::path(get, path = "/semantic/models", tag = "semantic",
    responses(
        (status = 200, description = "The models", body = crate::openapi::SemanticModelList),
        crate::openapi::Guarded,
    ))]
pub(crate) async fn list_models(State(s): State<AppState>) -> Response {
    let models: Vec<serde_json::Value> = s
        .semantic
        .list()
        .iter()
        .map(|m| serde_json::Value::from(m.as_ref()))
        .collect();
    finish(
        &s,
        "list_semantic_models",
        Ok(Json(json!({ "models": models })).into_response()),
    )
}

/// One metric model.
#[utoipa::path(get, path = "/semantic/models/{name}", tag = "semantic",
    params(("name" = String, Path, description = "Model name", example = "events")),
    responses(
        (status = 200, description = "The model", body = crate::openapi::SemanticModelDoc),
        crate::openapi::Guarded,
        (status = 404, description = "No such model", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn get_model(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let r = s
        .semantic
        .get(&name)
        .map(|m| Json(serde_json::Value::from(m.as_ref())).into_response())
        .map_err(ApiError::from);
    finish(&s, "get_semantic_model", r)
}

/// Deletes a metric model.
#[utoipa::path(delete, path = "/semantic/models/{name}", tag = "semantic",
    params(("name" = String, Path, description = "Model name", example = "events")),
    responses(
        (status = 200, description = "Deleted", body = crate::openapi::SemanticModelDeleted),
        crate::openapi::Guarded,
        (status = 404, description = "No such model", body = crate::openapi::ErrorBody),
        (status = 503, description = "The metastore cannot be reached or is contended", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn delete_model(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let r = async {
        s.semantic.delete(&name).await?;
        Ok::<_, ApiError>(Json(json!({"status": "deleted", "model": name})).into_response())
    }
    .await;
    finish(&s, "delete_semantic_model", r)
}

/// Answers a semantic query: measures by dimensions (and time grain) over a time range.
#[utoipa::path(post, path = "/semantic/query", tag = "semantic",
    request_body(content = crate::openapi::SemanticQueryDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Rows (dimensions first, then the measures in the order asked), or the failure in `exceptions`", body = crate::openapi::SemanticResponse),
        (status = 400, description = "Invalid request: the message names the field", body = crate::openapi::ErrorBody),
        crate::openapi::Guarded,
        (status = 404, description = "No such model", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body over 16 MiB", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 503, description = "Overloaded (Retry-After)", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn semantic_query(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let r = async {
        require_json(&headers)?;
        let q: SemanticQuery = parse_json(&body, "semantic query")?;
        let limits = limits_for(&s.limits, &s.engine, None)?;
        let answer = s.semantic.query(&q, &limits).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(SemanticError::Query(e)) => crate::metrics::outcome(e),
            Err(_) => "invalid",
        };
        s.metrics
            .queries
            .with_label_values(&["semantic", outcome])
            .inc();
        s.metrics
            .query_seconds
            .with_label_values(&["semantic", outcome])
            .observe(started.elapsed().as_secs_f64());
        let mut answer = answer?;
        let semantic = json!({
            "model": q.model,
            "semantic_sql": answer.semantic_sql,
            "sql": answer.sql,
            "tiers": answer.tiers,
            "warnings": answer.warnings,
        });
        let mut bytes = response::success(&mut answer.output, limits.max_response_bytes)
            .map_err(|e| ApiError::from(SemanticError::Query(e)))?;
        // `bytes` is an object: add the semantic member before its closing brace.
        bytes.pop();
        bytes.extend_from_slice(b",\"semantic\":");
        serde_json::to_writer(&mut bytes, &semantic).expect("writing to a Vec");
        bytes.push(b'}');
        Ok::<_, ApiError>(
            (
                [(header::CONTENT_TYPE, "application/json")],
                held_body(bytes, answer.output),
            )
                .into_response(),
        )
    }
    .await;
    finish(&s, "semantic_query", r)
}
