//! Picks the build side of semi joins again once the scan's own aggregation is in the plan.
//! In: a physical plan after DataFusion's rules and [`crate::segment_agg`]. Out: the same
//! plan with each partitioned semi join whose build (left) side is estimated at more than
//! twice its probe side swapped, so the small side is hashed.
//!
//! DataFusion chooses build sides before the aggregate over a scan becomes a
//! [`crate::segment_agg::SegmentAggregateExec`], when an aggregate is estimated at as many
//! groups as input rows and a `HAVING` filter over it at all of them. TPC-H Q18 (`o_orderkey
//! IN (SELECT l_orderkey ... GROUP BY l_orderkey HAVING sum(l_quantity) > 300)`) then hashes
//! the 6M-row join (60M rows at SF10) to probe it with the 57 keys the subquery keeps. After
//! the rewrite the aggregate's estimate comes from its keys' distinct counts.
//!
//! Only semi joins are swapped: they carry no dynamic filter (DataFusion gives those to inner
//! joins only, already pushed into the probe side), and a partitioned semi join's output is
//! partitioned as before the swap (the rows of the same side, on the same keys).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::JoinType;
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;

/// DataFusion's default selectivity of a filter it cannot analyse (20%).
const FILTER_SELECTIVITY: f64 = 0.2;

#[derive(Debug, Default)]
pub struct SemiJoinBuildSide;

impl PhysicalOptimizerRule for SemiJoinBuildSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.as_any().downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let semi = matches!(join.join_type(), JoinType::LeftSemi | JoinType::RightSemi);
            if !semi || *join.partition_mode() != PartitionMode::Partitioned {
                return Ok(Transformed::no(node));
            }
            match (rows(join.left())?, rows(join.right())?) {
                (Some(build), Some(probe)) if build > 2.0 * probe => Ok(Transformed::yes(
                    join.swap_inputs(PartitionMode::Partitioned)?,
                )),
                _ => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "semi_join_build_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Estimated output rows of `plan`: its own statistics, with a filter DataFusion leaves at
/// its input's count taken at the default selectivity.
fn rows(plan: &Arc<dyn ExecutionPlan>) -> DfResult<Option<f64>> {
    let any = plan.as_any();
    let keeps_rows = any.is::<RepartitionExec>()
        || any.is::<CoalescePartitionsExec>()
        || any.is::<ProjectionExec>();
    if let (true, [child]) = (keeps_rows, plan.children().as_slice()) {
        return rows(child);
    }
    let own = plan
        .partition_statistics(None)?
        .num_rows
        .get_value()
        .map(|&n| n as f64);
    if let Some(filter) = plan.as_any().downcast_ref::<FilterExec>() {
        if let Some(input) = rows(filter.input())? {
            let guess = input * FILTER_SELECTIVITY;
            return Ok(Some(own.map_or(guess, |o| o.min(guess))));
        }
    }
    Ok(own)
}
