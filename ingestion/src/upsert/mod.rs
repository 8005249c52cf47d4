//! Upsert and dedup tables: one current row per primary key, across mutable and sealed
//! segments, without a query-time merge. In: a table's `primary_key` with `upsert` or
//! `dedup` ([`config`]), and the decoded rows of each stream partition in arrival order.
//! Out: per partition a [`partition::KeyedPartition`] — a compact [`keymap::KeyMap`] from
//! key hash to the key's current row, valid-docs bitmaps per segment that every query of the
//! table applies, merged PARTIAL rows, dropped dedup duplicates — and the snapshot of its
//! bitmaps persisted with each seal ([`snapshot`]), from which it is rebuilt at start before
//! the stream is replayed from the checkpoint.
//!
//! The key map is per partition: the topic must be keyed by the primary key (Pinot's rule
//! too). A key first seen in one partition that another partition already holds is counted
//! as a key conflict in the ingestion status.

pub mod config;
pub mod keymap;
pub mod merge;
pub mod partition;
pub mod rows;
pub mod snapshot;

pub use config::{KeyMode, KeyedTable, Strategy};

/// The key space of a table's batch ingests, as a partition id in the metastore's keyed
/// snapshots (stream partitions are 0 and up).
pub const BATCH_PARTITION: i32 = -1;
pub use partition::{KeyedCounters, KeyedPartition, SlotSnapshot};
