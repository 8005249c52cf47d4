//! Running a plan fragment on a server. In: the fragment's bytes (from a broker) and the
//! server's [`SegmentResolver`]. Out: the fragment's batches (partial aggregate states, or
//! rows), its scan counters, and the segment ids the server does not have.
//!
//! A fragment is admitted, bounded (memory, rows, deadline) and run on the query threads
//! like any query. After decoding, Basalt's physical rules that apply within one server run
//! over it: decimal arithmetic, a partial aggregate at the root run inside the scan on
//! dictionary ids (emitting the states the broker merges), a broadcast join's dynamic filter
//! pushed into the scan, cooperative yields.
//!
//! A fragment needs no SQL session — no catalog, no planner, no optimizer — only a task
//! context: the session's settings and function registry, built once per engine
//! ([`FragmentBase`]), and a runtime with the fragment's own memory pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::{MemoryPool, MemoryReservation, UnboundedMemoryPool};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionConfig;

use super::sessions::SessionKnobs;
use super::{collect, on_query_threads, QueryEngine, QueryLimits, QueryStats};
use crate::error::Result;
use crate::fragment::{self, FragmentCodec, SegmentResolver};
use crate::memory::result_reservation;
use crate::scan::ScanStats;

/// The settings and functions of the engine's sessions, which every fragment's task
/// context starts from.
#[derive(Debug)]
pub(crate) struct FragmentBase {
    config: SessionConfig,
    scalars: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    windows: HashMap<String, Arc<WindowUDF>>,
}

/// A server's answer to one fragment.
#[derive(Debug)]
pub struct FragmentOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub stats: QueryStats,
    /// Segment ids the fragment named that this server does not have.
    pub missing: Vec<String>,
    /// The batches are partial aggregate states holding each group once (the aggregate ran
    /// inside the scan and merged every segment's states): alone, they need no merging.
    pub groups_unique: bool,
    /// The memory the batches hold, released with the output.
    pub memory: MemoryReservation,
}

impl QueryEngine {
    /// Decodes and runs a plan fragment within `limits`.
    pub async fn execute_fragment(
        &self,
        bytes: &[u8],
        resolver: Arc<dyn SegmentResolver>,
        limits: &QueryLimits,
    ) -> Result<FragmentOutput> {
        let started = Instant::now();
        let timeout = self.clamp_timeout(limits.timeout);
        let permit = self.admission.admit(timeout).await?;
        let pool = self.pool(limits);
        let memory = result_reservation(&pool);
        let stats = Arc::new(ScanStats::default());
        let task = Arc::new(self.fragment_task(&pool, limits)?);
        let codec = FragmentCodec::server(resolver, stats.clone(), self.target_partitions, 8192);
        let bytes = bytes.to_vec();
        let max_rows = limits.max_rows;
        let work = async move {
            let _permit = permit;
            let mut plan = fragment::decode(&bytes, &task, &codec)?;
            let config = task.session_config().clone();
            let options = config.options();
            plan = crate::decimal_arith::DecimalArith.optimize(plan, options)?;
            plan = crate::segment_agg::partial_at_root(plan)?;
            // A broadcast join's dynamic filter (the keys of the rows the broker sent) reaches
            // the scan below it, as in a query planned here.
            if fragment::shape::holds_join(&plan) {
                plan = FilterPushdown::new_post_optimization().optimize(plan, options)?;
            }
            let groups_unique = plan
                .as_any()
                .is::<crate::segment_agg::SegmentAggregateExec>();
            plan = crate::coop::YieldEverywhere.optimize(plan, options)?;
            tracing::debug!(plan = %datafusion::physical_plan::displayable(plan.as_ref()).one_line(), "running a fragment");
            let schema = plan.schema();
            let batches = collect(execute_stream(plan, task)?, max_rows, &memory).await?;
            Ok((schema, batches, memory, codec.missing(), groups_unique))
        };
        let (schema, batches, memory, missing, groups_unique) =
            on_query_threads(work, started, timeout).await?;
        Ok(FragmentOutput {
            schema,
            batches,
            stats: stats.snapshot(),
            missing,
            groups_unique,
            memory,
        })
    }

    /// A fragment's task context: the engine's session settings and functions (their
    /// amplifying ones reserving from `pool`), and a runtime with `pool`; spilling and
    /// star-trees as `limits` say.
    fn fragment_task(
        &self,
        pool: &Arc<dyn MemoryPool>,
        limits: &QueryLimits,
    ) -> Result<TaskContext> {
        let base = match self.fragment_base.get() {
            Some(b) => b,
            None => {
                let none: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
                let state = self
                    .session(&none, Arc::default(), None, None, SessionKnobs::default())?
                    .state;
                let base = FragmentBase {
                    config: state.config().clone(),
                    scalars: state.scalar_functions().clone(),
                    aggregates: state.aggregate_functions().clone(),
                    windows: state.window_functions().clone(),
                };
                self.fragment_base.get_or_init(|| base)
            }
        };
        let runtime = self.runtime(pool, limits.spill)?;
        let config = match limits.use_star_tree {
            true => base.config.clone(),
            false => base
                .config
                .clone()
                .with_extension(Arc::new(crate::segment_agg::StarTreeOff)),
        };
        Ok(TaskContext::new(
            None,
            String::new(),
            config,
            crate::bounded::rebind(&base.scalars, pool),
            base.aggregates.clone(),
            base.windows.clone(),
            runtime,
        ))
    }
}
