//! Every operator yields: a physical optimizer rule, run last, that puts a
//! `CooperativeExec` above each operator of the plan. In: the optimized plan. Out: the same
//! plan whose every stream spends the task's cooperative budget per batch.
//!
//! DataFusion makes the scans and the exchanges cooperative, but an operator that emits many
//! batches from one input batch (a hash join with a skewed key, an unnest) hands them to its
//! parent without ever returning `Pending`, and a parent that drains it never yields either:
//! the worker thread is held for seconds, the query's deadline cannot fire and a cancelled
//! query keeps its CPU. With a budget spent at every operator, each task returns to the
//! scheduler after at most 128 batches, where a timeout, a cancel or a dropped connection
//! stops it.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug, Default)]
pub struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            // Leaves are made cooperative by DataFusion's own rule.
            if node.as_any().is::<CooperativeExec>() || node.children().is_empty() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
