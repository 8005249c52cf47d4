//! The table a query sees: a snapshot of a table's segments, and the DataFusion
//! [`TableProvider`] over it. In: a [`TableSnapshot`] taken when the query is planned. Out: a
//! [`SegmentScanExec`] with exact filter pushdown, projection and limit pushdown.
//!
//! A snapshot is immutable: segments published after planning are not seen by the query, and
//! a segment is never seen twice.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use basalt_segment::{Predicate, RoaringBitmap, SegmentReader, SegmentSchema};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::cardinality::ColumnEstimate;
use crate::filter::to_predicate;
use crate::scan::{ScanStats, SegmentScanExec};

/// A consistent view of one table's segments.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub name: String,
    pub schema: SegmentSchema,
    pub segments: Vec<Arc<SegmentReader>>,
    /// Upsert tables: per segment (same order), the docs a query may see — every other doc
    /// is a superseded, out-of-order or delete row. Empty for other tables (all docs).
    pub valid: Vec<Arc<RoaringBitmap>>,
}

impl TableSnapshot {
    /// The docs of segment `i` a query may see (`None`: all of them).
    pub fn valid_of(&self, i: usize) -> Option<&Arc<RoaringBitmap>> {
        self.valid.get(i)
    }

    pub fn total_docs(&self) -> u64 {
        self.segments.iter().map(|s| s.row_count() as u64).sum()
    }
}

/// Where tables come from; implemented by the server's table registry.
pub trait TableSource: Send + Sync + std::fmt::Debug {
    fn table_names(&self) -> Vec<String>;
    /// The table's segments as of now (`Ok(None)`: no such table). Taking a snapshot may
    /// freeze in-memory rows into segments, which can fail.
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError>;
    /// The table's schema (`None`: no such table), for catalogs; cheaper than a snapshot
    /// where the source can answer without freezing rows.
    fn schema(&self, name: &str) -> Option<SegmentSchema> {
        self.snapshot(name).ok().flatten().map(|s| s.schema)
    }
    /// A token pointer-equal for as long as the table's data is unchanged, for the result
    /// cache (`None`, the default: the table changes without notice, so results over it are
    /// not cached).
    fn data_version(&self, _name: &str) -> Option<crate::cache::DataVersion> {
        None
    }
    /// The snapshot a query of `name` reads when its scan is a plain [`SegmentTable`] over it,
    /// for plans that read segments without DataFusion (`crate::direct`). `Ok(None)`, the
    /// default, where the source's tables are read otherwise (a broker's scans run on
    /// servers, a warehouse tier adds files) or it does not say.
    fn direct_snapshot(&self, _name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok(None)
    }
    /// The DataFusion table a query of `name` reads, counting into `stats` (`Ok(None)`: no
    /// such table): by default a [`SegmentTable`] over a snapshot. A broker's source returns
    /// tables whose scans run on servers.
    fn provider(
        &self,
        name: &str,
        stats: Arc<ScanStats>,
    ) -> Result<Option<Arc<dyn TableProvider>>, crate::QueryError> {
        Ok(self
            .snapshot(name)?
            .map(|snap| Arc::new(SegmentTable::new(snap, stats)) as Arc<dyn TableProvider>))
    }
}

/// DataFusion's view of one table snapshot.
#[derive(Debug)]
pub struct SegmentTable {
    snapshot: Arc<TableSnapshot>,
    arrow_schema: SchemaRef,
    stats: Arc<ScanStats>,
}

impl SegmentTable {
    pub fn new(snapshot: TableSnapshot, stats: Arc<ScanStats>) -> Self {
        let arrow_schema = snapshot.schema.arrow_schema();
        SegmentTable {
            snapshot: Arc::new(snapshot),
            arrow_schema,
            stats,
        }
    }
}

impl SegmentTable {
    /// The estimated share of rows all of `filters` keep.
    fn selectivity(&self, filters: &[&Expr]) -> f64 {
        let (_, columns) = self.column_estimates();
        crate::cardinality::filters_keep(&self.arrow_schema, &columns, filters.iter().copied())
    }

    /// Rows visible in the snapshot and, per column (schema order), its distinct values and
    /// integer bounds, from the segments' footers: for ordering joins
    /// ([`crate::join_order`]).
    ///
    /// Distinct counts are kept per segment. A column whose segments each hold few distinct
    /// values (under a tenth of their rows) is taken to repeat one domain in every segment
    /// (the largest count); otherwise segments are taken to hold different values (the sum).
    /// Integer bounds cap the count either way.
    pub(crate) fn column_estimates(&self) -> (f64, Vec<ColumnEstimate>) {
        let snap = &self.snapshot;
        let rows: f64 = (0..snap.segments.len())
            .map(|i| match snap.valid_of(i) {
                Some(valid) => valid.len() as f64,
                None => snap.segments[i].row_count() as f64,
            })
            .sum();
        let columns = self
            .arrow_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(c, field)| {
                let mut sum = 0.0f64;
                let mut max = 0.0f64;
                let mut low_cardinality = true;
                let mut distinct_known = true;
                let mut bounds: Option<(i64, i64)> = None;
                let mut bounds_known = true;
                for seg in &snap.segments {
                    let stats = &seg.column_meta(c).stats;
                    match stats.distinct {
                        Some(d) => {
                            sum += d as f64;
                            max = max.max(d as f64);
                            low_cardinality &= (d as f64) * 10.0 < seg.row_count() as f64;
                        }
                        None => distinct_known = false,
                    }
                    match (stats.min_key, stats.max_key) {
                        (Some(lo), Some(hi)) => {
                            bounds = Some(bounds.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))))
                        }
                        _ => bounds_known = false,
                    }
                }
                let integer = matches!(
                    field.data_type(),
                    DataType::Int8
                        | DataType::Int16
                        | DataType::Int32
                        | DataType::Int64
                        | DataType::Date32
                        | DataType::Timestamp(..)
                        | DataType::Decimal128(..)
                );
                let bounds = bounds.filter(|(lo, hi)| integer && bounds_known && lo <= hi);
                let ndv = (distinct_known && !snap.segments.is_empty()).then(|| {
                    let mut n = if low_cardinality { max } else { sum };
                    if let Some((lo, hi)) = bounds {
                        n = n.min(hi as f64 - lo as f64 + 1.0);
                    }
                    n.min(rows).max(1.0)
                });
                ColumnEstimate { ndv, bounds }
            })
            .collect();
        (rows, columns)
    }
}

#[async_trait]
impl TableProvider for SegmentTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.arrow_schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(crate::filter::pushdown(filters, &self.snapshot.schema))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut preds: Vec<Predicate> = Vec::new();
        let mut pushed: Vec<&Expr> = Vec::new();
        for f in filters {
            if let Some(p) = to_predicate(f, &self.snapshot.schema) {
                preds.push(p);
                pushed.push(f);
            }
        }
        let predicate = match preds.len() {
            0 => None,
            1 => preds.into_iter().next(),
            _ => Some(Predicate::And(preds)),
        };
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.arrow_schema.fields().len()).collect());
        let cfg = state.config();
        let scan = SegmentScanExec::new(
            self.snapshot.clone(),
            projection,
            predicate,
            limit,
            cfg.target_partitions(),
            cfg.batch_size(),
            self.stats.clone(),
        )?;
        Ok(Arc::new(match pushed.is_empty() {
            true => scan,
            false => scan.with_selectivity(self.selectivity(&pushed)),
        }))
    }
}
