//! Errors of the warehouse tier, each keeping its source.

use basalt_ingest::error::IngestError;

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("segment: {0}")]
    Segment(#[from] basalt_segment::SegmentError),
    #[error("{0}")]
    Invalid(String),
    /// The Iceberg table holds a Basalt snapshot the metastore does not know, or the
    /// reverse: tiering stops for the table until an operator looks.
    #[error("warehouse of table {table}: {reason}")]
    Inconsistent { table: String, reason: String },
}

pub type Result<T, E = WarehouseError> = std::result::Result<T, E>;
