//! HTTP errors of the broker's API: every failure is a status code plus a JSON body
//! `{"error": "..."}` whose message names what is wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use basalt_ingest::IngestError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The server is at a limit of concurrent work; the client should retry.
    #[error("{0}")]
    Busy(String),
    /// The request body stopped arriving.
    #[error("{0}")]
    Timeout(String),
    /// What the request needs cannot be reached now (a table's deep store).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Busy(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let msg = e.to_string();
        match e {
            IngestError::NoSuchTable(_) => ApiError::NotFound(msg),
            IngestError::TableExists(_)
            | IngestError::TableExistsElsewhere { .. }
            | IngestError::NotSupported(_) => ApiError::Conflict(msg),
            IngestError::TooLarge(_) => ApiError::TooLarge(msg),
            IngestError::Fenced { .. } => ApiError::Conflict(msg),
            IngestError::Unavailable { .. } => ApiError::Unavailable(msg),
            IngestError::UnsupportedFormat(_) => ApiError::UnsupportedMediaType(msg),
            e if e.is_client_error() => ApiError::BadRequest(msg),
            _ => ApiError::Internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(self, ApiError::Busy(_)) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}
