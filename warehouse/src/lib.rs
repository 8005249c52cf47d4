//! `basalt-warehouse`: the warehouse tier. In: tables whose spec has a `warehouse` block,
//! their sealed segments and the metastore's warehouse state. Out: old segments moved into
//! an Apache Iceberg table ([`tier`]), read by any Iceberg engine; queries spanning the
//! segments and the Iceberg table without counting a row twice ([`table`]).
//!
//! Iceberg access is Apache `iceberg` 0.10 with `iceberg-datafusion`; files go through
//! Basalt's own object stores ([`storage`]). Why this crate and not `iceberg-rust`: see
//! ARCHITECTURE.md, "Warehouse tier".

pub mod catalog;
pub mod error;
pub mod files;
pub mod scan;
pub mod schema;
pub mod service;
pub mod storage;
pub mod table;
pub mod tier;

pub use error::{Result, WarehouseError};
pub use service::Warehouse;
