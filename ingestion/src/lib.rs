//! `basalt-ingest`: from table specs and raw bytes to published segments.
//!
//! In: table specs ([`spec`]) and request bodies in NDJSON, CSV or Parquet ([`decode`]).
//! Out: immutable segments in the deep store and versioned per-table state in the metastore
//! ([`store`], [`metastore`]), plus a deterministic event generator for tests and benchmarks ([`gen`]).

pub mod decode;
pub mod error;
pub mod gen;
pub mod metastore;
pub mod mutable;
pub mod quarantine;
pub mod spec;
pub mod store;

pub use decode::Format;
pub use error::{IngestError, Result};
pub use spec::TableSpec;
pub use store::{StoreConfig, Table, TableStats, TableStore};
