//! Runs SQL over the tables of a [`TableSource`]. In: SQL text and per-query limits. Out: Arrow
//! batches plus the scan counters Pinot clients expect, or a [`QueryError`].
//!
//! Each query gets its own DataFusion session with its own memory pool, so one runaway query
//! cannot starve the others: it fails with a memory error, or with a timeout, or with a row
//! limit error, and the server carries on.

use datafusion::physical_optimizer::PhysicalOptimizerRule;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::disk_manager::{DiskManager, DiskManagerMode};
use datafusion::execution::memory_pool::{MemoryPool, MemoryReservation};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionState;
use datafusion::physical_plan::execute_stream;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::StreamExt;

use crate::admission::Admission;
use crate::cache::{self, ResultCache};
use crate::error::{ErrorKind, QueryError, Result};
use crate::guard::{self, StatementLimits};
use crate::memory::{fresh_bytes, result_reservation, QueryPool, SharedBudget};
use crate::pinot;
use crate::postgres::{self, catalog::PgCatalog, PgSession};
use crate::rewrite::StatementRewrite;
use crate::scan::ScanStats;
use crate::segment_agg::PartialAggregates;
use crate::table::TableSource;

mod defaults;
mod fragments;
mod planning;
mod sessions;
pub use fragments::FragmentOutput;
use sessions::SessionKnobs;

/// Limits applied to every query (serde-free; the server's config maps onto it).
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Wall-clock limit, queueing for a turn included (default 10 s).
    pub timeout: Duration,
    /// Memory a query may reserve: its operators, its collected result and the response
    /// being encoded (default 1 GiB).
    pub memory_limit: usize,
    /// Rows a result may hold (default 1,000,000).
    pub max_rows: usize,
    /// Whether the result cache may answer and segments' aggregation parts kept by earlier
    /// queries be reused (default true; benchmarks turn both off).
    pub use_cache: bool,
    /// Whether aggregations may be answered from segments' star-trees (default true;
    /// Pinot's `useStarTree=false` turns them off).
    pub use_star_tree: bool,
    /// Whether one-table aggregations without GROUP BY may be answered by Basalt's own plan
    /// instead of DataFusion's (default true; the query option `useDirectPlan=false`
    /// turns it off): see [`crate::direct`].
    pub direct_plan: bool,
    /// Size and shape of the statement.
    pub statement: StatementLimits,
    /// Bytes an encoded answer may have (Pinot JSON, PostgreSQL rows), checked by the front
    /// doors as they encode (default 256 MiB).
    pub max_response_bytes: usize,
    /// Whether sorts, aggregations and joins that DataFusion can spill write to the
    /// engine's spill directory when the memory limit is reached (default false: a
    /// dashboard query over its limit fails at once; analyst queries spill).
    pub spill: bool,
}

impl QueryLimits {
    /// The analyst class: a larger memory limit (default a quarter of the machine's), a
    /// longer timeout, spilling to disk; rows and response size as `self`.
    pub fn analyst(&self, memory_limit: usize, timeout: Duration) -> QueryLimits {
        QueryLimits {
            memory_limit,
            timeout,
            spill: true,
            ..self.clone()
        }
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(10),
            memory_limit: 1 << 30,
            max_rows: 1_000_000,
            use_cache: true,
            use_star_tree: true,
            direct_plan: true,
            statement: StatementLimits::default(),
            max_response_bytes: 256 << 20,
            spill: false,
        }
    }
}

/// Server-wide limits of the engine, shared by every query.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Memory all running queries may hold together (default half the machine's).
    pub shared_memory_bytes: usize,
    /// Queries running at once (default 4 per core).
    pub max_concurrent: usize,
    /// Queries waiting for a turn; more are refused (default 256).
    pub max_queued: usize,
    /// The longest timeout a request may ask for (default 5 minutes).
    pub max_timeout: Duration,
    /// Where spilling queries write their temporary files (a fresh directory is made under
    /// it and removed with the engine); `None`: no query spills.
    pub spill_dir: Option<std::path::PathBuf>,
    /// Bytes of temporary files all spilling queries may hold together (default 50 GiB).
    pub max_spill_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        EngineConfig {
            shared_memory_bytes: crate::memory::default_shared_budget(),
            max_concurrent: 4 * cores,
            max_queued: 256,
            max_timeout: Duration::from_secs(300),
            spill_dir: None,
            max_spill_bytes: 50 << 30,
        }
    }
}

/// What a running query may still use: in its session config's extensions, for operators
/// that hand work to other processes (a broker's scatter sends each server what is left).
#[derive(Debug, Clone)]
pub struct QueryBudget {
    pub deadline: Instant,
    pub max_rows: usize,
    pub memory_limit: usize,
    /// Whether aggregations may be answered from star-trees (`QueryLimits::use_star_tree`).
    pub use_star_tree: bool,
}

/// Scan counters of one query, in Pinot's vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub num_docs_scanned: u64,
    pub total_docs: u64,
    pub num_segments_queried: u64,
    pub num_segments_matched: u64,
    pub num_segments_pruned: u64,
    pub index_lookups: u64,
    pub blocks_scanned: u64,
    /// Docs a dynamic filter (a join's build side, a TopK) removed row by row in the scan,
    /// before the rest of their columns were read.
    pub docs_removed_by_dynamic_filters: u64,
    /// Brokers: servers the query's fragments were sent to, and those that answered.
    pub num_servers_queried: u64,
    pub num_servers_responded: u64,
    /// Brokers: segments no live replica answered for. Not empty means the result is
    /// partial (Pinot's `partialResult`).
    pub missing_segments: Vec<String>,
    /// Data files of the warehouse tier (Iceberg) read.
    pub num_warehouse_files: u64,
    /// Segments whose part of an aggregation came from the per-segment cache.
    pub num_segments_from_cache: u64,
    /// Segments whose part of an aggregation was answered from a star-tree (their
    /// `num_docs_scanned` counts the tree's records read).
    pub num_segments_star_tree: u64,
}

impl QueryStats {
    /// Whether segments are missing from the result.
    pub fn partial(&self) -> bool {
        !self.missing_segments.is_empty()
    }
}

#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// The counters of the run that computed the result (also for a cached result).
    pub stats: QueryStats,
    pub elapsed: Duration,
    /// Answered from the result cache ([`crate::cache`]).
    pub cached: bool,
    /// Computed by Basalt's own plan for one-table aggregations ([`crate::direct`]), not
    /// planned by DataFusion.
    pub direct: bool,
    /// The memory the result holds, in the query's pool; the front door grows it while it
    /// encodes the response, and it is released when the output is dropped.
    memory: MemoryReservation,
}

impl QueryOutput {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// Reserves `bytes` more for the response being encoded (within the query's memory
    /// limit and the server's shared budget).
    pub fn reserve(&mut self, bytes: usize) -> Result<()> {
        self.memory.try_grow(bytes).map_err(QueryError::from)
    }
}

#[derive(Debug, Clone)]
pub struct QueryEngine {
    source: Arc<dyn TableSource>,
    target_partitions: usize,
    /// Hash joins whose build side is estimated below this many rows (and 32 bytes a row)
    /// are broadcast (`CollectLeft`); larger builds are partitioned.
    broadcast_rows: usize,
    /// Hash join builds of up to this many distinct keys reach the probe side's scan as an
    /// IN list; larger ones as a hash-table lookup.
    key_list_max: usize,
    cache: Arc<ResultCache>,
    /// Segments' parts of aggregations, reused by later queries over the same segments
    /// (real-time tables included), unless a query turns caches off.
    partials: Arc<PartialAggregates>,
    shared: Arc<SharedBudget>,
    admission: Arc<Admission>,
    max_timeout: Duration,
    /// Temporary files of spilling queries (`None` when no spill directory is configured
    /// or it could not be made); every other query's disk manager is disabled.
    spill: Option<Arc<DiskManager>>,
    /// Brokers: the rule that sends the parts of a plan over remote scans to servers; it
    /// runs right after DataFusion's own physical rules, before Basalt's.
    scatter: Option<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
    /// Servers: what every plan fragment's task context shares, built once.
    fragment_base: Arc<std::sync::OnceLock<fragments::FragmentBase>>,
    /// The sessions queries copy (see [`sessions`]); built again after a setting changes.
    templates: Arc<sessions::Templates>,
    /// Rewrites the embedding process adds, applied to every statement before planning
    /// (the semantic layer's `semantic.<model>` views).
    rewrite: Option<Arc<dyn StatementRewrite>>,
}

/// Builds below this many estimated rows are broadcast: see [`QueryEngine::session`].
const BROADCAST_JOIN_ROWS: usize = 1 << 20;
/// Builds of up to this many distinct keys send the probe scan an IN list: see
/// [`QueryEngine::session`].
const JOIN_KEY_LIST_MAX: usize = 4_096;

/// Bytes of results the cache keeps (64 MiB); one result may take a sixteenth of it.
const RESULT_CACHE_BYTES: usize = 64 << 20;
/// Bytes of segments' aggregation parts kept (128 MiB); one may take a sixteenth of it.
const PARTIAL_CACHE_BYTES: usize = 128 << 20;

impl QueryEngine {
    pub fn new(source: Arc<dyn TableSource>) -> Self {
        Self::with_config(source, EngineConfig::default())
    }

    pub fn with_config(source: Arc<dyn TableSource>, cfg: EngineConfig) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let spill = cfg.spill_dir.as_ref().and_then(|dir| {
            let built = std::fs::create_dir_all(dir)
                .map_err(DataFusionError::from)
                .and_then(|()| {
                    DiskManager::builder()
                        .with_mode(DiskManagerMode::Directories(vec![dir.clone()]))
                        .with_max_temp_directory_size(cfg.max_spill_bytes)
                        .build()
                });
            match built {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot spill there; analyst queries over their memory limit will fail instead");
                    None
                }
            }
        });
        QueryEngine {
            source,
            target_partitions: cores,
            broadcast_rows: BROADCAST_JOIN_ROWS,
            key_list_max: JOIN_KEY_LIST_MAX,
            cache: Arc::new(ResultCache::new(RESULT_CACHE_BYTES)),
            partials: Arc::new(PartialAggregates::new(PARTIAL_CACHE_BYTES)),
            shared: SharedBudget::new(cfg.shared_memory_bytes),
            admission: Arc::new(Admission::new(cfg.max_concurrent, cfg.max_queued)),
            max_timeout: cfg.max_timeout,
            spill,
            scatter: None,
            fragment_base: Arc::default(),
            templates: Arc::default(),
            rewrite: None,
        }
    }

    /// The same engine applying `rewrite` to every statement before planning it.
    pub fn with_statement_rewrite(mut self, rewrite: Arc<dyn StatementRewrite>) -> Self {
        self.rewrite = Some(rewrite);
        self
    }

    /// `statement` after the embedding process's rewrite, under EXPLAIN too.
    fn rewritten(&self, mut statement: DfStatement) -> Result<DfStatement> {
        fn apply(r: &dyn StatementRewrite, s: &mut DfStatement) -> Result<()> {
            match s {
                DfStatement::Statement(s) => r.rewrite(s),
                DfStatement::Explain(e) => apply(r, &mut e.statement),
                _ => Ok(()),
            }
        }
        if let Some(r) = &self.rewrite {
            apply(r.as_ref(), &mut statement)?;
        }
        Ok(statement)
    }

    /// The same engine keeping segments' aggregation parts in `cache` (default: 128 MiB,
    /// segments of 16,384 rows or more).
    pub fn with_partial_cache(mut self, cache: PartialAggregates) -> Self {
        self.partials = Arc::new(cache);
        self
    }

    /// The cache of segments' aggregation parts (its counters are metrics).
    pub fn partial_cache(&self) -> &Arc<PartialAggregates> {
        &self.partials
    }

    /// The same engine planning `n` partitions per scan (default: one per core).
    pub fn with_target_partitions(mut self, n: usize) -> Self {
        self.target_partitions = n.max(1);
        self.templates = Arc::default();
        self
    }

    /// The same engine broadcasting hash join builds of fewer than `rows` estimated rows
    /// (0: every join with statistics is partitioned).
    pub fn with_broadcast_join_rows(mut self, rows: usize) -> Self {
        self.broadcast_rows = rows;
        self.templates = Arc::default();
        self
    }

    /// The same engine sending the probe side's scan an IN list of a hash join's build keys
    /// up to `keys` distinct keys, and a hash-table lookup above.
    pub fn with_join_key_list_max(mut self, keys: usize) -> Self {
        self.key_list_max = keys;
        self.templates = Arc::default();
        self
    }

    /// The same engine running `rule` after DataFusion's physical optimizer rules (a
    /// broker's scatter rule: see `basalt-broker`'s `cluster` module).
    pub fn with_scatter_rule(mut self, rule: Arc<dyn PhysicalOptimizerRule + Send + Sync>) -> Self {
        self.scatter = Some(rule);
        self.templates = Arc::default();
        self
    }

    /// Memory all running queries hold now, and the shared budget.
    pub fn memory(&self) -> (usize, usize) {
        (self.shared.used(), self.shared.limit())
    }

    /// Queries running and waiting now.
    pub fn load(&self) -> (usize, usize) {
        (self.admission.running(), self.admission.queued())
    }

    /// The timeout a request asked for, within the server's ceiling.
    pub fn clamp_timeout(&self, asked: Duration) -> Duration {
        asked.min(self.max_timeout).max(Duration::from_millis(1))
    }

    /// A query's runtime: its memory pool, and the spill directory's disk manager when it
    /// may spill (no disk otherwise).
    fn runtime(&self, pool: &Arc<dyn MemoryPool>, spill: bool) -> Result<Arc<RuntimeEnv>> {
        let mut runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_disk_manager_builder(DiskManager::builder().with_mode(DiskManagerMode::Disabled))
            .build()?;
        if let (true, Some(d)) = (spill, &self.spill) {
            runtime.disk_manager = d.clone();
        }
        Ok(Arc::new(runtime))
    }

    /// Parses, rewrites Pinot functions, plans and runs `sql` within `limits`.
    pub async fn execute(&self, sql: &str, limits: &QueryLimits) -> Result<QueryOutput> {
        let statement = parse(sql, &limits.statement)?;
        self.run(statement, Vec::new(), limits, None).await
    }

    /// A pool for one query: its own limit within the shared budget.
    fn pool(&self, limits: &QueryLimits) -> Arc<dyn MemoryPool> {
        match limits.spill {
            true => QueryPool::fair(limits.memory_limit, self.shared.clone()),
            false => QueryPool::new(limits.memory_limit, self.shared.clone()),
        }
    }

    /// PostgreSQL: the result schema of `statement` and the types DataFusion infers for its
    /// `$n` parameters (`None` where it cannot tell), without running it.
    pub async fn describe_pg(
        &self,
        statement: &DfStatement,
        session: &Arc<PgSession>,
    ) -> Result<(SchemaRef, Vec<Option<DataType>>)> {
        let statement = &self.rewritten(statement.clone())?;
        let pool = self.pool(&QueryLimits::default());
        let session = self.session(
            &pool,
            Arc::new(ScanStats::default()),
            Some(session),
            None,
            SessionKnobs::default(),
        )?;
        let state = &session.state;
        let plan = state
            .statement_to_plan(statement.clone())
            .await
            .map_err(|e| planning_error(e, statement, state))?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let mut params: Vec<Option<DataType>> = Vec::new();
        for (name, ty) in plan.get_parameter_types()? {
            let Some(i) = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&i| i >= 1)
            else {
                return Err(QueryError::invalid(
                    ErrorKind::InvalidQuery,
                    format!("parameter {name} is not of the form $1, $2, ..."),
                ));
            };
            if params.len() < i {
                params.resize(i, None);
            }
            params[i - 1] = ty;
        }
        crate::postgres::params::fill_open_types(&plan, &mut params);
        Ok((schema, params))
    }

    /// PostgreSQL: plans `statement` on a fresh snapshot, binds `params` to its `$n`
    /// placeholders and runs it within `limits`.
    pub async fn execute_pg(
        &self,
        statement: &DfStatement,
        params: Vec<ScalarValue>,
        session: &Arc<PgSession>,
        limits: &QueryLimits,
    ) -> Result<QueryOutput> {
        self.run(statement.clone(), params, limits, Some(session))
            .await
    }

    /// The physical plan of `sql`, as the engine would run it (tests inspect its estimates).
    #[cfg(test)]
    pub(crate) async fn physical_plan(
        &self,
        sql: &str,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let pool = self.pool(&QueryLimits::default());
        let session = self.session(
            &pool,
            Arc::new(ScanStats::default()),
            None,
            None,
            SessionKnobs::default(),
        )?;
        let plan = session.state.create_logical_plan(sql).await?;
        Ok(planning::physical_plan(&session.state, &plan).await?)
    }

    async fn run(
        &self,
        statement: DfStatement,
        params: Vec<ScalarValue>,
        limits: &QueryLimits,
        pg: Option<&Arc<PgSession>>,
    ) -> Result<QueryOutput> {
        let started = Instant::now();
        let statement = self.rewritten(statement)?;
        let timeout = self.clamp_timeout(limits.timeout);
        let permit = self.admission.admit(timeout).await?;
        let pool = self.pool(limits);
        let memory = result_reservation(&pool);
        // Versions first: a result is never stored under versions newer than its data.
        let versions = match limits.use_cache {
            true => cache::versions(&statement, self.source.as_ref()),
            false => None,
        };
        let cache_key = versions.map(|v| {
            let dialect = if pg.is_some() { "postgres" } else { "pinot" };
            (format!("{dialect}\u{1}{statement}\u{1}{params:?}"), v)
        });
        if let Some((key, versions)) = &cache_key {
            if let Some(hit) = self.cache.get(key, versions) {
                let rows: usize = hit.batches.iter().map(|b| b.num_rows()).sum();
                if rows <= limits.max_rows {
                    let mut seen = std::collections::HashSet::new();
                    let bytes: usize = hit.batches.iter().map(|b| fresh_bytes(b, &mut seen)).sum();
                    memory.try_grow(bytes)?;
                    return Ok(QueryOutput {
                        schema: hit.schema,
                        batches: hit.batches,
                        stats: hit.stats,
                        elapsed: started.elapsed(),
                        cached: true,
                        direct: false,
                        memory,
                    });
                }
            }
        }
        let stats = Arc::new(ScanStats::default());
        let direct = match limits.direct_plan && params.is_empty() {
            true => crate::direct::plan(
                &statement,
                self.source.as_ref(),
                pg.is_some(),
                limits.use_star_tree,
            ),
            false => None,
        };
        if let Some(direct) = direct {
            let schema = direct.schema().clone();
            let work = direct.prune(&stats)?;
            let reuse = limits.use_cache.then(|| self.partials.clone());
            let max_rows = limits.max_rows;
            let inline = crate::direct::INLINE_DOCS.load(std::sync::atomic::Ordering::Relaxed);
            let (batches, memory) = match direct.cost(&work) <= inline {
                // Little to decode: answered here, not handed to the query threads and back.
                true => {
                    let answer = direct_answer(direct, work, &stats, 1, reuse, max_rows, memory);
                    let answer = answer.await;
                    drop(permit);
                    answer?
                }
                false => {
                    let (stats, partitions) = (stats.clone(), self.target_partitions);
                    let run = async move {
                        let _permit = permit;
                        direct_answer(direct, work, &stats, partitions, reuse, max_rows, memory)
                            .await
                    };
                    on_query_threads(run, started, timeout).await?
                }
            };
            return Ok(self.answered(schema, batches, stats, cache_key, started, true, memory));
        }
        let budget = QueryBudget {
            deadline: started + timeout,
            max_rows: limits.max_rows,
            memory_limit: limits.memory_limit,
            use_star_tree: limits.use_star_tree,
        };
        let session = self.session(
            &pool,
            stats.clone(),
            pg,
            Some(budget),
            SessionKnobs {
                spill: limits.spill,
                reuse_partials: limits.use_cache,
                star_trees: limits.use_star_tree,
            },
        )?;
        let max_rows = limits.max_rows;
        let planned = statement;
        // Executed on the query threads (`crate::runtime`): this task only waits, so the
        // deadline fires on time even while a step of DataFusion holds every query thread.
        // The admission permit goes with the work, so a query counts as running until its
        // work has really stopped.
        let work = async move {
            let _permit = permit;
            let mut session = session;
            let mut plan = session
                .state
                .statement_to_plan(planned.clone())
                .await
                .map_err(|e| planning_error(e, &planned, &session.state))?;
            if !params.is_empty() {
                plan = plan.with_param_values(params)?;
            }
            let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            // `now()` is the time the query starts running.
            session.state.mark_start_execution();
            let physical = planning::physical_plan(&session.state, &plan).await?;
            let stream = execute_stream(physical, session.task())?;
            let batches = collect(stream, max_rows, &memory).await?;
            Ok::<_, QueryError>((schema, batches, memory))
        };
        let (schema, batches, memory) = on_query_threads(work, started, timeout).await?;
        Ok(self.answered(schema, batches, stats, cache_key, started, false, memory))
    }

    /// The output of a run that computed `batches`, kept in the result cache under
    /// `cache_key` unless it is partial.
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        stats: Arc<ScanStats>,
        cache_key: Option<(String, Vec<cache::DataVersion>)>,
        started: Instant,
        direct: bool,
        memory: MemoryReservation,
    ) -> QueryOutput {
        let stats = stats.snapshot();
        // A partial result (segments no live replica answered for) is never reused.
        if let Some((key, versions)) = cache_key.filter(|_| !stats.partial()) {
            self.cache.put(
                key,
                versions,
                cache::Cached {
                    schema: schema.clone(),
                    batches: batches.clone(),
                    stats: stats.clone(),
                },
            );
        }
        QueryOutput {
            schema,
            batches,
            stats,
            elapsed: started.elapsed(),
            cached: false,
            direct,
            memory,
        }
    }
}

/// A direct query's answer over segments `work` ([`crate::direct`]) within `max_rows`, its
/// rows counted into `memory`.
async fn direct_answer(
    direct: crate::direct::DirectQuery,
    work: Vec<usize>,
    stats: &Arc<ScanStats>,
    partitions: usize,
    reuse: Option<Arc<PartialAggregates>>,
    max_rows: usize,
    memory: MemoryReservation,
) -> Result<(Vec<RecordBatch>, MemoryReservation)> {
    let batch = direct.run(work, stats, partitions, reuse).await?;
    if batch.num_rows() > max_rows {
        return Err(QueryError::RowLimit(max_rows));
    }
    memory.try_grow(fresh_bytes(&batch, &mut std::collections::HashSet::new()))?;
    Ok((vec![batch], memory))
}

/// Runs `work` on the query threads (`crate::runtime`) until `timeout` after `started`.
async fn on_query_threads<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
    started: Instant,
    timeout: Duration,
) -> Result<T> {
    let remaining = timeout.saturating_sub(started.elapsed());
    let run = async move {
        if crate::runtime::on_query_runtime() {
            // Already on the query threads (a server's Flight service): run here.
            return work.await;
        }
        crate::runtime::spawn(work).await.unwrap_or_else(|e| {
            Err(QueryError::invalid(
                ErrorKind::Internal,
                format!("the query's execution failed: {e}"),
            ))
        })
    };
    match tokio::time::timeout(remaining, run).await {
        Ok(r) => r,
        Err(_) => Err(QueryError::Timeout(timeout.as_millis() as u64)),
    }
}

/// The batches of `stream`, at most `max_rows` rows, each counted into `memory` (the
/// collected result counts against the query's memory).
async fn collect(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    max_rows: usize,
    memory: &MemoryReservation,
) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut seen = std::collections::HashSet::new();
    while let Some(b) = stream.next().await {
        let b = b?;
        rows += b.num_rows();
        if rows > max_rows {
            return Err(QueryError::RowLimit(max_rows));
        }
        memory.try_grow(fresh_bytes(&b, &mut seen))?;
        batches.push(b);
    }
    Ok(batches)
}

/// A planning error with its kind: unknown table and function names are found by resolving
/// every name of the statement against the session's catalogs and registries, not by
/// reading DataFusion's message.
fn planning_error(
    e: datafusion::error::DataFusionError,
    statement: &DfStatement,
    state: &SessionState,
) -> QueryError {
    let q = QueryError::from(e);
    if q.kind() != ErrorKind::InvalidQuery {
        return q;
    }
    if let Some(table) = guard::unknown_table(statement, state) {
        return QueryError::UndefinedTable(table);
    }
    match (guard::unknown_function(statement, state), q) {
        (Some(name), QueryError::DataFusion { source, .. }) => QueryError::DataFusion {
            kind: ErrorKind::UndefinedFunction,
            source: source.context(format!("function {name:?} does not exist")),
        },
        (_, q) => q,
    }
}

/// Parses one read-only statement (SELECT, WITH, EXPLAIN, SHOW) within `limits` and applies
/// the Pinot rewrite.
fn parse(sql: &str, limits: &StatementLimits) -> Result<DfStatement> {
    guard::check_text(sql, &GenericDialect {}, limits)?;
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    if statements.len() != 1 {
        return Err(QueryError::invalid(
            ErrorKind::Syntax,
            format!(
                "expected exactly one SQL statement, found {}",
                statements.len()
            ),
        ));
    }
    let statement = statements.pop_front().expect("one statement");
    guard::check_statement(&statement, limits)?;
    check_query(statement)
}

/// Refuses anything but a read-only statement and applies the Pinot rewrite.
pub(crate) fn check_query(mut statement: DfStatement) -> Result<DfStatement> {
    check_and_rewrite(&mut statement)?;
    Ok(statement)
}

/// Refuses anything but a read-only statement and rewrites Pinot functions, also under EXPLAIN.
fn check_and_rewrite(statement: &mut DfStatement) -> Result<()> {
    match statement {
        DfStatement::Statement(s) => {
            match s.as_ref() {
                Statement::Query(_)
                | Statement::Explain { .. }
                | Statement::ShowTables { .. }
                | Statement::ShowColumns { .. }
                | Statement::ShowVariable { .. } => {}
                other => {
                    let kind = other.to_string();
                    let first = kind.split_whitespace().next().unwrap_or("").to_uppercase();
                    return Err(QueryError::ReadOnly(format!(
                        "only queries are allowed here (Basalt's SQL is read-only); {first} statements are not"
                    )));
                }
            }
            if let Statement::Query(_) | Statement::Explain { .. } = s.as_ref() {
                postgres::rewrite::rewrite(s);
            }
            pinot::rewrite(s)?;
        }
        DfStatement::Explain(e) => check_and_rewrite(&mut e.statement)?,
        _ => {
            return Err(QueryError::ReadOnly(
                "only queries are allowed here (Basalt's SQL is read-only); use the admin API to change tables".into(),
            ))
        }
    }
    Ok(())
}

/// The `public` schema: every table of the source, snapshotted when the query plans.
#[derive(Debug)]
struct TablesSchema {
    source: Arc<dyn TableSource>,
    stats: Arc<ScanStats>,
}

#[async_trait]
impl SchemaProvider for TablesSchema {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.source.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        // DataFusion asks for every name the statement references (table functions too): an
        // unknown one is `None` here, and [`planning_error`] gives its failure its kind.
        self.source
            .provider(name, self.stats.clone())
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.source.table_names().iter().any(|n| n == name)
    }
}

/// A PostgreSQL session's default schema: `pg_catalog`'s tables, then Basalt's.
#[derive(Debug)]
struct SearchPath {
    first: Arc<PgCatalog>,
    then: Arc<TablesSchema>,
}

#[async_trait]
impl SchemaProvider for SearchPath {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.then.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.first.table_exist(name) {
            return self.first.table(name).await;
        }
        self.then.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.first.table_exist(name) || self.then.table_exist(name)
    }
}
