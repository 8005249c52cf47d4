//! `basalt-query`: SQL over segments through DataFusion.
//!
//! In: SQL text and a [`TableSource`] that hands out consistent snapshots of each table's
//! segments. Out: Arrow record batches and Pinot-style scan counters. Filters the segment
//! indexes can answer are pushed down exactly ([`filter`]); segments are pruned by their
//! footer statistics; `count(*)` under such filters reads no column ([`scan`]); Pinot function
//! names are rewritten onto DataFusion's ([`pinot`]); GROUP BY runs inside the scan on
//! dictionary ids ([`segment_agg`]); a query repeated over unchanged tables is answered from
//! the result cache ([`cache`]).

pub mod admission;
mod agg_reducer;
pub mod bounded;
mod build_side;
pub mod cache;
mod cardinality;
pub mod coop;
mod decimal_arith;
mod deferred;
mod dict_keys;
pub mod dict_values;
mod direct;
mod dynamic_filter;
pub mod engine;
pub mod error;
pub mod filter;
pub mod fragment;
pub mod functions;
pub mod guard;
mod join_order;
pub mod json_extract;
pub mod memory;
pub mod pinot;
pub mod plain_strings;
pub mod postgres;
pub mod rewrite;
mod row_filter;
mod runtime;
pub use runtime::serve_on_query_threads;
pub mod scan;
pub mod search_fn;
pub mod segment_agg;
mod semi_join_pushdown;
mod semi_to_inner;
mod shared_subplan;
pub mod table;
pub mod workload;

pub use engine::{
    EngineConfig, FragmentOutput, QueryBudget, QueryEngine, QueryLimits, QueryOutput, QueryStats,
};
pub use error::{ErrorKind, QueryError};
pub use guard::StatementLimits;
pub use table::{SegmentTable, TableSnapshot, TableSource};
pub use workload::Workload;

#[cfg(test)]
mod join_tests;
#[cfg(test)]
mod json_tests;
#[cfg(test)]
mod partial_tests;
#[cfg(test)]
mod spill_tests;
#[cfg(test)]
mod star_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod text_tests;
#[cfg(test)]
mod typed_tests;
