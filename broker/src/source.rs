//! Adapts the ingestion side's [`TableStore`] to the query layer's [`TableSource`]: each call
//! to `snapshot` takes the table's current view — sealed segments plus the real-time
//! partitions' mutable segments, frozen into in-memory chunks — which is then fixed for the
//! query. A real-time table also answers as `<table>$quarantine`, its quarantined messages.

use std::sync::Arc;

use basalt_ingest::quarantine::quarantine_schema;
use basalt_ingest::warehouse::WarehouseState;
use basalt_ingest::TableStore;
use basalt_query::scan::ScanStats;
use basalt_query::table::SegmentTable;
use basalt_query::{QueryError, TableSnapshot, TableSource};
use basalt_segment::SegmentSchema;
use datafusion::datasource::TableProvider;

/// The suffix naming a table's quarantine.
pub const QUARANTINE_SUFFIX: &str = "$quarantine";

#[derive(Debug, Clone)]
pub struct StoreSource(pub Arc<TableStore>);

impl TableSource for StoreSource {
    fn table_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for n in self.0.table_names() {
            let realtime = self.0.table(&n).is_some_and(|t| t.spec.is_realtime());
            if realtime {
                names.push(format!("{n}{QUARANTINE_SUFFIX}"));
            }
            names.push(n);
        }
        // Unavailable tables keep their names: a query of one says why it cannot run.
        names.extend(self.0.unavailable().into_iter().map(|u| u.table));
        names
    }

    fn schema(&self, name: &str) -> Option<SegmentSchema> {
        match name.strip_suffix(QUARANTINE_SUFFIX) {
            Some(base) => self
                .0
                .table(base)
                .filter(|t| t.spec.is_realtime())
                .map(|_| quarantine_schema()),
            None => self.0.table(name).map(|t| t.schema.clone()).or_else(|| {
                self.0
                    .unavailable_table(name)
                    .and_then(|u| u.spec)
                    .map(|s| s.segment_schema())
            }),
        }
    }

    /// Batch tables only: their view is replaced as a whole when an ingest publishes. A
    /// real-time table's rows change with every message, so it has no version.
    fn data_version(&self, name: &str) -> Option<basalt_query::cache::DataVersion> {
        let t = self.0.table(name)?;
        if t.spec.source.is_some() {
            return None;
        }
        let view = t.view();
        if !view.mutable.is_empty() {
            return None;
        }
        Some(view)
    }

    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        Ok(self.snapshot_and_tier(name)?.map(|(s, _)| s))
    }

    /// Every table: its scan is a [`SegmentTable`] over this snapshot.
    fn direct_snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        self.snapshot(name)
    }
}

/// A table's snapshot and the warehouse state of the same view.
pub type SnapshotAndTier = (TableSnapshot, Option<Arc<WarehouseState>>);

impl StoreSource {
    /// The table's snapshot and the warehouse state of the same view.
    pub fn snapshot_and_tier(&self, name: &str) -> Result<Option<SnapshotAndTier>, QueryError> {
        let (base, quarantine) = match name.strip_suffix(QUARANTINE_SUFFIX) {
            Some(b) => (b, true),
            None => (name, false),
        };
        let Some(t) = self.0.table(base) else {
            return match self.0.unavailable_table(base) {
                Some(u) => Err(QueryError::Unavailable {
                    table: u.table,
                    reason: u.reason,
                }),
                None => Ok(None),
            };
        };
        if quarantine && !t.spec.is_realtime() {
            return Ok(None);
        }
        // One view: a part being sealed is either still in `mutable` or already among the
        // segments, never both.
        let schema = match quarantine {
            true => quarantine_schema(),
            false => t.schema.clone(),
        };
        let view = t.view();
        let read = view.readers(quarantine).map_err(|e| QueryError::Snapshot {
            table: name.to_string(),
            source: Box::new(e),
        })?;
        let snapshot = TableSnapshot {
            name: name.to_string(),
            schema,
            segments: read.segments,
            valid: read.valid,
        };
        let tier = match quarantine {
            true => None,
            false => view.warehouse.clone(),
        };
        Ok(Some((snapshot, tier)))
    }
}

/// A [`StoreSource`] whose tables with a warehouse tier span it ([`basalt_warehouse`]).
#[derive(Debug, Clone)]
pub struct TieredSource {
    pub store: StoreSource,
    pub warehouse: Arc<basalt_warehouse::Warehouse>,
}

impl TableSource for TieredSource {
    fn table_names(&self) -> Vec<String> {
        self.store.table_names()
    }

    fn schema(&self, name: &str) -> Option<SegmentSchema> {
        self.store.schema(name)
    }

    fn data_version(&self, name: &str) -> Option<basalt_query::cache::DataVersion> {
        self.store.data_version(name)
    }

    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        self.store.snapshot(name)
    }

    /// Tables without a warehouse tier or an Iceberg source: theirs is a plain segment scan.
    fn direct_snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        let Some((snapshot, tier)) = self.store.snapshot_and_tier(name)? else {
            return Ok(None);
        };
        let spans_warehouse = match self.store.0.table(name) {
            Some(t) => tier.is_some() || t.spec.iceberg_source().is_some(),
            None => false,
        };
        Ok((!spans_warehouse).then_some(snapshot))
    }

    fn provider(
        &self,
        name: &str,
        stats: Arc<ScanStats>,
    ) -> Result<Option<Arc<dyn TableProvider>>, QueryError> {
        let Some((snapshot, tier)) = self.store.snapshot_and_tier(name)? else {
            return Ok(None);
        };
        let hot: Arc<dyn TableProvider> = Arc::new(SegmentTable::new(snapshot, stats.clone()));
        match self.store.0.table(name) {
            Some(t) if tier.is_some() || t.spec.iceberg_source().is_some() => {
                Ok(Some(self.warehouse.provider(&t, hot, tier, stats)))
            }
            _ => Ok(Some(hot)),
        }
    }
}
