//! Errors of the semantic layer. In: what went wrong with a model, a request, the
//! metastore or the query. Out: one [`SemanticError`] keeping its source, whose
//! [`SemanticError::Invalid`] names the field at fault.

use basalt_ingest::IngestError;
use basalt_query::QueryError;

#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    /// A model or request field that is wrong, named by its path (`measures[2].agg`).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("semantic model {0:?} does not exist")]
    UnknownModel(String),
    /// Planning or running the compiled query failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("the semantic models could not be read or written: {0}")]
    Store(#[from] IngestError),
    /// The stored models did not decode.
    #[error("the stored semantic models do not decode: {0}")]
    Corrupt(String),
    #[error("the semantic models kept changing under this write ({0} attempts); try again")]
    Contended(usize),
}

pub type Result<T, E = SemanticError> = std::result::Result<T, E>;

/// An [`SemanticError::Invalid`] naming `field`.
pub fn invalid(field: &str, message: impl Into<String>) -> SemanticError {
    SemanticError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}
