//! Broadcast semi joins as inner joins over their build side's distinct keys, so that the
//! probe side's scan gets the join's dynamic filter. In: a physical plan after DataFusion's
//! rules up to its post-optimization filter pushdown (the rule is placed right before it,
//! see [`with_semi_to_inner`]). Out: the same plan with each `RightSemi` hash join in
//! `CollectLeft` mode, without a join filter, as an inner join whose build side is grouped by
//! the join keys and whose output is projected to the probe side's columns.
//!
//! DataFusion gives a hash join a dynamic filter (the build's key bounds and key set, pushed
//! into the probe side's scan while the plan runs) only when the join is inner. A right semi
//! join returns each probe row that has at least one match, once: what an inner join returns
//! when every build key occurs once. TPC-H Q20 keeps the `partsupp` rows of the ~1% of parts
//! named `forest%`; as a semi join its scan read all 8M rows at SF10, as an inner join it
//! reads the blocks and rows of those parts.
//!
//! Only broadcast joins (estimated under [`crate::engine`]'s broadcast size) are rewritten:
//! grouping a large build costs about what hashing it does, twice over.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::JoinType;
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::ExecutionPlan;

/// The name of DataFusion's rule that pushes dynamic filters into scans.
const POST_FILTER_PUSHDOWN: &str = "FilterPushdown(Post)";

#[derive(Debug, Default)]
pub struct SemiToInner;

/// DataFusion's default physical optimizer rules with [`SemiToInner`] right before the
/// post-optimization filter pushdown (at the end if DataFusion no longer has that rule).
pub(crate) fn with_semi_to_inner() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == POST_FILTER_PUSHDOWN)
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(SemiToInner));
    rules
}

impl PhysicalOptimizerRule for SemiToInner {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.as_any().downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            match rewrite(join)? {
                Some(new) => Ok(Transformed::yes(new)),
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "semi_to_inner"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn rewrite(join: &HashJoinExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    if *join.join_type() != JoinType::RightSemi
        || *join.partition_mode() != PartitionMode::CollectLeft
        || join.filter().is_some()
        || join.null_aware
        || ExecutionPlan::fetch(join).is_some()
    {
        return Ok(None);
    }
    let keys: Vec<(Arc<dyn PhysicalExpr>, String)> = join
        .on()
        .iter()
        .enumerate()
        .map(|(i, (l, _))| (Arc::clone(l), format!("__semi_key_{i}")))
        .collect();
    let on = join
        .on()
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, ((_, r), (_, name)))| {
            (
                Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>,
                Arc::clone(r),
            )
        })
        .collect();
    let left = Arc::clone(join.left());
    let distinct = AggregateExec::try_new(
        AggregateMode::Single,
        PhysicalGroupBy::new_single(keys),
        vec![],
        vec![],
        Arc::clone(&left),
        left.schema(),
    )?;
    // The inner join's columns are the keys, then the probe side's.
    let n = join.on().len();
    let projection: Vec<usize> = match &join.projection {
        Some(p) => p.iter().map(|&i| n + i).collect(),
        None => (n..n + join.right().schema().fields().len()).collect(),
    };
    let inner = HashJoinExec::try_new(
        Arc::new(distinct),
        Arc::clone(join.right()),
        on,
        None,
        &JoinType::Inner,
        Some(projection),
        PartitionMode::CollectLeft,
        join.null_equality(),
        false,
    )?;
    Ok(Some(Arc::new(inner)))
}
