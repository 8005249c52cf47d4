//! Errors of ingestion: table specs, decoding rows, sealing and storing segments, metastore,
//! real-time sources.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("invalid table spec: {0}")]
    Spec(String),
    #[error("table {0:?} already exists")]
    TableExists(String),
    #[error("table {table:?} already exists in deep store {deep_store} with a different spec; post the same spec to attach it, or drop it first")]
    TableExistsElsewhere { table: String, deep_store: String },
    #[error("table {0:?} does not exist")]
    NoSuchTable(String),
    #[error("{location}: column {column:?}: {message}")]
    BadRow {
        location: String,
        column: String,
        message: String,
    },
    #[error("{location}: {message}")]
    BadInput { location: String, message: String },
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("unsupported content type {0:?}; use application/x-ndjson, text/csv or application/vnd.apache.parquet")]
    UnsupportedFormat(String),
    #[error("segment error: {0}")]
    Segment(#[from] basalt_segment::SegmentError),
    #[error("object store error: {0}")]
    Store(#[from] object_store::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("metastore is corrupt: {0}")]
    Metastore(String),
    #[error("tiering refused: {0}")]
    Tiering(String),
    #[error("table {table:?} changed after version {expected} was read (a concurrent writer committed first)")]
    Conflict { table: String, expected: u64 },
    #[error("table {table:?} partition {partition}: checkpoint delta ({from:?}, {to}] does not start at the checkpoint {checkpoint:?}")]
    CheckpointMismatch {
        table: String,
        partition: i32,
        checkpoint: Option<i64>,
        from: Option<i64>,
        to: i64,
    },
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("persisted state is damaged: {0}")]
    Corrupt(String),
    #[error("upsert/dedup state: {0}")]
    Keyed(String),
    #[error("invalid deep store url {0:?}: {1}")]
    DeepStore(String, String),
    /// A writer that is no longer allowed to commit: the table was dropped and created
    /// again, or another server took over its consumer lease.
    #[error("table {table:?}: this writer is fenced: {reason}")]
    Fenced { table: String, reason: String },
    /// A thread panicked; what it was doing was abandoned and cleaned up.
    #[error("{what} panicked: {message}")]
    Panicked { what: String, message: String },
    /// The table exists but cannot be used now (its deep store or segments).
    #[error("table {table:?} is unavailable: {reason}")]
    Unavailable { table: String, reason: String },
    /// This data dir is used by another running server.
    #[error("data dir {0} is in use by another basalt process")]
    DataDirLocked(String),
}

impl IngestError {
    /// An error for a caught panic's payload.
    pub fn panicked(what: &str, payload: Box<dyn std::any::Any + Send>) -> IngestError {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".into());
        IngestError::Panicked {
            what: what.into(),
            message,
        }
    }
}

impl IngestError {
    /// True when the caller sent something wrong (an HTTP 4xx), false for server faults.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            IngestError::Spec(_)
                | IngestError::TableExists(_)
                | IngestError::TableExistsElsewhere { .. }
                | IngestError::NoSuchTable(_)
                | IngestError::BadRow { .. }
                | IngestError::BadInput { .. }
                | IngestError::TooLarge(_)
                | IngestError::UnsupportedFormat(_)
                | IngestError::Parquet(_)
                | IngestError::NotSupported(_)
        )
    }
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
