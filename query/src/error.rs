//! Errors of the query layer: planning, execution, limits. Each [`QueryError`] keeps its
//! source (DataFusion's, Arrow's, the segment reader's) and has an [`ErrorKind`] taken from
//! the source's structure — never from its message — so the front doors choose SQLSTATEs,
//! Pinot error codes and HTTP statuses from the kind.

use std::error::Error as StdError;

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use thiserror::Error;

/// What went wrong, as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The SQL does not parse.
    Syntax,
    /// A statement that would change data or schema.
    ReadOnly,
    UndefinedTable,
    UndefinedColumn,
    AmbiguousColumn,
    DuplicateColumn,
    UndefinedFunction,
    /// Any other planning error (types, arguments, unsupported combinations).
    InvalidQuery,
    /// Valid SQL that the engine does not implement.
    NotSupported,
    /// The statement is deeper or longer than the server accepts.
    TooComplex,
    DivisionByZero,
    NumericOverflow,
    /// A value that does not convert (casts, parsing of text).
    InvalidValue,
    /// Malformed input found while executing (a function's arguments, a bad timestamp).
    DataException,
    /// A parameter (query option, bound value) that is out of range.
    InvalidParameter,
    Timeout,
    RowLimit,
    /// The query's own memory limit or the server's shared pool.
    Memory,
    /// The result is larger than the server sends.
    ResponseTooLarge,
    /// Too many queries are running and waiting already.
    Overloaded,
    /// A table (or some of its segments) cannot be read now.
    Unavailable,
    /// Persisted bytes failed a check (checksums, layout).
    DataCorrupted,
    /// Reading from storage failed.
    Io,
    Internal,
}

impl ErrorKind {
    /// Every kind, for [`Self::from_name`].
    pub const ALL: [ErrorKind; 24] = [
        ErrorKind::Syntax,
        ErrorKind::ReadOnly,
        ErrorKind::UndefinedTable,
        ErrorKind::UndefinedColumn,
        ErrorKind::AmbiguousColumn,
        ErrorKind::DuplicateColumn,
        ErrorKind::UndefinedFunction,
        ErrorKind::InvalidQuery,
        ErrorKind::NotSupported,
        ErrorKind::TooComplex,
        ErrorKind::DivisionByZero,
        ErrorKind::NumericOverflow,
        ErrorKind::InvalidValue,
        ErrorKind::DataException,
        ErrorKind::InvalidParameter,
        ErrorKind::Timeout,
        ErrorKind::RowLimit,
        ErrorKind::Memory,
        ErrorKind::ResponseTooLarge,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::DataCorrupted,
        ErrorKind::Io,
        ErrorKind::Internal,
    ];

    /// The kind's name (its variant), as errors carry it between processes.
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// The kind [`Self::name`] gave.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("sql parser error: {0}")]
    Parse(#[source] ParserError),
    /// A statement that would change data or schema: Basalt's SQL is read-only.
    #[error("{0}")]
    ReadOnly(String),
    /// A check of Basalt's own refused the statement (its kind says which).
    #[error("{message}")]
    Invalid { kind: ErrorKind, message: String },
    /// Planning or execution failed in DataFusion; `kind` is read off the error's structure.
    #[error("{}", .source.strip_backtrace())]
    DataFusion {
        kind: ErrorKind,
        #[source]
        source: DataFusionError,
    },
    #[error("query timed out after {0} ms")]
    Timeout(u64),
    #[error("query result exceeds the row limit of {0} rows; add a LIMIT")]
    RowLimit(usize),
    #[error("query exceeded its memory limit: {}", .0.strip_backtrace())]
    Memory(#[source] DataFusionError),
    #[error("the query result of more than {limit} bytes exceeds the response limit; add a LIMIT or select fewer columns")]
    ResponseTooLarge { limit: usize },
    #[error("the server is busy: {running} queries are running and {queued} waiting (query.max_concurrent, query.max_queued); try again")]
    Overloaded { running: usize, queued: usize },
    #[error("segment error: {0}")]
    Segment(#[from] basalt_segment::SegmentError),
    /// A table name that no table has (raised by Basalt's schema during planning).
    #[error("table {0:?} not found")]
    UndefinedTable(String),
    /// A table that exists but cannot be queried now (its segments could not be opened, its
    /// deep store is unreachable).
    #[error("table {table:?} is unavailable: {reason}")]
    Unavailable { table: String, reason: String },
    /// Taking a table's snapshot failed (freezing its in-memory rows).
    #[error("table {table:?}: {source}")]
    Snapshot {
        table: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl QueryError {
    /// An error of Basalt's own checks.
    pub fn invalid(kind: ErrorKind, message: impl Into<String>) -> Self {
        QueryError::Invalid {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Parse(_) => ErrorKind::Syntax,
            QueryError::ReadOnly(_) => ErrorKind::ReadOnly,
            QueryError::Invalid { kind, .. } | QueryError::DataFusion { kind, .. } => *kind,
            QueryError::Timeout(_) => ErrorKind::Timeout,
            QueryError::RowLimit(_) => ErrorKind::RowLimit,
            QueryError::Memory(_) => ErrorKind::Memory,
            QueryError::ResponseTooLarge { .. } => ErrorKind::ResponseTooLarge,
            QueryError::Overloaded { .. } => ErrorKind::Overloaded,
            QueryError::Segment(_) => ErrorKind::DataCorrupted,
            QueryError::UndefinedTable(_) => ErrorKind::UndefinedTable,
            QueryError::Unavailable { .. } => ErrorKind::Unavailable,
            QueryError::Snapshot { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the client's statement or its parameters were at fault (as opposed to the
    /// server, its limits or its data).
    pub fn is_client_error(&self) -> bool {
        use ErrorKind::*;
        matches!(
            self.kind(),
            Syntax
                | ReadOnly
                | UndefinedTable
                | UndefinedColumn
                | AmbiguousColumn
                | DuplicateColumn
                | UndefinedFunction
                | InvalidQuery
                | NotSupported
                | TooComplex
                | InvalidParameter
        )
    }

    /// Pinot-compatible error codes: 150 SQL parsing/planning, 190 table does not exist,
    /// 200 execution, 235 segments unavailable, 245 resource limits, 250 timeout, 429 too
    /// many requests.
    pub fn pinot_code(&self) -> i32 {
        use ErrorKind::*;
        match self.kind() {
            UndefinedTable => 190,
            Timeout => 250,
            RowLimit | Memory | ResponseTooLarge => 245,
            Overloaded => 429,
            Unavailable => 235,
            DivisionByZero | NumericOverflow | InvalidValue | DataException | DataCorrupted
            | Io | Internal => 200,
            Syntax | ReadOnly | UndefinedColumn | AmbiguousColumn | DuplicateColumn
            | UndefinedFunction | InvalidQuery | NotSupported | TooComplex | InvalidParameter => {
                150
            }
        }
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find_source<T: StdError + 'static>(e: &DataFusionError) -> Option<&T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// The kind of a DataFusion error, from its variant and the errors it wraps.
pub fn classify(e: &DataFusionError) -> ErrorKind {
    if let Some(q) = find_source::<QueryError>(e) {
        return q.kind();
    }
    if find_source::<basalt_segment::SegmentError>(e).is_some() {
        return ErrorKind::DataCorrupted;
    }
    match e.find_root() {
        DataFusionError::SQL(..) => ErrorKind::Syntax,
        DataFusionError::SchemaError(s, _) => match s.as_ref() {
            SchemaError::FieldNotFound { .. } => ErrorKind::UndefinedColumn,
            SchemaError::AmbiguousReference { .. } => ErrorKind::AmbiguousColumn,
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => ErrorKind::DuplicateColumn,
        },
        DataFusionError::Plan(_) | DataFusionError::Configuration(_) => ErrorKind::InvalidQuery,
        DataFusionError::NotImplemented(_) => ErrorKind::NotSupported,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::Memory,
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::DivideByZero => ErrorKind::DivisionByZero,
            ArrowError::ArithmeticOverflow(_)
            | ArrowError::OffsetOverflowError(_)
            | ArrowError::DictionaryKeyOverflowError => ErrorKind::NumericOverflow,
            ArrowError::CastError(_) | ArrowError::ParseError(_) => ErrorKind::InvalidValue,
            ArrowError::InvalidArgumentError(_) | ArrowError::ComputeError(_) => {
                ErrorKind::DataException
            }
            ArrowError::MemoryError(_) => ErrorKind::Memory,
            ArrowError::IoError(..) => ErrorKind::Io,
            ArrowError::NotYetImplemented(_) => ErrorKind::NotSupported,
            _ => ErrorKind::Internal,
        },
        DataFusionError::Execution(_) => ErrorKind::DataException,
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => ErrorKind::Io,
        DataFusionError::ParquetError(_) => ErrorKind::DataCorrupted,
        DataFusionError::Collection(v) => v.first().map(classify).unwrap_or(ErrorKind::Internal),
        _ => ErrorKind::Internal,
    }
}

impl From<DataFusionError> for QueryError {
    fn from(mut e: DataFusionError) -> Self {
        // Basalt's own errors raised inside DataFusion come back as themselves.
        let ours = matches!(e.find_root(), DataFusionError::External(b) if b.is::<QueryError>());
        if ours {
            e = match unwrap_root(e) {
                DataFusionError::External(b) => match b.downcast::<QueryError>() {
                    Ok(q) => return *q,
                    Err(b) => DataFusionError::External(b),
                },
                other => other,
            };
        }
        match classify(&e) {
            ErrorKind::Memory => QueryError::Memory(e),
            kind => QueryError::DataFusion { kind, source: e },
        }
    }
}

/// `e`'s innermost DataFusion error, by value (contexts and diagnostics peeled off).
fn unwrap_root(e: DataFusionError) -> DataFusionError {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            unwrap_root(*inner)
        }
        DataFusionError::Shared(a) => match std::sync::Arc::try_unwrap(a) {
            Ok(inner) => unwrap_root(inner),
            Err(a) => DataFusionError::Shared(a),
        },
        other => other,
    }
}

impl From<ParserError> for QueryError {
    fn from(e: ParserError) -> Self {
        match e {
            ParserError::RecursionLimitExceeded => QueryError::invalid(
                ErrorKind::TooComplex,
                "the statement is nested too deeply (query.max_expression_depth)",
            ),
            e => QueryError::Parse(e),
        }
    }
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        // Exhaustive: a new kind fails to compile here until it is in `ALL`.
        fn listed(k: ErrorKind) -> bool {
            match k {
                ErrorKind::Syntax => ErrorKind::ALL.contains(&k),
                ErrorKind::ReadOnly => ErrorKind::ALL.contains(&k),
                ErrorKind::UndefinedTable => ErrorKind::ALL.contains(&k),
                ErrorKind::UndefinedColumn => ErrorKind::ALL.contains(&k),
                ErrorKind::AmbiguousColumn => ErrorKind::ALL.contains(&k),
                ErrorKind::DuplicateColumn => ErrorKind::ALL.contains(&k),
                ErrorKind::UndefinedFunction => ErrorKind::ALL.contains(&k),
                ErrorKind::InvalidQuery => ErrorKind::ALL.contains(&k),
                ErrorKind::NotSupported => ErrorKind::ALL.contains(&k),
                ErrorKind::TooComplex => ErrorKind::ALL.contains(&k),
                ErrorKind::DivisionByZero => ErrorKind::ALL.contains(&k),
                ErrorKind::NumericOverflow => ErrorKind::ALL.contains(&k),
                ErrorKind::InvalidValue => ErrorKind::ALL.contains(&k),
                ErrorKind::DataException => ErrorKind::ALL.contains(&k),
                ErrorKind::InvalidParameter => ErrorKind::ALL.contains(&k),
                ErrorKind::Timeout => ErrorKind::ALL.contains(&k),
                ErrorKind::RowLimit => ErrorKind::ALL.contains(&k),
                ErrorKind::Memory => ErrorKind::ALL.contains(&k),
                ErrorKind::ResponseTooLarge => ErrorKind::ALL.contains(&k),
                ErrorKind::Overloaded => ErrorKind::ALL.contains(&k),
                ErrorKind::Unavailable => ErrorKind::ALL.contains(&k),
                ErrorKind::DataCorrupted => ErrorKind::ALL.contains(&k),
                ErrorKind::Io => ErrorKind::ALL.contains(&k),
                ErrorKind::Internal => ErrorKind::ALL.contains(&k),
            }
        }
        for k in ErrorKind::ALL {
            assert!(listed(k));
            assert_eq!(ErrorKind::from_name(&k.name()), Some(k));
        }
        assert_eq!(ErrorKind::from_name("Nope"), None);
    }

    #[test]
    fn kinds_come_from_structure() {
        let arrow = |a: ArrowError| DataFusionError::ArrowError(Box::new(a), None);
        assert_eq!(
            classify(&arrow(ArrowError::DivideByZero)),
            ErrorKind::DivisionByZero
        );
        assert_eq!(
            classify(&arrow(ArrowError::CastError("x".into()))),
            ErrorKind::InvalidValue
        );
        let wrapped = DataFusionError::Context(
            "while planning".into(),
            Box::new(DataFusionError::External(Box::new(
                QueryError::UndefinedTable("t".into()),
            ))),
        );
        assert_eq!(classify(&wrapped), ErrorKind::UndefinedTable);
        assert!(matches!(
            QueryError::from(wrapped),
            QueryError::UndefinedTable(_)
        ));
        let q = QueryError::from(DataFusionError::External(Box::new(QueryError::RowLimit(3))));
        assert!(matches!(q, QueryError::RowLimit(3)), "{q:?}");
        let m = QueryError::from(DataFusionError::ResourcesExhausted("x".into()));
        assert_eq!(m.kind(), ErrorKind::Memory);
        assert_eq!(m.pinot_code(), 245);
        assert_eq!(
            QueryError::from(ParserError::RecursionLimitExceeded).kind(),
            ErrorKind::TooComplex
        );
    }
}
