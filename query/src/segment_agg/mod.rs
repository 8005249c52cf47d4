//! Aggregation inside the scan, as Pinot does it per segment. In: a physical plan in which
//! DataFusion groups the rows a [`SegmentScanExec`] produces. Out: the same plan with that
//! aggregation (partial and final stages, with the exchanges between them) replaced by one
//! [`SegmentAggregateExec`], which groups on each segment's dictionary ids instead of on
//! materialised strings and merges its workers' groups by value once at the end. A segment
//! read whole has its key's dictionary interned front to back, before its rows. One GROUP BY
//! column with over 65,536 entries in some segment's dictionary, and no filter, is split by
//! value instead: every worker reads every segment and keeps the keys it owns, so the groups
//! are disjoint and nothing is merged. A string key read whole in every segment is owned by
//! ranges of values and numbered by merging the segments' sorted dictionaries
//! (`sorted_keys`, no hash table); otherwise by the value's hash.
//!
//! Without GROUP BY, `count(*)` alone is answered from the predicate's bitmap cardinality per
//! segment without reading a column; other aggregates without GROUP BY are taken over only
//! for a table whose segments have star-trees that may answer them (a dashboard's KPI tile),
//! the segments without one aggregated row by row into the single group.
//!
//! The rewrite applies when every GROUP BY key is a column or an expression of a supported
//! type, no aggregate is DISTINCT, ordered or filtered, and there are no grouping sets; other
//! plans are left to DataFusion unchanged. Aggregate functions are DataFusion's own
//! accumulators, so results are the same as without the rewrite; `count(*)` is Basalt's
//! (`counts`: fed the rows' groups alone, keeping DataFusion's `count` state).
//!
//! When the session carries a [`PartialAggregates`] cache, each segment's groups and
//! accumulator states are kept per (segment, aggregation, predicate as it reads on the
//! segment) and merged by later queries instead of reading the segment again (`partials`).

mod counts;
mod exec;
mod hll;
mod keys;
mod partials;
mod sorted_keys;
mod star;

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};

pub use exec::SegmentAggregateExec;
#[cfg(test)]
pub(crate) use exec::SLICE_BLOCKS;
pub(crate) use exec::{range_rows, read_on, slice_keys};
use exec::{GroupKey, Job, KeyExpr};
use keys::KeyKind;
pub(crate) use partials::{Fragment, Partial};
pub use partials::{PartialAggregates, PartialCacheStats};
pub use star::StarTreeOff;

use crate::scan::SegmentScanExec;

/// The physical optimizer rule that introduces [`SegmentAggregateExec`]. Runs after
/// DataFusion's own rules.
#[derive(Debug, Default)]
pub struct SegmentAggregateRule;

impl PhysicalOptimizerRule for SegmentAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| match rewrite(&node, false)? {
            Some(new) => Ok(Transformed::new(new, true, TreeNodeRecursion::Jump)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "segment_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Steps over operators that only move rows between partitions or batches, and over the
/// `CooperativeExec` DataFusion puts above a scan no exchange makes cooperative (a plan of
/// one partition): [`SegmentAggregateExec`] checks its own cancellation.
fn skip_exchanges(mut plan: &Arc<dyn ExecutionPlan>) -> &Arc<dyn ExecutionPlan> {
    loop {
        let any = plan.as_any();
        let is_exchange = any.is::<RepartitionExec>()
            || any.is::<CoalescePartitionsExec>()
            || any.is::<CooperativeExec>();
        match plan.children().first() {
            Some(child) if is_exchange => plan = child,
            _ => return plan,
        }
    }
}

/// Adds the input columns `e` reads to `cols`, each once.
fn add_columns(cols: &mut Vec<usize>, e: &Arc<dyn PhysicalExpr>) {
    for c in collect_columns(e) {
        if !cols.contains(&c.index()) {
            cols.push(c.index());
        }
    }
}

/// `expr` with every column reference moved to the index `to` gives for its old index.
fn reindex_columns(
    expr: &Arc<dyn PhysicalExpr>,
    to: impl Fn(usize) -> Option<usize>,
) -> DfResult<Arc<dyn PhysicalExpr>> {
    expr.clone()
        .transform(|n| match n.as_any().downcast_ref::<Column>() {
            Some(c) => {
                let i = to(c.index()).ok_or_else(|| {
                    DataFusionError::Internal(format!("column {} has no new position", c.name()))
                })?;
                Ok(Transformed::yes(
                    Arc::new(Column::new(c.name(), i)) as Arc<dyn PhysicalExpr>
                ))
            }
            None => Ok(Transformed::no(n)),
        })
        .data()
}

/// `date_trunc('<unit>', <timestamp column>)`: the column's scan index and the expression
/// rewritten onto a one-column batch. Truncation is monotonic, so a block whose zone map
/// truncates to one value holds that value in every row.
fn time_trunc(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &arrow::datatypes::Schema,
) -> Option<(usize, Arc<dyn PhysicalExpr>)> {
    let f = expr.as_any().downcast_ref::<ScalarFunctionExpr>()?;
    let [unit, col] = f.args() else {
        return None;
    };
    let c = col.as_any().downcast_ref::<Column>()?;
    let is_literal = unit.as_any().downcast_ref::<Literal>().is_some();
    let is_ts = matches!(
        schema.field(c.index()).data_type(),
        DataType::Timestamp(_, None)
    );
    if f.name() != "date_trunc" || !is_literal || !is_ts {
        return None;
    }
    let single = reindex_columns(expr, |_| Some(0)).ok()?;
    Some((c.index(), single))
}

/// Every aggregate is `count(*)` (a count of a non-null literal): without GROUP BY, answered
/// from bitmap cardinalities alone.
fn only_count_star(agg: &AggregateExec) -> bool {
    agg.aggr_expr().iter().all(|a| counts_rows(a))
}

/// `count(*)`: a count of a non-null literal (DISTINCT and FILTER are refused before).
fn counts_rows(a: &AggregateFunctionExpr) -> bool {
    let args = a.expressions();
    a.fun().name() == "count"
        && args.len() == 1
        && args[0]
            .as_any()
            .downcast_ref::<Literal>()
            .is_some_and(|l| !l.value().is_null())
}

/// A plan fragment (a server's share of a broker's query) whose root is a partial
/// aggregate over a scan: that aggregate run inside the scan, emitting the partial states the
/// broker's final aggregate merges. Other plans are returned unchanged.
pub fn partial_at_root(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(rewrite(&plan, true)?.unwrap_or(plan))
}

/// `node` (a final or single aggregate over a scan, or with `partial_root` a partial one
/// whose states leave the plan) as a [`SegmentAggregateExec`], if it qualifies.
fn rewrite(
    node: &Arc<dyn ExecutionPlan>,
    partial_root: bool,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let Some(last) = node.as_any().downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let partial = *last.mode() == AggregateMode::Partial;
    let first = match last.mode() {
        AggregateMode::Final | AggregateMode::FinalPartitioned => {
            match skip_exchanges(last.input())
                .as_any()
                .downcast_ref::<AggregateExec>()
            {
                Some(p) if *p.mode() == AggregateMode::Partial => p,
                _ => return Ok(None),
            }
        }
        AggregateMode::Single | AggregateMode::SinglePartitioned => last,
        AggregateMode::Partial if partial_root => last,
        _ => return Ok(None),
    };
    // DataFusion's common-subexpression elimination may put a projection between the
    // aggregate and the scan (`__common_expr_1 = price * (1 - discount)`): its expressions
    // are evaluated once per batch before the aggregate arguments, and group keys are
    // resolved through it onto the scan's columns.
    let below = skip_exchanges(first.input()).clone();
    let (proj, scan_plan) = match below.as_any().downcast_ref::<ProjectionExec>() {
        Some(p) => (
            Some(
                p.expr()
                    .iter()
                    .map(|pe| pe.expr.clone())
                    .collect::<Vec<_>>(),
            ),
            skip_exchanges(p.input()).clone(),
        ),
        None => (None, below),
    };
    let Some(scan) = scan_plan.as_any().downcast_ref::<SegmentScanExec>() else {
        return Ok(None);
    };
    let group_by = first.group_expr();
    // Without GROUP BY: `count(*)` alone from bitmap cardinalities; other aggregates only
    // over a table with star-trees (see below), whose segments answer from them.
    let count_only = group_by.expr().is_empty() && only_count_star(first);
    let needs_tree = group_by.expr().is_empty() && !count_only;
    let has_trees = || {
        scan.snapshot()
            .segments
            .iter()
            .any(|s| !s.footer().star_trees.is_empty())
    };
    if scan.limit().is_some()
        || group_by.has_grouping_set()
        || (needs_tree && (proj.is_some() || !has_trees()))
        || first.filter_expr().iter().any(Option::is_some)
        || first
            .aggr_expr()
            .iter()
            .any(|a| a.is_distinct() || !a.order_bys().is_empty())
    {
        return Ok(None);
    }
    // The aggregate's expressions are over `agg_schema`: the projection's output when there
    // is one, else the scan's.
    let agg_schema = first.input_schema();
    let input_schema = scan_plan.schema();
    let out_schema = last.schema();
    // An expression over the aggregate's input, rewritten onto the scan's columns.
    let resolve = |e: &Arc<dyn PhysicalExpr>| -> DfResult<Arc<dyn PhysicalExpr>> {
        let Some(p) = &proj else {
            return Ok(e.clone());
        };
        e.clone()
            .transform(|n| match n.as_any().downcast_ref::<Column>() {
                Some(c) => Ok(Transformed::yes(p[c.index()].clone())),
                None => Ok(Transformed::no(n)),
            })
            .data()
    };

    // Columns the aggregate arguments and computed keys read, in scan-schema positions.
    let mut needed: Vec<usize> = Vec::new();
    let mut note = |e: &Arc<dyn PhysicalExpr>| add_columns(&mut needed, e);
    let mut keys = Vec::new();
    // Each key's column name, for star-trees (`None`: an expression).
    let mut key_names = Vec::new();
    for (i, (expr, _)) in group_by.expr().iter().enumerate() {
        let expr = resolve(expr)?;
        let Some(kind) = KeyKind::of(&expr.data_type(&input_schema)?) else {
            return Ok(None);
        };
        key_names.push(
            expr.as_any()
                .downcast_ref::<Column>()
                .map(|c| input_schema.field(c.index()).name().clone()),
        );
        let key = match expr.as_any().downcast_ref::<Column>() {
            Some(c) => KeyExpr::Column {
                seg_col: scan.projection()[c.index()],
            },
            None => match time_trunc(&expr, &input_schema) {
                Some((c, single)) => KeyExpr::TimeTrunc {
                    seg_col: scan.projection()[c],
                    expr: single,
                    field: Arc::new(input_schema.field(c).clone()),
                },
                None => {
                    note(&expr);
                    KeyExpr::Expr(expr.clone())
                }
            },
        };
        keys.push(GroupKey {
            expr: key,
            kind,
            out_type: out_schema.field(i).data_type().clone(),
        });
    }
    // approx_distinct over a string column: its sketch is fed hashes computed once per
    // dictionary entry instead of every row's string.
    let sketch_cols = first
        .aggr_expr()
        .iter()
        .map(|a| {
            let args = a.expressions();
            // The sketch's state is DataFusion's `approx_distinct` state (`hll`), so partial
            // states built here merge in the broker's final aggregate too.
            if a.fun().name() != "approx_distinct" || args.len() != 1 {
                return Ok(None);
            }
            let arg = resolve(&args[0])?;
            let mut e = &arg;
            while let Some(c) = e.as_any().downcast_ref::<CastExpr>() {
                e = c.expr();
            }
            let Some(col) = e.as_any().downcast_ref::<Column>() else {
                return Ok(None);
            };
            let is_dict_str = matches!(
                input_schema.field(col.index()).data_type(),
                DataType::Dictionary(_, v) if v.as_ref() == &DataType::Utf8
            );
            Ok(
                (is_dict_str && arg.data_type(&input_schema)? == DataType::Utf8)
                    .then(|| scan.projection()[col.index()]),
            )
        })
        .collect::<DfResult<Vec<_>>>()?;
    // `count(*)` is fed the rows' groups alone ([`counts::RowCounts`]): its literal is never
    // evaluated.
    let row_counts: Vec<bool> = first.aggr_expr().iter().map(|a| counts_rows(a)).collect();
    // With a projection, the outputs of it the arguments use become the pre-projection, and
    // the arguments are moved onto its output.
    let arg_exprs = || {
        first
            .aggr_expr()
            .iter()
            .zip(sketch_cols.iter().zip(&row_counts))
            .filter(|(_, (d, &rows))| d.is_none() && !rows)
            .flat_map(|(a, _)| a.expressions())
    };
    let mut pre_cols: Vec<usize> = Vec::new();
    match &proj {
        None => arg_exprs().for_each(|e| note(&e)),
        Some(p) => {
            arg_exprs().for_each(|e| add_columns(&mut pre_cols, &e));
            pre_cols.sort_unstable();
            pre_cols.iter().for_each(|&i| note(&p[i]));
        }
    }
    needed.sort_unstable();
    // Rewrite expressions onto the batch of just the needed columns.
    let remap =
        |e: &Arc<dyn PhysicalExpr>| reindex_columns(e, |i| needed.iter().position(|&n| n == i));
    for k in keys.iter_mut() {
        if let KeyExpr::Expr(e) = &k.expr {
            k.expr = KeyExpr::Expr(remap(e)?);
        }
    }
    let pre = match &proj {
        None => None,
        Some(p) => Some((
            pre_cols
                .iter()
                .map(|&i| remap(&p[i]))
                .collect::<DfResult<Vec<_>>>()?,
            Arc::new(agg_schema.project(&pre_cols)?),
        )),
    };
    let arg_remap = |e: &Arc<dyn PhysicalExpr>| match proj {
        None => remap(e),
        Some(_) => reindex_columns(e, |i| pre_cols.iter().position(|&n| n == i)),
    };
    let args = first
        .aggr_expr()
        .iter()
        .zip(sketch_cols.iter().zip(&row_counts))
        .map(|(a, (d, &rows))| match (d, rows) {
            (Some(_), _) | (None, true) => Ok(Vec::new()),
            (None, false) => a
                .expressions()
                .iter()
                .map(&arg_remap)
                .collect::<DfResult<Vec<_>>>(),
        })
        .collect::<DfResult<Vec<_>>>()?;
    // Without a projection between, segments with a star-tree that covers the aggregation
    // may answer from it.
    let star = match proj {
        None => star::StarPlan::of(&key_names, first.aggr_expr(), &input_schema),
        Some(_) => None,
    };
    if needs_tree && star.is_none() {
        return Ok(None);
    }
    let read_schema = Arc::new(input_schema.project(&needed)?);
    let read_cols: Vec<usize> = needed.iter().map(|&i| scan.projection()[i]).collect();
    let exec: Arc<dyn ExecutionPlan> = Arc::new(SegmentAggregateExec::new(Job {
        scan: scan_plan.clone(),
        keys,
        aggs: first.aggr_expr().to_vec(),
        pre,
        args,
        sketch_cols,
        row_counts,
        read_cols,
        read_schema,
        schema: out_schema,
        partial,
        star,
        count_only,
    })?);
    if partial {
        return Ok(Some(exec));
    }
    Ok(Some(same_partitioning(exec, node)?))
}

/// `exec` partitioned as the `replaced` node was: its parents were planned against that
/// partitioning (a partitioned hash join pairs partition i of both sides, so the aggregate
/// under one side must still deliver the rows of hash bucket i in partition i), while
/// [`SegmentAggregateExec`] merges everything into one partition.
fn same_partitioning(
    exec: Arc<dyn ExecutionPlan>,
    replaced: &Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let want = replaced.output_partitioning();
    if want.partition_count() <= 1 {
        return Ok(exec);
    }
    let target = match want {
        Partitioning::Hash(..) => want.clone(),
        other => Partitioning::RoundRobinBatch(other.partition_count()),
    };
    Ok(Arc::new(RepartitionExec::try_new(exec, target)?))
}
