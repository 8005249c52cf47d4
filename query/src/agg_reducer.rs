//! Aggregates computed only for the keys a join can use. In: an optimized logical plan. Out:
//! the same plan where an inner join matches a GROUP BY column of an aggregate against a
//! column of a filtered table on its other side, and that table keeps far fewer keys than the
//! aggregate has groups: the aggregate's input is first semi-joined, at the input the group
//! column comes from, with that filtered table's keys (a copy of its scan and filters).
//!
//! TPC-H Q02's correlated `min(ps_supplycost)` is decorrelated into an aggregate over every
//! part's `partsupp` rows (1.2M groups at SF10) that is joined with the ~8,000 parts of one
//! size and type on `(p_partkey, ps_supplycost = min)`. The join's dynamic filter covers both
//! keys, the second an aggregate result, so it cannot pass below the aggregate. DuckDB
//! computes the subquery only for the outer side's distinct keys (its delim join); here the
//! filtered `part` scan is repeated as a semi join under the aggregate, whose probe scan then
//! gets that join's dynamic filter and reads the keys of those parts only.
//!
//! Why it is correct: a group whose key is not among the table's keys cannot find a match
//! in the inner join (the other side's column takes only that table's values, or NULL, which
//! matches nothing), and a semi join on a group column keeps or drops whole groups, so every
//! group that can match is computed from all of its rows.
//!
//! Applied only when the filtered table is a scan with filters (cheap to repeat), estimated
//! to keep under a quarter of the aggregate's groups, and the aggregate does not sit directly
//! on a scan with a single join key (there the join's own dynamic filter already reaches the
//! scan through Basalt's segment aggregate).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, JoinType, NullEquality, Result as DfResult, TableReference};
use datafusion::logical_expr::{
    Expr, Join, JoinConstraint, LogicalPlan, LogicalPlanBuilder, Projection, SubqueryAlias,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::cardinality::{estimate, unalias};

/// The alias that marks the copies this rule adds (and that it never adds twice).
const ALIAS: &str = "__key_reducer";

/// A reducer is added when the table keeps fewer than this share of the aggregate's groups.
const MAX_SHARE: f64 = 0.25;

#[derive(Debug, Default)]
pub struct AggregateKeyReducer {
    next: AtomicUsize,
}

impl OptimizerRule for AggregateKeyReducer {
    fn name(&self) -> &str {
        "aggregate_key_reducer"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if join.join_type != JoinType::Inner
            || join.null_equality != NullEquality::NullEqualsNothing
        {
            return Ok(Transformed::no(plan));
        }
        for agg_on_right in [true, false] {
            let (agg_side, other) = if agg_on_right {
                (&join.right, &join.left)
            } else {
                (&join.left, &join.right)
            };
            for (l, r) in &join.on {
                let (agg_key, other_key) = if agg_on_right { (r, l) } else { (l, r) };
                let (Expr::Column(ak), Expr::Column(ok)) = (agg_key, other_key) else {
                    continue;
                };
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                // A plan this rule cannot rebuild is left as it is.
                let new_side = match reduce(agg_side, ak, other, ok, join.on.len(), n) {
                    Ok(Some(s)) => s,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "aggregate key reducer skipped");
                        continue;
                    }
                };
                let (left, right) = if agg_on_right {
                    (join.left.clone(), Arc::new(new_side))
                } else {
                    (Arc::new(new_side), join.right.clone())
                };
                let new = Join::try_new(
                    left,
                    right,
                    join.on.clone(),
                    join.filter.clone(),
                    join.join_type,
                    join.join_constraint,
                    join.null_equality,
                    join.null_aware,
                )?;
                tracing::debug!(key = %ak, by = %ok, "aggregate input reduced to the join's keys");
                return Ok(Transformed::yes(LogicalPlan::Join(new)));
            }
        }
        Ok(Transformed::no(plan))
    }
}

/// `agg_side` with its aggregate's input semi-joined with the keys of the filtered table
/// `other_key` comes from, when `agg_key` is a group column and that pays.
fn reduce(
    agg_side: &LogicalPlan,
    agg_key: &Column,
    other: &LogicalPlan,
    other_key: &Column,
    join_keys: usize,
    n: usize,
) -> DfResult<Option<LogicalPlan>> {
    let Some((agg, group_col)) = find_group(agg_side, agg_key) else {
        return Ok(None);
    };
    let LogicalPlan::Aggregate(a) = agg else {
        return Ok(None);
    };
    if has_reducer(&a.input) || (join_keys == 1 && over_scan(&a.input)) {
        return Ok(None);
    }
    let Some((source, source_col)) = key_source(other, other_key) else {
        return Ok(None);
    };
    let (Some(groups), Some(keys)) = (estimate(agg), estimate(&source)) else {
        return Ok(None);
    };
    if keys.rows >= groups.rows * MAX_SHARE {
        return Ok(None);
    }
    let key_type = source
        .schema()
        .qualified_field_from_column(&source_col)?
        .1
        .data_type()
        .clone();
    let group_type = a
        .input
        .schema()
        .qualified_field_from_column(&group_col)?
        .1
        .data_type()
        .clone();
    if key_type != group_type {
        return Ok(None);
    }
    let alias = format!("{ALIAS}_{n}");
    let reducer = LogicalPlanBuilder::from(source)
        .project(vec![Expr::Column(source_col.clone())])?
        .build()?;
    let reducer =
        LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(reducer), alias.as_str())?);
    let reducer_col = Column::new(Some(TableReference::bare(alias)), source_col.name.clone());
    let semi = |leaf: LogicalPlan, col: &Column| -> DfResult<LogicalPlan> {
        Ok(LogicalPlan::Join(Join::try_new(
            Arc::new(leaf),
            Arc::new(reducer.clone()),
            vec![(Expr::Column(col.clone()), Expr::Column(reducer_col.clone()))],
            None,
            JoinType::LeftSemi,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?))
    };
    let Some(input) = insert_at_source(&a.input, &group_col, &semi)? else {
        return Ok(None);
    };
    let new_agg = agg.with_new_exprs(agg.expressions(), vec![input])?;
    replace_node(agg_side, agg, new_agg)
}

/// Through aliases, projections and filters to an aggregate whose output column `col` is
/// one of its GROUP BY columns: the aggregate and that column in its input.
fn find_group<'a>(plan: &'a LogicalPlan, col: &Column) -> Option<(&'a LogicalPlan, Column)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => find_group(&a.input, &rename_into(plan, &a.input, col)?),
        LogicalPlan::Projection(p) => find_group(&p.input, passed_through(p, col)?),
        LogicalPlan::Filter(f) => find_group(&f.input, col),
        LogicalPlan::Aggregate(a) => {
            let i = a.schema.index_of_column(col).ok()?;
            match a.group_expr.get(i).map(unalias) {
                Some(Expr::Column(c))
                    if !a
                        .group_expr
                        .iter()
                        .any(|e| matches!(e, Expr::GroupingSet(_))) =>
                {
                    Some((plan, c.clone()))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The column of `alias`'s input at the position of `col` in the alias's output.
fn rename_into(alias: &LogicalPlan, input: &LogicalPlan, col: &Column) -> Option<Column> {
    let i = alias.schema().index_of_column(col).ok()?;
    let (q, f) = input.schema().qualified_field(i);
    Some(Column::new(q.cloned(), f.name()))
}

/// The input column that output column `col` of projection `p` passes on unchanged.
fn passed_through<'a>(p: &'a Projection, col: &Column) -> Option<&'a Column> {
    let i = p.schema.index_of_column(col).ok()?;
    match unalias(&p.expr[i]) {
        Expr::Column(c) => Some(c),
        _ => None,
    }
}

/// The input is a scan (under projections and filters): the aggregate's own scan receives
/// the join's dynamic filter.
fn over_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Projection(p) => over_scan(&p.input),
        LogicalPlan::Filter(f) => over_scan(&f.input),
        LogicalPlan::SubqueryAlias(a) => over_scan(&a.input),
        _ => false,
    }
}

/// Whether this rule already reduced `plan`.
fn has_reducer(plan: &LogicalPlan) -> bool {
    if let LogicalPlan::SubqueryAlias(a) = plan {
        if a.alias.table().starts_with(ALIAS) {
            return true;
        }
    }
    plan.inputs().into_iter().any(has_reducer)
}

/// Only scans, filters, projections and aliases: cheap to run a second time.
fn is_filtered_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Projection(p) => is_filtered_scan(&p.input),
        LogicalPlan::Filter(f) => is_filtered_scan(&f.input),
        LogicalPlan::SubqueryAlias(a) => is_filtered_scan(&a.input),
        _ => false,
    }
}

/// The filtered scan below `plan`'s joins that column `col` of `plan` comes from, unchanged,
/// and the column's name there.
fn key_source(plan: &LogicalPlan, col: &Column) -> Option<(LogicalPlan, Column)> {
    if is_filtered_scan(plan) {
        return plan
            .schema()
            .has_column(col)
            .then(|| (plan.clone(), col.clone()));
    }
    match plan {
        LogicalPlan::SubqueryAlias(a) => key_source(&a.input, &rename_into(plan, &a.input, col)?),
        LogicalPlan::Projection(p) => key_source(&p.input, passed_through(p, col)?),
        LogicalPlan::Filter(f) => key_source(&f.input, col),
        LogicalPlan::Sort(s) => key_source(&s.input, col),
        // Any join: the column takes values of the side it comes from, or NULL.
        LogicalPlan::Join(j) => {
            if j.left.schema().has_column(col) {
                key_source(&j.left, col)
            } else if j.right.schema().has_column(col) {
                key_source(&j.right, col)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `plan` with the input that column `col` comes from replaced by `wrap(input, column
/// there)`, through aliases, projections, filters and inner joins (which a semi join on one
/// input's column commutes with).
fn insert_at_source(
    plan: &LogicalPlan,
    col: &Column,
    wrap: &dyn Fn(LogicalPlan, &Column) -> DfResult<LogicalPlan>,
) -> DfResult<Option<LogicalPlan>> {
    let rebuilt = |input: Option<LogicalPlan>, at: usize| -> DfResult<Option<LogicalPlan>> {
        let Some(input) = input else {
            return Ok(None);
        };
        let mut inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
        inputs[at] = input;
        Ok(Some(plan.with_new_exprs(plan.expressions(), inputs)?))
    };
    if is_filtered_scan(plan) {
        // The semi join goes above the scan's own projections (which may cast the column).
        return match plan.schema().has_column(col) {
            true => Ok(Some(wrap(plan.clone(), col)?)),
            false => Ok(None),
        };
    }
    match plan {
        LogicalPlan::SubqueryAlias(a) => match rename_into(plan, &a.input, col) {
            Some(c) => rebuilt(insert_at_source(&a.input, &c, wrap)?, 0),
            None => Ok(None),
        },
        LogicalPlan::Projection(p) => match passed_through(p, col) {
            Some(c) => rebuilt(insert_at_source(&p.input, c, wrap)?, 0),
            None => Ok(None),
        },
        LogicalPlan::Filter(f) => rebuilt(insert_at_source(&f.input, col, wrap)?, 0),
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            if j.left.schema().has_column(col) {
                rebuilt(insert_at_source(&j.left, col, wrap)?, 0)
            } else if j.right.schema().has_column(col) {
                rebuilt(insert_at_source(&j.right, col, wrap)?, 1)
            } else {
                Ok(None)
            }
        }
        _ => Ok(None),
    }
}

/// `plan` with the node `old` (found by address) replaced by `new`.
fn replace_node(
    plan: &LogicalPlan,
    old: &LogicalPlan,
    new: LogicalPlan,
) -> DfResult<Option<LogicalPlan>> {
    if std::ptr::eq(plan, old) {
        return Ok(Some(new));
    }
    let inputs = plan.inputs();
    for (k, input) in inputs.iter().enumerate() {
        if let Some(replaced) = replace_node(input, old, new.clone())? {
            let mut all: Vec<LogicalPlan> = inputs.iter().map(|p| (*p).clone()).collect();
            all[k] = replaced;
            return Ok(Some(plan.with_new_exprs(plan.expressions(), all)?));
        }
    }
    Ok(None)
}
