//! The final aggregate over a scatter, finished without merging when it can be. In: a
//! broker plan after the scatter rule — a final aggregate (`Final` / `FinalPartitioned`)
//! whose input, through exchanges, is a [`ScatterExec`] of partial aggregate states. Out: a
//! [`FinishExec`] in its place.
//!
//! A server runs a fragment's partial aggregate inside its scan and merges every segment's
//! states before answering, so its answer holds each group once (the trailer says so). When
//! a query's whole answer came from one server — a cluster of one, a small table, or a time
//! filter that left one server's segments — nothing is left to merge: each row's states are
//! finished into the final values in place (the final accumulator fed the states with group
//! index = row number, then evaluated), with no hash table over the groups. Otherwise the
//! final aggregate runs as planned over the same rows.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::scatter::{ScatterExec, Shared};

/// Puts a [`FinishExec`] in place of every final aggregate over a scatter of partial
/// states.
pub(super) fn wrap_final_aggregates(
    plan: Arc<dyn ExecutionPlan>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(agg) = node.as_any().downcast_ref::<AggregateExec>() else {
            return Ok(Transformed::no(node));
        };
        let final_mode = matches!(
            agg.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        );
        let group_by = agg.group_expr();
        let plain = group_by.is_single()
            && !group_by.expr().is_empty()
            && agg.limit_options().is_none()
            && agg.filter_expr().iter().all(Option::is_none);
        let Some(scatter) = scatter_below(agg.input()) else {
            return Ok(Transformed::no(node));
        };
        let partial_states = scatter
            .fragment()
            .as_any()
            .downcast_ref::<AggregateExec>()
            .is_some_and(|p| *p.mode() == AggregateMode::Partial);
        if !(final_mode && plain && partial_states) {
            return Ok(Transformed::no(node));
        }
        let exec = FinishExec {
            agg: Arc::new(agg.clone()),
            result: scatter.result(),
        };
        Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
    })
    .data()
}

/// The scatter under `node` through exchanges.
fn scatter_below(node: &Arc<dyn ExecutionPlan>) -> Option<&ScatterExec> {
    let mut cur = node;
    loop {
        if let Some(s) = cur.as_any().downcast_ref::<ScatterExec>() {
            return Some(s);
        }
        let any = cur.as_any();
        if !(any.is::<RepartitionExec>() || any.is::<CoalescePartitionsExec>()) {
            return None;
        }
        cur = cur.children().into_iter().next()?;
    }
}

/// A final aggregate over a scatter: finished row by row when one server's answer holds each
/// group once, run as planned otherwise (see the module header).
pub struct FinishExec {
    agg: Arc<AggregateExec>,
    /// The scatter's answers, which say whether they hold each group once.
    result: Arc<OnceCell<Shared>>,
}

impl fmt::Debug for FinishExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishExec").finish()
    }
}

impl DisplayAs for FinishExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FinishExec: ")?;
        self.agg.fmt_as(t, f)
    }
}

impl ExecutionPlan for FinishExec {
    fn name(&self) -> &str {
        "FinishExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.agg.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.agg.input()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let agg = self.agg.clone().with_new_children(children)?;
        let agg = agg
            .as_any()
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| DataFusionError::Internal("not an aggregate".into()))?
            .clone();
        Ok(Arc::new(FinishExec {
            agg: Arc::new(agg),
            result: self.result.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.agg.input().execute(partition, context.clone())?;
        let (agg, result, schema) = (self.agg.clone(), self.result.clone(), self.schema());
        let work = async move {
            let in_schema = input.schema();
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            // The input was read to its end, so the scatter has gathered its answers.
            let unique = matches!(result.get(), Some(Ok(g)) if g.groups_unique);
            if unique {
                let out = batches
                    .iter()
                    .filter(|b| b.num_rows() > 0)
                    .map(|b| finish(&agg, b))
                    .collect::<DfResult<Vec<_>>>()?;
                let out: BoxStream<'static, DfResult<RecordBatch>> =
                    futures::stream::iter(out.into_iter().map(Ok)).boxed();
                return Ok::<_, DataFusionError>(out);
            }
            let source: Arc<dyn ExecutionPlan> =
                MemorySourceConfig::try_new_exec(&[batches], in_schema, None)?;
            let planned = agg.with_new_children(vec![source])?;
            Ok(planned.execute(0, context)?.boxed())
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(work).try_flatten(),
        )))
    }
}

/// The final rows of partial states holding each group once: group keys evaluated, each
/// aggregate's states merged into a final accumulator with one group per row, and
/// evaluated.
fn finish(agg: &AggregateExec, batch: &RecordBatch) -> DfResult<RecordBatch> {
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(agg.schema().fields().len());
    for (e, _) in agg.group_expr().expr() {
        columns.push(e.evaluate(batch)?.into_array(n)?);
    }
    let rows: Vec<usize> = (0..n).collect();
    let mut at = agg.group_expr().expr().len();
    for a in agg.aggr_expr() {
        let k = a.state_fields()?.len();
        let states = batch.columns().get(at..at + k).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "{} states missing from a server's answer",
                a.name()
            ))
        })?;
        at += k;
        let mut acc: Box<dyn GroupsAccumulator> = match a.groups_accumulator_supported() {
            true => a.create_groups_accumulator()?,
            false => {
                let a = a.clone();
                Box::new(GroupsAccumulatorAdapter::new(move || {
                    a.create_accumulator()
                }))
            }
        };
        acc.merge_batch(states, &rows, None, n)?;
        columns.push(acc.evaluate(EmitTo::All)?);
    }
    Ok(RecordBatch::try_new(agg.schema(), columns)?)
}
