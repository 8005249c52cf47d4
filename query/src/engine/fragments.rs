//! Running a plan fragment on a server. In: the fragment's bytes (from a broker) and the
//! server's [`SegmentResolver`]. Out: the fragment's batches (partial aggregate states, or
//! rows), its scan counters, and the segment ids the server does not have.
//!
//! A fragment is admitted, bounded (memory, rows, deadline) and run on the query threads
//! like any query. After decoding, Basalt's physical rules that apply within one server run
//! over it: decimal arithmetic, a partial aggregate at the root run inside the scan on
//! dictionary ids (emitting the states the broker merges), cooperative yields.

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execute_stream;

use super::{collect, on_query_threads, QueryEngine, QueryLimits, QueryStats};
use crate::error::Result;
use crate::fragment::{self, FragmentCodec, SegmentResolver};
use crate::memory::result_reservation;
use crate::scan::ScanStats;

/// A server's answer to one fragment.
#[derive(Debug)]
pub struct FragmentOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub stats: QueryStats,
    /// Segment ids the fragment named that this server does not have.
    pub missing: Vec<String>,
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
        let ctx = self.session(&pool, stats.clone(), None, limits.spill, None)?;
        let codec = FragmentCodec::server(resolver, stats.clone(), self.target_partitions, 8192);
        let bytes = bytes.to_vec();
        let max_rows = limits.max_rows;
        let work = async move {
            let _permit = permit;
            let task = ctx.task_ctx();
            let mut plan = fragment::decode(&bytes, &task, &codec)?;
            let state = ctx.state();
            let options = state.config_options();
            plan = crate::decimal_arith::DecimalArith.optimize(plan, options)?;
            plan = crate::segment_agg::partial_at_root(plan)?;
            plan = crate::coop::YieldEverywhere.optimize(plan, options)?;
            tracing::debug!(plan = %datafusion::physical_plan::displayable(plan.as_ref()).one_line(), "running a fragment");
            let schema = plan.schema();
            let batches = collect(execute_stream(plan, task)?, max_rows, &memory).await?;
            Ok((schema, batches, memory, codec.missing()))
        };
        let (schema, batches, memory, missing) = on_query_threads(work, started, timeout).await?;
        Ok(FragmentOutput {
            schema,
            batches,
            stats: stats.snapshot(),
            missing,
            memory,
        })
    }
}
