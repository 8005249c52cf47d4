//! Results of repeated queries over unchanged tables. In: a query's text (with its dialect and
//! bound parameters) and, for every table it reads, the table's data version token. Out: the
//! stored result when the same query ran over the same versions, else nothing.
//!
//! Exact, not time-based: an entry is valid only while every table it read is pointer-equal
//! to the version it was computed from (a batch table's view is replaced as a whole when an
//! ingest publishes). The entry keeps weak references to those versions: a replaced view's
//! contents (its segments) are freed, but its allocation is not reused while the entry
//! lives, so an address can never match a different view. Real-time tables have no version (their rows change every moment)
//! and queries calling time- or session-dependent functions (`now()`, `random()`,
//! `current_setting()`, …) are never cached. Dashboards refreshing the same panels every
//! second are the case this serves: many viewers, one computation per data version.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::TableReference;
use parking_lot::Mutex;

use crate::engine::QueryStats;
use crate::postgres::rewrite::calls_any;
use crate::table::TableSource;

/// A table's data version: pointer-equal while its data is unchanged.
pub type DataVersion = Arc<dyn Any + Send + Sync>;

/// Functions whose result depends on the clock, chance or the session.
const VOLATILE: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "random",
    "uuid",
    "current_setting",
    "current_user",
    "session_user",
    "current_role",
    "current_database",
    "current_catalog",
    "current_schema",
    "current_schemas",
    "pg_backend_pid",
    "txid_current",
    "pg_get_userbyid",
    "to_regclass",
    "basalt_regclass",
];

fn volatile(statement: &DfStatement) -> bool {
    match statement {
        DfStatement::Statement(s) => calls_any(s.as_ref(), VOLATILE),
        _ => true,
    }
}

/// The data versions of every table `statement` reads, or `None` when its result may not be
/// cached (a real-time table, a catalog, an unknown table, a volatile function).
pub fn versions(statement: &DfStatement, source: &dyn TableSource) -> Option<Vec<DataVersion>> {
    if volatile(statement) {
        return None;
    }
    let (tables, _ctes) =
        datafusion::sql::resolve::resolve_table_references(statement, false).ok()?;
    if tables.is_empty() {
        return None;
    }
    tables
        .iter()
        .map(|t| match t {
            TableReference::Bare { table } => source.data_version(table),
            TableReference::Partial { schema, table } if schema.as_ref() == "public" => {
                source.data_version(table)
            }
            _ => None,
        })
        .collect()
}

#[derive(Clone)]
pub struct Cached {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub stats: QueryStats,
}

struct Entry {
    versions: Vec<std::sync::Weak<dyn Any + Send + Sync>>,
    result: Cached,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
    bytes: usize,
}

/// Bounded by bytes; the oldest entries go first.
pub struct ResultCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResultCache(max {} bytes)", self.max_bytes)
    }
}

fn same(held: &[std::sync::Weak<dyn Any + Send + Sync>], now: &[DataVersion]) -> bool {
    held.len() == now.len()
        && held
            .iter()
            .zip(now)
            .all(|(w, a)| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(a)))
}

impl ResultCache {
    pub fn new(max_bytes: usize) -> Self {
        ResultCache {
            inner: Mutex::new(Inner::default()),
            max_bytes,
        }
    }

    pub fn get(&self, key: &str, versions: &[DataVersion]) -> Option<Cached> {
        let mut inner = self.inner.lock();
        let entry = inner.entries.get(key)?;
        if same(&entry.versions, versions) {
            return Some(entry.result.clone());
        }
        // Computed over data that has changed since: never valid again.
        let stale = inner.entries.remove(key).expect("present");
        inner.bytes -= stale.bytes;
        None
    }

    pub fn put(&self, key: String, versions: Vec<DataVersion>, result: Cached) {
        let bytes = key.len()
            + result
                .batches
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>();
        if bytes > self.max_bytes / 16 {
            return;
        }
        let mut inner = self.inner.lock();
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.bytes;
        }
        while inner.bytes + bytes > self.max_bytes {
            let Some(k) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&k) {
                inner.bytes -= e.bytes;
            }
        }
        inner.order.push_back(key.clone());
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                versions: versions.iter().map(Arc::downgrade).collect(),
                result,
                bytes,
            },
        );
        // Keys re-put after eviction of their older copy may repeat in `order`; bound it.
        if inner.order.len() > 4 * inner.entries.len() + 64 {
            let live: std::collections::HashSet<String> = inner.entries.keys().cloned().collect();
            inner.order.retain(|k| live.contains(k));
        }
    }
}
