//! `basalt-ingest`: from table specs and raw bytes to published segments.
//!
//! In: table specs ([`spec`]) and request bodies in NDJSON, CSV or Parquet ([`decode`]).
//! Messages of a table's stream source, consumed continuously ([`realtime`]: Kafka or the
//! built-in generator) into queryable mutable segments ([`mutable`]) and a quarantine.
//! Out: immutable segments in each table's deep store and versioned per-table state —
//! segments and stream checkpoints — in the metastore next to them ([`store`], [`home`],
//! [`metastore`]), plus a deterministic event generator for tests and benchmarks ([`gen`]).

pub mod decode;
pub mod durable;
pub mod error;
pub mod fault;
pub mod gen;
pub mod home;
pub mod json_row;
pub mod metastore;
pub mod mutable;
pub mod policy;
pub mod quarantine;
pub mod realtime;
pub mod spec;
pub mod store;
pub mod upsert;
pub mod warehouse;

pub use decode::Format;
pub use error::{IngestError, Result};
pub use realtime::{IngestionState, IngestionStatus, PartitionStatus};
pub use spec::TableSpec;
pub use store::{
    Everything, IngestLimits, Placement, StoreConfig, Table, TableStats, TableStore, TableView,
};
