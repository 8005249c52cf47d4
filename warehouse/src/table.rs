//! A table spanning both tiers. In: the table's segment side (a [`TableProvider`] over the
//! view's segments and mutable parts) and the warehouse state of the same view (boundary,
//! pinned Iceberg snapshot). Out: a scan that is the segment scan alone when the filters put
//! the query at or after the boundary, else the union of the segment scan and the Iceberg
//! table read at the pinned snapshot.
//!
//! Every Iceberg row is older than the boundary and no segment row is in Iceberg (a segment
//! leaves serving in the commit that pins the snapshot holding it), so the union counts each
//! row once; a late event older than the boundary stays in segments and is still read.
//! Filters go to both sides: on the Iceberg side they prune partitions and files (Iceberg's
//! manifests), row groups and pages (Parquet statistics), and are applied exactly above the
//! scan in the table's types, so whatever the segment side answers exactly the union answers
//! exactly. A tiered table's files are read by DataFusion's Parquet reader straight into the
//! table's types ([`crate::files`]); other Iceberg tables' through Iceberg's reader, cast.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use basalt_ingest::warehouse::{IcebergTableRef, WarehouseState};
use basalt_query::scan::ScanStats;
use basalt_segment::{CmpOp, ColumnType, Predicate, SegmentSchema, Value};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::{conjunction, PhysicalExpr};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use iceberg::scan::FileScanTask;

use crate::catalog::Catalogs;

/// The Iceberg side of a table, as one view of it saw it.
#[derive(Debug, Clone)]
pub struct ColdSide {
    pub catalogs: Arc<Catalogs>,
    pub iceberg: IcebergTableRef,
    /// A tiered table: the pinned snapshot and the boundary every row of it is below.
    /// `None`: a table over an Iceberg table (`source.iceberg`), read at its current
    /// snapshot, whole.
    pub state: Option<Arc<WarehouseState>>,
}

/// DataFusion's view of a table with a warehouse tier, or of a read-only table over an
/// Iceberg table (no segment side).
#[derive(Debug)]
pub struct FederatedTable {
    hot: Option<Arc<dyn TableProvider>>,
    cold: ColdSide,
    schema: SegmentSchema,
    stats: Arc<ScanStats>,
}

impl FederatedTable {
    pub fn new(
        hot: Option<Arc<dyn TableProvider>>,
        cold: ColdSide,
        schema: SegmentSchema,
        stats: Arc<ScanStats>,
    ) -> Self {
        FederatedTable {
            hot,
            cold,
            schema,
            stats,
        }
    }

    fn time_column(&self) -> Option<(&str, ColumnType)> {
        let name = self.schema.time_column.as_deref()?;
        let c = self.schema.columns.iter().find(|c| c.name == name)?;
        Some((name, c.ty))
    }

    /// Whether the filters (`preds`: each translated, or `None`) keep only rows at or after
    /// the boundary (the Iceberg table holds none of them).
    fn hot_only(&self, preds: &[Option<Predicate>]) -> bool {
        let (Some((time, _)), Some(state)) = (self.time_column(), &self.cold.state) else {
            return false;
        };
        preds
            .iter()
            .flatten()
            .filter_map(|p| lower_bound(p, time))
            .any(|lo| lo >= state.boundary)
    }

    /// For each of `tasks`, the filters (bit `i`: `preds[i]`) its day partition makes always
    /// true: every time value of that day below the boundary passes them. Zero for every
    /// task unless the table is tiered with Basalt's day partitioning (tasks do not say
    /// which spec their partition is of: only a table that has had one).
    fn days_covered(
        &self,
        table: &iceberg::table::Table,
        tasks: &[FileScanTask],
        preds: &[Option<Predicate>],
    ) -> Vec<u64> {
        let none = vec![0; tasks.len()];
        let (Some((time, _)), Some(state), Ok(layout)) = (
            self.time_column(),
            &self.cold.state,
            crate::schema::layout(&self.schema),
        ) else {
            return none;
        };
        let meta = table.metadata();
        if meta.partition_specs_iter().len() != 1
            || !layout.is_partitioning(meta.default_partition_spec())
        {
            return none;
        }
        tasks
            .iter()
            .map(|t| {
                let day = t
                    .partition
                    .as_ref()
                    .and_then(|p| p.fields().first()?.as_ref())
                    .and_then(|v| layout.day_range(v));
                let Some((lo, hi)) = day else {
                    return 0;
                };
                let hi = hi.min(state.boundary.saturating_sub(1));
                preds
                    .iter()
                    .take(64)
                    .enumerate()
                    .filter(|(_, p)| p.as_ref().is_some_and(|p| covers(p, time, lo, hi)))
                    .fold(0u64, |m, (i, _)| m | 1 << i)
            })
            .collect()
    }

    /// The Iceberg side: the pinned snapshot's files holding rows `filters` may keep, read
    /// for the needed columns in the table's types, filtered exactly, then projected.
    ///
    /// Files whose day (below the boundary) every time filter keeps are read without those
    /// filters, so the time column is not decoded unless the query reads it; a `count(*)`
    /// every filter of which keeps a file's whole day takes the file's row count from the
    /// manifests and does not read it. No `time < boundary` filter is added: every row
    /// Iceberg holds is below the boundary, past the newest row of every segment tiered.
    async fn cold_plan(
        &self,
        state: &dyn Session,
        projection: &[usize],
        filters: &[Expr],
        preds: &[Option<Predicate>],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table_schema = self.schema.arrow_schema();
        // Filters name the table's columns, perhaps qualified; the plans below are not.
        let filters = datafusion::logical_expr::expr_rewriter::unnormalize_cols(filters.to_vec());
        let ext = |e: crate::WarehouseError| DataFusionError::External(Box::new(e));
        let catalogs = &self.cold.catalogs;
        let (table, snapshot_id) = match &self.cold.state {
            Some(state) => (
                catalogs
                    .with_snapshot(&self.cold.iceberg, state.snapshot_id)
                    .await
                    .map_err(ext)?,
                Some(state.snapshot_id),
            ),
            None => {
                let t = catalogs.current(&self.cold.iceberg).await.map_err(ext)?;
                let id = t.metadata().current_snapshot_id();
                (t, id)
            }
        };
        let pruning = iceberg_literals(&filters)?;
        let predicate = iceberg_datafusion::physical_plan::convert_filters_to_predicate(&pruning);
        let names: Vec<String> = needed(&table_schema, projection, &filters)
            .iter()
            .map(|&i| table_schema.field(i).name().clone())
            .collect();
        let tasks = match snapshot_id {
            Some(id) => crate::scan::plan(&table, id, &names, predicate).await?,
            // A table without a snapshot holds no rows.
            None => Vec::new(),
        };
        // A tiered table's files are Basalt's own: DataFusion's Parquet reader decodes them
        // into the table's types directly. Other tables' files (schema evolution, delete
        // files, field ids that differ from names) go through Iceberg's reader, all alike.
        let direct = self.cold.state.is_some()
            && tasks.iter().all(|t| t.deletes.is_empty())
            && catalogs.files.one_store(&tasks);
        // Each task with the filters its day makes always true.
        let covered = match direct {
            true => self.days_covered(&table, &tasks, preds),
            false => vec![0; tasks.len()],
        };
        let mut tasks: Vec<(FileScanTask, u64)> = tasks.into_iter().zip(covered).collect();
        // `count(*)`: whole files every filter keeps are counted from the manifests.
        let every = match preds.len() {
            n if n < 64 => (1u64 << n) - 1,
            _ => u64::MAX,
        };
        let mut counted = 0u64;
        if direct && projection.is_empty() && preds.len() <= 64 {
            tasks.retain(|(t, mask)| {
                let whole = crate::files::whole_file(t);
                match t.record_count.filter(|_| whole && *mask == every) {
                    Some(n) => {
                        counted += n;
                        false
                    }
                    None => true,
                }
            });
        }
        self.stats
            .warehouse_files
            .fetch_add(tasks.len() as u64, Ordering::Relaxed);
        // Files grouped by the filters they need; each group read with only those.
        let mut groups: std::collections::BTreeMap<u64, Vec<FileScanTask>> = Default::default();
        for (t, mask) in tasks {
            groups.entry(mask).or_default().push(t);
        }
        if groups.is_empty() {
            groups.insert(0, Vec::new());
        }
        let mut reads = Vec::with_capacity(groups.len() + 1);
        for (mask, group) in groups {
            let kept: Vec<Expr> = filters
                .iter()
                .enumerate()
                .filter(|(i, _)| *i >= 64 || mask & (1 << i) == 0)
                .map(|(_, f)| f.clone())
                .collect();
            reads.push(self.read_files(
                state,
                &table,
                snapshot_id,
                group,
                projection,
                &kept,
                direct,
            )?);
        }
        if counted > 0 {
            let rows = RecordBatchOptions::new().with_row_count(Some(counted as usize));
            let empty = Arc::new(arrow::datatypes::Schema::empty());
            let batch = RecordBatch::try_new_with_options(empty.clone(), vec![], &rows)?;
            reads.push(MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                empty,
                None,
            )?);
        }
        match reads.len() {
            1 => Ok(reads.remove(0)),
            _ => UnionExec::try_new(reads),
        }
    }

    /// `tasks` read for `projection`, filtered exactly by `filters`: through DataFusion's
    /// Parquet reader when `direct`, else Iceberg's.
    #[allow(clippy::too_many_arguments)]
    fn read_files(
        &self,
        state: &dyn Session,
        table: &iceberg::table::Table,
        snapshot_id: Option<i64>,
        tasks: Vec<FileScanTask>,
        projection: &[usize],
        filters: &[Expr],
        direct: bool,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table_schema = self.schema.arrow_schema();
        let needed = needed(&table_schema, projection, filters);
        // The needed columns in the table's types, and the filters over them.
        let typed_schema = Arc::new(table_schema.project(&needed)?);
        let df_schema = DFSchema::try_from(typed_schema.as_ref().clone())?;
        let predicates = filters
            .iter()
            .map(|f| state.create_physical_expr(f.clone(), &df_schema))
            .collect::<DfResult<Vec<_>>>()?;
        let partitions = state.config().target_partitions();
        let typed = match direct {
            true => self.cold.catalogs.files.scan(
                &tasks,
                table_schema.clone(),
                typed_schema.clone(),
                (!predicates.is_empty()).then(|| conjunction(predicates.clone())),
                partitions,
            )?,
            false => {
                let names: Vec<String> = needed
                    .iter()
                    .map(|&i| table_schema.field(i).name().clone())
                    .collect();
                self.iceberg_reader(table, snapshot_id, tasks, &names, &typed_schema, partitions)?
            }
        };
        // Filters on one dictionary column are answered once per dictionary value.
        let filtered = match predicates.is_empty() {
            true => typed,
            false => {
                let exact = predicates
                    .into_iter()
                    .map(|p| basalt_query::dict_values::per_dictionary_value(p, &typed_schema));
                Arc::new(FilterExec::try_new(conjunction(exact), typed)?)
            }
        };
        let out: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
            .iter()
            .map(|&i| {
                let name = table_schema.field(i).name();
                let k = needed.iter().position(|&n| n == i).unwrap_or(0);
                (
                    Arc::new(Column::new(name, k)) as Arc<dyn PhysicalExpr>,
                    name.clone(),
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(out, filtered)?))
    }

    /// `tasks` read through Iceberg's Arrow reader (columns `names`, in Iceberg's types at
    /// `snapshot_id`), cast to `typed` (the table's types).
    fn iceberg_reader(
        &self,
        table: &iceberg::table::Table,
        snapshot_id: Option<i64>,
        tasks: Vec<FileScanTask>,
        names: &[String],
        typed: &SchemaRef,
        partitions: usize,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let meta = table.metadata();
        let iceberg_schema = match snapshot_id.and_then(|id| meta.snapshot_by_id(id)) {
            Some(s) => s.schema(meta).map_err(crate::scan::ext)?,
            None => meta.current_schema().clone(),
        };
        let file_schema =
            iceberg::arrow::schema_to_arrow_schema(&iceberg_schema).map_err(crate::scan::ext)?;
        let indices = names
            .iter()
            .map(|n| file_schema.index_of(n))
            .collect::<Result<Vec<_>, _>>()?;
        let file_schema = Arc::new(file_schema.project(&indices)?);
        let scan: Arc<dyn ExecutionPlan> = Arc::new(crate::scan::IcebergFilesExec::new(
            table.file_io().clone(),
            tasks,
            file_schema,
            partitions,
        ));
        let scan_schema = scan.schema();
        let cast: Vec<(Arc<dyn PhysicalExpr>, String)> = typed
            .fields()
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let c: Arc<dyn PhysicalExpr> = Arc::new(Column::new(f.name(), k));
                let e: Arc<dyn PhysicalExpr> =
                    match scan_schema.field(k).data_type() == f.data_type() {
                        true => c,
                        false => Arc::new(CastExpr::new(c, f.data_type().clone(), None)),
                    };
                (e, f.name().clone())
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(cast, scan)?))
    }
}

/// The columns `projection` and `filters` read, in table order.
fn needed(table: &arrow::datatypes::Schema, projection: &[usize], filters: &[Expr]) -> Vec<usize> {
    let mut needed: Vec<usize> = projection.to_vec();
    for f in filters {
        for c in f.column_refs() {
            if let Ok(i) = table.index_of(&c.name) {
                needed.push(i);
            }
        }
    }
    needed.sort_unstable();
    needed.dedup();
    needed
}

/// `filters` with their literals in the types Iceberg compares them as (timestamps in
/// microseconds, dictionary strings plain), so they reach its partition, manifest and
/// row-group pruning; they are applied exactly again above the scan in the table's types.
fn iceberg_literals(filters: &[Expr]) -> DfResult<Vec<Expr>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    filters
        .iter()
        .map(|f| {
            f.clone()
                .transform(|e| {
                    Ok(match e {
                        Expr::Literal(ScalarValue::TimestampMillisecond(v, tz), m) => {
                            Transformed::yes(Expr::Literal(
                                ScalarValue::TimestampMicrosecond(
                                    v.and_then(|v| v.checked_mul(1000)),
                                    tz,
                                ),
                                m,
                            ))
                        }
                        Expr::Literal(ScalarValue::Dictionary(_, inner), m) => {
                            Transformed::yes(Expr::Literal(*inner, m))
                        }
                        other => Transformed::no(other),
                    })
                })
                .map(|t| t.data)
        })
        .collect()
}

/// The smallest time value `p` lets through on column `time` (`None`: unbounded).
fn lower_bound(p: &Predicate, time: &str) -> Option<i64> {
    let int = |v: &Value, up: bool| match v {
        Value::Int(i) => Some(*i),
        Value::Ratio(n, d) if *d > 0 => {
            let q = n.div_euclid(*d);
            let exact = n.rem_euclid(*d) == 0;
            Some((if up && !exact { q + 1 } else { q }) as i64)
        }
        _ => None,
    };
    match p {
        Predicate::Compare { column, op, value } if column == time => match op {
            CmpOp::GtEq | CmpOp::Eq => int(value, true),
            CmpOp::Gt => match value {
                Value::Int(i) => i.checked_add(1),
                v => int(v, true),
            },
            _ => None,
        },
        Predicate::Between { column, low, .. } if column == time => int(low, true),
        Predicate::And(children) => children.iter().filter_map(|c| lower_bound(c, time)).max(),
        Predicate::Or(children) => children
            .iter()
            .map(|c| lower_bound(c, time))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min(),
        _ => None,
    }
}

/// Whether every value `t` of column `time` with `lo <= t <= hi` satisfies `p` (`false`
/// when unsure).
fn covers(p: &Predicate, time: &str, lo: i64, hi: i64) -> bool {
    // `t op n/d` for every t in [lo, hi], compared exactly as `t * d op n`.
    let all = |op: CmpOp, v: &Value| -> bool {
        let (n, d) = match v {
            Value::Int(i) => (*i as i128, 1i128),
            Value::Ratio(n, d) if *d > 0 => (*n, *d),
            _ => return false,
        };
        let (Some(lo), Some(hi)) = ((lo as i128).checked_mul(d), (hi as i128).checked_mul(d))
        else {
            return false;
        };
        match op {
            CmpOp::Gt => lo > n,
            CmpOp::GtEq => lo >= n,
            CmpOp::Lt => hi < n,
            CmpOp::LtEq => hi <= n,
            CmpOp::Eq => lo == n && hi == n,
            CmpOp::NotEq => n < lo || n > hi,
        }
    };
    match p {
        Predicate::Compare { column, op, value } if column == time => all(*op, value),
        Predicate::Between { column, low, high } if column == time => {
            all(CmpOp::GtEq, low) && all(CmpOp::LtEq, high)
        }
        Predicate::And(children) => children.iter().all(|c| covers(c, time, lo, hi)),
        Predicate::Or(children) => children.iter().any(|c| covers(c, time, lo, hi)),
        Predicate::Const(b) => *b,
        _ => false,
    }
}

#[async_trait]
impl TableProvider for FederatedTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.arrow_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// What the segment side answers exactly the union does too: the Iceberg side applies
    /// every filter exactly above its scan. Without a segment side, filters are pushed for
    /// pruning and applied again by DataFusion.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        match &self.hot {
            Some(hot) => hot.supports_filters_pushdown(filters),
            None => Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()]),
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.schema.columns.len()).collect();
        let preds: Vec<Option<Predicate>> = filters
            .iter()
            .map(|f| basalt_query::filter::to_predicate(f, &self.schema))
            .collect();
        let Some(hot) = &self.hot else {
            return self
                .cold_plan(state, projection.unwrap_or(&all), filters, &preds)
                .await;
        };
        let hot = hot.scan(state, projection, filters, limit).await?;
        if self.hot_only(&preds) {
            return Ok(hot);
        }
        let cold = self
            .cold_plan(state, projection.unwrap_or(&all), filters, &preds)
            .await?;
        UnionExec::try_new(vec![hot, cold])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_bounds_of_time_filters() {
        let cmp = |op, v| Predicate::Compare {
            column: "ts".into(),
            op,
            value: Value::Int(v),
        };
        assert_eq!(lower_bound(&cmp(CmpOp::GtEq, 10), "ts"), Some(10));
        assert_eq!(lower_bound(&cmp(CmpOp::Gt, 10), "ts"), Some(11));
        assert_eq!(lower_bound(&cmp(CmpOp::Lt, 10), "ts"), None);
        let and = Predicate::And(vec![cmp(CmpOp::GtEq, 5), cmp(CmpOp::Gt, 7)]);
        assert_eq!(lower_bound(&and, "ts"), Some(8));
        let or = Predicate::Or(vec![cmp(CmpOp::GtEq, 5), cmp(CmpOp::Lt, 7)]);
        assert_eq!(lower_bound(&or, "ts"), None);
        let other = Predicate::Compare {
            column: "x".into(),
            op: CmpOp::GtEq,
            value: Value::Int(100),
        };
        assert_eq!(lower_bound(&other, "ts"), None);
        let between = Predicate::Between {
            column: "ts".into(),
            low: Value::Ratio(7, 2),
            high: Value::Int(9),
        };
        assert_eq!(lower_bound(&between, "ts"), Some(4));
    }

    #[test]
    fn time_filters_cover_a_whole_day_or_not() {
        let cmp = |op, v| Predicate::Compare {
            column: "ts".into(),
            op,
            value: Value::Int(v),
        };
        let day = |p: &Predicate| covers(p, "ts", 100, 199);
        assert!(day(&cmp(CmpOp::Lt, 200)));
        assert!(!day(&cmp(CmpOp::Lt, 199)));
        assert!(day(&cmp(CmpOp::LtEq, 199)));
        assert!(day(&cmp(CmpOp::GtEq, 100)));
        assert!(!day(&cmp(CmpOp::Gt, 100)));
        assert!(day(&cmp(CmpOp::NotEq, 250)));
        assert!(!day(&cmp(CmpOp::NotEq, 150)));
        assert!(!day(&cmp(CmpOp::Eq, 150)));
        assert!(day(&Predicate::And(vec![
            cmp(CmpOp::GtEq, 50),
            cmp(CmpOp::Lt, 300)
        ])));
        assert!(day(&Predicate::Or(vec![
            cmp(CmpOp::Lt, 0),
            cmp(CmpOp::GtEq, 100)
        ])));
        // Another column's filter never covers.
        let other = Predicate::Compare {
            column: "device".into(),
            op: CmpOp::Eq,
            value: Value::Str("tv".into()),
        };
        assert!(!day(&Predicate::And(vec![cmp(CmpOp::GtEq, 0), other])));
        // 199.5 lets 199 through, 198.5 does not.
        let between = |hi| Predicate::Between {
            column: "ts".into(),
            low: Value::Int(100),
            high: Value::Ratio(hi, 2),
        };
        assert!(day(&between(399)));
        assert!(!day(&between(397)));
    }
}
