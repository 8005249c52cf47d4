//! Errors of the segment format: building a segment from Arrow batches, and reading one back
//! from bytes. Every way persisted bytes can be wrong maps to a variant here, never to a panic.

use thiserror::Error;

/// Everything that can go wrong while building or reading a segment.
#[derive(Debug, Error)]
pub enum SegmentError {
    #[error("not a basalt segment: {0}")]
    NotASegment(String),
    #[error("unsupported segment format version {found} (this build reads 1..={supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("segment is truncated: {0}")]
    Truncated(String),
    #[error("checksum mismatch in {section}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        section: String,
        stored: u32,
        computed: u32,
    },
    #[error("corrupt segment: {0}")]
    Corrupt(String),
    #[error("decompression failed in {section}: {source}")]
    Decompress {
        section: String,
        source: std::io::Error,
    },
    #[error("compression failed: {0}")]
    Compress(std::io::Error),
    #[error("footer is not valid: {0}")]
    Footer(#[from] serde_json::Error),
    #[error("unknown column {0:?}")]
    UnknownColumn(String),
    #[error("column {column:?}: {message}")]
    Schema { column: String, message: String },
    #[error("predicate on column {column:?}: {message}")]
    Predicate { column: String, message: String },
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = SegmentError> = std::result::Result<T, E>;

pub(crate) fn corrupt(msg: impl Into<String>) -> SegmentError {
    SegmentError::Corrupt(msg.into())
}
