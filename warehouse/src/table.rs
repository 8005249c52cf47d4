//! A table spanning both tiers. In: the table's segment side (a [`TableProvider`] over the
//! view's segments and mutable parts) and the warehouse state of the same view (boundary,
//! pinned Iceberg snapshot). Out: a scan that is the segment scan alone when the filters put
//! the query at or after the boundary, else the union of the segment scan and the Iceberg
//! table read at the pinned snapshot below the boundary.
//!
//! Every Iceberg row is older than the boundary and no segment row is in Iceberg (a segment
//! leaves serving in the commit that pins the snapshot holding it), so the union counts each
//! row once; a late event older than the boundary stays in segments and is still read.
//! Filters go to both sides: on the Iceberg side they prune partitions, manifests and row
//! groups and are applied again exactly above the scan, after the columns are cast to the
//! segment types, so whatever the segment side answers exactly the union answers exactly.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use basalt_ingest::warehouse::{IcebergTableRef, WarehouseState};
use basalt_query::scan::ScanStats;
use basalt_segment::{CmpOp, ColumnType, Predicate, SegmentSchema, Value};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{col, lit, Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::{conjunction, PhysicalExpr};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;

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

    /// Whether `filters` keep only rows at or after the boundary (the Iceberg table holds
    /// none of them).
    fn hot_only(&self, filters: &[Expr]) -> bool {
        let (Some((time, _)), Some(state)) = (self.time_column(), &self.cold.state) else {
            return false;
        };
        filters
            .iter()
            .filter_map(|f| basalt_query::filter::to_predicate(f, &self.schema))
            .filter_map(|p| lower_bound(&p, time))
            .any(|lo| lo >= state.boundary)
    }

    /// `time < boundary`, in the time column's type (a tiered table).
    fn below_boundary(&self) -> Option<Expr> {
        let (time, ty) = self.time_column()?;
        let b = self.cold.state.as_ref()?.boundary;
        let v = match ty {
            ColumnType::Timestamp => ScalarValue::TimestampMillisecond(Some(b), None),
            ColumnType::Date => {
                ScalarValue::Date32(Some(b.clamp(i32::MIN as i64, i32::MAX as i64) as i32))
            }
            _ => ScalarValue::Int64(Some(b)),
        };
        Some(col(time).lt(lit(v)))
    }

    /// The Iceberg side: the pinned snapshot scanned for the `needed` columns with
    /// `filters` pushed in, cast to the segment types, filtered exactly, then projected.
    async fn cold_plan(
        &self,
        state: &dyn Session,
        projection: &[usize],
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table_schema = self.schema.arrow_schema();
        // Filters name the table's columns, perhaps qualified; the plans below are not.
        let mut filters =
            datafusion::logical_expr::expr_rewriter::unnormalize_cols(filters.to_vec());
        filters.extend(self.below_boundary());
        // Columns the projection and the filters read, in table order.
        let mut needed: Vec<usize> = projection.to_vec();
        for f in &filters {
            for c in f.column_refs() {
                if let Ok(i) = table_schema.index_of(&c.name) {
                    needed.push(i);
                }
            }
        }
        needed.sort_unstable();
        needed.dedup();
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
        let names: Vec<String> = needed
            .iter()
            .map(|&i| table_schema.field(i).name().clone())
            .collect();
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
        let tasks = match snapshot_id {
            Some(id) => crate::scan::plan(&table, id, &names, predicate).await?,
            // A table without a snapshot holds no rows.
            None => Vec::new(),
        };
        let scan = crate::scan::IcebergFilesExec::new(
            table.file_io().clone(),
            tasks,
            file_schema,
            state.config().target_partitions(),
        );
        self.stats
            .warehouse_files
            .fetch_add(scan.files() as u64, Ordering::Relaxed);
        let scan: Arc<dyn ExecutionPlan> = Arc::new(scan);
        // Cast to the segment types.
        let scan_schema = scan.schema();
        let cast: Vec<(Arc<dyn PhysicalExpr>, String)> = needed
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let f = table_schema.field(i);
                let c: Arc<dyn PhysicalExpr> = Arc::new(Column::new(f.name(), k));
                let e: Arc<dyn PhysicalExpr> =
                    match scan_schema.field(k).data_type() == f.data_type() {
                        true => c,
                        false => Arc::new(CastExpr::new(c, f.data_type().clone(), None)),
                    };
                (e, f.name().clone())
            })
            .collect();
        let cast: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(cast, scan)?);
        // The filters, in the table's types; `time < boundary` among them for a tiered table.
        let filtered = match filters.is_empty() {
            true => cast,
            false => {
                let df_schema = DFSchema::try_from(cast.schema().as_ref().clone())?;
                let predicates = filters
                    .iter()
                    .map(|f| state.create_physical_expr(f.clone(), &df_schema))
                    .collect::<DfResult<Vec<_>>>()?;
                Arc::new(FilterExec::try_new(conjunction(predicates), cast)?)
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
        let Some(hot) = &self.hot else {
            return self
                .cold_plan(state, projection.unwrap_or(&all), filters)
                .await;
        };
        let hot = hot.scan(state, projection, filters, limit).await?;
        if self.hot_only(filters) {
            return Ok(hot);
        }
        let cold = self
            .cold_plan(state, projection.unwrap_or(&all), filters)
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
}
