//! Basalt's own plan for the most frequent dashboard query: aggregates over one table with no
//! GROUP BY (`SELECT count(*), sum(revenue) FROM events WHERE ts >= … AND country = 'BD'`).
//! In: a parsed statement and the table source. Out: a [`DirectQuery`] that computes the
//! answer straight from the segments, or `None`, and the statement goes through DataFusion.
//!
//! Such a query spends most of its CPU in DataFusion's planning (SQL to logical plan,
//! analyzer, optimizer, physical planning: about half of it, measured in stop 54) and very
//! little reading segments. Pinot's broker does not plan these queries with Calcite either. The
//! direct plan reads the statement's shape ([`shape`]), types the WHERE clause's literals as
//! DataFusion would and translates it with the same code DataFusion's pushed-down filters go
//! through ([`condition`]), and feeds DataFusion's own accumulators with the matching rows
//! of every segment ([`run`]), so the answer, its column names and its types are the ones
//! DataFusion gives (checked by a differential test, `tests`).
//!
//! Taken only when every part is understood and the table's scan is local: a source that
//! sends scans elsewhere (a broker's servers, a warehouse tier) has no direct snapshot
//! ([`crate::TableSource::direct_snapshot`]), and star-trees (which DataFusion's path reads
//! for covered aggregates) send the query to DataFusion while they may be used. The query
//! option `useDirectPlan=false` turns it off.

mod condition;
mod run;
mod shape;
mod slices;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use basalt_segment::{ColumnType, Predicate};
use datafusion::functions_aggregate::{average, count, min_max, sum};
use datafusion::logical_expr::AggregateUDF;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::Column;
use datafusion::sql::parser::Statement as DfStatement;

use crate::segment_agg::Fragment;
use crate::table::{TableSnapshot, TableSource};
pub(crate) use run::INLINE_DOCS;
use shape::Func;

/// A query the direct plan answers.
#[derive(Debug)]
pub(crate) struct DirectQuery {
    snapshot: Arc<TableSnapshot>,
    predicate: Option<Predicate>,
    aggregates: Vec<Aggregate>,
    schema: SchemaRef,
    /// What segments' kept parts of this query are keyed by: its aggregates.
    fragment: Arc<Fragment>,
}

/// One output column.
#[derive(Debug)]
struct Aggregate {
    /// What it reads: `None` for `count(*)`, which counts matching docs.
    input: Option<Input>,
}

#[derive(Debug)]
struct Input {
    /// The column's position in the table's schema.
    column: usize,
    /// The type the accumulator takes (DataFusion's coercion of the function's argument).
    ty: DataType,
    expr: Arc<AggregateFunctionExpr>,
}

impl DirectQuery {
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// The direct plan of `statement`, or `None` when DataFusion must plan it. `postgres`: the
/// statement comes from a PostgreSQL session, whose unqualified names find `pg_catalog`
/// first; `star_trees`: whether the query may read star-trees.
pub(crate) fn plan(
    statement: &DfStatement,
    source: &dyn TableSource,
    postgres: bool,
    star_trees: bool,
) -> Option<DirectQuery> {
    let shape = shape::shape(statement)?;
    if postgres && crate::postgres::catalog::is_catalog_table(shape.table) {
        return None;
    }
    // Everything is checked against the table's schema before a snapshot is taken (which
    // freezes a real-time table's pending rows): a statement DataFusion must plan takes one
    // snapshot, DataFusion's.
    let schema = source.schema(shape.table)?;
    if star_trees && !schema.star_trees.is_empty() {
        return None;
    }
    let predicate = match shape.selection {
        Some(e) => Some(condition::predicate(e, shape.table, &schema)?),
        None => None,
    };
    let mut fields = Vec::with_capacity(shape.items.len());
    let mut aggregates = Vec::with_capacity(shape.items.len());
    let mut fingerprint = String::from("direct");
    for item in &shape.items {
        let name = match (item.alias, item.column) {
            (Some(alias), _) => alias.to_string(),
            (None, None) => "count(*)".to_string(),
            (None, Some(c)) => format!("{}({}.{c})", item.func.name(), shape.table),
        };
        if fields.iter().any(|f: &Field| f.name() == &name) {
            // DataFusion refuses duplicate names; let it say so.
            return None;
        }
        let Some(column) = item.column else {
            fingerprint.push_str(" count(*)");
            fields.push(Field::new(name, DataType::Int64, false));
            aggregates.push(Aggregate { input: None });
            continue;
        };
        let position = schema.column_index(column)?;
        let def = &schema.columns[position];
        if def.multi_value {
            return None;
        }
        let ty = input_type(item.func, def.ty)?;
        let expr = accumulator_expr(item.func, column, &ty, &name)?;
        fingerprint.push_str(&format!(" {}({column:?} as {ty})", item.func.name()));
        let out = expr.field();
        fields.push(Field::new(name, out.data_type().clone(), out.is_nullable()));
        aggregates.push(Aggregate {
            input: Some(Input {
                column: position,
                ty,
                expr,
            }),
        });
    }
    let snapshot = source.direct_snapshot(shape.table).ok()??;
    let trees = |s: &Arc<basalt_segment::SegmentReader>| !s.footer().star_trees.is_empty();
    if snapshot.schema != schema || (star_trees && snapshot.segments.iter().any(trees)) {
        return None;
    }
    Some(DirectQuery {
        snapshot: Arc::new(snapshot),
        predicate,
        aggregates,
        schema: Arc::new(Schema::new(fields)),
        fragment: Arc::new(Fragment::new(fingerprint)),
    })
}

/// The type DataFusion's coercion gives `func`'s argument over a column of type `ty`, for
/// the combinations the direct plan computes.
fn input_type(func: Func, ty: ColumnType) -> Option<DataType> {
    use ColumnType as C;
    Some(match (func, ty) {
        (Func::Sum, C::Int | C::Long) => DataType::Int64,
        (Func::Sum | Func::Avg, C::Double) | (Func::Avg, C::Int | C::Long) => DataType::Float64,
        (Func::Min | Func::Max | Func::Count, C::Int | C::Long | C::Double | C::Timestamp) => {
            ty.arrow_type()
        }
        (Func::Count, C::Boolean) => DataType::Boolean,
        _ => return None,
    })
}

/// DataFusion's aggregate expression for `func(column)`, its argument of type `ty`.
fn accumulator_expr(
    func: Func,
    column: &str,
    ty: &DataType,
    name: &str,
) -> Option<Arc<AggregateFunctionExpr>> {
    let udaf: Arc<AggregateUDF> = match func {
        Func::Count => count::count_udaf(),
        Func::Sum => sum::sum_udaf(),
        Func::Min => min_max::min_udaf(),
        Func::Max => min_max::max_udaf(),
        Func::Avg => average::avg_udaf(),
        Func::CountStar => return None,
    };
    let schema = Arc::new(Schema::new(vec![Field::new(column, ty.clone(), true)]));
    AggregateExprBuilder::new(udaf, vec![Arc::new(Column::new(column, 0))])
        .schema(schema)
        .alias(name)
        .build()
        .ok()
        .map(Arc::new)
}
