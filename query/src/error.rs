//! Errors of the query layer: planning, execution, limits.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("{0}")]
    Sql(String),
    /// A statement that would change data or schema: Basalt's SQL is read-only.
    #[error("{0}")]
    ReadOnly(String),
    #[error("query timed out after {0} ms")]
    Timeout(u64),
    #[error("query result exceeds the row limit of {0} rows; add a LIMIT")]
    RowLimit(usize),
    #[error("query exceeded its memory limit: {0}")]
    Memory(String),
    #[error("{0}")]
    Execution(String),
    #[error("segment error: {0}")]
    Segment(#[from] basalt_segment::SegmentError),
}

impl From<datafusion::error::DataFusionError> for QueryError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e.find_root() {
            D::ResourcesExhausted(m) => QueryError::Memory(m.clone()),
            D::SQL(..) | D::Plan(..) | D::SchemaError(..) | D::NotImplemented(..) => {
                QueryError::Sql(e.strip_backtrace())
            }
            _ => QueryError::Execution(e.strip_backtrace()),
        }
    }
}

impl QueryError {
    /// Pinot-compatible error codes: 150 SQL parsing/planning, 250 timeout, 200 execution.
    pub fn pinot_code(&self) -> i32 {
        match self {
            QueryError::Sql(_) | QueryError::ReadOnly(_) => 150,
            QueryError::Timeout(_) => 250,
            QueryError::RowLimit(_) | QueryError::Memory(_) => 245,
            QueryError::Execution(_) | QueryError::Segment(_) => 200,
        }
    }
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
