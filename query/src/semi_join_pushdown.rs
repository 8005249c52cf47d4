//! Moves a semi join with a `HAVING` subquery below the inner joins and projections under
//! it, onto the input its keys come from. In: an optimized logical plan. Out: the same plan
//! with `LeftSemi(Inner(A, B), S)` as `Inner(LeftSemi(A, S), B)` wherever the semi join reads
//! only A's columns and S is a filter over an aggregate.
//!
//! TPC-H Q18 (`o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey HAVING
//! sum(l_quantity) > 300)`) is decorrelated into a semi join above `customer ⋈ orders ⋈
//! lineitem`, so every order and every line item went through both inner joins (60M rows at
//! SF10) before the 624 orders the subquery keeps were picked. Below them the semi join
//! filters `orders` first, and the join with `lineitem` builds on those orders, whose dynamic
//! filter then reaches the `lineitem` scan.
//!
//! A semi join keeps or drops each row of its left side by that row's own columns, so it
//! commutes with an inner join on the other input and with a projection that passes the
//! columns through. It is moved only when its right side is a `HAVING` (a filter over an
//! aggregate), which usually keeps few keys: a semi join that keeps most rows is cheaper
//! above joins that remove them (TPC-H Q21's `EXISTS` over `lineitem`).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, JoinType, Result as DfResult};
use datafusion::logical_expr::{Expr, Join, LogicalPlan, Projection};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

#[derive(Debug, Default)]
pub struct SemiJoinPushdown;

impl OptimizerRule for SemiJoinPushdown {
    fn name(&self) -> &str {
        "semi_join_pushdown"
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
        match push(&plan)? {
            Some(new) => Ok(Transformed::yes(new)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// The semi join `plan` moved one step down, if it can be.
fn push(plan: &LogicalPlan) -> DfResult<Option<LogicalPlan>> {
    let LogicalPlan::Join(semi) = plan else {
        return Ok(None);
    };
    if semi.join_type != JoinType::LeftSemi || semi.null_aware || !is_having(&semi.right) {
        return Ok(None);
    }
    // The left side's columns the semi join reads (its filter may read the right side's).
    let mut used: HashSet<Column> = HashSet::new();
    for (l, _) in &semi.on {
        used.extend(l.column_refs().into_iter().cloned());
    }
    if let Some(f) = &semi.filter {
        used.extend(
            f.column_refs()
                .into_iter()
                .filter(|c| semi.left.schema().has_column(c))
                .cloned(),
        );
    }
    let below = |left: Arc<LogicalPlan>| -> DfResult<LogicalPlan> {
        Ok(LogicalPlan::Join(Join::try_new(
            left,
            semi.right.clone(),
            semi.on.clone(),
            semi.filter.clone(),
            JoinType::LeftSemi,
            semi.join_constraint,
            semi.null_equality,
            false,
        )?))
    };
    match semi.left.as_ref() {
        LogicalPlan::Projection(p) => {
            // Only through columns the projection passes on unchanged.
            let passed = used.iter().all(|c| {
                p.expr
                    .iter()
                    .any(|e| matches!(e, Expr::Column(pc) if pc == c))
            });
            if !passed {
                return Ok(None);
            }
            let inner = below(p.input.clone())?;
            Ok(Some(LogicalPlan::Projection(Projection::try_new(
                p.expr.clone(),
                Arc::new(inner),
            )?)))
        }
        LogicalPlan::Join(inner) if inner.join_type == JoinType::Inner => {
            let within = |side: &LogicalPlan| used.iter().all(|c| side.schema().has_column(c));
            let (left, right) = if within(&inner.left) {
                (Arc::new(below(inner.left.clone())?), inner.right.clone())
            } else if within(&inner.right) {
                (inner.left.clone(), Arc::new(below(inner.right.clone())?))
            } else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Join(Join::try_new(
                left,
                right,
                inner.on.clone(),
                inner.filter.clone(),
                JoinType::Inner,
                inner.join_constraint,
                inner.null_equality,
                inner.null_aware,
            )?)))
        }
        _ => Ok(None),
    }
}

/// A filter over an aggregate, under aliases and projections: a `HAVING` subquery.
fn is_having(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::SubqueryAlias(a) => is_having(&a.input),
        LogicalPlan::Projection(p) => is_having(&p.input),
        LogicalPlan::Filter(f) => matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)),
        _ => false,
    }
}
