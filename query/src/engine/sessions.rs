//! Query sessions, copied from templates built once. In: the engine's planning settings, a
//! PostgreSQL connection's session, and one query's memory pool, scan counters, budget and
//! spill permission. Out: [`QuerySession`], the query's DataFusion state and the task context
//! its plan runs with.
//!
//! Building a DataFusion session registers ~400 functions (a SipHash of every name and
//! alias), and `SessionContext` copies its whole state at each step of a query (planning,
//! the data frame, the task context): together the largest part of a `SELECT 1`'s server
//! CPU after the network (issue 20). So a session is built once per kind — one for the
//! Pinot/HTTP surface, one per distinct PostgreSQL session, whose settings its system
//! functions answer from — and each query plans on one copy of it (the maps copied, nothing
//! hashed again) given what is its own: the config's extensions, the catalog whose tables
//! count its scans, the functions that reserve from its memory pool, and its runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
};
use datafusion::execution::memory_pool::{MemoryPool, UnboundedMemoryPool};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder, TaskContext};
use datafusion::prelude::SessionConfig;

use super::{defaults, QueryBudget, QueryEngine, SearchPath, TablesSchema};
use crate::error::Result;
use crate::postgres::{self, catalog::PgCatalog, PgSession};
use crate::scan::ScanStats;
use crate::segment_agg::SegmentAggregateRule;

/// Distinct PostgreSQL sessions whose templates are kept; past this many the map starts
/// over (each template holds its own copy of the function registries).
const PG_TEMPLATES: usize = 64;

/// The sessions queries copy, built on first use.
#[derive(Default)]
pub(super) struct Templates {
    pinot: OnceLock<Arc<SessionState>>,
    pg: Mutex<HashMap<PgSession, Arc<SessionState>>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pg = self.pg.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Templates")
            .field("pinot", &self.pinot.get().is_some())
            .field("pg", &pg)
            .finish()
    }
}

/// One query's session: the state it plans with and the runtime (memory pool, disk) its
/// plan runs with.
pub(crate) struct QuerySession {
    pub(crate) state: SessionState,
    runtime: Arc<RuntimeEnv>,
}

impl QuerySession {
    /// The task context the query's plan runs with: the session's settings and functions,
    /// the query's runtime.
    pub(crate) fn task(&self) -> Arc<TaskContext> {
        let s = &self.state;
        Arc::new(TaskContext::new(
            None,
            s.session_id().to_string(),
            s.config().clone(),
            s.scalar_functions().clone(),
            s.aggregate_functions().clone(),
            s.window_functions().clone(),
            self.runtime.clone(),
        ))
    }
}

/// What a query's limits turn on in its session.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionKnobs {
    /// Sorts, aggregations and joins may spill to disk.
    pub(super) spill: bool,
    /// Segments' aggregation parts kept by earlier queries may be reused.
    pub(super) reuse_partials: bool,
    /// Aggregations may be answered from segments' star-trees.
    pub(super) star_trees: bool,
}

impl Default for SessionKnobs {
    /// For planning only (no spilling, no reuse); star-trees as by default.
    fn default() -> Self {
        SessionKnobs {
            spill: false,
            reuse_partials: false,
            star_trees: true,
        }
    }
}

impl QueryEngine {
    /// A session whose `public` schema is this engine's tables, scanning into `stats`. A
    /// PostgreSQL session (`pg`) also has `pg_catalog` and PostgreSQL's system functions.
    pub(super) fn session(
        &self,
        pool: &Arc<dyn MemoryPool>,
        stats: Arc<ScanStats>,
        pg: Option<&Arc<PgSession>>,
        budget: Option<QueryBudget>,
        knobs: SessionKnobs,
    ) -> Result<QuerySession> {
        let mut state = self.template(pg)?;
        let config = state.config_mut();
        if let Some(b) = budget {
            config.set_extension(Arc::new(b));
        }
        if knobs.reuse_partials {
            config.set_extension(self.partials.clone());
        }
        if !knobs.star_trees {
            config.set_extension(Arc::new(crate::segment_agg::StarTreeOff));
        }
        for f in defaults::bounded(pool) {
            state.register_udf(Arc::new(f))?;
        }
        state.register_catalog_list(self.catalogs(stats, pg)?);
        state.mark_start_execution();
        Ok(QuerySession {
            state,
            runtime: self.runtime(pool, knobs.spill)?,
        })
    }

    /// A copy of the template for `pg` (or the Pinot surface's), built if it is the first.
    fn template(&self, pg: Option<&Arc<PgSession>>) -> Result<SessionState> {
        let Some(pg) = pg else {
            if let Some(t) = self.templates.pinot.get() {
                return Ok(t.as_ref().clone());
            }
            let built = Arc::new(self.build_template(None));
            return Ok(self.templates.pinot.get_or_init(|| built).as_ref().clone());
        };
        let kept = self
            .templates
            .pg
            .lock()
            .ok()
            .and_then(|m| m.get(pg).cloned());
        let template = match kept {
            Some(t) => t,
            None => {
                let built = Arc::new(self.build_template(Some(pg)));
                if let Ok(mut m) = self.templates.pg.lock() {
                    if m.len() >= PG_TEMPLATES {
                        m.clear();
                    }
                    m.insert(pg.as_ref().clone(), built.clone());
                }
                built
            }
        };
        Ok(template.as_ref().clone())
    }

    /// What every query of a kind shares: settings, functions, planners and rules. Its
    /// catalog, memory-bound functions and runtime are placeholders each query replaces.
    fn build_template(&self, pg: Option<&Arc<PgSession>>) -> SessionState {
        // A PostgreSQL session's catalog is its database, as `information_schema` reports
        // it (`table_catalog`, which harlequin and DBeaver filter on).
        let catalog_name = pg.map_or("datafusion", |p| p.database.as_str());
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(catalog_name, "public")
            .with_target_partitions(self.target_partitions)
            .with_batch_size(8192)
            .with_information_schema(true);
        config.options_mut().sql_parser.enable_ident_normalization = false;
        config.options_mut().execution.time_zone = Some("+00:00".to_string());
        // Segment estimates pick the build side and the join mode. A build of up to 1M rows
        // (32 MiB) is broadcast: built once on one thread, it spares the probe side a hash
        // repartition (at TPC-H SF10, 60M line items through an exchange cost more than the
        // whole build), and its dynamic filter is a plain lookup the probe scan can run row by
        // row before decoding the other columns, where a partitioned join's per-partition CASE
        // only narrows the key's bounds. Larger builds stay partitioned over every core.
        let opt = &mut config.options_mut().optimizer;
        opt.hash_join_single_partition_threshold = self.broadcast_rows.saturating_mul(32);
        opt.hash_join_single_partition_threshold_rows = self.broadcast_rows;
        // A build of up to 4,096 distinct keys (per partition) reaches the probe side's scan
        // as an IN list, which the segment predicate holds exactly (a bit lookup per key over
        // a block); a multi-column key as one IN list per column, plus the whole
        // `struct(a, b) IN (...)` evaluated row by row. Larger builds send a hash-table
        // lookup, which only a row filter can use. (262,144 sped up TPC-H Q08 at SF10 by about
        // 7%, a single-column key of 13,000 parts, but Q12 and Q20 looked 1.5-1.8x slower in
        // the same session's runs; Q20's two-column key is such a struct list.)
        opt.hash_join_inlist_pushdown_max_distinct_values = self.key_list_max;
        opt.hash_join_inlist_pushdown_max_size = self.key_list_max.saturating_mul(128);
        // A PostgreSQL session's system functions.
        let pg_functions = match pg {
            Some(pg) => postgres::functions::all(pg, self.source.clone()),
            None => Vec::new(),
        };
        let placeholder: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let builder = SessionStateBuilder::new().with_config(config);
        let mut builder = defaults::with_defaults(builder, &placeholder, pg_functions)
            .with_query_planner(Arc::new(crate::shared_subplan::SharingQueryPlanner))
            .with_physical_optimizer_rules(crate::semi_to_inner::with_semi_to_inner());
        if let Some(rule) = &self.scatter {
            builder = builder.with_physical_optimizer_rule(rule.clone());
        }
        builder
            .with_analyzer_rule(Arc::new(crate::plain_strings::PlainStringsAcrossTables))
            .with_optimizer_rule(Arc::new(crate::semi_join_pushdown::SemiJoinPushdown))
            .with_optimizer_rule(Arc::new(crate::join_order::JoinReorder))
            .with_optimizer_rule(Arc::new(crate::agg_reducer::AggregateKeyReducer::default()))
            .with_physical_optimizer_rule(Arc::new(crate::decimal_arith::DecimalArith))
            .with_physical_optimizer_rule(Arc::new(SegmentAggregateRule))
            .with_physical_optimizer_rule(Arc::new(crate::dict_keys::DictionaryKeysAsViews))
            .with_physical_optimizer_rule(Arc::new(crate::build_side::SemiJoinBuildSide))
            .with_physical_optimizer_rule(Arc::new(crate::deferred::DeferBroadcastBuilds))
            .with_physical_optimizer_rule(Arc::new(crate::coop::YieldEverywhere))
            .build()
    }

    /// A query's catalogs: the default one, whose `public` schema is the engine's tables
    /// scanning into `stats` (behind `pg_catalog`, as PostgreSQL searches it first, for a
    /// PostgreSQL session).
    fn catalogs(
        &self,
        stats: Arc<ScanStats>,
        pg: Option<&Arc<PgSession>>,
    ) -> Result<Arc<dyn CatalogProviderList>> {
        let catalog = MemoryCatalogProvider::new();
        let tables = Arc::new(TablesSchema {
            source: self.source.clone(),
            stats,
        });
        let name = match pg {
            Some(pg) => {
                let pg_catalog = Arc::new(PgCatalog {
                    source: self.source.clone(),
                    session: pg.clone(),
                });
                catalog.register_schema("pg_catalog", pg_catalog.clone())?;
                catalog.register_schema(
                    "public",
                    Arc::new(SearchPath {
                        first: pg_catalog,
                        then: tables,
                    }),
                )?;
                pg.database.as_str()
            }
            None => {
                catalog.register_schema("public", tables)?;
                "datafusion"
            }
        };
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog(name.to_string(), Arc::new(catalog));
        Ok(Arc::new(catalogs))
    }
}
