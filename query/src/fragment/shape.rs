//! The shape a plan fragment may have: one definition that brokers cut by and servers check
//! against. In: a physical plan node. Out: whether it may sit at a fragment's top, in the
//! chain below it, and (on a server) an error naming the first operator that may not run.
//!
//! A fragment is a single chain: at the top a partial aggregate, a sort with a fetch (per-server
//! top-K), a filter or a projection; below it filters, projections, cooperative yields and
//! round-robin shuffles; at the bottom Basalt's scan leaf. The chain may pass through
//! broadcast joins ([`broadcast_join`]): hash joins whose build side is rows the broker sent
//! (an in-memory source) and whose probe side continues the chain. Nothing else — in
//! particular no DataFusion file scan or sink, which would read or write the server's own
//! files — is run for a broker, whatever the bytes it sends decode to.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use crate::scan::SegmentScanExec;

/// Whether `node` may be the top of a fragment (above its chain).
pub fn may_top(node: &dyn ExecutionPlan) -> bool {
    let any = node.as_any();
    any.downcast_ref::<AggregateExec>()
        .is_some_and(|a| *a.mode() == AggregateMode::Partial)
        || any
            .downcast_ref::<SortExec>()
            .is_some_and(|s| s.fetch().is_some())
        || any.is::<ProjectionExec>()
        || any.is::<FilterExec>()
}

/// Whether `node` may sit in a fragment's chain, between its top and its scan leaf.
pub fn may_chain(node: &dyn ExecutionPlan) -> bool {
    let any = node.as_any();
    any.is::<ProjectionExec>()
        || any.is::<FilterExec>()
        || any.is::<CooperativeExec>()
        || any
            .downcast_ref::<RepartitionExec>()
            .is_some_and(|r| matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)))
}

/// `node` as a join a fragment may hold: a hash join that collects its build side (left) once
/// and whose every output row comes from one probe (right) row and the whole build side —
/// inner, right outer, right semi, right anti and right mark joins. With the whole build side
/// on every server, each server's share of the probe rows then gives exactly its share of the
/// output. (A left outer, semi or anti join's output depends on every probe row at once.)
pub fn broadcast_join(node: &dyn ExecutionPlan) -> Option<&HashJoinExec> {
    let j = node.as_any().downcast_ref::<HashJoinExec>()?;
    let probe_rows_alone = matches!(
        j.join_type(),
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    );
    (*j.partition_mode() == PartitionMode::CollectLeft && probe_rows_alone).then_some(j)
}

/// Whether a fragment holds a broadcast join.
pub fn holds_join(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut node = plan.clone();
    loop {
        if broadcast_join(node.as_ref()).is_some() {
            return true;
        }
        let next = match node.children().as_slice() {
            [child] => (*child).clone(),
            _ => return false,
        };
        node = next;
    }
}

/// Whether `node` is rows held in memory (a broadcast join's build side, as sent).
pub fn is_memory_source(node: &dyn ExecutionPlan) -> bool {
    node.as_any()
        .downcast_ref::<DataSourceExec>()
        .is_some_and(|d| d.data_source().as_any().is::<MemorySourceConfig>())
}

/// Checks a decoded fragment on a server: a top, a chain (through broadcast joins over rows
/// in memory), and a [`SegmentScanExec`] leaf.
pub fn check(plan: &Arc<dyn ExecutionPlan>) -> DfResult<()> {
    let refuse = |node: &dyn ExecutionPlan, place: &str| {
        Err(DataFusionError::Plan(format!(
            "plan fragment: {} may not run on a server {place}; a fragment is a partial \
             aggregate, a sort with a limit, filters, projections and broadcast hash joins \
             over Basalt's segment scan",
            node.name()
        )))
    };
    let mut node = plan.clone();
    let mut top = true;
    loop {
        if node.as_any().is::<SegmentScanExec>() {
            return match node.children().is_empty() {
                true => Ok(()),
                false => refuse(node.as_ref(), "with inputs"),
            };
        }
        if let Some(join) = broadcast_join(node.as_ref()) {
            if !is_memory_source(join.left().as_ref()) {
                return refuse(join.left().as_ref(), "as a join's build side");
            }
            node = join.right().clone();
            top = false;
            continue;
        }
        let allowed = if top {
            may_top(node.as_ref())
        } else {
            may_chain(node.as_ref())
        };
        if !allowed {
            return refuse(
                node.as_ref(),
                if top { "at the top" } else { "in the chain" },
            );
        }
        let child = match node.children().as_slice() {
            [child] => (*child).clone(),
            _ => return refuse(node.as_ref(), "without exactly one input"),
        };
        node = child;
        top = false;
    }
}
