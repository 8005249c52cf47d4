//! Join builds start when their join asks for them. In: the optimized physical plan. Out: the
//! same plan with the build side of each `CollectLeft` hash join behind a [`DeferredExec`],
//! which executes its input only when its stream is first polled.
//!
//! DataFusion executes a `CollectLeft` join's build input inside the join's `execute()`, and a
//! `CoalescePartitionsExec` spawns its input's tasks right there: every broadcast build of the
//! plan starts scanning the moment the plan starts, before the joins above it have built their
//! hash tables. A scan below such a build then opens its segments while the dynamic filters
//! of those joins are still `true`, and reads everything they would have removed (TPC-H Q07
//! at SF10 read 23,000 suppliers instead of the 8,000 of two nations, and every join above
//! it built three times the rows). Deferred, a build runs when its join first polls it,
//! which a join above does only after its own build and its dynamic filter are complete.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Statistics;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};

/// Runs its input at the first poll of its stream instead of at `execute()`.
#[derive(Debug)]
pub struct DeferredExec {
    input: Arc<dyn ExecutionPlan>,
}

impl DeferredExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

impl DisplayAs for DeferredExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeferredExec")
    }
}

impl ExecutionPlan for DeferredExec {
    fn name(&self) -> &str {
        "DeferredExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.len() {
            1 => Ok(Arc::new(DeferredExec::new(children.remove(0)))),
            n => Err(datafusion::error::DataFusionError::Internal(format!(
                "DeferredExec takes one child, got {n}"
            ))),
        }
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Statistics> {
        self.input.partition_statistics(partition)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = Arc::clone(&self.input);
        let stream = futures::stream::once(async move { input.execute(partition, context) })
            .try_flatten()
            .boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            stream,
        )))
    }
}

/// Puts a [`DeferredExec`] over the build side of every `CollectLeft` hash join.
#[derive(Debug, Default)]
pub struct DeferBroadcastBuilds;

impl PhysicalOptimizerRule for DeferBroadcastBuilds {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.as_any().downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if *join.partition_mode() != PartitionMode::CollectLeft
                || join.left().as_any().is::<DeferredExec>()
            {
                return Ok(Transformed::no(node));
            }
            let left = Arc::new(DeferredExec::new(Arc::clone(join.left())));
            let right = Arc::clone(join.right());
            Ok(Transformed::yes(node.with_new_children(vec![left, right])?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "defer_broadcast_builds"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    /// Counts `execute()` calls of its input.
    #[derive(Debug)]
    struct Counting {
        input: Arc<dyn ExecutionPlan>,
        calls: Arc<AtomicUsize>,
    }

    impl DisplayAs for Counting {
        fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "Counting")
        }
    }

    impl ExecutionPlan for Counting {
        fn name(&self) -> &str {
            "Counting"
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn properties(&self) -> &Arc<PlanProperties> {
            self.input.properties()
        }
        fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
            vec![]
        }
        fn with_new_children(
            self: Arc<Self>,
            _children: Vec<Arc<dyn ExecutionPlan>>,
        ) -> DfResult<Arc<dyn ExecutionPlan>> {
            Ok(self)
        }
        fn execute(
            &self,
            partition: usize,
            context: Arc<TaskContext>,
        ) -> DfResult<SendableRecordBatchStream> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.input.execute(partition, context)
        }
    }

    #[tokio::test]
    async fn the_input_runs_at_the_first_poll_not_at_execute() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let input = Arc::new(Counting {
            input: MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap(),
            calls: calls.clone(),
        });
        let deferred = DeferredExec::new(input);
        let ctx = SessionContext::new().task_ctx();
        let mut stream = deferred.execute(0, ctx).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(first.num_rows(), 3);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn broadcast_builds_are_deferred_and_partitioned_ones_are_not() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        for (rows, deferred) in [(1usize << 20, true), (0, false)] {
            let mut config = datafusion::prelude::SessionConfig::new().with_target_partitions(2);
            config
                .options_mut()
                .optimizer
                .hash_join_single_partition_threshold = rows * 32;
            config
                .options_mut()
                .optimizer
                .hash_join_single_partition_threshold_rows = rows;
            let ctx = SessionContext::new_with_config(config);
            for name in ["a", "b"] {
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
                )
                .unwrap();
                ctx.register_batch(name, batch).unwrap();
            }
            let plan = ctx
                .sql("SELECT a.k FROM a JOIN b ON a.k = b.k")
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let plan = DeferBroadcastBuilds
                .optimize(plan, &ConfigOptions::new())
                .unwrap();
            let shown = displayable(plan.as_ref()).indent(false).to_string();
            assert_eq!(shown.contains("DeferredExec"), deferred, "{shown}");
            assert_eq!(shown.contains("mode=CollectLeft"), deferred, "{shown}");
        }
    }
}
