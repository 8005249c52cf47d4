//! Dynamic filters at the segment scan. In: the filters DataFusion pushes into a
//! [`crate::scan::SegmentScanExec`] while the plan runs — a hash join's build-side bounds and
//! key set (an `IN` list for small builds, a hash-table lookup for large ones, one branch per
//! partition for partitioned joins), a TopK's threshold, an aggregate's running MIN/MAX.
//! Out: per segment, at the moment it is opened, a segment [`Predicate`] implied by the
//! filter's current value (so indexes, zone maps and segment statistics prune with it), and
//! a [`crate::row_filter::RowFilter`] that evaluates whatever of it the predicate could not express on the
//! filter's columns alone, before the other columns are read.
//!
//! A dynamic filter only ever removes rows its producer would discard anyway, so the scan
//! may return more rows than it keeps: the predicate is a superset, parts it cannot express
//! are dropped from conjunctions, and the scan reports the filters as not pushed down.

use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::{Schema, SchemaRef};
use basalt_segment::{Predicate, SegmentSchema};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{col, lit, BinaryExpr as LBinary, Cast as LCast, Expr, Operator};
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, DynamicFilterPhysicalExpr, InListExpr, IsNotNullExpr,
    IsNullExpr, Literal,
};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr_common::physical_expr::{
    snapshot_generation, snapshot_physical_expr,
};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::scalar::ScalarValue;

use parking_lot::Mutex;

use crate::filter::to_predicate;
use crate::row_filter::RowFilter;

/// Whether `e` holds a dynamic filter (one whose value changes while the plan runs).
pub(crate) fn is_dynamic(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.exists(|n| Ok(n.as_any().is::<DynamicFilterPhysicalExpr>()))
        .unwrap_or(false)
}

/// A scan's dynamic filters and their last translation, reused while none of them changes:
/// taking a snapshot rebuilds an IN list's hash set and translating sorts its values, which
/// per segment took 10-15% of TPC-H Q17 at SF10.
#[derive(Default)]
pub(crate) struct DynamicFilters {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    last: Mutex<Option<Translated>>,
}

struct Translated {
    generation: u64,
    route_rows: bool,
    filter: Arc<SegmentFilter>,
}

impl DynamicFilters {
    pub(crate) fn new(exprs: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        DynamicFilters {
            exprs,
            last: Mutex::new(None),
        }
    }

    pub(crate) fn exprs(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.exprs
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exprs.is_empty()
    }

    /// A number that changes whenever one of the filters gets a new value.
    pub(crate) fn generation(&self) -> u64 {
        generation(&self.exprs)
    }

    /// [`for_segment`] of the filters now, with the [`Self::generation`] it belongs to (read
    /// before the values, so a change in between is seen at the next call).
    pub(crate) fn translate(
        &self,
        output: &SchemaRef,
        table: &SegmentSchema,
        route_rows: bool,
    ) -> DfResult<(u64, Arc<SegmentFilter>)> {
        let g = self.generation();
        if let Some(t) = self.last.lock().as_ref() {
            if t.generation == g && t.route_rows == route_rows {
                return Ok((g, Arc::clone(&t.filter)));
            }
        }
        let filter = Arc::new(for_segment(&self.exprs, output, table, route_rows)?);
        *self.last.lock() = Some(Translated {
            generation: g,
            route_rows,
            filter: Arc::clone(&filter),
        });
        Ok((g, filter))
    }
}

/// What a scan does with its dynamic filters for one segment.
pub(crate) struct SegmentFilter {
    /// Implied by the filters' current values: answered by the indexes.
    pub predicate: Option<Predicate>,
    /// The part the predicate does not express, evaluated row by row.
    pub rows: Option<RowFilter>,
}

/// The current values of `filters`, without those that do not filter yet (a join whose
/// build has not finished holds `true`).
fn current(filters: &[Arc<dyn PhysicalExpr>]) -> DfResult<Vec<Arc<dyn PhysicalExpr>>> {
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        let now = snapshot_physical_expr(Arc::clone(f))?;
        let is_true = now
            .as_any()
            .downcast_ref::<Literal>()
            .is_some_and(|l| l.value() == &ScalarValue::Boolean(Some(true)));
        if !is_true {
            out.push(now);
        }
    }
    Ok(out)
}

/// A number that changes whenever one of `filters` gets a new value.
fn generation(filters: &[Arc<dyn PhysicalExpr>]) -> u64 {
    filters
        .iter()
        .map(snapshot_generation)
        .fold(0, u64::wrapping_add)
}

/// Takes the current value of each dynamic filter and translates it for a segment of a table
/// with `table` schema, scanned as `output` (the scan's projected schema, which the filters'
/// columns index).
///
/// `route_rows`: whether a partitioned join's per-partition CASE is also evaluated row by
/// row (see [`routes_partitions`]); worth it before an aggregation, which would otherwise
/// hash every row into its groups.
fn for_segment(
    filters: &[Arc<dyn PhysicalExpr>],
    output: &SchemaRef,
    table: &SegmentSchema,
    route_rows: bool,
) -> DfResult<SegmentFilter> {
    let mut preds = Vec::new();
    let mut residual = Vec::new();
    for now in current(filters)? {
        let (p, exact) = implied(&now, output, table);
        preds.extend(p);
        if !exact && (route_rows || !routes_partitions(&now)) {
            residual.push(now);
        }
    }
    let predicate = match preds.len() {
        0 => None,
        1 => preds.pop(),
        _ => Some(Predicate::And(preds)),
    };
    Ok(SegmentFilter {
        predicate,
        rows: RowFilter::new(residual, output)?,
    })
}

/// Whether `e` holds a partitioned join's per-partition CASE. Evaluated row by row it costs
/// more than the rows it saves (TPC-H Q09 at SF1 went from 0.5-0.75 s to 0.75-0.85 s: a third
/// of the time in DataFusion's CASE), so only its implied predicate is used.
fn routes_partitions(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.exists(|n| Ok(n.as_any().is::<CaseExpr>()))
        .unwrap_or(false)
}

/// A predicate implied by `e` (a superset of its TRUE rows), and whether it is exactly `e`.
fn implied(
    e: &Arc<dyn PhysicalExpr>,
    output: &Schema,
    table: &SegmentSchema,
) -> (Option<Predicate>, bool) {
    let any = e.as_any();
    if let Some(b) = any.downcast_ref::<BinaryExpr>() {
        match b.op() {
            Operator::And => {
                let (l, le) = implied(b.left(), output, table);
                let (r, re) = implied(b.right(), output, table);
                let exact = le && re;
                return match (l, r) {
                    (Some(l), Some(r)) => (Some(Predicate::And(vec![l, r])), exact),
                    (Some(p), None) | (None, Some(p)) => (Some(p), false),
                    (None, None) => (None, false),
                };
            }
            Operator::Or => {
                let (l, le) = implied(b.left(), output, table);
                let (r, re) = implied(b.right(), output, table);
                return match (l, r) {
                    (Some(l), Some(r)) => (Some(Predicate::Or(vec![l, r])), le && re),
                    _ => (None, false),
                };
            }
            op => {
                let logical = match (operand(b.left(), output), operand(b.right(), output)) {
                    (Some(l), Some(r)) => Some(Expr::BinaryExpr(LBinary::new(
                        Box::new(l),
                        *op,
                        Box::new(r),
                    ))),
                    _ => None,
                };
                return exact_predicate(logical, table);
            }
        }
    }
    if let Some(i) = any.downcast_ref::<InListExpr>() {
        if let Some(f) = i.expr().as_any().downcast_ref::<ScalarFunctionExpr>() {
            return if f.name() == "struct" && !i.negated() {
                struct_in_list(f.args(), i.list(), output, table)
            } else {
                (None, false)
            };
        }
        let Some(c) = operand(i.expr(), output) else {
            return (None, false);
        };
        let Some(values) = i
            .list()
            .iter()
            .map(as_literal)
            .collect::<Option<Vec<ScalarValue>>>()
        else {
            return (None, false);
        };
        let list = values.into_iter().map(lit).collect();
        return exact_predicate(Some(c.in_list(list, i.negated())), table);
    }
    if let Some(n) = any.downcast_ref::<IsNullExpr>() {
        let logical = operand(n.arg(), output).map(|c| Expr::IsNull(Box::new(c)));
        return exact_predicate(logical, table);
    }
    if let Some(n) = any.downcast_ref::<IsNotNullExpr>() {
        let logical = operand(n.arg(), output).map(|c| Expr::IsNotNull(Box::new(c)));
        return exact_predicate(logical, table);
    }
    if let Some(c) = any.downcast_ref::<CaseExpr>() {
        // A partitioned join's filter: CASE hash(keys) % n WHEN p THEN <partition p's filter>
        // ... ELSE false. A row passes only through one of the branches.
        let else_false = c
            .else_expr()
            .and_then(as_literal)
            .is_some_and(|v| v == ScalarValue::Boolean(Some(false)));
        if !else_false || c.when_then_expr().is_empty() {
            return (None, false);
        }
        let mut branches = Vec::new();
        for (_, then) in c.when_then_expr() {
            match implied(then, output, table) {
                (Some(p), _) => branches.push(p),
                (None, _) => return (None, false),
            }
        }
        return (Some(Predicate::Or(branches)), false);
    }
    if let Some(v) = as_literal(e) {
        return match v {
            ScalarValue::Boolean(Some(b)) => (Some(Predicate::Const(b)), true),
            _ => (None, false),
        };
    }
    (None, false)
}

/// A multi-column join's key set, `struct(a, b) IN ((a1, b1), ...)`: each key column IN its
/// own values is implied (not exact: the pairs are not checked together).
fn struct_in_list(
    args: &[Arc<dyn PhysicalExpr>],
    list: &[Arc<dyn PhysicalExpr>],
    output: &Schema,
    table: &SegmentSchema,
) -> (Option<Predicate>, bool) {
    let mut per_field: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(list.len()); args.len()];
    for item in list {
        let Some(ScalarValue::Struct(row)) = as_literal(item) else {
            return (None, false);
        };
        if row.num_columns() != args.len() || row.len() != 1 {
            return (None, false);
        }
        for (values, column) in per_field.iter_mut().zip(row.columns()) {
            match ScalarValue::try_from_array(column, 0) {
                Ok(v) => values.push(v),
                Err(_) => return (None, false),
            }
        }
    }
    let mut parts = Vec::new();
    for (arg, mut values) in args.iter().zip(per_field) {
        let Some(c) = operand(arg, output) else {
            continue;
        };
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values.dedup();
        let list = values.into_iter().map(lit).collect();
        if let (Some(p), _) = exact_predicate(Some(c.in_list(list, false)), table) {
            parts.push(p);
        }
    }
    match parts.len() {
        0 => (None, false),
        1 => (parts.pop(), false),
        _ => (Some(Predicate::And(parts)), false),
    }
}

fn exact_predicate(logical: Option<Expr>, table: &SegmentSchema) -> (Option<Predicate>, bool) {
    match logical.and_then(|e| to_predicate(&e, table)) {
        Some(p) => (Some(p), true),
        None => (None, false),
    }
}

/// A column (possibly under casts) or a literal, as a logical expression for
/// [`to_predicate`], which decides which casts keep the comparison exact.
fn operand(e: &Arc<dyn PhysicalExpr>, output: &Schema) -> Option<Expr> {
    if let Some(c) = as_column(e, output) {
        return Some(col(c));
    }
    if let Some(v) = as_literal(e) {
        return Some(lit(v));
    }
    let cast = e.as_any().downcast_ref::<CastExpr>()?;
    Some(Expr::Cast(LCast::new(
        Box::new(operand(cast.expr(), output)?),
        cast.cast_type().clone(),
    )))
}

/// The segment column a physical column of the scan's output names.
fn as_column(e: &Arc<dyn PhysicalExpr>, output: &Schema) -> Option<String> {
    let c = e.as_any().downcast_ref::<Column>()?;
    let f = output.fields().get(c.index())?;
    (f.name() == c.name()).then(|| c.name().to_string())
}

fn as_literal(e: &Arc<dyn PhysicalExpr>) -> Option<ScalarValue> {
    Some(e.as_any().downcast_ref::<Literal>()?.value().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StructArray};
    use arrow::datatypes::{DataType, Field, Fields};
    use basalt_segment::{ColumnDef, ColumnType, Value};
    use datafusion::config::ConfigOptions;

    /// The filters' translation is taken once per value: again only after one of them
    /// changes.
    #[test]
    fn a_translation_is_reused_until_a_filter_changes() {
        let table = SegmentSchema {
            columns: vec![ColumnDef::new("k", ColumnType::Long)],
            time_column: None,
            star_trees: Vec::new(),
        };
        let output: SchemaRef = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let k: Arc<dyn PhysicalExpr> = Arc::new(Column::new("k", 0));
        let yes: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Boolean(Some(true))));
        let dynamic = Arc::new(DynamicFilterPhysicalExpr::new(vec![k.clone()], yes));
        let filters = DynamicFilters::new(vec![dynamic.clone() as Arc<dyn PhysicalExpr>]);
        let (g1, a) = filters.translate(&output, &table, false).unwrap();
        let (_, b) = filters.translate(&output, &table, false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.predicate.is_none() && a.rows.is_none());
        let five: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Int64(Some(5))));
        dynamic
            .update(Arc::new(BinaryExpr::new(k, Operator::Gt, five)))
            .unwrap();
        let (g2, c) = filters.translate(&output, &table, false).unwrap();
        assert_ne!(g1, g2);
        assert_eq!(
            c.predicate,
            Some(Predicate::Compare {
                column: "k".into(),
                op: basalt_segment::CmpOp::Gt,
                value: Value::Int(5),
            })
        );
        // Translated for a segment aggregation (row routing on): a new entry.
        let (_, d) = filters.translate(&output, &table, true).unwrap();
        assert!(!Arc::ptr_eq(&c, &d));
    }

    /// A two-column join key's IN list (`struct(k, v) IN (SET)`, as DataFusion builds it for
    /// a small build side) implies one IN list per column, with each column's distinct values.
    #[test]
    fn a_multi_column_key_set_implies_an_in_list_per_column() {
        let table = SegmentSchema {
            columns: vec![
                ColumnDef::new("k", ColumnType::Long),
                ColumnDef::new("v", ColumnType::Long),
            ],
            time_column: None,
            star_trees: Vec::new(),
        };
        let output = Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
        ]);
        let fields = Fields::from(vec![
            Field::new("c0", DataType::Int64, true),
            Field::new("c1", DataType::Int64, true),
        ]);
        let args: Vec<Arc<dyn PhysicalExpr>> =
            vec![Arc::new(Column::new("k", 0)), Arc::new(Column::new("v", 1))];
        let key = Arc::new(ScalarFunctionExpr::new(
            "struct",
            datafusion::functions::core::r#struct(),
            args,
            Arc::new(Field::new("struct", DataType::Struct(fields.clone()), true)),
            Arc::new(ConfigOptions::default()),
        ));
        let pairs: ArrayRef = Arc::new(StructArray::new(
            fields,
            vec![
                Arc::new(Int64Array::from(vec![7, 3, 7])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1, 2, 2])),
            ],
            None,
        ));
        let e: Arc<dyn PhysicalExpr> =
            Arc::new(InListExpr::try_new_from_array(key.clone(), pairs.clone(), false).unwrap());
        let in_list = |column: &str, values: &[i64]| Predicate::InList {
            column: column.into(),
            values: values.iter().map(|&v| Value::Int(v)).collect(),
            negated: false,
        };
        let (p, exact) = implied(&e, &output, &table);
        assert!(!exact);
        assert_eq!(
            p,
            Some(Predicate::And(vec![
                in_list("k", &[3, 7]),
                in_list("v", &[1, 2])
            ]))
        );
        // NOT IN implies nothing about either column.
        let e: Arc<dyn PhysicalExpr> =
            Arc::new(InListExpr::try_new_from_array(key, pairs, true).unwrap());
        assert_eq!(implied(&e, &output, &table), (None, false));
    }
}
